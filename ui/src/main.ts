// Entry: lays out the window and connects views to the store.
import "./style.css";
import {
  dismissError,
  dismissWarning,
  loadBackground,
  openExpose,
  reportError,
  setScreen,
  start,
  subscribe,
  type Topic,
  ui,
} from "./store";
import { h, replace } from "./util/dom";
import { renderBackground } from "./views/background";
import { mountExpose, renderExpose } from "./views/expose";
import { renderSettings } from "./views/settings";
import { mountTraffic, renderDetail, renderTraffic, renderTrafficHead } from "./views/traffic";
import { renderTunnels } from "./views/tunnels";

const app = document.getElementById("app")!;
const warnings = h("div", { class: "warnings", "data-testid": "warnings" });
const list = h("section", { class: "tunnels", "data-testid": "tunnels" });
const trafficRoot = h("section", { class: "traffic-root" });
const servers = h("div", {});
const background = h("section", { class: "card form", "data-testid": "background" });
const settings = h("section", { class: "settings", "data-testid": "settings", hidden: true }, servers, background);
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
    h("button", { class: "primary", "data-testid": "expose", onclick: () => openExpose() }, "Expose port"),
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
  if (show) {
    renderSettings(servers);
    loadBackground().catch(reportError);
  }
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
    renderTrafficHead(traffic);
  }
  if (what.has("traffic")) renderTraffic(traffic);
  if (what.has("detail")) renderDetail(traffic.detail);
  if (what.has("servers") && ui.screen === "settings") renderSettings(servers);
  if (what.has("background")) renderBackground(background);
  if (what.has("errors")) renderBanners();
  if (what.has("listening") && ui.tunnels.length === 0) renderTunnels(list);
  if (["expose", "servers", "listening", "tunnels"].some((t) => what.has(t as Topic))) renderExpose(modal);
});
renderTunnels(list);
renderTraffic(traffic);
renderDetail(traffic.detail);
start().catch(reportError);
