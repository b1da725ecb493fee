// The Expose port form (also used to edit a saved tunnel). Validates inline, then starts,
// saves and shows the public URL with Copy and a QR code. What the user types lives in the
// form's inputs while it is open; whether it is open, what it edits and which tunnel it started
// are in the store, and `renderExpose` brings the DOM in line with them.
import * as api from "../api";
import {
  closeExpose,
  exposeStarted,
  refreshTunnels,
  reportError,
  select,
  toggleQr,
  ui,
  upsertTunnel,
  type ExposeForm,
} from "../store";
import type { TunnelView } from "../types";
import { h, replace } from "../util/dom";
import { statusLabel, validatePort, validateRemotePort, validateSubdomain } from "../util/format";
import { qrSvg } from "../util/qr";

/** Wires what does not change between openings: Escape closes the form. */
export function mountExpose(modal: HTMLElement): void {
  document.addEventListener("keydown", (e) => {
    if (e.key === "Escape" && ui.exposeForm) closeExpose();
  });
  modal.hidden = true;
}

/** Shows, refreshes or hides the form in `modal` as the store says. */
export function renderExpose(modal: HTMLElement): void {
  const f = ui.exposeForm;
  if (!f) {
    if (!modal.hidden) {
      replace(modal);
      modal.hidden = true;
      delete modal.dataset.serial;
    }
    return;
  }
  const fresh = modal.dataset.serial !== String(f.serial);
  if (fresh) {
    buildForm(modal, f.editing);
    modal.dataset.serial = String(f.serial);
    modal.hidden = false;
  }
  fillServers(modal, f);
  if (f.started) showStarted(modal, f.started);
  else if (!f.editing) fillListening(modal);
  if (fresh) modal.querySelector<HTMLInputElement>("#f-port")?.focus();
}

/** The server choices; they may still be loading when the form opens, or change while it is open. */
function fillServers(modal: HTMLElement, f: ExposeForm): void {
  const server = modal.querySelector<HTMLSelectElement>("#f-server");
  if (!server) return;
  const chosen = server.value || (f.editing ? f.editing.serverId : ui.servers.find((s) => s.builtin)?.id);
  const key = JSON.stringify([chosen, ui.servers.map((s) => [s.id, s.name, s.url])]);
  if (server.dataset.key === key) return;
  server.dataset.key = key;
  replace(
    server,
    ui.servers.map((s) => h("option", { value: s.id, selected: s.id === chosen }, `${s.name} (${s.url})`)),
  );
}

/** "Listening on this machine": one click fills the port. */
function fillListening(modal: HTMLElement): void {
  const picker = modal.querySelector<HTMLElement>('[data-testid="listening"]');
  const port = modal.querySelector<HTMLInputElement>("#f-port");
  if (!picker || !port) return;
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
              title: `${owner(l)} on ${l.loopback ? "loopback" : "all interfaces"}${l.exposed ? "; already exposed" : ""}`,
              onclick: () => {
                port.value = String(l.port);
                port.dispatchEvent(new Event("input"));
              },
            },
            h("strong", {}, String(l.port)),
            ` ${l.process ?? "(other user)"}`,
            l.exposed ? h("span", { class: "tag" }, "exposed") : null,
          ),
        ),
  );
}

/** Who listens: a name and pid, or, for another user's process, that it cannot be seen. */
export function owner(l: { pid: number | null; process: string | null }): string {
  return l.process !== null && l.pid !== null
    ? `${l.process} (pid ${l.pid})`
    : "a process of another user (name not visible)";
}

/** After a new tunnel is saved the form only shows its result, so a second Start cannot save a twin. */
function showStarted(modal: HTMLElement, id: string): void {
  const submit = modal.querySelector<HTMLButtonElement>('[data-testid="submit"]');
  const closeBtn = modal.querySelector<HTMLButtonElement>('[data-testid="cancel"]');
  if (submit) {
    submit.remove();
    for (const el of modal.querySelectorAll<HTMLInputElement | HTMLSelectElement>("input, select")) el.disabled = true;
    modal.querySelector(".picker-title")?.remove();
    modal.querySelector('[data-testid="listening"]')?.remove();
    if (closeBtn) {
      closeBtn.textContent = "Done";
      closeBtn.focus();
    }
  }
  const result = modal.querySelector<HTMLElement>('[data-testid="expose-result"]');
  const t = ui.tunnels.find((x) => x.id === id);
  if (!result || !t) return;
  const url = t.status.state === "online" ? t.status.url : null;
  const key = url ? `online ${url} ${ui.qrFor === id}` : `status ${statusLabel(t.status)}`;
  if (result.dataset.key === key) return;
  result.dataset.key = key;
  if (url) {
    replace(
      result,
      h("div", { class: "muted" }, "Your tunnel is online:"),
      h("div", { class: "url big", "data-testid": "result-url" }, url),
      t.kind === "tcp" ? h("div", { class: "hint", "data-testid": "result-hint" }, tcpHint(url)) : null,
      h(
        "div",
        { class: "actions" },
        h("button", { type: "button", "data-testid": "result-copy", onclick: () => api.copyUrl(t.id).catch(reportError) }, "Copy"),
        qrButton(t.id),
        // A TCP address is for a TCP client (ssh, psql...), not a browser.
        t.kind === "tcp"
          ? null
          : h("button", { type: "button", onclick: () => api.openUrl(t.id).catch(reportError) }, "Open in browser"),
      ),
      ui.qrFor === id ? qrBox(url) : null,
    );
  } else {
    replace(result, h("div", { "data-testid": "result-status" }, `Saved. Status: ${statusLabel(t.status)}`));
  }
}

/** How to reach a TCP address: clients take host and port apart (`ssh -p PORT user@HOST`). */
function tcpHint(url: string): string {
  const m = /^tcp:\/\/(.+):(\d+)$/.exec(url);
  return m ? `Connect any TCP client to host ${m[1]}, port ${m[2]}.` : "Connect any TCP client to this address.";
}

/** The button beside Copy that shows or hides the URL's QR code. */
export function qrButton(id: string): HTMLButtonElement {
  const open = ui.qrFor === id;
  return h(
    "button",
    {
      type: "button",
      "data-testid": "qr-toggle",
      "aria-expanded": String(open),
      "aria-label": open ? "Hide the QR code" : "Show a QR code of the URL",
      title: "A QR code of the URL, to open it on a phone",
      onclick: (ev: Event) => {
        ev.stopPropagation();
        toggleQr(id);
      },
    },
    "QR",
  );
}

/** The QR code of `url`, with the URL under it as text. */
export function qrBox(url: string): HTMLElement {
  return h("figure", { class: "qr", "data-testid": "qr" }, qrSvg(url), h("figcaption", { class: "muted" }, url));
}

function buildForm(modal: HTMLElement, editing: TunnelView | null): void {
  // HTTP or TCP; a saved tunnel keeps its kind (delete it and expose again to change it).
  const kindRadio = (kind: "http" | "tcp") =>
    h("input", {
      type: "radio",
      name: "f-kind",
      value: kind,
      "data-testid": `kind-${kind}`,
      checked: (editing?.kind ?? "http") === kind,
      disabled: editing !== null,
    });
  const kindHttp = kindRadio("http");
  const kindTcp = kindRadio("tcp");
  const kind = (): "http" | "tcp" => (kindTcp.checked ? "tcp" : "http");
  const remote = h("input", {
    id: "f-remote",
    "data-testid": "remote-port",
    inputmode: "numeric",
    autocomplete: "off",
    "aria-describedby": "f-remote-hint",
    value: editing?.remotePort === null || editing?.remotePort === undefined ? "" : String(editing.remotePort),
  });
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
  // How to talk to the local service (`ggrok http https://...`, --upstream-insecure,
  // --upstream-protocol http2, --host-header VALUE).
  const hostValue = h("input", {
    id: "f-host-header",
    autocomplete: "off",
    "data-testid": "host-header",
    placeholder: "e.g. myapp.test",
    value: editing?.hostHeader ?? "",
    disabled: editing?.keepHost ?? false,
  });
  keepHost.addEventListener("change", () => {
    hostValue.disabled = keepHost.checked;
  });
  const tls = h("input", { type: "checkbox", "data-testid": "local-tls", checked: editing?.localTls ?? false });
  const insecure = h("input", {
    type: "checkbox",
    "data-testid": "upstream-insecure",
    checked: editing?.upstreamInsecure ?? false,
    disabled: !(editing?.localTls ?? false),
  });
  tls.addEventListener("change", () => {
    insecure.disabled = !tls.checked;
  });
  const http2 = h("input", { type: "checkbox", "data-testid": "upstream-http2", checked: editing?.upstreamHttp2 ?? false });
  const clearAuth = h("input", { type: "checkbox", "data-testid": "clear-auth" });
  const picker = h("div", { class: "picker", "data-testid": "listening" });
  const onLaunch = h("input", {
    id: "f-launch",
    type: "checkbox",
    "data-testid": "start-on-launch",
    checked: editing?.startOnLaunch ?? false,
  });
  const errs: Record<string, HTMLElement> = {
    port: h("div", { class: "field-error", "data-testid": "port-error", role: "alert" }),
    subdomain: h("div", { class: "field-error", "data-testid": "subdomain-error", role: "alert" }),
    remotePort: h("div", { class: "field-error", "data-testid": "remote-port-error", role: "alert" }),
    host: h("div", { class: "field-error", "data-testid": "host-error", role: "alert" }),
    serverId: h("div", { class: "field-error", "data-testid": "server-error", role: "alert" }),
    basicAuth: h("div", { class: "field-error", "data-testid": "basic-auth-error", role: "alert" }),
    allowIps: h("div", { class: "field-error", "data-testid": "allow-ips-error", role: "alert" }),
    hostHeader: h("div", { class: "field-error", "data-testid": "host-header-error", role: "alert" }),
    form: h("div", { class: "field-error", "data-testid": "form-error", role: "alert" }),
  };
  const result = h("div", { class: "result", "data-testid": "expose-result" });
  const submit = h("button", { type: "submit", class: "primary", "data-testid": "submit" }, editing ? "Save" : "Start tunnel");

  const check = (): { port: number; name: string | null; remote: number | null } | null => {
    for (const e of Object.values(errs)) e.textContent = "";
    const tcp = kind() === "tcp";
    const p = validatePort(port.value);
    // Only the fields of the chosen kind count: a name typed before switching to TCP is unused.
    const s = tcp ? { name: null } : validateSubdomain(sub.value);
    const r = tcp ? validateRemotePort(remote.value) : { port: null };
    if ("error" in p) errs.port.textContent = p.error;
    if ("error" in s) errs.subdomain.textContent = s.error;
    if ("error" in r) errs.remotePort.textContent = r.error;
    if ("error" in p || "error" in s || "error" in r) return null;
    if (tcp) {
      const twin = ui.tunnels.find(
        (t) => t.id !== editing?.id && t.serverId === server.value && t.kind === "tcp" && r.port !== null && t.remotePort === r.port,
      );
      if (twin) {
        errs.remotePort.textContent = `another saved tunnel already uses port ${r.port} on this server`;
        return null;
      }
      return { port: p.port, name: null, remote: r.port };
    }
    // The backend refuses it too; said here before anything is sent.
    const twin = ui.tunnels.find(
      (t) => t.id !== editing?.id && t.serverId === server.value && s.name !== null && t.subdomain === s.name,
    );
    if (twin) {
      errs.subdomain.textContent = `another saved tunnel already uses ${s.name} on this server`;
      return null;
    }
    return { port: p.port, name: s.name, remote: null };
  };
  port.addEventListener("input", () => {
    const p = validatePort(port.value);
    errs.port.textContent = "error" in p && port.value !== "" ? p.error : "";
  });
  remote.addEventListener("input", () => {
    const r = validateRemotePort(remote.value);
    errs.remotePort.textContent = "error" in r ? r.error : "";
  });
  sub.addEventListener("input", () => {
    const s = validateSubdomain(sub.value);
    errs.subdomain.textContent = "error" in s ? s.error : "";
  });

  const form = h(
    "form",
    { class: "card form", "data-testid": "expose-form", "data-kind": kind(), novalidate: true },
    h("h2", {}, editing ? "Edit tunnel" : "Expose port"),
    h(
      "div",
      { class: "kinds", role: "radiogroup", "aria-label": "What to forward" },
      h("label", { title: "Web apps and APIs: a public http:// URL with the traffic inspector" }, kindHttp, "HTTP"),
      h("label", { title: "Any TCP service (SSH, a database, a game server): a public tcp:// address" }, kindTcp, "TCP"),
    ),
    editing ? null : h("div", { class: "picker-title muted" }, "Listening on this machine"),
    editing ? null : picker,
    h("label", { for: "f-port" }, "Local port ", h("span", { class: "hint", id: "f-port-hint" }, "the port your app listens on, e.g. 3000")),
    port,
    errs.port,
    h(
      "div",
      { class: "http-only" },
      h("label", { for: "f-sub" }, "Subdomain ", h("span", { class: "hint", id: "f-sub-hint" }, "optional; empty lets the server pick one")),
      sub,
      errs.subdomain,
    ),
    h(
      "div",
      { class: "tcp-only" },
      h(
        "label",
        { for: "f-remote" },
        "Public port ",
        h(
          "span",
          { class: "hint", id: "f-remote-hint" },
          editing?.givenPort
            ? `optional; empty asks for ${editing.givenPort} again`
            : "optional; empty lets the server pick a free one",
        ),
      ),
      remote,
      errs.remotePort,
    ),
    h("label", { for: "f-server" }, "Server"),
    server,
    errs.serverId,
    h("label", { for: "f-host" }, "Local host"),
    host,
    errs.host,
    h("label", { class: "check" }, onLaunch, " Start on launch"),
    h(
      "details",
      {
        class: "more",
        "data-testid": "more",
        open: Boolean(
          editing &&
            (editing.basicAuthUser ||
              editing.allowIps.length ||
              editing.keepHost ||
              editing.localTls ||
              editing.upstreamHttp2 ||
              editing.hostHeader),
        ),
      },
      h("summary", {}, "More"),
      h(
        "label",
        { for: "f-auth", class: "http-only" },
        "Basic auth ",
        h(
          "span",
          { class: "hint" },
          editing?.basicAuthUser ? `user:password; empty keeps the login of ${editing.basicAuthUser}` : "user:password visitors must give",
        ),
      ),
      h("div", { class: "http-only" }, auth),
      editing?.basicAuthUser ? h("label", { class: "check http-only" }, clearAuth, " Remove the login") : null,
      errs.basicAuth,
      h("label", { for: "f-allow" }, "Allowed IPs ", h("span", { class: "hint" }, "addresses or CIDR ranges, comma-separated; empty allows all")),
      allow,
      errs.allowIps,
      h("label", { class: "check http-only" }, keepHost, " Keep the Host header (pass the public host to the local service)"),
      h(
        "label",
        { for: "f-host-header", class: "http-only" },
        "Host header value ",
        h("span", { class: "hint" }, "optional; what the local service gets instead of its host:port"),
      ),
      h("div", { class: "http-only" }, hostValue),
      errs.hostHeader,
      h("label", { class: "check http-only" }, tls, " The local service speaks HTTPS"),
      h("label", { class: "check http-only" }, insecure, " Accept its certificate whoever signed it (self-signed development ones)"),
      h("label", { class: "check http-only" }, http2, " HTTP/2 to the local service (gRPC)"),
    ),
    errs.form,
    h(
      "div",
      { class: "actions" },
      submit,
      h("button", { type: "button", "data-testid": "cancel", onclick: closeExpose }, "Close"),
    ),
    result,
  );
  for (const radio of [kindHttp, kindTcp]) {
    radio.addEventListener("change", () => {
      form.dataset.kind = kind();
      for (const e of Object.values(errs)) e.textContent = "";
    });
  }
  form.addEventListener("submit", (ev) => {
    ev.preventDefault();
    if (ui.exposeForm?.started || submit.disabled) return;
    const ok = check();
    if (!ok) return;
    submit.disabled = true;
    replace(result, h("span", { class: "muted" }, "Starting…"));
    const tcp = kind() === "tcp";
    const input = {
      kind: kind(),
      remotePort: ok.remote,
      serverId: server.value,
      subdomain: ok.name,
      localHost: host.value.trim() || null,
      localPort: ok.port,
      startOnLaunch: onLaunch.checked,
      basicAuth: tcp ? (editing ? null : "") : clearAuth.checked ? "" : auth.value === "" ? (editing ? null : "") : auth.value,
      allowIps: allow.value.split(/[\s,]+/).filter(Boolean),
      keepHost: !tcp && keepHost.checked,
      localTls: !tcp && tls.checked,
      upstreamInsecure: !tcp && tls.checked && insecure.checked,
      upstreamHttp2: !tcp && http2.checked,
      hostHeader: tcp || keepHost.checked ? null : hostValue.value.trim() || null,
    };
    upsertTunnel(() => (editing ? api.updateTunnel(editing.id, input) : api.expose(input)))
      .then(async (t) => {
        if (editing) {
          closeExpose();
          return;
        }
        exposeStarted(t.id);
        await select(t.id);
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
  replace(modal, h("div", { class: "backdrop", onclick: (e: Event) => e.target === e.currentTarget && closeExpose() }, form));
}
