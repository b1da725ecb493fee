// Pure helpers: validation, formatting, filtering. Tested with Vitest.
import type { ConnectionRow, Status, Summary, TunnelView } from "../types";

const LABEL = /^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$/;

/** Port as typed → number or a message. */
export function validatePort(raw: string): { port: number } | { error: string } {
  const s = raw.trim();
  if (s === "") return { error: "Enter the local port, 1–65535." };
  if (!/^\d+$/.test(s)) return { error: "The port is a whole number, 1–65535." };
  const port = Number(s);
  if (port < 1 || port > 65535) return { error: "The port must be between 1 and 65535." };
  return { port };
}

/**
 * Optional subdomain → name (or null) or a message. The rule of `validate_name` in
 * tunnel/src/protocol.rs, which the backend and the CLI apply: checked here only to answer while
 * typing. Uppercase is refused with the lowercase spelling, never changed silently.
 */
export function validateSubdomain(raw: string): { name: string | null } | { error: string } {
  const s = raw.trim();
  if (s === "") return { name: null };
  if (s.length > 63) return { error: "At most 63 characters." };
  if (/[A-Z]/.test(s) && /^[a-zA-Z0-9-]+$/.test(s)) return { error: `Use lowercase: ${s.toLowerCase()}` };
  if (!/^[a-z0-9-]+$/.test(s)) return { error: "Use only a–z, 0–9 and hyphens." };
  if (s.startsWith("-") || s.endsWith("-")) return { error: "It cannot start or end with a hyphen." };
  if (!LABEL.test(s)) return { error: "Not a valid DNS label." };
  return { name: s };
}

export function statusLabel(s: Status): string {
  switch (s.state) {
    case "stopped":
      return "offline";
    case "connecting":
      return "connecting…";
    case "online":
      return "online";
    case "reconnecting":
      return `reconnecting (attempt ${s.attempt}): ${s.reason}`;
    case "failed":
      return `error: ${s.message}`;
  }
}

/** A card's and the traffic pane's name for a tunnel: its name, or `tcp:PORT` for a TCP one. */
export function tunnelLabel(t: TunnelView): string {
  if (t.kind === "tcp") {
    if (t.status.state === "online") return t.status.name;
    const port = t.remotePort ?? t.givenPort;
    return port === null ? "port given on start" : `tcp:${port}`;
  }
  if (t.subdomain) return t.subdomain;
  if (t.status.state === "online") return t.status.name;
  return t.givenName ?? "name given on start";
}

export function isRunning(s: Status): boolean {
  return s.state !== "stopped";
}

export function formatBytes(n: number): string {
  if (n < 1024) return `${n} B`;
  if (n < 1024 * 1024) return `${(n / 1024).toFixed(1)} KB`;
  return `${(n / 1024 / 1024).toFixed(1)} MB`;
}

export function formatDuration(ms: number): string {
  return ms < 1000 ? `${ms} ms` : `${(ms / 1000).toFixed(2)} s`;
}

export function formatTime(ms: number): string {
  const d = new Date(ms);
  const p = (n: number, w = 2) => String(n).padStart(w, "0");
  return `${p(d.getHours())}:${p(d.getMinutes())}:${p(d.getSeconds())}.${p(d.getMilliseconds(), 3)}`;
}

/** Rows matching every word of `q` in method, path or status. */
export function filterRows(rows: Summary[], q: string): Summary[] {
  const words = q.toLowerCase().split(/\s+/).filter(Boolean);
  if (words.length === 0) return rows;
  return rows.filter((r) => {
    const hay = `${r.method} ${r.path} ${r.status ?? ""}`.toLowerCase();
    return words.every((w) => hay.includes(w));
  });
}

/** Adds a new row on top, dropping the oldest beyond `cap`; replaces a row with the same id. */
export function pushRow(rows: Summary[], row: Summary, cap: number): Summary[] {
  const out = [row, ...rows.filter((r) => r.id !== row.id)];
  return out.length > cap ? out.slice(0, cap) : out;
}

/** Adds or updates a connection by id: an opening goes on top, its end replaces it in place. */
export function pushConnection(rows: ConnectionRow[], row: ConnectionRow, cap: number): ConnectionRow[] {
  const i = rows.findIndex((r) => r.id === row.id);
  if (i >= 0) {
    const out = rows.slice();
    out[i] = row;
    return out;
  }
  const out = [row, ...rows];
  return out.length > cap ? out.slice(0, cap) : out;
}

/** Optional public port as typed → number, null (any free port) or a message. */
export function validateRemotePort(raw: string): { port: number | null } | { error: string } {
  return raw.trim() === "" ? { port: null } : validatePort(raw);
}
