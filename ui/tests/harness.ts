// The real UI over a fake backend: Tauri's IPC is mocked with @tauri-apps/api/mocks, so
// Playwright can drive the built UI in plain Chromium. `window.__fake` lets tests push events.
import { emit } from "@tauri-apps/api/event";
import { mockIPC, mockWindows } from "@tauri-apps/api/mocks";
import type { ConnectionRow, Detail, ReplayEdits, ServerView, Status, TunnelInput, TunnelView } from "../src/types";

const PORT = 7070;
const servers: ServerView[] = [
  { id: "local", name: "This computer", url: `http://localhost:${PORT}`, builtin: true, tokenMasked: null, tokenStorage: null },
];
const tunnels: TunnelView[] = [];
const traffic = new Map<string, Detail[]>();
const connections = new Map<string, ConnectionRow[]>();
let nextConnection = 1;
const calls: { cmd: string; args: unknown }[] = [];
let nextId = 1;
let nextExchange = 100;

const online = (name: string): Status => ({ state: "online", url: `http://${name}.localhost:${PORT}`, name });
const reject = (kind: string, message: string, field: string | null = null) => Promise.reject({ kind, message, field });
const find = (id: string) => tunnels.find((t) => t.id === id);
const summary = (d: Detail) => ({
  id: d.id, startedMs: d.startedMs, method: d.method, path: d.path, status: d.status,
  durationMs: d.durationMs, size: d.size, error: d.error,
});

function addTraffic(tunnelId: string, partial: Partial<Detail>): number {
  const d: Detail = {
    id: 0, startedMs: Date.now(), method: "GET", path: "/", status: 200, durationMs: 3,
    size: 0, error: null, remoteAddr: "127.0.0.1", upgraded: false, requestHeaders: [], responseHeaders: [],
    requestBody: { kind: "empty", text: "", size: 0, captured: 0, truncated: false },
    responseBody: { kind: "empty", text: "", size: 0, captured: 0, truncated: false },
    frames: [], framesDropped: 0,
    ...partial,
  };
  d.id = nextExchange++;
  traffic.set(tunnelId, [d, ...(traffic.get(tunnelId) ?? [])]);
  const t = find(tunnelId);
  if (t) t.requests += 1;
  void emit("tunnel-event", { type: "traffic", tunnelId, exchange: summary(d) });
  if (t) void emit("tunnel-event", { type: "status", tunnelId, state: { status: t.status, requests: t.requests, localWarning: t.localWarning } });
  return d.id;
}

/** A visitor connection opens (`end` unset) or changes, as the backend's events tell it. */
function connection(tunnelId: string, partial: Partial<ConnectionRow>): number {
  const rows = connections.get(tunnelId) ?? [];
  const old = rows.find((r) => r.id === partial.id);
  const c: ConnectionRow = {
    id: nextConnection, from: "127.0.0.1:50000", openedMs: Date.now(), durationMs: 0, bytesUp: 0, bytesDown: 0,
    endKind: null, end: null, ...old, ...partial,
  };
  if (!old) {
    nextConnection++;
    rows.unshift(c);
    const t = find(tunnelId);
    if (t) t.connections += 1;
    if (t) void emit("tunnel-event", { type: "status", tunnelId, state: { status: t.status, requests: 0, connections: t.connections, localWarning: null } });
  } else rows[rows.indexOf(old)] = c;
  connections.set(tunnelId, rows);
  void emit("tunnel-event", { type: "connection", tunnelId, connection: c });
  return c.id;
}

function setStatus(tunnelId: string, status: Status, localWarning: string | null = null): void {
  const t = find(tunnelId);
  if (t) {
    t.status = status;
    t.localWarning = localWarning;
  }
  void emit("tunnel-event", { type: "status", tunnelId, state: { status, requests: t?.requests ?? 0, localWarning } });
}

function view(input: TunnelInput, id: string): TunnelView {
  const tcpPort = input.remotePort ?? 20000 + Number(id);
  const tcp = input.kind === "tcp";
  return {
    id, kind: input.kind, remotePort: input.remotePort, givenPort: tcp && input.remotePort === null ? tcpPort : null,
    connections: 0, serverId: input.serverId, serverName: "This computer", subdomain: input.subdomain,
    localHost: input.localHost ?? "localhost", localPort: input.localPort,
    target: `${input.localTls ? "https://" : ""}${input.localHost ?? "localhost"}:${input.localPort}`, startOnLaunch: input.startOnLaunch,
    status: tcp
      ? { state: "online", url: `tcp://localhost:${tcpPort}`, name: `tcp:${tcpPort}` }
      : online(input.subdomain ?? `rand${id}`),
    requests: 0, localWarning: null,
    givenName: input.subdomain || tcp ? null : `rand${id}`,
    basicAuthUser: input.basicAuth ? input.basicAuth.split(":")[0] : null,
    allowIps: input.allowIps, keepHost: input.keepHost,
    localTls: input.localTls, upstreamInsecure: input.upstreamInsecure, upstreamHttp2: input.upstreamHttp2,
    hostHeader: input.hostHeader || null,
  };
}

// Races the real app can meet. `?slow-servers`: the server list only answers once
// `__fake.releaseServers()` is called. `__fake.race.expose`: the next expose answers with a
// snapshot taken while the tunnel was still connecting, after the newer "online" event.
const race = { expose: false };
// What `list_listening` answers; tests change it to see the picker refresh.
const listening = [
  { port: 5173, loopback: true, pid: 4242, process: "node", exposed: false },
  { port: 8000, loopback: false, pid: 1200, process: "python3", exposed: false },
];
// `__fake.fail.start`: the next start_tunnel is refused with this message.
const fail = { start: null as string | null, replay: null as string | null };
const params = new URLSearchParams(location.search);
// `?no-listening`: nothing listens on this machine.
if (params.has("no-listening")) listening.length = 0;
let releaseServers: () => void = () => {};
const serversLoaded = params.has("slow-servers")
  ? new Promise<void>((r) => (releaseServers = r))
  : Promise.resolve();
// Settings > In the background; the built-in server asked for 7070 and got PORT.
const background = {
  startAtLogin: false,
  notifications: true,
  serverPort: 7070,
  listeningPort: PORT,
  requestedPort: PORT,
  logDir: "/home/user/.local/share/dev.ggrok.desktop/logs",
  captureLimit: 64 * 1024,
};
const tick = () => new Promise((r) => setTimeout(r, 50));

// Like the real IPC, every answer is a fresh copy (JSON), never a shared object.
const wire = (v: unknown) => (v === undefined ? null : JSON.parse(JSON.stringify(v)));

// Calls whose answer has not arrived yet; `settled` waits for them.
let inflight = 0;
mockIPC(
  async (cmd, raw) => {
    inflight++;
    try {
      return wire(await backend(cmd, raw));
    } finally {
      inflight--;
    }
  },
  { shouldMockEvents: true },
);

const frame = () => new Promise<void>((r) => requestAnimationFrame(() => r()));
/**
 * Resolves once every call has its answer and the renders those answers asked for are drawn
 * (the store renders at the next animation frame). Calls a test holds back (`?slow-servers`)
 * are waited for at most 2 s; such a test waits for its own mark.
 */
async function settled(): Promise<void> {
  const until = performance.now() + 2000;
  do {
    while (inflight > 0 && performance.now() < until) await frame();
    await frame();
    await frame();
  } while (inflight > 0 && performance.now() < until);
}

async function backend(cmd: string, raw: unknown): Promise<unknown> {
  {
    const args = (raw ?? {}) as Record<string, any>;
    calls.push({ cmd, args });
    switch (cmd) {
      case "app_info":
        return {
          builtinServerUrl: `http://localhost:${PORT}`,
          warnings: params.has("no-keyring")
            ? ["The system keyring is not available, so tokens are kept in memory for this run only."]
            : [],
          trafficCap: Number(params.get("cap") ?? 500),
          keyringAvailable: !params.has("no-keyring"),
        };
      case "list_servers":
        await serversLoaded;
        return servers;
      case "list_tunnels":
        return tunnels;
      case "expose": {
        const input = args.input as TunnelInput;
        if (input.localPort < 1 || input.localPort > 65535) return reject("invalid", "port must be between 1 and 65535", "port");
        if (input.subdomain === "taken") return reject("invalid", "that name is taken", "subdomain");
        if (input.allowIps.some((ip) => !/^[0-9.:a-f/]+$/i.test(ip))) return reject("invalid", "not an IP address or CIDR range", "allowIps");
        const t = view(input, String(nextId++));
        tunnels.push(t);
        if (race.expose) {
          race.expose = false;
          const stale = wire({ ...t, status: { state: "connecting" } });
          setStatus(t.id, t.status);
          await tick();
          return stale;
        }
        return t;
      }
      case "update_tunnel": {
        const i = tunnels.findIndex((t) => t.id === args.id);
        tunnels[i] = { ...view(args.input, args.id), requests: tunnels[i].requests };
        return tunnels[i];
      }
      case "delete_tunnel":
        tunnels.splice(tunnels.findIndex((t) => t.id === args.id), 1);
        return null;
      case "start_tunnel": {
        const t = find(args.id)!;
        if (fail.start) {
          const message = fail.start;
          fail.start = null;
          return reject("tunnel", message);
        }
        t.status = view(t as unknown as TunnelInput, t.id).status;
        return t;
      }
      case "stop_tunnel": {
        const t = find(args.id)!;
        t.status = { state: "stopped" };
        return t;
      }
      case "list_connections":
        return connections.get(args.id) ?? [];
      case "list_traffic":
        return (traffic.get(args.id) ?? []).map(summary);
      case "get_exchange":
        return (traffic.get(args.id) ?? []).find((d) => d.id === args.exchange) ?? reject("tunnel", "gone");
      case "replay": {
        if (fail.replay) return reject("tunnel", fail.replay);
        const orig = (traffic.get(args.id) ?? []).find((d) => d.id === args.exchange)!;
        const e = args.edits as ReplayEdits | null;
        const edited: Partial<Detail> = e
          ? {
              method: e.method ?? orig.method,
              path: e.path ?? orig.path,
              requestHeaders: e.headers ?? orig.requestHeaders,
              requestBody: e.body === null ? orig.requestBody
                : { kind: "text", text: e.body, size: e.body.length, captured: e.body.length, truncated: false },
            }
          : {};
        const id = addTraffic(args.id, { ...orig, ...edited, startedMs: Date.now() });
        return summary(traffic.get(args.id)!.find((d) => d.id === id)!);
      }
      case "copy_curl": {
        const d = (traffic.get(args.id) ?? []).find((x) => x.id === args.exchange)!;
        return `curl -X '${d.method}' 'http://localhost:3000${d.path}'`;
      }
      case "export_har":
        return `/home/user/Downloads/ggrok-${(args.exchanges as number[]).join("-")}.har`;
      case "save_server": {
        const input = args.input as { id: string | null; name: string; url: string; token: string | null };
        if (!/^https?:\/\/[a-z0-9.-]+(:\d+)?$/i.test(input.url.trim())) {
          return reject("invalid", "bad server URL: should be just a scheme and host", "url");
        }
        const v: ServerView = {
          id: input.id ?? `s${nextId++}`, name: input.name, url: input.url, builtin: false,
          tokenMasked: input.token ? "tok****" : null, tokenStorage: input.token ? "keyring" : null,
        };
        const i = servers.findIndex((x) => x.id === v.id);
        if (i >= 0) servers[i] = v;
        else servers.push(v);
        return v;
      }
      case "delete_server":
        servers.splice(servers.findIndex((x) => x.id === args.id), 1);
        return null;
      case "test_server": {
        const input = args.input as { url: string; token: string | null };
        if (input.url.includes(" ")) return reject("invalid", "bad server URL: invalid uri character", "url");
        if (input.url.includes("example.org")) {
          return { ok: false, outcome: "not_ggrok", message: `Something answers at ${input.url}, but it is not a ggrok server: GET /healthz gave 404 Not Found.` };
        }
        return input.token === "right"
          ? { ok: true, outcome: "connected", message: "A ggrok server; the token was accepted." }
          : { ok: false, outcome: "refused", message: "A ggrok server, but it refused the token: this server requires a token" };
      }
      case "list_listening": {
        const exposed = new Set(tunnels.map((t) => t.localPort));
        return listening.map((l) => ({ ...l, exposed: exposed.has(l.port) }));
      }
      case "background_settings":
        return background;
      case "save_background_settings": {
        const input = args.input as { startAtLogin: boolean; notifications: boolean; serverPort: number; captureLimit: number };
        if (!(input.serverPort >= 1 && input.serverPort <= 65535))
          return reject("invalid", "The port must be between 1 and 65535.", "serverPort");
        if (!(input.captureLimit >= 0 && input.captureLimit <= 16 << 20))
          return reject("invalid", "The body capture limit must be between 0 and 16384 KiB.", "captureLimit");
        Object.assign(background, input);
        return background;
      }
      case "open_log_folder":
        return null;
      case "open_url":
        if (find(args.id)?.kind === "tcp") return reject("system", "a TCP tunnel has no page to open");
        return (find(args.id)?.status as { url: string }).url;
      case "copy_url":
        return (find(args.id)?.status as { url: string }).url;
      default:
        return reject("system", `unknown command ${cmd}`);
    }
  }
}

mockWindows("main");
/** More frames of a WebSocket exchange, as they pass. */
function addFrames(tunnelId: string, exchange: number, frames: Detail["frames"]): void {
  const d = (traffic.get(tunnelId) ?? []).find((x) => x.id === exchange)!;
  d.frames.push(...frames);
}

(window as any).__fake = {
  calls, tunnels, servers, listening, addTraffic, addFrames, connection, setStatus, race, fail, settled,
  releaseServers: () => releaseServers(),
};
await import("../src/main");
(window as any).__ready = true;
