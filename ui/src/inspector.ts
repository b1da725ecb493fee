// Entry of the web inspector the CLI serves (vite --mode inspector): the desktop app's traffic
// view over the inspector's HTTP API (api.web.ts stands in for api.ts in this build).
import "./style.css";
import { dismissError, reportError, select, start, subscribe, ui } from "./store";
import { h, replace } from "./util/dom";
import { mountTraffic, renderDetail, renderTraffic, renderTrafficHead } from "./views/traffic";

const app = document.getElementById("app")!;
const url = h("span", { class: "muted", "data-testid": "tunnel-url" });
// With several tunnels (`ggrok start --all`, or started through the API): whose traffic shows.
const picker = h("select", {
  "data-testid": "tunnel-select",
  "aria-label": "Tunnel",
  hidden: true,
  onchange: () => {
    select(picker.value).catch(reportError);
  },
});
const errors = h("div", { class: "warnings", "data-testid": "warnings" });
const trafficRoot = h("section", { class: "traffic-root" });
replace(
  app,
  h("header", {}, h("h1", {}, "ggrok inspector"), picker, url, h("span", { class: "spacer" })),
  errors,
  h("main", { class: "inspector" }, trafficRoot),
);
const traffic = mountTraffic(trafficRoot);

function renderHead(): void {
  picker.hidden = ui.tunnels.length < 2;
  replace(picker, ui.tunnels.map((x) => h("option", { value: x.id }, x.id)));
  picker.value = ui.selected ?? "";
  const t = ui.tunnels.find((x) => x.id === ui.selected);
  url.textContent = t?.status.state === "online" ? t.status.url : t ? `${t.status.state}` : "";
  renderTrafficHead(traffic);
}

function renderErrors(): void {
  replace(
    errors,
    ui.errors.map((e) =>
      h(
        "div",
        { class: "error", "data-testid": "error" },
        h("span", {}, e.message),
        h("button", { class: "close", "aria-label": "Dismiss", onclick: () => dismissError(e.id) }, "×"),
      ),
    ),
  );
}

subscribe((what) => {
  if (what.has("tunnels")) renderHead();
  if (what.has("traffic")) renderTraffic(traffic);
  if (what.has("detail")) renderDetail(traffic.detail);
  if (what.has("errors")) renderErrors();
});
renderTraffic(traffic);
renderDetail(traffic.detail);
start().catch(reportError);
