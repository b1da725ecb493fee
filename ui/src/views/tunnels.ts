// The tunnels list: one card per saved tunnel.
import * as api from "../api";
import {
  cardAction,
  exposeQuickly,
  openExpose,
  removeTunnel,
  reportError,
  select,
  setConfirming,
  setScreen,
  ui,
  upsertTunnel,
  watchListening,
} from "../store";
import type { TunnelView } from "../types";
import { h, replace } from "../util/dom";
import { isRunning, statusLabel, tunnelLabel } from "../util/format";
import { owner, qrBox, qrButton } from "./expose";

export function renderTunnels(root: HTMLElement): void {
  watchListening("empty-state", ui.tunnels.length === 0);
  if (ui.tunnels.length === 0) {
    const found = ui.listening.length > 0;
    replace(
      root,
      h(
        "p",
        { class: "empty", "data-testid": "no-tunnels" },
        found
          ? "No tunnels yet. Click “Expose port” to share a local port, or pick one listening here:"
          : "No tunnels yet. Click “Expose port” to share a local port.",
      ),
      found
        ? h(
            "ul",
            { class: "listening", "data-testid": "listening-empty" },
            ui.listening.map((l) =>
              h(
                "li",
                {},
                h("span", { class: "port" }, String(l.port)),
                h("span", { class: "proc muted" }, owner(l)),
                h(
                  "button",
                  {
                    class: "primary",
                    "data-testid": "quick-expose",
                    "data-port": l.port,
                    title: "Expose on this computer's server and copy the URL",
                    onclick: () => exposeQuickly(l.port).catch(reportError),
                  },
                  "Expose",
                ),
              ),
            ),
          )
        : h(
            "p",
            { class: "hint", "data-testid": "nothing-listening" },
            "Nothing is listening on this machine yet. Start your app (a dev server, an API) and its port shows up here, ready to expose.",
          ),
    );
    return;
  }
  replace(root, ...ui.tunnels.map(card));
}

function card(t: TunnelView): HTMLElement {
  const url = t.status.state === "online" ? t.status.url : null;
  const failed = t.status.state === "failed";
  const running = isRunning(t.status);
  const act = (f: () => Promise<unknown>) => (ev: Event) => {
    ev.stopPropagation();
    void cardAction(t.id, f);
  };
  const del = ui.confirming.has(t.id)
    ? h(
        "span",
        { class: "confirm" },
        "Delete?",
        h("button", { class: "danger", "data-testid": "confirm-delete", onclick: act(() => removeTunnel(t.id)) }, "Delete"),
        h("button", { onclick: act(async () => setConfirming(t.id, false)) }, "Cancel"),
      )
    : h("button", { "data-testid": "delete", onclick: act(async () => setConfirming(t.id, true)) }, "Delete");
  // A failed tunnel is not retrying: offer Retry (a fresh start), not Stop.
  const toggle = failed
    ? h(
        "button",
        { class: "primary", "data-testid": "retry", onclick: act(() => upsertTunnel(() => api.startTunnel(t.id))) },
        "Retry",
      )
    : h(
        "button",
        {
          class: running ? "" : "primary",
          "data-testid": "toggle",
          onclick: act(() => upsertTunnel(() => (running ? api.stopTunnel(t.id) : api.startTunnel(t.id)))),
        },
        running ? "Stop" : "Start",
      );
  const needsToken = t.status.state === "failed" && t.status.kind === "unauthorized";
  const cardError = ui.cardErrors.get(t.id);
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
      h("span", { class: `dot ${t.localWarning && running ? "warn" : t.status.state}` }),
      h("strong", { class: "name", "data-testid": "tunnel-name" }, tunnelLabel(t)),
      h("span", { class: "target", "data-testid": "tunnel-target" }, `→ ${t.target}`),
      t.kind === "tcp"
        ? h("span", { class: "count", "data-testid": "tunnel-count", title: "connections since start" }, `${t.connections} conn`)
        : h("span", { class: "count", "data-testid": "tunnel-count", title: "requests since start" }, `${t.requests} req`),
    ),
    h("div", { class: "status", "data-testid": "tunnel-status" }, statusLabel(t.status)),
    t.localWarning && running
      ? h("div", { class: "local-warning", "data-testid": "local-warning", role: "status" }, t.localWarning)
      : null,
    needsToken
      ? h(
          "div",
          { class: "hint" },
          "Set this server’s token in ",
          h(
            "button",
            {
              class: "link",
              "data-testid": "to-settings",
              onclick: (ev: Event) => {
                ev.stopPropagation();
                setScreen("settings");
              },
            },
            "Settings",
          ),
          ", then Retry.",
        )
      : null,
    url ? h("div", { class: "url", "data-testid": "tunnel-url" }, url) : null,
    h("div", { class: "server" }, `via ${t.serverName}`),
    cardError ? h("div", { class: "field-error", "data-testid": "card-error", role: "alert" }, cardError) : null,
    h(
      "div",
      { class: "actions" },
      toggle,
      url ? h("button", { "data-testid": "copy", onclick: act(() => api.copyUrl(t.id)) }, "Copy") : null,
      url ? qrButton(t.id) : null,
      // A TCP address is for a TCP client, not a browser.
      url && t.kind !== "tcp" ? h("button", { "data-testid": "open", onclick: act(() => api.openUrl(t.id)) }, "Open") : null,
      h("button", { "data-testid": "edit", onclick: act(async () => openExpose(t)) }, "Edit"),
      del,
    ),
    url && ui.qrFor === t.id ? qrBox(url) : null,
  );
}
