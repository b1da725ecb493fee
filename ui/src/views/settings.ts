// Settings: servers with URL and token. Tokens are only ever shown masked.
import * as api from "../api";
import { refreshInfo, refreshServers, reportError, setServerForm, ui } from "../store";
import type { ServerView } from "../types";
import { h, replace } from "../util/dom";


export function renderSettings(root: HTMLElement): void {
  const edited = ui.servers.find((s) => s.id === ui.editingServer) ?? null;
  replace(
    root,
    h("h2", {}, "Servers"),
    h(
      "p",
      { class: "muted", "data-testid": "token-storage" },
      "“This computer” is the ggrok server built into the app (loopback only). ",
      ui.info.keyringAvailable
        ? "Tokens are kept in the system keyring."
        : "No system keyring is available: tokens are kept in memory for this run only.",
    ),
    h("div", { class: "servers" }, ui.servers.map((s) => serverRow(s))),
    serverForm(edited),
  );
}

function serverRow(s: ServerView): HTMLElement {
  const remove = () =>
    api
      .deleteServer(s.id)
      .then(() => {
        setServerForm({ confirmingServer: null });
        return refreshServers();
      })
      .catch(reportError);
  return h(
    "div",
    { class: "server-row", "data-testid": "server-row" },
    h("strong", {}, s.name),
    h("span", { class: "url" }, s.url),
    h(
      "span",
      { class: "muted", "data-testid": "server-token" },
      s.builtin
        ? "built in, no token needed"
        : s.tokenMasked
          ? `token ${s.tokenMasked}${s.tokenStorage === "memory" ? " (this run only: no keyring)" : ""}`
          : "no token",
    ),
    s.builtin
      ? null
      : h(
          "span",
          { class: "actions" },
          h("button", { onclick: () => setServerForm({ editingServer: s.id }) }, "Edit"),
          ui.confirmingServer === s.id
            ? h(
                "span",
                { class: "confirm" },
                "Remove?",
                h("button", { class: "danger", "data-testid": "confirm-remove", onclick: remove }, "Remove"),
                h("button", { onclick: () => setServerForm({ confirmingServer: null }) }, "Cancel"),
              )
            : h(
                "button",
                { "data-testid": "remove-server", onclick: () => setServerForm({ confirmingServer: s.id }) },
                "Remove",
              ),
        ),
  );
}

function serverForm(edited: ServerView | null): HTMLElement {
  const name = h("input", { id: "s-name", "data-testid": "server-name", value: edited?.name ?? "" });
  const url = h("input", {
    id: "s-url",
    "data-testid": "server-url",
    value: edited?.url ?? "",
    inputmode: "url",
    autocomplete: "off",
  });
  const token = h("input", {
    id: "s-token",
    type: "password",
    autocomplete: "off",
    "data-testid": "server-token-input",
  });
  const clear = h("input", { type: "checkbox" });
  const errs: Record<string, HTMLElement> = {
    name: h("div", { class: "field-error", role: "alert", "data-testid": "server-name-error" }),
    url: h("div", { class: "field-error", role: "alert", "data-testid": "server-url-error" }),
    form: h("div", { class: "field-error", role: "alert", "data-testid": "server-error" }),
  };
  const checkResult = h("div", { class: "check-result", role: "status", "data-testid": "test-result" });
  const input = () => ({
    id: edited?.id ?? null,
    name: name.value,
    url: url.value,
    token: clear.checked ? "" : token.value.trim() === "" ? null : token.value,
  });
  const showError = (e: unknown) => {
    const err = api.toApiError(e);
    (errs[err.field ?? "form"] ?? errs.form).textContent = err.message;
  };
  const clearErrors = () => {
    for (const e of Object.values(errs)) e.textContent = "";
  };
  const testBtn = h("button", { type: "button", "data-testid": "server-test" }, "Test connection");
  testBtn.addEventListener("click", () => {
    clearErrors();
    testBtn.disabled = true;
    checkResult.className = "check-result muted";
    checkResult.textContent = "Connecting…";
    api
      .testServer(input())
      .then((r) => {
        checkResult.className = `check-result ${r.ok ? "ok" : "bad"}`;
        checkResult.dataset.outcome = r.outcome;
        checkResult.textContent = r.message;
      })
      .catch((e) => {
        checkResult.textContent = "";
        showError(e);
      })
      .finally(() => (testBtn.disabled = false));
  });
  const form = h(
    "form",
    { class: "card form", novalidate: true },
    h("h3", {}, edited ? `Edit ${edited.name}` : "Add a server"),
    h("label", { for: "s-name" }, "Name ", h("span", { class: "hint" }, "any label, e.g. work")),
    name,
    errs.name,
    h("label", { for: "s-url" }, "URL ", h("span", { class: "hint" }, "scheme and host, e.g. https://tunnel.example.com")),
    url,
    errs.url,
    h(
      "label",
      { for: "s-token" },
      "Token ",
      h("span", { class: "hint" }, edited?.tokenMasked ? `empty keeps ${edited.tokenMasked}` : "if the server requires one"),
    ),
    token,
    edited?.tokenMasked ? h("label", { class: "check" }, clear, " Remove the token") : null,
    errs.form,
    h(
      "div",
      { class: "actions" },
      h("button", { type: "submit", class: "primary", "data-testid": "server-save" }, "Save"),
      testBtn,
      edited ? h("button", { type: "button", onclick: () => setServerForm({ editingServer: null }) }, "Cancel") : null,
    ),
    checkResult,
  );
  form.addEventListener("submit", (ev) => {
    ev.preventDefault();
    clearErrors();
    api
      .saveServer(input())
      .then(() => {
        setServerForm({ editingServer: null });
        return Promise.all([refreshServers(), refreshInfo()]);
      })
      .catch(showError);
  });
  return form;
}
