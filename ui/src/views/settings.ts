// Settings: servers with URL and token. Tokens are only ever shown masked.
import * as api from "../api";
import { refreshServers, reportError, ui } from "../store";
import type { ServerView } from "../types";
import { h, replace } from "../util/dom";
import { backgroundSection } from "./background";

export function renderSettings(root: HTMLElement): void {
  replace(
    root,
    h("h2", {}, "Servers"),
    h(
      "p",
      { class: "muted" },
      "“This computer” is the ggrok server built into the app (loopback only). Tokens are kept in the system keyring.",
    ),
    h("div", { class: "servers" }, ui.servers.map((s) => serverRow(s, root))),
    serverForm(null, root),
    backgroundSection(),
  );
}

function serverRow(s: ServerView, root: HTMLElement): HTMLElement {
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
          h("button", { onclick: () => replace(root, serverForm(s, root)) }, "Edit"),
          h(
            "button",
            {
              class: "danger",
              onclick: () =>
                api
                  .deleteServer(s.id)
                  .then(refreshServers)
                  .then(() => renderSettings(root))
                  .catch(reportError),
            },
            "Remove",
          ),
        ),
  );
}

function serverForm(editing: ServerView | null, root: HTMLElement): HTMLElement {
  const name = h("input", { "data-testid": "server-name", value: editing?.name ?? "", placeholder: "work" });
  const url = h("input", {
    "data-testid": "server-url",
    value: editing?.url ?? "",
    placeholder: "https://tunnel.example.com",
  });
  const token = h("input", {
    type: "password",
    autocomplete: "off",
    "data-testid": "server-token-input",
    placeholder: editing?.tokenMasked ? `unchanged (${editing.tokenMasked})` : "optional",
  });
  const clear = h("input", { type: "checkbox" });
  const err = h("div", { class: "field-error", role: "alert", "data-testid": "server-error" });
  const form = h(
    "form",
    { class: "card form" },
    h("h3", {}, editing ? `Edit ${editing.name}` : "Add a server"),
    h("label", {}, "Name"),
    name,
    h("label", {}, "URL"),
    url,
    h("label", {}, "Token"),
    token,
    editing?.tokenMasked ? h("label", { class: "check" }, clear, " Remove the token") : null,
    err,
    h(
      "div",
      { class: "actions" },
      h("button", { type: "submit", class: "primary", "data-testid": "server-save" }, "Save"),
      editing ? h("button", { type: "button", onclick: () => renderSettings(root) }, "Cancel") : null,
    ),
  );
  form.addEventListener("submit", (ev) => {
    ev.preventDefault();
    const t = clear.checked ? "" : token.value.trim() === "" ? null : token.value;
    api
      .saveServer({ id: editing?.id ?? null, name: name.value, url: url.value, token: t })
      .then(refreshServers)
      .then(() => renderSettings(root))
      .catch((e) => (err.textContent = api.toApiError(e).message));
  });
  return form;
}
