// The Expose port form (also used to edit a saved tunnel). Validates inline, then starts,
// saves and shows the public URL with Copy.
import * as api from "../api";
import { refreshTunnels, reportError, select, ui, upsertTunnel, watchListening } from "../store";
import type { TunnelView } from "../types";
import { h, replace } from "../util/dom";
import { statusLabel, validatePort, validateSubdomain } from "../util/format";

let modal: HTMLElement;
export function mountExpose(el: HTMLElement): void {
  modal = el;
}

/** Refills the open form's server choices; see `refreshServerChoices`. */
let fillServers: () => void = () => {};

/** Refills the open form's port picker; see `refreshListening`. */
let fillListening: () => void = () => {};

/** Called when the listening ports change. */
export function refreshListeningChoices(): void {
  if (!modal.hidden) fillListening();
}

/** Called when the saved servers change. */
export function refreshServerChoices(): void {
  if (!modal.hidden) fillServers();
}

/** Removes the open form's Escape handler. */
let unbindEscape: () => void = () => {};

function close(): void {
  fillServers = () => {};
  fillListening = () => {};
  watchListening("expose-form", false);
  unbindEscape();
  replace(modal);
  modal.hidden = true;
}

export function openExposeForm(editing?: TunnelView): void {
  const port = h("input", {
    id: "f-port",
    "data-testid": "port",
    inputmode: "numeric",
    autocomplete: "off",
    "aria-describedby": "f-port-hint",
    value: editing ? String(editing.localPort) : "",
  });
  const sub = h("input", {
    id: "f-sub",
    "data-testid": "subdomain",
    autocomplete: "off",
    "aria-describedby": "f-sub-hint",
    value: editing?.subdomain ?? "",
  });
  const host = h("input", {
    id: "f-host",
    "data-testid": "host",
    autocomplete: "off",
    value: editing?.localHost ?? "localhost",
  });
  const server = h("select", { id: "f-server", "data-testid": "server" });
  // The servers may still be loading when the form opens, or change while it is open.
  fillServers = () => {
    const chosen = server.value || (editing ? editing.serverId : ui.servers.find((s) => s.builtin)?.id);
    replace(
      server,
      ui.servers.map((s) => h("option", { value: s.id, selected: s.id === chosen }, `${s.name} (${s.url})`)),
    );
  };
  fillServers();
  // What the CLI offers beyond the basics (--basic-auth, --allow-ip, --keep-host), under "More".
  const auth = h("input", {
    id: "f-auth",
    type: "password",
    autocomplete: "off",
    "data-testid": "basic-auth",
  });
  const allow = h("input", {
    id: "f-allow",
    autocomplete: "off",
    "data-testid": "allow-ips",
    value: editing?.allowIps.join(", ") ?? "",
  });
  const keepHost = h("input", { id: "f-keep-host", type: "checkbox", "data-testid": "keep-host", checked: editing?.keepHost ?? false });
  const clearAuth = h("input", { type: "checkbox", "data-testid": "clear-auth" });
  // "Listening on this machine": one click fills the port.
  const picker = h("div", { class: "picker", "data-testid": "listening" });
  fillListening = () => {
    replace(
      picker,
      ui.listening.length === 0
        ? h("span", { class: "hint" }, "No local service found listening.")
        : ui.listening.map((l) =>
            h(
              "button",
              {
                type: "button",
                class: `pick${l.exposed ? " exposed" : ""}`,
                "data-testid": "pick-port",
                "data-port": l.port,
                title: `${l.process} (pid ${l.pid}) on ${l.loopback ? "loopback" : "all interfaces"}${l.exposed ? "; already exposed" : ""}`,
                onclick: () => {
                  port.value = String(l.port);
                  port.dispatchEvent(new Event("input"));
                },
              },
              h("strong", {}, String(l.port)),
              ` ${l.process}`,
              l.exposed ? h("span", { class: "tag" }, "exposed") : null,
            ),
          ),
    );
  };
  if (!editing) {
    fillListening();
    watchListening("expose-form", true);
  }
  const onLaunch = h("input", {
    id: "f-launch",
    type: "checkbox",
    "data-testid": "start-on-launch",
    checked: editing?.startOnLaunch ?? false,
  });
  const errs: Record<string, HTMLElement> = {
    port: h("div", { class: "field-error", "data-testid": "port-error", role: "alert" }),
    subdomain: h("div", { class: "field-error", "data-testid": "subdomain-error", role: "alert" }),
    host: h("div", { class: "field-error", "data-testid": "host-error", role: "alert" }),
    serverId: h("div", { class: "field-error", "data-testid": "server-error", role: "alert" }),
    basicAuth: h("div", { class: "field-error", "data-testid": "basic-auth-error", role: "alert" }),
    allowIps: h("div", { class: "field-error", "data-testid": "allow-ips-error", role: "alert" }),
    form: h("div", { class: "field-error", "data-testid": "form-error", role: "alert" }),
  };
  const result = h("div", { class: "result", "data-testid": "expose-result" });
  const submit = h("button", { type: "submit", class: "primary", "data-testid": "submit" }, editing ? "Save" : "Start tunnel");

  const check = (): { port: number; name: string | null } | null => {
    for (const e of Object.values(errs)) e.textContent = "";
    const p = validatePort(port.value);
    const s = validateSubdomain(sub.value);
    if ("error" in p) errs.port.textContent = p.error;
    if ("error" in s) errs.subdomain.textContent = s.error;
    if ("error" in p || "error" in s) return null;
    // The backend refuses it too; said here before anything is sent.
    const twin = ui.tunnels.find(
      (t) => t.id !== editing?.id && t.serverId === server.value && s.name !== null && t.subdomain === s.name,
    );
    if (twin) {
      errs.subdomain.textContent = `another saved tunnel already uses ${s.name} on this server`;
      return null;
    }
    return { port: p.port, name: s.name };
  };
  port.addEventListener("input", () => {
    const p = validatePort(port.value);
    errs.port.textContent = "error" in p && port.value !== "" ? p.error : "";
  });
  sub.addEventListener("input", () => {
    const s = validateSubdomain(sub.value);
    errs.subdomain.textContent = "error" in s ? s.error : "";
  });

  const form = h(
    "form",
    { class: "card form", "data-testid": "expose-form", novalidate: true },
    h("h2", {}, editing ? "Edit tunnel" : "Expose port"),
    editing ? null : h("div", { class: "picker-title muted" }, "Listening on this machine"),
    editing ? null : picker,
    h("label", { for: "f-port" }, "Local port ", h("span", { class: "hint", id: "f-port-hint" }, "the port your app listens on, e.g. 3000")),
    port,
    errs.port,
    h("label", { for: "f-sub" }, "Subdomain ", h("span", { class: "hint", id: "f-sub-hint" }, "optional; empty lets the server pick one")),
    sub,
    errs.subdomain,
    h("label", { for: "f-server" }, "Server"),
    server,
    errs.serverId,
    h("label", { for: "f-host" }, "Local host"),
    host,
    errs.host,
    h("label", { class: "check" }, onLaunch, " Start on launch"),
    h(
      "details",
      { class: "more", "data-testid": "more", open: Boolean(editing && (editing.basicAuthUser || editing.allowIps.length || editing.keepHost)) },
      h("summary", {}, "More"),
      h(
        "label",
        { for: "f-auth" },
        "Basic auth ",
        h(
          "span",
          { class: "hint" },
          editing?.basicAuthUser ? `user:password; empty keeps the login of ${editing.basicAuthUser}` : "user:password visitors must give",
        ),
      ),
      auth,
      editing?.basicAuthUser ? h("label", { class: "check" }, clearAuth, " Remove the login") : null,
      errs.basicAuth,
      h("label", { for: "f-allow" }, "Allowed IPs ", h("span", { class: "hint" }, "addresses or CIDR ranges, comma-separated; empty allows all")),
      allow,
      errs.allowIps,
      h("label", { class: "check" }, keepHost, " Keep the Host header (pass the public host to the local service)"),
    ),
    errs.form,
    h(
      "div",
      { class: "actions" },
      submit,
      h("button", { type: "button", "data-testid": "cancel", onclick: close }, "Close"),
    ),
    result,
  );
  const closeBtn = form.querySelector<HTMLButtonElement>('[data-testid="cancel"]')!;
  // Set once a new tunnel is saved: the form then only shows the result, so a second press of
  // Start (or Enter) cannot save a twin.
  let done = false;
  form.addEventListener("submit", (ev) => {
    ev.preventDefault();
    if (done || submit.disabled) return;
    const ok = check();
    if (!ok) return;
    submit.disabled = true;
    replace(result, h("span", { class: "muted" }, "Starting…"));
    const input = {
      serverId: server.value,
      subdomain: ok.name,
      localHost: host.value.trim() || null,
      localPort: ok.port,
      startOnLaunch: onLaunch.checked,
      basicAuth: clearAuth.checked ? "" : auth.value === "" ? (editing ? null : "") : auth.value,
      allowIps: allow.value.split(/[\s,]+/).filter(Boolean),
      keepHost: keepHost.checked,
    };
    upsertTunnel(() => (editing ? api.updateTunnel(editing.id, input) : api.expose(input)))
      .then(async (t) => {
        if (editing) {
          close();
          return;
        }
        done = true;
        submit.remove();
        for (const el of [port, sub, host, server, onLaunch, auth, allow, keepHost]) el.disabled = true;
        picker.previousElementSibling?.remove();
        picker.remove();
        fillListening = () => {};
        watchListening("expose-form", false);
        closeBtn.textContent = "Done";
        await select(t.id);
        // Status events may have come in while the traffic loaded.
        showResult(result, ui.tunnels.find((x) => x.id === t.id) ?? t);
        closeBtn.focus();
      })
      .catch((e) => {
        const err = api.toApiError(e);
        (errs[err.field ?? "form"] ?? errs.form).textContent = err.message;
        replace(result);
        refreshTunnels().catch(reportError);
      })
      .finally(() => {
        submit.disabled = false;
      });
  });
  replace(modal, h("div", { class: "backdrop", onclick: (e: Event) => e.target === e.currentTarget && close() }, form));
  modal.hidden = false;
  unbindEscape();
  const onKey = (e: KeyboardEvent) => {
    if (e.key === "Escape") close();
  };
  document.addEventListener("keydown", onKey);
  unbindEscape = () => document.removeEventListener("keydown", onKey);
  port.focus();
}

/** A result still waiting for its tunnel to come online; status events finish it. */
let pending: { el: HTMLElement; id: string } | null = null;

export function refreshResult(): void {
  if (!pending || !pending.el.isConnected) {
    pending = null;
    return;
  }
  const t = ui.tunnels.find((x) => x.id === pending?.id);
  if (t) showResult(pending.el, t);
}

function showResult(el: HTMLElement, t: TunnelView): void {
  pending = t.status.state === "online" ? null : { el, id: t.id };
  if (t.status.state === "online") {
    replace(
      el,
      h("div", { class: "muted" }, "Your tunnel is online:"),
      h("div", { class: "url big", "data-testid": "result-url" }, t.status.url),
      h(
        "div",
        { class: "actions" },
        h("button", { type: "button", "data-testid": "result-copy", onclick: () => api.copyUrl(t.id).catch(reportError) }, "Copy"),
        h("button", { type: "button", onclick: () => api.openUrl(t.id).catch(reportError) }, "Open in browser"),
      ),
    );
  } else {
    replace(el, h("div", { "data-testid": "result-status" }, `Saved. Status: ${statusLabel(t.status)}`));
  }
}
