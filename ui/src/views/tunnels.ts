// The tunnels list: one card per saved tunnel.
import * as api from "../api";
import { reportError, select, ui, upsertTunnel } from "../store";
import type { TunnelView } from "../types";
import { h, replace } from "../util/dom";
import { isRunning, statusLabel } from "../util/format";
import { openExposeForm } from "./expose";

/** Ids of tunnels whose delete button is waiting for a confirm. */
const confirming = new Set<string>();

export function renderTunnels(root: HTMLElement): void {
  if (ui.tunnels.length === 0) {
    replace(
      root,
      h(
        "p",
        { class: "empty", "data-testid": "no-tunnels" },
        "No tunnels yet. Click “Expose port” to share a local port.",
      ),
    );
    return;
  }
  replace(root, ...ui.tunnels.map(card));
}

function card(t: TunnelView): HTMLElement {
  const url = t.status.state === "online" ? t.status.url : null;
  const running = isRunning(t.status);
  const act = (f: () => Promise<unknown>) => (ev: Event) => {
    ev.stopPropagation();
    f().catch(reportError);
  };
  const del = confirming.has(t.id)
    ? h(
        "span",
        { class: "confirm" },
        "Delete this tunnel?",
        h(
          "button",
          {
            class: "danger",
            "data-testid": "confirm-delete",
            onclick: act(async () => {
              confirming.delete(t.id);
              await api.deleteTunnel(t.id);
              ui.tunnels = ui.tunnels.filter((x) => x.id !== t.id);
              if (ui.selected === t.id) ui.selected = null;
              upsertTunnelsChanged();
            }),
          },
          "Delete",
        ),
        h(
          "button",
          {
            onclick: act(async () => {
              confirming.delete(t.id);
              upsertTunnelsChanged();
            }),
          },
          "Cancel",
        ),
      )
    : h(
        "button",
        {
          "data-testid": "delete",
          onclick: act(async () => {
            confirming.add(t.id);
            upsertTunnelsChanged();
          }),
        },
        "Delete",
      );
  return h(
    "article",
    {
      class: `tunnel ${t.status.state}${ui.selected === t.id ? " selected" : ""}`,
      "data-testid": "tunnel",
      "data-id": t.id,
      onclick: () => {
        select(t.id).catch(reportError);
      },
    },
    h(
      "div",
      { class: "row" },
      h("span", { class: `dot ${t.status.state}` }),
      h("strong", { class: "name", "data-testid": "tunnel-name" }, t.subdomain ?? (url ? t.status.state === "online" ? t.status.name : "" : "random name")),
      h("span", { class: "target", "data-testid": "tunnel-target" }, `→ ${t.localHost}:${t.localPort}`),
      h("span", { class: "count", "data-testid": "tunnel-count", title: "requests since start" }, `${t.requests} req`),
    ),
    h("div", { class: "status", "data-testid": "tunnel-status" }, statusLabel(t.status)),
    url ? h("div", { class: "url", "data-testid": "tunnel-url" }, url) : null,
    h("div", { class: "server" }, `via ${t.serverName}`),
    h(
      "div",
      { class: "actions" },
      h(
        "button",
        {
          class: running ? "" : "primary",
          "data-testid": "toggle",
          onclick: act(async () => {
            await upsertTunnel(() => (running ? api.stopTunnel(t.id) : api.startTunnel(t.id)));
          }),
        },
        running ? "Stop" : "Start",
      ),
      url ? h("button", { "data-testid": "copy", onclick: act(() => api.copyUrl(t.id)) }, "Copy URL") : null,
      url ? h("button", { "data-testid": "open", onclick: act(() => api.openUrl(t.id)) }, "Open") : null,
      h("button", { "data-testid": "edit", onclick: act(async () => openExposeForm(t)) }, "Edit"),
      del,
    ),
  );
}

let rerender: () => void = () => {};
export function setTunnelsRerender(f: () => void): void {
  rerender = f;
}
function upsertTunnelsChanged(): void {
  rerender();
}
