// The web inspector's backend seam: the same functions as api.ts, over the CLI inspector's HTTP
// API (fetch) and its live events (Server-Sent Events) instead of Tauri's IPC. The inspector
// build (vite --mode inspector) puts this module wherever the views import "./api".
import type * as Seam from "./api";
import type {
  ApiError,
  AppInfo,
  BackgroundSettings,
  ConnectionRow,
  Detail,
  ReplayEdits,
  Status,
  Summary,
  TunnelEvent,
  TunnelView,
} from "./types";

type UnlistenFn = () => void;

export function toApiError(e: unknown): ApiError {
  if (e && typeof e === "object" && "kind" in e && "message" in e) {
    const o = e as ApiError;
    return { kind: o.kind, message: String(o.message), field: o.field ?? null };
  }
  return { kind: "system", message: String(e), field: null };
}

/** The API's error (`{status_code, msg}`) as the views expect it. */
async function failure(resp: Response): Promise<ApiError> {
  let message = `${resp.status} ${resp.statusText}`;
  try {
    const body = (await resp.json()) as { msg?: string };
    if (body.msg) message = body.msg;
  } catch {
    // Not JSON: the status line says enough.
  }
  const kind = resp.status === 404 ? "notFound" : resp.status === 400 ? "invalid" : "system";
  return { kind, message, field: null };
}

async function request<T>(path: string, init?: RequestInit): Promise<T> {
  let resp: Response;
  try {
    resp = await fetch(path, init);
  } catch (e) {
    throw toApiError(`the inspector did not answer (is ggrok still running?): ${e}`);
  }
  if (!resp.ok) throw await failure(resp);
  return (resp.status === 204 ? undefined : await resp.json()) as T;
}

interface ApiTunnel {
  name: string;
  public_url: string;
  proto: string;
  config: { addr: string };
  ggrok: { status: Status; requests: number; localHost: string; localPort: number };
}
interface ApiRequest<G> {
  id: string;
  ggrok: G;
}

const unavailable = (what: string) => () =>
  Promise.reject<never>({ kind: "system", message: `${what} is done in the desktop app`, field: null });

export const appInfo = async (): Promise<AppInfo> => ({
  builtinServerUrl: "",
  warnings: [],
  trafficCap: 500,
  keyringAvailable: true,
});

export async function listTunnels(): Promise<TunnelView[]> {
  const { tunnels } = await request<{ tunnels: ApiTunnel[] }>("/api/tunnels");
  return tunnels.map((t) => ({
    id: t.name,
    serverId: "",
    serverName: "",
    subdomain: null,
    kind: t.proto === "tcp" ? "tcp" : "http",
    remotePort: null,
    givenPort: null,
    connections: 0,
    localHost: t.ggrok.localHost,
    localPort: t.ggrok.localPort,
    target: t.config.addr.replace(/^http:\/\//, ""),
    startOnLaunch: false,
    status: t.ggrok.status,
    requests: t.ggrok.requests,
    localWarning: null,
    givenName: t.ggrok.status.state === "online" ? t.ggrok.status.name : t.name,
    basicAuthUser: null,
    allowIps: [],
    keepHost: false,
    localTls: t.config.addr.startsWith("https://"),
    upstreamInsecure: false,
    upstreamHttp2: false,
    hostHeader: null,
  }));
}

const tunnelQuery = (id: string) => `tunnel_name=${encodeURIComponent(id)}`;

/** `ggrok http` tunnels only: the inspector has no TCP connections to list. */
export const listConnections = async (_id: string): Promise<ConnectionRow[]> => [];

export async function listTraffic(id: string): Promise<Summary[]> {
  const { requests } = await request<{ requests: ApiRequest<Summary>[] }>(`/api/requests/http?${tunnelQuery(id)}`);
  return requests.map((r) => r.ggrok);
}

export async function getExchange(_id: string, exchange: number): Promise<Detail> {
  return (await request<ApiRequest<Detail>>(`/api/requests/http/${exchange}`)).ggrok;
}

export async function replay(id: string, exchange: number, edits: ReplayEdits | null = null): Promise<Summary> {
  const body: Record<string, unknown> = { id: String(exchange), tunnel_name: id };
  if (edits) body.edits = Object.fromEntries(Object.entries(edits).filter(([, v]) => v !== null));
  const r = await request<ApiRequest<Summary>>("/api/requests/http", {
    method: "POST",
    headers: { "content-type": "application/json" },
    body: JSON.stringify(body),
  });
  return r.ggrok;
}

export async function copyCurl(id: string, exchange: number): Promise<string> {
  const curl = (await getExchange(id, exchange)).curl ?? "";
  await navigator.clipboard.writeText(curl);
  return curl;
}

export async function exportHar(id: string, exchanges: number[]): Promise<string> {
  const resp = await fetch(`/api/requests/http?format=har&${tunnelQuery(id)}&ids=${exchanges.join(",")}`);
  if (!resp.ok) throw await failure(resp);
  const url = URL.createObjectURL(await resp.blob());
  const a = document.createElement("a");
  a.href = url;
  a.download = "ggrok.har";
  a.click();
  setTimeout(() => URL.revokeObjectURL(url), 0);
  return "ggrok.har";
}

export const expose = unavailable("Exposing a port");
export const updateTunnel = unavailable("Editing a tunnel");
export const deleteTunnel = unavailable("Deleting a tunnel");
export const startTunnel = unavailable("Starting a tunnel");
export const stopTunnel = unavailable("Stopping a tunnel");
export const listServers = async () => [];
export const saveServer = unavailable("Saving a server");
export const testServer = unavailable("Testing a server");
export const listListening = async () => [];
export const deleteServer = unavailable("Removing a server");
export const copyUrl = async (id: string): Promise<string> => {
  const t = (await listTunnels()).find((x) => x.id === id);
  const url = t?.status.state === "online" ? t.status.url : "";
  await navigator.clipboard.writeText(url);
  return url;
};
export const openUrl = async (id: string): Promise<string> => {
  const url = await copyUrl(id);
  window.open(url, "_blank", "noopener");
  return url;
};
export const backgroundSettings = unavailable("Background settings") as () => Promise<BackgroundSettings>;
export const saveBackgroundSettings = unavailable("Background settings");
export const openLogFolder = unavailable("Opening the log folder");

export const EVENT_TUNNEL = "tunnel-event";
export const EVENT_CHANGED = "tunnels-changed";

/** One EventSource for both kinds of listener; it reconnects by itself. */
let source: EventSource | null = null;
const tunnelListeners = new Set<(e: TunnelEvent) => void>();
const changedListeners = new Set<() => void>();

function connect(): void {
  if (source) return;
  source = new EventSource("/api/events");
  source.onmessage = (m) => {
    const e = JSON.parse(m.data as string) as TunnelEvent | { type: "lagged" };
    if (e.type === "lagged") for (const f of changedListeners) f();
    else for (const f of tunnelListeners) f(e);
  };
  // After a reconnect, rows may have been missed: reload the lists.
  source.onopen = () => {
    for (const f of changedListeners) f();
  };
}

export async function onTunnelEvent(f: (e: TunnelEvent) => void): Promise<UnlistenFn> {
  tunnelListeners.add(f);
  connect();
  return () => tunnelListeners.delete(f);
}

export async function onChanged(f: () => void): Promise<UnlistenFn> {
  changedListeners.add(f);
  connect();
  return () => changedListeners.delete(f);
}

// Type-checks that this seam offers everything api.ts does, with the same signatures.
export const seam: Omit<typeof Seam, "seam"> = {
  toApiError, appInfo, listTunnels, expose, updateTunnel, deleteTunnel, startTunnel, stopTunnel,
  listTraffic, listConnections, getExchange, replay, copyCurl, exportHar, listServers, saveServer, testServer,
  listListening, deleteServer, copyUrl, openUrl, backgroundSettings, saveBackgroundSettings,
  openLogFolder, EVENT_TUNNEL, EVENT_CHANGED,
  onTunnelEvent: onTunnelEvent as unknown as typeof Seam.onTunnelEvent,
  onChanged: onChanged as unknown as typeof Seam.onChanged,
};
