// Entry: lays out the window and connects views to the store.
import "./style.css";
import { dismissError, dismissWarning, reportError, setScreen, start, subscribe, ui } from "./store";
import { h, replace } from "./util/dom";
import {
  mountExpose,
  openExposeForm,
  refreshListeningChoices,
  refreshResult,
  refreshServerChoices,
} from "./views/expose";
import { renderSettings } from "./views/settings";
import { mountTraffic, renderDetail, renderTraffic, renderTrafficHead } from "./views/traffic";
import { renderTunnels } from "./views/tunnels";

const app = document.getElementById("app")!;
const warnings = h("div", { class: "warnings", "data-testid": "warnings" });
const list = h("section", { class: "tunnels", "data-testid": "tunnels" });
const trafficRoot = h("section", { class: "traffic-root" });
const settings = h("section", { class: "settings", "data-testid": "settings", hidden: true });
const modal = h("div", { class: "modal", hidden: true });
const main = h("main", {}, list, trafficRoot);
const builtin = h("span", { class: "muted", "data-testid": "builtin-url" });
const settingsBtn = h(
  "button",
  { "data-testid": "settings-toggle", onclick: () => setScreen(ui.screen === "settings" ? "tunnels" : "settings") },
  "Settings",
);

replace(
  app,
  h(
    "header",
    {},
    h("h1", {}, "ggrok"),
    builtin,
    h("span", { class: "spacer" }),
    h("button", { class: "primary", "data-testid": "expose", onclick: () => openExposeForm() }, "Expose port"),
    settingsBtn,
  ),
  warnings,
  main,
  settings,
  modal,
);
mountExpose(modal);
const traffic = mountTraffic(trafficRoot);

function renderScreen(): void {
  const show = ui.screen === "settings";
  settings.hidden = !show;
  main.hidden = show;
  settingsBtn.textContent = show ? "Tunnels" : "Settings";
  if (show) renderSettings(settings);
}

function renderBanners(): void {
  builtin.textContent = ui.info.builtinServerUrl ? `server: ${ui.info.builtinServerUrl}` : "";
  const close = (label: string, f: () => void) =>
    h("button", { class: "close", "data-testid": "dismiss", "aria-label": label, title: label, onclick: f }, "×");
  replace(
    warnings,
    ui.info.warnings
      .filter((w) => !ui.dismissed.has(w))
      .map((w) =>
        h("div", { class: "warning", "data-testid": "warning" }, h("span", {}, w), close("Dismiss", () => dismissWarning(w))),
      ),
    ui.errors.map((e) =>
      h("div", { class: "error", "data-testid": "error" }, h("span", {}, e.message), close("Dismiss", () => dismissError(e.id))),
    ),
  );
}

subscribe((what) => {
  if (what.has("screen")) renderScreen();
  if (what.has("tunnels")) {
    renderTunnels(list);
    renderTrafficHead(traffic.head);
    refreshResult();
  }
  if (what.has("traffic")) renderTraffic(traffic.table);
  if (what.has("detail")) renderDetail(traffic.detail);
  if (what.has("servers")) {
    refreshServerChoices();
    if (ui.screen === "settings") renderSettings(settings);
  }
  if (what.has("errors")) renderBanners();
  if (what.has("listening")) {
    refreshListeningChoices();
    if (ui.tunnels.length === 0) renderTunnels(list);
  }
});
renderTunnels(list);
renderTraffic(traffic.table);
renderDetail(traffic.detail);
start().catch(reportError);
