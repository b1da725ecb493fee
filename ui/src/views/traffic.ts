// The traffic table of the selected tunnel and the detail pane with Replay; for a TCP tunnel,
// its connections instead (from, opened, duration, bytes each way, how it ended).
//
// The table is virtualised: rows have one fixed height and only those in view (plus a margin)
// are in the DOM, so thousands of rows scroll smoothly. Row elements are kept by exchange id
// between renders, so a new request does not rebuild (and deselect the text of) the others.
import { toApiError } from "../api";
import { closeDetail, copyCurl, exportHar, replay, reportError, setEditing, setFilter, showDetail, ui } from "../store";
import type { BodyView, ConnectionRow, Detail, ReplayEdits, Summary } from "../types";
import { h, replace } from "../util/dom";
import { filterRows, formatBytes, formatDuration, formatTime, tunnelLabel } from "../util/format";

/** Height of one row in px; matches `.trow` in style.css. */
export const ROW_HEIGHT = 28;
/** Rows rendered above and below the visible ones. */
const OVERSCAN = 10;
const COLUMNS = ["Time", "Method", "Path", "Status", "Duration", "Size"] as const;
const CONN_COLUMNS = ["Opened", "From", "Duration", "Up", "Down", "Ended"] as const;

export interface TrafficView {
  head: HTMLElement;
  filter: HTMLInputElement;
  table: HTMLElement;
  detail: HTMLElement;
  /** The table's rendered rows, kept between renders; `null` when the table shows a message. */
  rendered: TableState | null;
}

export function mountTraffic(root: HTMLElement): TrafficView {
  const filter = h("input", {
    type: "search",
    "aria-label": "Filter by method, path or status",
    placeholder: "Filter: method, path, status",
    "data-testid": "filter",
  });
  filter.addEventListener("input", () => setFilter(filter.value));
  const title = h("h2", { "data-testid": "traffic-title" }, "Traffic");
  const table = h("div", { class: "table-wrap", "data-testid": "traffic" });
  const detail = h("section", { class: "detail", "data-testid": "detail" });
  const view: TrafficView = { head: title, filter, table, detail, rendered: null };
  let queued = false;
  table.addEventListener("scroll", () => {
    if (queued) return;
    queued = true;
    requestAnimationFrame(() => {
      queued = false;
      renderTraffic(view);
    });
  });
  const harNote = h("span", { class: "muted", "data-testid": "har-note" });
  const har = h(
    "button",
    {
      "data-testid": "export-har",
      title: "Save the listed requests as a HAR file",
      onclick: () => {
        const rows = filterRows(ui.traffic.get(ui.selected ?? "") ?? [], ui.filter);
        harNote.textContent = "";
        exportHar(rows.map((r) => r.id))
          .then((where) => (harNote.textContent = where ? `Saved ${where}` : ""))
          .catch(reportError);
      },
    },
    "Export HAR",
  );
  replace(root, h("div", { class: "traffic-head" }, title, filter, har, harNote), table, detail);
  return view;
}

/** The pane's title names the tunnel it shows; the filter says what it matches. */
export function renderTrafficHead(view: TrafficView): void {
  const t = ui.tunnels.find((x) => x.id === ui.selected);
  const tcp = t?.kind === "tcp";
  view.head.textContent = t ? `${tcp ? "Connections" : "Traffic"} of ${tunnelLabel(t)}` : "Traffic";
  const hint = tcp ? "Filter: address, how it ended" : "Filter: method, path, status";
  if (view.filter.placeholder !== hint) {
    view.filter.placeholder = hint;
    view.filter.setAttribute("aria-label", hint);
  }
}

/** What the table holds between renders. */
interface TableState {
  /** Exchange ids are per tunnel: another tunnel's rows start over. */
  tunnel: string;
  body: HTMLElement;
  rows: Map<number, HTMLElement>;
}
export function renderTraffic(view: TrafficView): void {
  const table = view.table;
  const message = (text: string, testid?: string) => {
    view.rendered = null;
    table.dataset.rows = "0";
    replace(table, h("p", { class: "empty", "data-testid": testid }, text));
  };
  if (!ui.selected) return message("Select a tunnel to see its requests.");
  if (ui.tunnels.find((t) => t.id === ui.selected)?.kind === "tcp") {
    const conns = ui.connections.get(ui.selected) ?? [];
    const shown = filterConnections(conns, ui.filter);
    if (shown.length === 0) {
      return message(conns.length ? "No connection matches the filter." : "No connections yet.", "no-connections");
    }
    view.rendered = null;
    table.dataset.rows = String(shown.length);
    return replace(
      table,
      h("div", { class: "thead trow conn", role: "row" }, CONN_COLUMNS.map((c) => h("div", { class: "th", role: "columnheader" }, c))),
      h("div", { class: "cbody", role: "rowgroup" }, shown.map(connectionRow)),
    );
  }
  const all = ui.traffic.get(ui.selected) ?? [];
  const rows = filterRows(all, ui.filter);
  if (rows.length === 0) {
    return message(all.length ? "No request matches the filter." : "No requests yet.", "no-traffic");
  }
  let st = view.rendered;
  if (!st || st.tunnel !== ui.selected) {
    const body = h("div", { class: "tbody", role: "rowgroup" });
    st = { tunnel: ui.selected, body, rows: new Map() };
    view.rendered = st;
    replace(
      table,
      h("div", { class: "thead trow", role: "row" }, COLUMNS.map((c) => h("div", { class: "th", role: "columnheader" }, c))),
      body,
    );
  }
  table.dataset.rows = String(rows.length);
  st.body.style.height = `${rows.length * ROW_HEIGHT}px`;
  const visible = table.clientHeight || ROW_HEIGHT * 40;
  const first = Math.max(0, Math.floor(table.scrollTop / ROW_HEIGHT) - OVERSCAN);
  const last = Math.min(rows.length, Math.ceil((table.scrollTop + visible) / ROW_HEIGHT) + OVERSCAN);
  const marks = ui.replayed.get(ui.selected);
  const keep = new Map<number, HTMLElement>();
  for (let i = first; i < last; i++) {
    const r = rows[i];
    const el = st.rows.get(r.id) ?? row(r);
    el.style.transform = `translateY(${i * ROW_HEIGHT}px)`;
    el.className = `trow${ui.detail?.id === r.id ? " selected" : ""}${r.status && r.status >= 400 ? " bad" : ""}${
      marks?.has(r.id) ? " replayed" : ""
    }`;
    keep.set(r.id, el);
  }
  for (const [id, el] of st.rows) if (!keep.has(id)) el.remove();
  // DOM order follows the table's order (for screen readers and copying); rows already in place
  // are not moved, which would drop a text selection in them.
  let cursor = st.body.firstChild;
  for (const el of keep.values()) {
    if (el === cursor) cursor = cursor.nextSibling;
    else st.body.insertBefore(el, cursor);
  }
  st.rows = keep;
}

/** Rows matching every word of `q` in the visitor's address or how the connection ended. */
function filterConnections(rows: ConnectionRow[], q: string): ConnectionRow[] {
  const words = q.toLowerCase().split(/\s+/).filter(Boolean);
  if (words.length === 0) return rows;
  return rows.filter((r) => {
    const hay = `${r.from} ${r.end ?? "open"}`.toLowerCase();
    return words.every((w) => hay.includes(w));
  });
}

/** One connection; the visitor's address and the reason are untrusted text, set as text. */
function connectionRow(c: ConnectionRow): HTMLElement {
  const open = c.endKind === null;
  const bad = c.endKind !== null && c.endKind !== "closed";
  return h(
    "div",
    { class: `trow conn${open ? " open" : ""}${bad ? " bad" : ""}`, role: "row", "data-testid": "connection-row", "data-id": c.id },
    h("div", { class: "td", title: formatTime(c.openedMs) }, formatTime(c.openedMs).slice(0, 8), h("span", { class: "ms" }, formatTime(c.openedMs).slice(8))),
    h("div", { class: "td path", "data-testid": "conn-from", title: c.from }, c.from),
    h("div", { class: "td num" }, open ? "open" : formatDuration(c.durationMs)),
    // Bytes are counted when a connection ends: an open one shows none rather than a false 0.
    h("div", { class: "td num", "data-testid": "conn-up", title: open ? "counted when it ends" : "bytes from the visitor" }, open ? "—" : formatBytes(c.bytesUp)),
    h("div", { class: "td num", "data-testid": "conn-down", title: open ? "counted when it ends" : "bytes to the visitor" }, open ? "—" : formatBytes(c.bytesDown)),
    h("div", { class: "td end", "data-testid": "conn-end" }, open ? "open" : (c.end ?? "")),
  );
}

function row(r: Summary): HTMLElement {
  return h(
    "div",
    {
      role: "row",
      "data-testid": "traffic-row",
      "data-id": r.id,
      onclick: () => {
        showDetail(r.id).catch(reportError);
      },
    },
    // The milliseconds are a span of their own, so a narrow window can drop them.
    h("div", { class: "td", title: formatTime(r.startedMs) }, formatTime(r.startedMs).slice(0, 8), h("span", { class: "ms" }, formatTime(r.startedMs).slice(8))),
    h("div", { class: "td" }, r.method),
    h(
      "div",
      { class: "td path", "data-testid": "row-path", title: r.path },
      r.path,
    ),
    h("div", { class: "td", "data-testid": "row-status" }, r.status === null ? (r.error ?? "—") : String(r.status)),
    h("div", { class: "td num" }, formatDuration(r.durationMs)),
    h("div", { class: "td num" }, formatBytes(r.size)),
  );
}

export function renderDetail(root: HTMLElement): void {
  const d = ui.detail;
  if (!d) {
    replace(root);
    root.hidden = true;
    return;
  }
  root.hidden = false;
  const tunnelId = ui.selected;
  // A failed replay is said here, next to its button, not in a banner.
  const replayErr = h("div", { class: "field-error", role: "alert", "data-testid": "replay-error" });
  const replayBtn = h(
    "button",
    {
      class: "primary",
      "data-testid": "replay",
      onclick: () => {
        if (!tunnelId) return;
        replayBtn.disabled = true;
        replayErr.textContent = "";
        replay(tunnelId, d.id)
          .catch((e) => (replayErr.textContent = toApiError(e).message))
          .finally(() => (replayBtn.disabled = false));
      },
    },
    "Replay",
  );
  replace(
    root,
    h(
      "div",
      { class: "detail-head" },
      h("strong", { "data-testid": "detail-line" }, `${d.method} ${d.path}`),
      // The error, if any, has a line of its own below: here only its absence of a status.
      h("span", { class: "muted" }, ` → ${d.status ?? "no response"} in ${formatDuration(d.durationMs)}`),
      replayBtn,
      h("button", { "data-testid": "edit-replay", onclick: () => setEditing(ui.editing !== d.id) }, "Edit & replay"),
      h(
        "button",
        { "data-testid": "copy-curl", onclick: () => copyCurl(d.id).catch((e) => (replayErr.textContent = toApiError(e).message)) },
        "Copy as curl",
      ),
      h("button", { onclick: closeDetail }, "Close"),
      h("span", { class: "muted", "data-testid": "detail-note" }, ui.detailNote),
    ),
    replayErr,
    ui.editing === d.id && tunnelId ? editForm(d, tunnelId) : null,
    d.remoteAddr ? h("div", { class: "muted" }, `from ${d.remoteAddr}`) : null,
    d.error ? h("div", { class: "field-error" }, d.error) : null,
    h(
      "div",
      { class: "panes" },
      pane("Request", d.requestHeaders, d.requestBody, "req"),
      pane("Response", d.responseHeaders, d.responseBody, "res"),
    ),
    d.upgraded ? frames(d) : null,
  );
}

/** The frames of a WebSocket exchange: direction, time, kind, size and the first bytes. */
function frames(d: Detail): HTMLElement {
  const more = d.framesDropped > 0 ? ` (the first ${d.frames.length}; ${d.framesDropped} more not kept)` : "";
  return h(
    "div",
    { class: "frames" },
    h("h3", {}, `WebSocket frames${more}`),
    h(
      "table",
      { class: "headers", "data-testid": "frames" },
      h(
        "tbody",
        {},
        d.frames.map((f) =>
          h(
            "tr",
            { "data-testid": "frame" },
            h("td", { title: f.fromVisitor ? "from the visitor" : "from the local service" }, f.fromVisitor ? "→" : "←"),
            h("td", { class: "num" }, `+${formatDuration(f.atMs)}`),
            h("td", {}, f.kind),
            h("td", { class: "num" }, formatBytes(f.size)),
            h("td", { class: "frame-data" }, f.truncated ? `${f.text}…` : f.text),
          ),
        ),
      ),
    ),
  );
}

function pane(title: string, headers: Detail["requestHeaders"], body: BodyView, id: string): HTMLElement {
  return h(
    "div",
    { class: "pane" },
    h("h3", {}, title),
    h(
      "table",
      { class: "headers", "data-testid": `${id}-headers` },
      h("tbody", {}, headers.map(([k, v]) => h("tr", {}, h("th", {}, k), h("td", {}, v)))),
    ),
    h("div", { class: "muted", "data-testid": `${id}-body-size` }, bodyLine(body)),
    body.kind === "empty" ? null : h("pre", { class: `body ${body.kind}`, "data-testid": `${id}-body` }, body.text),
  );
}

/** "Body: json, 1.2 KB", or when the capture limit cut it, "Body: text, 1.0 MB of 3.2 MB shown". */
export function bodyLine(body: BodyView): string {
  const shown = body.truncated ? `${formatBytes(body.captured)} of ${formatBytes(body.size)} shown` : formatBytes(body.size);
  return `Body: ${body.kind}, ${shown}`;
}

/** "name: value" lines back into pairs; a line without a colon is an error. */
export function parseHeaderLines(text: string): [string, string][] | { error: string } {
  const out: [string, string][] = [];
  for (const line of text.split("\n")) {
    if (line.trim() === "") continue;
    const i = line.indexOf(":");
    if (i <= 0) return { error: `Not a header ("name: value"): ${line}` };
    out.push([line.slice(0, i).trim(), line.slice(i + 1).trim()]);
  }
  return out;
}

/** The "Edit & replay" form: method, path, headers and body of the captured request. */
function editForm(d: Detail, tunnelId: string): HTMLElement {
  const method = h("input", { "data-testid": "edit-method", "aria-label": "Method", value: d.method });
  const path = h("input", { "data-testid": "edit-path", "aria-label": "Path", value: d.path });
  const headers = h("textarea", { "data-testid": "edit-headers", "aria-label": "Headers", rows: 6 });
  headers.value = d.requestHeaders.map(([k, v]) => `${k}: ${v}`).join("\n");
  const body = h("textarea", { "data-testid": "edit-body", "aria-label": "Body", rows: 6 });
  // The body as captured when it is text; JSON is shown pretty but sent as edited.
  const textBody = d.requestBody.kind === "text" || d.requestBody.kind === "json" || d.requestBody.kind === "empty";
  body.value = textBody ? d.requestBody.text : "";
  const err = h("div", { class: "field-error", role: "alert", "data-testid": "edit-error" });
  const send = h("button", { class: "primary", type: "submit", "data-testid": "edit-send" }, "Send");
  const form = h(
    "form",
    { class: "edit-replay", "data-testid": "edit-form" },
    h("label", {}, "Method ", method),
    h("label", {}, "Path ", path),
    h("label", {}, "Headers (one \"name: value\" a line)", headers),
    h(
      "label",
      {},
      textBody ? "Body" : "Body (the captured one is binary: leave empty to send it as captured)",
      body,
    ),
    err,
    h("div", { class: "actions" }, send, h("button", { type: "button", onclick: () => setEditing(false) }, "Cancel")),
  );
  form.addEventListener("submit", (ev) => {
    ev.preventDefault();
    const parsed = parseHeaderLines(headers.value);
    if (!Array.isArray(parsed)) {
      err.textContent = parsed.error;
      return;
    }
    const edits: ReplayEdits = {
      method: method.value.trim(),
      path: path.value.trim(),
      headers: parsed,
      body: textBody || body.value !== "" ? body.value : null,
    };
    send.disabled = true;
    err.textContent = "";
    replay(tunnelId, d.id, edits)
      .catch((e) => (err.textContent = toApiError(e).message))
      .finally(() => (send.disabled = false));
  });
  return form;
}
