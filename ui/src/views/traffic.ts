// The traffic table of the selected tunnel and the detail pane with Replay.
import * as api from "../api";
import { changed, reportError, showDetail, ui } from "../store";
import type { BodyView, Detail } from "../types";
import { h, replace } from "../util/dom";
import { filterRows, formatBytes, formatDuration, formatTime } from "../util/format";

export function mountTraffic(root: HTMLElement): { table: HTMLElement; detail: HTMLElement } {
  const filter = h("input", {
    type: "search",
    placeholder: "Filter: method, path, status",
    "data-testid": "filter",
  });
  filter.addEventListener("input", () => {
    ui.filter = filter.value;
    changed("traffic");
  });
  const table = h("div", { class: "table-wrap", "data-testid": "traffic" });
  const detail = h("section", { class: "detail", "data-testid": "detail" });
  replace(root, h("div", { class: "traffic-head" }, h("h2", {}, "Traffic"), filter), table, detail);
  return { table, detail };
}

export function renderTraffic(table: HTMLElement): void {
  if (!ui.selected) {
    replace(table, h("p", { class: "empty" }, "Select a tunnel to see its requests."));
    return;
  }
  const all = ui.traffic.get(ui.selected) ?? [];
  const rows = filterRows(all, ui.filter);
  if (rows.length === 0) {
    replace(
      table,
      h("p", { class: "empty", "data-testid": "no-traffic" }, all.length ? "No request matches the filter." : "No requests yet."),
    );
    return;
  }
  replace(
    table,
    h(
      "table",
      {},
      h(
        "thead",
        {},
        h("tr", {}, ["Time", "Method", "Path", "Status", "Duration", "Size"].map((c) => h("th", {}, c))),
      ),
      h(
        "tbody",
        {},
        rows.map((r) =>
          h(
            "tr",
            {
              "data-testid": "traffic-row",
              "data-id": r.id,
              class: `${ui.detail?.id === r.id ? "selected " : ""}${r.status && r.status >= 400 ? "bad" : ""}`,
              onclick: () => {
                showDetail(r.id).catch(reportError);
              },
            },
            h("td", {}, formatTime(r.startedMs)),
            h("td", {}, r.method),
            h("td", { class: "path", "data-testid": "row-path", title: r.path }, r.path),
            h("td", { "data-testid": "row-status" }, r.status === null ? r.error ?? "—" : String(r.status)),
            h("td", {}, formatDuration(r.durationMs)),
            h("td", {}, formatBytes(r.size)),
          ),
        ),
      ),
    ),
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
  const replayBtn = h(
    "button",
    {
      class: "primary",
      "data-testid": "replay",
      onclick: () => {
        if (!tunnelId) return;
        replayBtn.disabled = true;
        api
          .replay(tunnelId, d.id)
          .then((s) => showDetail(s.id))
          .catch(reportError)
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
      h("span", { class: "muted" }, ` → ${d.status ?? d.error ?? "no response"} in ${formatDuration(d.durationMs)}`),
      replayBtn,
      h("button", { onclick: () => ((ui.detail = null), changed("detail"), changed("traffic")) }, "Close"),
    ),
    d.remoteAddr ? h("div", { class: "muted" }, `from ${d.remoteAddr}`) : null,
    d.error ? h("div", { class: "field-error" }, d.error) : null,
    h(
      "div",
      { class: "panes" },
      pane("Request", d.requestHeaders, d.requestBody, "req"),
      pane("Response", d.responseHeaders, d.responseBody, "res"),
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
    h(
      "div",
      { class: "muted" },
      `Body: ${body.kind}, ${formatBytes(body.size)}${body.truncated ? " (truncated)" : ""}`,
    ),
    body.kind === "empty" ? null : h("pre", { class: `body ${body.kind}`, "data-testid": `${id}-body` }, body.text),
  );
}
