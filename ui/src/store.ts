// UI state and the event wiring. Views read `ui` and call `refresh*`/`render*`.
import * as api from "./api";
import type { AppInfo, Detail, ServerView, Status, Summary, TunnelView } from "./types";
import { pushRow } from "./util/format";

export const ui = {
  info: { builtinServerUrl: "", warnings: [], trafficCap: 500 } as AppInfo,
  tunnels: [] as TunnelView[],
  servers: [] as ServerView[],
  selected: null as string | null,
  traffic: new Map<string, Summary[]>(),
  filter: "",
  detail: null as Detail | null,
  errors: [] as string[],
};

type Listener = (what: "tunnels" | "traffic" | "detail" | "servers" | "errors") => void;
const listeners: Listener[] = [];
export function subscribe(l: Listener): void {
  listeners.push(l);
}
export function changed(what: Parameters<Listener>[0]): void {
  for (const l of listeners) l(what);
}

export function reportError(e: unknown): void {
  ui.errors = [api.toApiError(e).message, ...ui.errors].slice(0, 3);
  changed("errors");
}

// Status events and command answers reach the window by different paths, so an answer can
// arrive after an event that is newer than it. Each status event gets a number; a snapshot taken
// by the backend is brought up to the last event that arrived while it was on its way.
let statusEvents = 0;
const lastStatus = new Map<string, { seq: number; status: Status; requests: number }>();

function freshen(t: TunnelView, since: number): TunnelView {
  const live = lastStatus.get(t.id);
  if (live && live.seq > since) {
    t.status = live.status;
    t.requests = live.requests;
  }
  return t;
}

export async function refreshTunnels(): Promise<void> {
  const since = statusEvents;
  ui.tunnels = (await api.listTunnels()).map((t) => freshen(t, since));
  for (const [id, live] of lastStatus) {
    if (live.seq <= since && !ui.tunnels.some((t) => t.id === id)) lastStatus.delete(id);
  }
  if (ui.selected && !ui.tunnels.some((t) => t.id === ui.selected)) {
    ui.selected = null;
    ui.detail = null;
  }
  if (!ui.selected && ui.tunnels.length > 0) await select(ui.tunnels[0].id);
  changed("tunnels");
}

export async function refreshServers(): Promise<void> {
  ui.servers = await api.listServers();
  changed("servers");
}

export async function select(id: string): Promise<void> {
  ui.selected = id;
  ui.detail = null;
  ui.traffic.set(id, await api.listTraffic(id));
  changed("tunnels");
  changed("traffic");
  changed("detail");
}

export async function showDetail(exchange: number): Promise<void> {
  if (!ui.selected) return;
  ui.detail = await api.getExchange(ui.selected, exchange);
  changed("detail");
  changed("traffic");
}

/** Runs a command that answers with one tunnel and puts its answer in the list. */
export async function upsertTunnel(call: () => Promise<TunnelView>): Promise<TunnelView> {
  const since = statusEvents;
  const t = freshen(await call(), since);
  const i = ui.tunnels.findIndex((x) => x.id === t.id);
  if (i >= 0) ui.tunnels[i] = t;
  else ui.tunnels.push(t);
  changed("tunnels");
  return t;
}

export async function start(): Promise<void> {
  await api.onTunnelEvent((e) => {
    const t = ui.tunnels.find((x) => x.id === e.tunnelId);
    if (e.type === "status") {
      lastStatus.set(e.tunnelId, { seq: ++statusEvents, ...e.state });
      if (t) {
        t.status = e.state.status;
        t.requests = e.state.requests;
        changed("tunnels");
      }
    } else {
      const rows = ui.traffic.get(e.tunnelId);
      if (rows) {
        ui.traffic.set(e.tunnelId, pushRow(rows, e.exchange, ui.info.trafficCap));
        if (e.tunnelId === ui.selected) changed("traffic");
      }
    }
  });
  await api.onChanged(() => {
    refreshTunnels().catch(reportError);
    refreshServers().catch(reportError);
  });
  ui.info = await api.appInfo();
  changed("errors");
  await Promise.all([refreshServers(), refreshTunnels()]);
}
