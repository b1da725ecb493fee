// The one module that talks to the backend. Components call these functions, never `invoke`.
import { invoke } from "@tauri-apps/api/core";
import { listen, type UnlistenFn } from "@tauri-apps/api/event";
import type {
  ApiError,
  AppInfo,
  BackgroundInput,
  ConnectionRow,
  BackgroundSettings,
  Detail,
  ListeningPort,
  ReplayEdits,
  ServerCheck,
  ServerInput,
  ServerView,
  Summary,
  TunnelEvent,
  TunnelInput,
  TunnelView,
} from "./types";

/** Calls a command; rejections are normalised to ApiError. */
async function call<T>(cmd: string, args?: Record<string, unknown>): Promise<T> {
  try {
    return await invoke<T>(cmd, args);
  } catch (e) {
    throw toApiError(e);
  }
}

export function toApiError(e: unknown): ApiError {
  if (e && typeof e === "object" && "kind" in e && "message" in e) {
    const o = e as ApiError;
    return { kind: o.kind, message: String(o.message), field: o.field ?? null };
  }
  return { kind: "system", message: String(e), field: null };
}

export const appInfo = () => call<AppInfo>("app_info");
export const listTunnels = () => call<TunnelView[]>("list_tunnels");
export const expose = (input: TunnelInput) => call<TunnelView>("expose", { input });
export const updateTunnel = (id: string, input: TunnelInput) =>
  call<TunnelView>("update_tunnel", { id, input });
export const deleteTunnel = (id: string) => call<void>("delete_tunnel", { id });
export const startTunnel = (id: string) => call<TunnelView>("start_tunnel", { id });
export const stopTunnel = (id: string) => call<TunnelView>("stop_tunnel", { id });
export const listTraffic = (id: string) => call<Summary[]>("list_traffic", { id });
export const listConnections = (id: string) => call<ConnectionRow[]>("list_connections", { id });
export const getExchange = (id: string, exchange: number) =>
  call<Detail>("get_exchange", { id, exchange });
/** Replays an exchange, changed as `edits` say (null: as captured). */
export const replay = (id: string, exchange: number, edits: ReplayEdits | null = null) =>
  call<Summary>("replay", { id, exchange, edits });
/** Copies the exchange's request as a curl command (built by the backend); returns it. */
export const copyCurl = (id: string, exchange: number) => call<string>("copy_curl", { id, exchange });
/** Saves the listed exchanges as a HAR file; returns where it went. */
export const exportHar = (id: string, exchanges: number[]) =>
  call<string>("export_har", { id, exchanges });
export const listServers = () => call<ServerView[]>("list_servers");
export const saveServer = (input: ServerInput) => call<ServerView>("save_server", { input });
export const testServer = (input: ServerInput) => call<ServerCheck>("test_server", { input });
export const listListening = () => call<ListeningPort[]>("list_listening");
export const deleteServer = (id: string) => call<void>("delete_server", { id });
export const copyUrl = (id: string) => call<string>("copy_url", { id });
export const openUrl = (id: string) => call<string>("open_url", { id });
export const backgroundSettings = () => call<BackgroundSettings>("background_settings");
export const saveBackgroundSettings = (input: BackgroundInput) =>
  call<BackgroundSettings>("save_background_settings", { input });
export const openLogFolder = () => call<void>("open_log_folder");

export const EVENT_TUNNEL = "tunnel-event";
export const EVENT_CHANGED = "tunnels-changed";

export function onTunnelEvent(f: (e: TunnelEvent) => void): Promise<UnlistenFn> {
  return listen<TunnelEvent>(EVENT_TUNNEL, (e) => f(e.payload));
}

export function onChanged(f: () => void): Promise<UnlistenFn> {
  return listen(EVENT_CHANGED, () => f());
}
