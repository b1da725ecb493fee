// The one owner of UI state and the event wiring. Views read `ui`, change it only through the
// functions here, and re-render when `subscribe` tells them what changed. Notifications are
// batched per animation frame, so a burst of requests costs one render, not one per event.
import * as api from "./api";
import type {
  AppInfo,
  BackgroundInput,
  BackgroundSettings,
  ConnectionRow,
  Detail,
  ListeningPort,
  ReplayEdits,
  ServerView,
  Status,
  Summary,
  TunnelView,
} from "./types";
import { pushConnection, pushRow } from "./util/format";

/** A banner: an error that has no field or card to sit next to. */
export interface Banner {
  id: number;
  message: string;
}

export const ui = {
  info: { builtinServerUrl: "", warnings: [], trafficCap: 500, keyringAvailable: true } as AppInfo,
  tunnels: [] as TunnelView[],
  servers: [] as ServerView[],
  selected: null as string | null,
  traffic: new Map<string, Summary[]>(),
  /** A TCP tunnel's connections, newest first (its traffic view). */
  connections: new Map<string, ConnectionRow[]>(),
  filter: "",
  detail: null as Detail | null,
  /** The exchange whose "Edit & replay" form is open. */
  editing: null as number | null,
  /** What the last copy or export of the detail pane did ("Copied", "Saved to ..."). */
  detailNote: "",
  /** Errors with nowhere better to go; each can be closed. */
  errors: [] as Banner[],
  /** Warnings from the backend the user closed (by text), so a refresh does not bring them back. */
  dismissed: new Set<string>(),
  /** The last failed action of each tunnel card, shown on that card until its next success. */
  cardErrors: new Map<string, string>(),
  /** Ids of tunnels whose Delete waits for a confirm. */
  confirming: new Set<string>(),
  /** Exchange ids (per tunnel) that are replays, marked in the table. */
  replayed: new Map<string, Set<number>>(),
  /** The server whose form is open in Settings, and the one whose Remove waits for a confirm. */
  editingServer: null as string | null,
  confirmingServer: null as string | null,
  /** Ports listening on this machine, while a picker shows them. */
  listening: [] as ListeningPort[],
  /** Which screen the main area shows. */
  screen: "tunnels" as "tunnels" | "settings",
  /** The Expose form while it is open (see `openExpose`). */
  exposeForm: null as ExposeForm | null,
  /** The tunnel whose QR code is shown, if any. */
  qrFor: null as string | null,
  /** Settings > "In the background", once loaded. */
  background: null as BackgroundSettings | null,
};

/** The open Expose form: a new tunnel, or `editing` a saved one. */
export interface ExposeForm {
  /** Counts openings, so a view can tell a newly opened form from the one it built. */
  serial: number;
  editing: TunnelView | null;
  /** The tunnel this form started; the form then shows its URL and cannot start another. */
  started: string | null;
}

export type Topic =
  | "tunnels"
  | "traffic"
  | "detail"
  | "servers"
  | "errors"
  | "screen"
  | "listening"
  | "expose"
  | "background";
type Listener = (what: Set<Topic>) => void;
const listeners: Listener[] = [];
const pending = new Set<Topic>();
let scheduled = false;

export function subscribe(l: Listener): void {
  listeners.push(l);
}

/** Marks `what` as changed; listeners hear about it once, at the next animation frame. */
export function changed(...what: Topic[]): void {
  for (const w of what) pending.add(w);
  if (scheduled) return;
  scheduled = true;
  requestAnimationFrame(flush);
}

function flush(): void {
  scheduled = false;
  const what = new Set(pending);
  pending.clear();
  if (what.has("detail")) watchFrames();
  for (const l of listeners) l(what);
}

/** While a WebSocket exchange is shown, its frames are read again this often. */
const FRAMES_REFRESH_MS = 1000;
let framesTimer: ReturnType<typeof setInterval> | null = null;

/** Keeps the shown WebSocket exchange's frames live: read again each second while it is open. */
function watchFrames(): void {
  const live = ui.detail?.upgraded ?? false;
  if (live && !framesTimer) {
    framesTimer = setInterval(() => refreshFrames().catch(() => {}), FRAMES_REFRESH_MS);
  } else if (!live && framesTimer) {
    clearInterval(framesTimer);
    framesTimer = null;
  }
}

/** Shows frames that passed since the detail was read; the rest of it stays as it is. */
async function refreshFrames(): Promise<void> {
  const [d, tunnel] = [ui.detail, ui.selected];
  if (!d?.upgraded || !tunnel) return;
  const fresh = await api.getExchange(tunnel, d.id);
  if (ui.detail !== d) return;
  if (fresh.frames.length !== d.frames.length || fresh.framesDropped !== d.framesDropped) {
    ui.detail = { ...d, frames: fresh.frames, framesDropped: fresh.framesDropped };
    changed("detail");
  }
}

let nextBanner = 1;
export function reportError(e: unknown): void {
  const message = api.toApiError(e).message;
  // The same message twice is one banner.
  if (!ui.errors.some((b) => b.message === message)) {
    ui.errors = [{ id: nextBanner++, message }, ...ui.errors].slice(0, 3);
  }
  changed("errors");
}

export function dismissError(id: number): void {
  ui.errors = ui.errors.filter((b) => b.id !== id);
  changed("errors");
}

export function dismissWarning(text: string): void {
  ui.dismissed.add(text);
  changed("errors");
}

/** Runs a card's action; its failure is shown on the card, its success clears that. */
export async function cardAction(id: string, f: () => Promise<unknown>): Promise<void> {
  try {
    await f();
    if (ui.cardErrors.delete(id)) changed("tunnels");
  } catch (e) {
    ui.cardErrors.set(id, api.toApiError(e).message);
    changed("tunnels");
  }
}

export function setConfirming(id: string, on: boolean): void {
  if (on) ui.confirming.add(id);
  else ui.confirming.delete(id);
  changed("tunnels");
}

export function setScreen(screen: typeof ui.screen): void {
  ui.screen = screen;
  changed("screen");
}

export function setServerForm(patch: { editingServer?: string | null; confirmingServer?: string | null }): void {
  Object.assign(ui, patch);
  changed("servers");
}

let exposeSerial = 0;

/** Opens the Expose form, empty or for editing a saved tunnel; its port picker refreshes while open. */
export function openExpose(editing?: TunnelView): void {
  ui.exposeForm = { serial: ++exposeSerial, editing: editing ?? null, started: null };
  watchListening("expose-form", !editing);
  changed("expose");
}

export function closeExpose(): void {
  if (!ui.exposeForm) return;
  // A QR code opened in the form's result goes with the form.
  if (ui.exposeForm.started !== null && ui.qrFor === ui.exposeForm.started) ui.qrFor = null;
  ui.exposeForm = null;
  watchListening("expose-form", false);
  changed("expose", "tunnels");
}

/** The open form started tunnel `id`: it now shows that tunnel's URL and no picker. */
export function exposeStarted(id: string): void {
  if (!ui.exposeForm) return;
  ui.exposeForm.started = id;
  watchListening("expose-form", false);
  changed("expose");
}

/** Shows the QR code of tunnel `id`'s URL, or hides it if it shows. */
export function toggleQr(id: string): void {
  ui.qrFor = ui.qrFor === id ? null : id;
  changed("tunnels", "expose");
}

export async function loadBackground(): Promise<void> {
  ui.background = await api.backgroundSettings();
  changed("background");
}

export async function saveBackground(input: BackgroundInput): Promise<void> {
  ui.background = await api.saveBackgroundSettings(input);
  changed("background");
}

export function setFilter(q: string): void {
  ui.filter = q;
  changed("traffic");
}

export function closeDetail(): void {
  ui.detail = null;
  ui.editing = null;
  changed("detail", "traffic");
}

/** Opens or closes the "Edit & replay" form of the shown exchange. */
export function setEditing(on: boolean): void {
  ui.editing = on && ui.detail ? ui.detail.id : null;
  changed("detail");
}

export async function copyCurl(exchange: number): Promise<void> {
  if (!ui.selected) return;
  await api.copyCurl(ui.selected, exchange);
  ui.detailNote = "Copied as curl";
  changed("detail");
}

/** Exports the rows the table lists (after the filter) as HAR. */
export async function exportHar(ids: number[]): Promise<string> {
  if (!ui.selected) return "";
  return api.exportHar(ui.selected, ids);
}

// Status events and command answers reach the window by different paths, so an answer can
// arrive after an event that is newer than it. Each status event gets a number; a snapshot taken
// by the backend is brought up to the last event that arrived while it was on its way.
let statusEvents = 0;
type Live = { seq: number; status: Status; requests: number; connections: number; localWarning: string | null };
const lastStatus = new Map<string, Live>();

function freshen(t: TunnelView, since: number): TunnelView {
  const live = lastStatus.get(t.id);
  if (live && live.seq > since) {
    t.status = live.status;
    t.requests = live.requests;
    t.connections = live.connections;
    t.localWarning = live.localWarning;
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

/** How often the port list is read again while a picker shows it. */
const LISTENING_REFRESH_MS = 2000;
const listeningWanted = new Set<string>();
let listeningTimer: ReturnType<typeof setInterval> | null = null;

async function refreshListening(): Promise<void> {
  const next = await api.listListening();
  if (JSON.stringify(next) !== JSON.stringify(ui.listening)) {
    ui.listening = next;
    changed("listening");
  }
}

/** Keeps `ui.listening` fresh while any of the pickers (`who`) is shown. */
export function watchListening(who: string, on: boolean): void {
  const had = listeningWanted.size > 0;
  if (on) listeningWanted.add(who);
  else listeningWanted.delete(who);
  if (!had && listeningWanted.size > 0) {
    refreshListening().catch(reportError);
    listeningTimer = setInterval(() => refreshListening().catch(() => {}), LISTENING_REFRESH_MS);
  } else if (had && listeningWanted.size === 0 && listeningTimer) {
    clearInterval(listeningTimer);
    listeningTimer = null;
  }
}

/** The empty state's one-click Expose: a tunnel on the built-in server, its URL copied. */
export async function exposeQuickly(port: number): Promise<void> {
  const t = await upsertTunnel(() =>
    api.expose({
      kind: "http", remotePort: null, serverId: "local", subdomain: null, localHost: null, localPort: port, startOnLaunch: false,
      basicAuth: "", allowIps: [], keepHost: false, localTls: false, upstreamInsecure: false, upstreamHttp2: false,
      hostHeader: null,
    }),
  );
  await select(t.id);
  if (t.status.state === "online") await api.copyUrl(t.id);
}

export async function refreshServers(): Promise<void> {
  ui.servers = await api.listServers();
  changed("servers");
}

export async function refreshInfo(): Promise<void> {
  ui.info = await api.appInfo();
  changed("errors", "servers");
}

export async function select(id: string): Promise<void> {
  if (ui.selected !== id) ui.detail = null;
  ui.selected = id;
  if (ui.tunnels.find((t) => t.id === id)?.kind === "tcp") ui.connections.set(id, await api.listConnections(id));
  else ui.traffic.set(id, await api.listTraffic(id));
  changed("tunnels", "traffic", "detail");
}

export async function showDetail(exchange: number): Promise<void> {
  if (!ui.selected) return;
  ui.detail = await api.getExchange(ui.selected, exchange);
  ui.detailNote = "";
  if (ui.editing !== exchange) ui.editing = null;
  changed("detail", "traffic");
}

export async function replay(tunnelId: string, exchange: number, edits: ReplayEdits | null = null): Promise<void> {
  const row = await api.replay(tunnelId, exchange, edits);
  ui.editing = null;
  const marks = ui.replayed.get(tunnelId) ?? new Set<number>();
  marks.add(row.id);
  ui.replayed.set(tunnelId, marks);
  await showDetail(row.id);
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

export async function removeTunnel(id: string): Promise<void> {
  await api.deleteTunnel(id);
  ui.confirming.delete(id);
  ui.cardErrors.delete(id);
  if (ui.qrFor === id) ui.qrFor = null;
  ui.tunnels = ui.tunnels.filter((x) => x.id !== id);
  ui.traffic.delete(id);
  ui.connections.delete(id);
  if (ui.selected === id) {
    ui.selected = null;
    ui.detail = null;
    if (ui.tunnels.length > 0) await select(ui.tunnels[0].id);
  }
  changed("tunnels", "traffic", "detail");
}

export async function start(): Promise<void> {
  await api.onTunnelEvent((e) => {
    const t = ui.tunnels.find((x) => x.id === e.tunnelId);
    if (e.type === "status") {
      const localWarning = e.state.localWarning ?? null;
      const connections = e.state.connections ?? 0;
      lastStatus.set(e.tunnelId, { seq: ++statusEvents, ...e.state, connections, localWarning });
      if (t) {
        t.status = e.state.status;
        t.requests = e.state.requests;
        t.connections = connections;
        t.localWarning = localWarning;
        changed("tunnels");
      }
    } else if (e.type === "connection") {
      const rows = ui.connections.get(e.tunnelId);
      if (rows) {
        ui.connections.set(e.tunnelId, pushConnection(rows, e.connection, ui.info.trafficCap));
        if (e.tunnelId === ui.selected) changed("traffic");
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
    refreshInfo().catch(reportError);
  });
  await refreshInfo();
  await Promise.all([refreshServers(), refreshTunnels()]);
}
