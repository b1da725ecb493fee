// Settings > "In the background": start at login, notifications, the built-in server's port
// and the log folder, rendered from `ui.background` (loaded when Settings opens).
import * as api from "../api";
import { reportError, saveBackground, ui } from "../store";
import type { BackgroundSettings } from "../types";
import { h, replace } from "../util/dom";

export function renderBackground(root: HTMLElement): void {
  const s = ui.background;
  if (!s) replace(root, h("h3", {}, "In the background"));
  else render(root, s);
}

function portNote(s: BackgroundSettings): string {
  const now =
    s.requestedPort !== 0 && s.requestedPort !== s.listeningPort
      ? `Port ${s.requestedPort} was taken at start, so this run listens on 127.0.0.1:${s.listeningPort}.`
      : `Listening on 127.0.0.1:${s.listeningPort}.`;
  return s.serverPort === s.listeningPort
    ? now
    : `${now} Port ${s.serverPort} applies when ggrok next starts.`;
}

function render(root: HTMLElement, s: BackgroundSettings): void {
  const login = h("input", { type: "checkbox", checked: s.startAtLogin, "data-testid": "start-at-login" });
  const notes = h("input", { type: "checkbox", checked: s.notifications, "data-testid": "notifications" });
  const port = h("input", {
    type: "number",
    min: 1,
    max: 65535,
    value: s.serverPort,
    "data-testid": "server-port",
  });
  const limit = h("input", {
    type: "number",
    min: 0,
    max: 16384,
    value: Math.round(s.captureLimit / 1024),
    "data-testid": "capture-limit",
    id: "f-capture-limit",
  });
  const err = h("div", { class: "field-error", role: "alert", "data-testid": "background-error" });
  const save = (): void => {
    err.textContent = "";
    saveBackground({
      startAtLogin: login.checked,
      notifications: notes.checked,
      serverPort: Number(port.value),
      captureLimit: Math.round(Number(limit.value) * 1024),
    }).catch((e) => (err.textContent = api.toApiError(e).message));
  };
  login.addEventListener("change", save);
  notes.addEventListener("change", save);
  const form = h(
    "form",
    // The backend's message shows next to the port rather than the browser's bubble.
    { novalidate: true },
    h("label", { class: "check" }, login, " Start ggrok at login (in the tray, with the tunnels marked “start on launch”)"),
    h("label", { class: "check" }, notes, " Notify me when a tunnel goes offline, comes back or is refused"),
    h("label", {}, "Port of this computer’s server"),
    port,
    h(
      "p",
      { class: "muted", "data-testid": "server-port-note" },
      portNote(s),
    ),
    h("label", { for: "f-capture-limit" }, "Body capture limit, KiB (the inspector keeps this much of each body)"),
    limit,
    err,
    h(
      "div",
      { class: "actions" },
      h("button", { type: "submit", "data-testid": "server-port-save" }, "Save"),
      h(
        "button",
        { type: "button", "data-testid": "open-log-folder", onclick: () => api.openLogFolder().catch(reportError) },
        "Open log folder",
      ),
    ),
    h("p", { class: "muted" }, `Logs: ${s.logDir}`),
  );
  form.addEventListener("submit", (ev) => {
    ev.preventDefault();
    save();
  });
  replace(root, h("h3", {}, "In the background"), form);
}
