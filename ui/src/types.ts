// Wire types: mirror src-tauri/src/{state,tunnels,error}.rs (serde camelCase).

export type Status =
  | { state: "connecting" }
  | { state: "online"; url: string; name: string }
  | { state: "reconnecting"; attempt: number; reason: string }
  | { state: "failed"; kind: string; message: string }
  | { state: "stopped" };

/** What a tunnel forwards. */
export type Kind = "http" | "tcp";

export interface TunnelState {
  status: Status;
  requests: number;
  /** Visitor connections since the last start (TCP tunnels). */
  connections: number;
  /** Set while nothing answers on the local port. */
  localWarning: string | null;
}

export interface TunnelView {
  id: string;
  kind: Kind;
  /** A TCP tunnel's public port as asked for; null lets the server pick. */
  remotePort: number | null;
  /** The port the server last gave a TCP tunnel without a fixed one. */
  givenPort: number | null;
  serverId: string;
  serverName: string;
  subdomain: string | null;
  localHost: string;
  localPort: number;
  /** The local side in a line: `host:port`, or `https://host:port` when TLS is spoken to it. */
  target: string;
  startOnLaunch: boolean;
  status: Status;
  requests: number;
  connections: number;
  localWarning: string | null;
  /** The name the server last gave a tunnel without a fixed subdomain. */
  givenName: string | null;
  /** The Basic-auth user visitors log in as; the password never reaches the UI. */
  basicAuthUser: string | null;
  allowIps: string[];
  keepHost: boolean;
  /** The local service speaks HTTPS. */
  localTls: boolean;
  /** With localTls, its certificate is accepted whoever signed it. */
  upstreamInsecure: boolean;
  /** HTTP/2 to the local service (gRPC). */
  upstreamHttp2: boolean;
  /** A Host value the local service gets; null rewrites it to the local host:port. */
  hostHeader: string | null;
}

export interface ServerView {
  id: string;
  name: string;
  url: string;
  builtin: boolean;
  tokenMasked: string | null;
  tokenStorage: "keyring" | "memory" | null;
}

export interface AppInfo {
  builtinServerUrl: string;
  warnings: string[];
  trafficCap: number;
  /** Whether tokens go to the system keyring (else memory, this run only). */
  keyringAvailable: boolean;
}

/** What "Test connection" found. */
/** What "Test connection" found: how far it got (GET /healthz, then a session with the token). */
export interface ServerCheck {
  ok: boolean;
  outcome: "unreachable" | "not_ggrok" | "refused" | "connected";
  message: string;
}

export interface TunnelInput {
  kind: Kind;
  /** A TCP tunnel's public port; null lets the server pick one. */
  remotePort: number | null;
  serverId: string;
  subdomain: string | null;
  localHost: string | null;
  localPort: number;
  startOnLaunch: boolean;
  /** "user:password"; null keeps the current one, "" removes it. */
  basicAuth: string | null;
  allowIps: string[];
  keepHost: boolean;
  localTls: boolean;
  upstreamInsecure: boolean;
  upstreamHttp2: boolean;
  /** A Host value; null or "" rewrites it to the local host:port. */
  hostHeader: string | null;
}

export interface ServerInput {
  id: string | null;
  name: string;
  url: string;
  /** null keeps the current token, "" removes it. */
  token: string | null;
}

export interface Summary {
  id: number;
  startedMs: number;
  method: string;
  path: string;
  status: number | null;
  durationMs: number;
  size: number;
  error: string | null;
}

export interface BodyView {
  kind: "empty" | "json" | "text" | "binary";
  text: string;
  /** Bytes in the whole body. */
  size: number;
  /** Bytes captured (the capture limit cuts bodies): "captured of size shown". */
  captured: number;
  truncated: boolean;
}

/** Changes to a request before it is replayed; null keeps what was captured. */
export interface ReplayEdits {
  method: string | null;
  path: string | null;
  /** Every header, in order (replacing the captured ones). */
  headers: [string, string][] | null;
  body: string | null;
}

export interface Detail extends Summary {
  remoteAddr: string | null;
  upgraded: boolean;
  requestHeaders: [string, string][];
  responseHeaders: [string, string][];
  requestBody: BodyView;
  responseBody: BodyView;
  /** WebSocket frames (an upgraded exchange), oldest first, capped per connection. */
  frames: FrameView[];
  /** Frames past the cap, counted only. */
  framesDropped: number;
  /** The request as a curl command (the web inspector's API sends it; the app builds it on copy). */
  curl?: string;
}

/** One WebSocket frame: `text` is the first bytes, as text or hex. */
export interface FrameView {
  fromVisitor: boolean;
  atMs: number;
  kind: "text" | "binary" | "continuation" | "close" | "ping" | "pong" | "other";
  size: number;
  text: string;
  truncated: boolean;
}

/** One visitor connection of a TCP tunnel (see ConnectionRow in src-tauri/src/tunnels.rs). */
export interface ConnectionRow {
  id: number;
  /** The visitor's ip:port as the server reported it. Untrusted text. */
  from: string;
  openedMs: number;
  /** 0 while open. */
  durationMs: number;
  bytesUp: number;
  bytesDown: number;
  /** Null while open. */
  endKind: "closed" | "unreachable" | "visitor_reset" | "local_reset" | "cut" | null;
  /** How it ended, for a human; null while open. */
  end: string | null;
}

export type TunnelEvent =
  | { type: "status"; tunnelId: string; state: TunnelState }
  | { type: "traffic"; tunnelId: string; exchange: Summary }
  | { type: "connection"; tunnelId: string; connection: ConnectionRow };

/** What every command rejects with. */
export interface ApiError {
  kind: "invalid" | "notFound" | "inUse" | "store" | "tunnel" | "system";
  message: string;
  field: string | null;
}

/** A TCP port a local service listens on (see src-tauri/src/listening.rs). */
export interface ListeningPort {
  port: number;
  loopback: boolean;
  /** Null when the process belongs to another user: the port is shown, its owner is not. */
  pid: number | null;
  process: string | null;
  exposed: boolean;
}

/** Settings > "In the background" (start at login, notifications, server port, logs). */
export interface BackgroundSettings {
  startAtLogin: boolean;
  notifications: boolean;
  /** The port the built-in server asks for at start. */
  serverPort: number;
  /** The port it listens on in this run (differs when serverPort was taken). */
  listeningPort: number;
  /** The port asked for at this run's start; it was taken when it differs from listeningPort. */
  requestedPort: number;
  logDir: string;
  /** Bytes of each body the inspector keeps. */
  captureLimit: number;
}

export interface BackgroundInput {
  startAtLogin: boolean;
  notifications: boolean;
  serverPort: number;
  /** Bytes; absent keeps the current limit. */
  captureLimit?: number;
}
