// Entry: lays out the window and connects views to the store.
import "./style.css";
import { reportError, start, subscribe, ui } from "./store";
import { h, replace } from "./util/dom";
import { mountExpose, openExposeForm, refreshResult, refreshServerChoices } from "./views/expose";
import { renderSettings } from "./views/settings";
import { mountTraffic, renderDetail, renderTraffic } from "./views/traffic";
import { renderTunnels, setTunnelsRerender } from "./views/tunnels";

const app = document.getElementById("app")!;
const warnings = h("div", { class: "warnings", "data-testid": "warnings" });
const list = h("section", { class: "tunnels", "data-testid": "tunnels" });
const trafficRoot = h("section", { class: "traffic-root" });
const settings = h("section", { class: "settings", "data-testid": "settings", hidden: true });
const modal = h("div", { class: "modal", hidden: true });
const main = h("main", {}, list, trafficRoot);
const settingsBtn = h("button", { "data-testid": "settings-toggle" }, "Settings");
settingsBtn.addEventListener("click", () => {
  const show = settings.hidden;
  settings.hidden = !show;
  main.hidden = show;
  settingsBtn.textContent = show ? "Tunnels" : "Settings";
  if (show) renderSettings(settings);
});

replace(
  app,
  h(
    "header",
    {},
    h("h1", {}, "ggrok"),
    h("span", { class: "muted", "data-testid": "builtin-url" }),
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
const { table, detail } = mountTraffic(trafficRoot);
setTunnelsRerender(() => renderTunnels(list));

subscribe((what) => {
  if (what === "tunnels") {
    renderTunnels(list);
    refreshResult();
  }
  if (what === "traffic") renderTraffic(table);
  if (what === "detail") renderDetail(detail);
  if (what === "servers") {
    refreshServerChoices();
    if (!settings.hidden) renderSettings(settings);
  }
  if (what === "errors") {
    const builtin = app.querySelector('[data-testid="builtin-url"]');
    if (builtin) builtin.textContent = ui.info.builtinServerUrl ? `server: ${ui.info.builtinServerUrl}` : "";
    replace(
      warnings,
      ui.info.warnings.map((w) => h("div", { class: "warning", "data-testid": "warning" }, w)),
      ui.errors.map((e) => h("div", { class: "error", "data-testid": "error" }, e)),
    );
  }
});
renderTunnels(list);
renderTraffic(table);
renderDetail(detail);
start().catch(reportError);
