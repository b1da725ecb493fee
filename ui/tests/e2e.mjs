// End to end: the real desktop app (debug build with assets embedded) under Xvfb, driven by
// tauri-driver + WebKitWebDriver, against its embedded ggrok server and a real origin.
// Expose a port through the form, fetch through the public URL, see the row, replay it, stop
// the tunnel, see the public URL answer 404, start it again at once under the same URL; expose
// a TCP port, connect to its public port and see the connection listed (and the tray list it); close
// the window and see the tunnel still serve, stop and start it from the tray menu (a test tray,
// ui/tests/sni_host.py, over D-Bus), launch the app again and see the window back.
// Screenshots go to docs/screenshots/.
//
// Run inside a display: `xvfb-run -a node ui/tests/e2e.mjs` (see scripts/test.sh).
// Env: GGROK_APP (binary; default target/debug/ggrok-desktop), TAURI_DRIVER (default tauri-driver),
// E2E_SECOND_LAUNCHES (how many times the second-launch check runs; default 3).
// A small WebDriver client over fetch: no extra npm dependencies.
import assert from "node:assert/strict";
import { execFile, spawn } from "node:child_process";
import { mkdtemp, mkdir, rm, writeFile } from "node:fs/promises";
import http from "node:http";
import readline from "node:readline";
import net from "node:net";
import { tmpdir } from "node:os";
import { join, resolve } from "node:path";
import { fileURLToPath } from "node:url";

const ROOT = resolve(fileURLToPath(new URL("../..", import.meta.url)));
const APP = resolve(
  process.env.GGROK_APP ?? join(process.env.CARGO_TARGET_DIR ?? join(ROOT, "target"), "debug", "ggrok-desktop"),
);
const SHOTS = join(ROOT, "docs", "screenshots");
const DEADLINE_MS = 20_000;

const freePort = () =>
  new Promise((res, rej) => {
    const s = net.createServer().listen(0, "127.0.0.1", () => {
      const { port } = s.address();
      s.close(() => res(port));
    });
    s.on("error", rej);
  });

async function until(what, f) {
  const end = Date.now() + DEADLINE_MS;
  for (;;) {
    try {
      const v = await f();
      if (v) return v;
    } catch (e) {
      if (Date.now() > end) throw new Error(`${what}: ${e}`);
    }
    if (Date.now() > end) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 100));
  }
}

/** Runs a command; resolves with its stdout (rejects on a non-zero exit). */
function run(cmd, args, env = process.env) {
  return new Promise((res, rej) =>
    execFile(cmd, args, { env }, (e, stdout) => (e && e.code !== 1 ? rej(e) : res(stdout))),
  );
}

/** X11 ids of the app's visible windows (xdotool exits 1 when there are none). */
async function visibleWindows() {
  const out = await run("xdotool", ["search", "--onlyvisible", "--name", "^ggrok$"]);
  return out.split("\n").filter((l) => l.trim() !== "");
}

/** GET through 127.0.0.1:port with a Host header, so NAME.localhost needs no resolver. */
function get(port, host, path) {
  return new Promise((res, rej) => {
    const req = http.request({ host: "127.0.0.1", port, path, headers: { host } }, (r) => {
      let body = "";
      r.setEncoding("utf8");
      r.on("data", (c) => (body += c));
      r.on("end", () => res({ status: r.statusCode, body }));
    });
    req.on("error", rej);
    req.end();
  });
}

/** Connects to 127.0.0.1:port, sends `text`, half-closes and resolves with what came back. */
function tcpExchange(port, text) {
  return new Promise((res, rej) => {
    const c = net.connect(port, "127.0.0.1", () => c.end(text));
    let got = "";
    c.setEncoding("utf8");
    c.on("data", (d) => (got += d));
    c.on("end", () => res(got));
    c.on("error", rej);
  });
}

/** A test system tray (ui/tests/sni_host.py) the app's tray icon registers with; reads and
 * clicks the tray menu over D-Bus as a desktop panel does. */
class Tray {
  constructor() {
    this.proc = spawn("/usr/bin/python3", [join(ROOT, "ui", "tests", "sni_host.py")], {
      stdio: ["pipe", "pipe", "inherit"],
    });
    this.seen = [];
    readline.createInterface({ input: this.proc.stdout }).on("line", (l) => this.seen.push(JSON.parse(l)));
  }
  /** The first message (seen so far or later) that `pred` accepts; it is consumed. */
  next(what, pred) {
    return until(what, async () => {
      const i = this.seen.findIndex((m) => m.error || pred(m));
      if (i < 0) return null;
      const [m] = this.seen.splice(i, 1);
      if (m.error) throw new Error(`tray: ${m.error}`);
      return m;
    });
  }
  async menu() {
    this.proc.stdin.write(JSON.stringify({ menu: true }) + "\n");
    return (await this.next("tray menu", (m) => m.items)).items;
  }
  /** Clicks the tray's toggle for `name` once it shows `state` (1 checked, 0 not). */
  async toggle(name, state) {
    const item = await until(`tray toggle for ${name} in state ${state}`, async () =>
      (await this.menu()).find((i) => i.toggle === state && i.label.includes(name)),
    );
    this.proc.stdin.write(JSON.stringify({ click: item.id }) + "\n");
    await this.next("tray click", (m) => m.clicked === item.id);
  }
  /** Clicks the menu item labelled `label`. */
  async click(label) {
    const item = await until(`tray item ${label}`, async () => (await this.menu()).find((i) => i.label === label));
    this.proc.stdin.write(JSON.stringify({ click: item.id }) + "\n");
    await this.next("tray click", (m) => m.clicked === item.id);
  }
  stop() {
    this.proc.kill();
  }
}

class Driver {
  constructor(base) {
    this.base = base;
  }
  async cmd(method, path, body) {
    const r = await fetch(`${this.base}${path}`, {
      method,
      headers: { "content-type": "application/json" },
      body: body === undefined ? undefined : JSON.stringify(body),
    });
    const json = await r.json();
    if (!r.ok) throw new Error(`${method} ${path}: ${JSON.stringify(json.value)}`);
    return json.value;
  }
  async start(app) {
    const v = await this.cmd("POST", "/session", {
      capabilities: {
        alwaysMatch: { browserName: "wry", "tauri:options": { application: app } },
      },
    });
    this.sid = `/session/${v.sessionId}`;
  }
  s(path, method = "GET", body) {
    return this.cmd(method, `${this.sid}${path}`, body);
  }
  /** The first element with this test id, waited for: views render at the next animation frame. */
  async find(testid) {
    return this.findCss(`[data-testid="${testid}"]`);
  }
  async findCss(css) {
    const v = await until(css, () => this.s("/element", "POST", { using: "css selector", value: css }));
    return Object.values(v)[0];
  }
  async all(testid) {
    const v = await this.s("/elements", "POST", { using: "css selector", value: `[data-testid="${testid}"]` });
    return v.map((e) => Object.values(e)[0]);
  }
  text(el) {
    return this.s(`/element/${el}/text`);
  }
  click(el) {
    return this.s(`/element/${el}/click`, "POST", {});
  }
  /** Finds and clicks the element matching this selector (the `n`th of them); finds it again when
   * a view re-rendered between the two steps and the element went stale. */
  async tapCss(css, n = 0) {
    let clicked = false;
    await until(`click ${css}`, async () => {
      const v = await this.s("/elements", "POST", { using: "css selector", value: css });
      if (v.length <= n) return false;
      try {
        await this.click(Object.values(v[n])[0]);
      } catch (e) {
        // Only a stale element is tried again: any other failure may have clicked already.
        if (/stale element/i.test(String(e))) return false;
        clicked = e;
        return true;
      }
      clicked = true;
      return true;
    });
    if (clicked !== true) throw clicked;
  }
  tap(testid, n = 0) {
    return this.tapCss(`[data-testid="${testid}"]`, n);
  }
  type(el, text) {
    return this.s(`/element/${el}/value`, "POST", { text });
  }
  js(script, args = []) {
    return this.s("/execute/sync", "POST", { script, args });
  }
  async shot(name) {
    const b64 = await this.s("/screenshot");
    await writeFile(join(SHOTS, name), Buffer.from(b64, "base64"));
  }
  /** textContent of every element with this test id (independent of scrolling/visibility). */
  texts(testid) {
    return this.js(
      "return [...document.querySelectorAll(`[data-testid='${arguments[0]}']`)].map((e) => e.textContent)",
      [testid],
    );
  }
  async waitText(testid, pred) {
    return until(`${testid}`, async () => {
      const [t] = await this.texts(testid);
      return t !== undefined && pred(t) ? t : null;
    });
  }
  quit() {
    return this.sid ? this.cmd("DELETE", this.sid).catch(() => {}) : Promise.resolve();
  }
}

async function main() {
  await mkdir(SHOTS, { recursive: true });
  const configDir = await mkdtemp(join(tmpdir(), "ggrok-e2e-"));

  // The local service being exposed.
  let hits = 0;
  const origin = http.createServer((req, res) => {
    hits++;
    res.writeHead(200, { "content-type": "application/json" });
    res.end(JSON.stringify({ hello: "from origin", path: req.url }));
  });
  await new Promise((r) => origin.listen(0, "127.0.0.1", r));
  const originPort = origin.address().port;

  // A TCP service to expose: it echoes each connection until the visitor closes.
  const echo = net.createServer((c) => c.pipe(c));
  await new Promise((r) => echo.listen(0, "127.0.0.1", r));
  const echoPort = echo.address().port;

  const [port, nativePort] = [await freePort(), await freePort()];
  // HOME too: the window-state and log files live under it, and a test must not touch the user's.
  const appEnv = {
    ...process.env,
    GGROK_CONFIG_DIR: configDir,
    GGROK_NO_KEYRING: "1",
    GGROK_SERVER_PORT: "0",
    HOME: configDir,
    XDG_CONFIG_HOME: join(configDir, ".config"),
    XDG_DATA_HOME: join(configDir, ".local", "share"),
    // The app turns WebKit's accelerated compositing off (src-tauri/src/webview.rs); without
    // it, WebKitWebDriver stops answering a few commands into this test (seen with WebKitGTK
    // 2.50). The install test (scripts/install-test.sh) checks that the app as shipped draws.
    WEBKIT_DISABLE_COMPOSITING_MODE: "0",
  };
  const driverProc = spawn(
    process.env.TAURI_DRIVER ?? "tauri-driver",
    ["--port", String(port), "--native-port", String(nativePort)],
    {
      stdio: ["ignore", "inherit", "inherit"],
      // The app inherits this through WebKitWebDriver: its own settings dir, no keyring, and
      // the embedded server on an ephemeral port.
      env: appEnv,
    },
  );
  const driver = new Driver(`http://127.0.0.1:${port}`);
  // Before the app starts, as a panel would be.
  const tray = new Tray();
  try {
    await tray.next("test tray ready", (m) => m.ready);
    await until("tauri-driver", () => fetch(`http://127.0.0.1:${port}/status`).then((r) => r.ok));
    await driver.start(APP);

    const builtin = await driver.waitText("builtin-url", (t) => /localhost:\d+/.test(t));
    const serverPort = Number(builtin.match(/localhost:(\d+)/)[1]);
    console.log(`app up; embedded server on ${serverPort}`);
    await tray.next("the app's tray icon", (m) => m.registered);
    await driver.waitText("no-tunnels", (t) => t.includes("No tunnels"));

    // Expose through the form.
    await driver.tap("expose");
    // "Listening on this machine" lists the origin (this node process).
    const pick = `[data-testid="pick-port"][data-port="${originPort}"]`;
    await driver.findCss(pick);
    await driver.shot("port-picker.png");
    await driver.type(await driver.find("port"), "99999");
    await driver.waitText("port-error", (t) => t.includes("between 1 and 65535"));
    await driver.js("document.querySelector('[data-testid=port]').value = ''");
    // A click in the picker fills the port.
    await driver.tapCss(pick);
    assert.equal(await driver.js("return document.querySelector('[data-testid=port]').value"), String(originPort));
    await driver.type(await driver.find("subdomain"), "e2e-demo");
    await driver.tap("submit");
    const url = await driver.waitText("result-url", (t) => t.startsWith("http"));
    assert.equal(url, `http://e2e-demo.localhost:${serverPort}`);
    await driver.shot("expose-form.png");
    await driver.tapCss(`[data-testid="expose-result"] [data-testid="qr-toggle"]`);
    await driver.waitText("qr", (t) => t.includes(url));
    await driver.tap("cancel");
    await until("form closed", () => driver.js("return !document.querySelector('[data-testid=expose-form]')"));
    // The card's QR code, beside Copy.
    await driver.tap("qr-toggle");
    await driver.waitText("qr", (t) => t.includes(url));
    await driver.shot("qr-code.png");
    await driver.tap("qr-toggle");

    // Fetch through the public URL; the row appears.
    const xssPath = "/<img src=x onerror=alert(1)>";
    const r = await get(serverPort, `e2e-demo.localhost:${serverPort}`, "/api/hello?x=1");
    assert.equal(r.status, 200);
    assert.deepEqual(JSON.parse(r.body), { hello: "from origin", path: "/api/hello?x=1" });
    await get(serverPort, `e2e-demo.localhost:${serverPort}`, encodeURI(xssPath));
    await until("two rows", async () => (await driver.all("traffic-row")).length === 2);
    const paths = await driver.texts("row-path");
    assert.deepEqual(paths, [encodeURI(xssPath), "/api/hello?x=1"]);
    await driver.waitText("tunnel-count", (t) => t === "2 req");
    assert.equal(await driver.js("return document.querySelectorAll('main img').length"), 0);

    // Inspect and replay.
    // Click a cell: WebKitWebDriver does not treat <tr> as interactable.
    await driver.tap("row-path", 1);
    await driver.waitText("res-body", (t) => t.includes('"hello": "from origin"'));
    await driver.shot("traffic-inspector.png");
    await driver.tap("replay");
    await until("replayed row", async () => (await driver.all("traffic-row")).length === 3);
    assert.equal(hits, 3);
    await driver.shot("main-window.png");

    // Stop: the public URL is gone.
    await driver.tap("toggle");
    await driver.waitText("tunnel-status", (t) => t === "offline");
    const gone = await get(serverPort, `e2e-demo.localhost:${serverPort}`, "/api/hello");
    assert.equal(gone.status, 404);
    assert.equal(hits, 3);

    // Start it again at once: a deliberate stop gave the name up, so the same URL comes back.
    await driver.tap("toggle");
    await driver.waitText("tunnel-status", (t) => t === "online");
    const back = await get(serverPort, `e2e-demo.localhost:${serverPort}`, "/api/hello");
    assert.equal(back.status, 200);
    // The history survived the restart, the new request got an id of its own, and an old row
    // still opens (issue 12 item 1).
    await until("four rows", async () => (await driver.all("traffic-row")).length === 4);
    const ids = await driver.js("return [...document.querySelectorAll('[data-testid=traffic-row]')].map((r) => r.dataset.id)");
    assert.equal(new Set(ids).size, 4, `ids ${ids}`);
    assert.equal((await driver.texts("row-path"))[0], "/api/hello");
    await driver.tap("row-path", 3);
    await driver.waitText("detail-line", (t) => t === "GET /api/hello?x=1");

    // A TCP tunnel: expose a local echo service, connect to the public port, see the
    // connection listed with its bytes and how it ended.
    await driver.tap("expose");
    await driver.tap("kind-tcp");
    await driver.type(await driver.find("port"), String(echoPort));
    await driver.tap("submit");
    const tcpUrl = await driver.waitText("result-url", (t) => t.startsWith("tcp://"));
    const tcpPort = Number(tcpUrl.match(/^tcp:\/\/localhost:(\d+)$/)?.[1]);
    assert.ok(tcpPort > 0, tcpUrl);
    await driver.shot("expose-tcp.png");
    await driver.tap("cancel");
    await driver.waitText("traffic-title", (t) => t === `Connections of tcp:${tcpPort}`);
    assert.equal(await tcpExchange(tcpPort, "hello over tcp"), "hello over tcp");
    await driver.waitText("conn-end", (t) => t === "closed");
    assert.deepEqual(await driver.texts("conn-up"), ["14 B"]);
    assert.deepEqual(await driver.texts("conn-down"), ["14 B"]);
    assert.match((await driver.texts("conn-from"))[0], /^127\.0\.0\.1:\d+$/);
    await until("the TCP card counts the connection", async () => (await driver.texts("tunnel-count")).includes("1 conn"));
    await driver.shot("tcp-connections.png");
    await until("the tray lists the TCP tunnel", async () => (await tray.menu()).some((i) => i.label.includes(`tcp:${tcpPort}`)));
    // Back to the HTTP tunnel's traffic for what follows.
    await driver.tap("tunnel-name", 0);
    await driver.waitText("traffic-title", (t) => t === "Traffic of e2e-demo");

    // Closing the window (a window manager's close button: WM_DELETE_WINDOW) hides it; the app
    // and its tunnel keep running in the tray.
    const [win] = await until("a visible window", async () => {
      const w = await visibleWindows();
      return w.length ? w : null;
    });
    await run("python3", [join(ROOT, "ui", "tests", "x11_close.py"), win]);
    await until("window hidden", async () => (await visibleWindows()).length === 0);
    const hidden = await get(serverPort, `e2e-demo.localhost:${serverPort}`, "/api/hello");
    assert.equal(hidden.status, 200, "the tunnel still serves with the window closed");

    // The tray toggles the tunnel with the window closed: its menu item is checked while the
    // tunnel runs; a click stops it (the public URL answers 404), another starts it again.
    const status = () => get(serverPort, `e2e-demo.localhost:${serverPort}`, "/api/hello").then((r) => r.status);
    await tray.toggle("e2e-demo", 1);
    await until("tunnel stopped from the tray", async () => (await status()) === 404);
    await tray.toggle("e2e-demo", 0);
    await until("tunnel started from the tray", async () => (await status()) === 200);

    // Launching the app again shows the running one's window; the second process exits, every
    // time (it once died by a signal: see the comment on the single-instance plugin in lib.rs).
    const launches = Number(process.env.E2E_SECOND_LAUNCHES ?? 3);
    for (let i = 0; i < launches; i++) {
      const second = spawn(APP, [], { env: appEnv, stdio: ["ignore", "ignore", "pipe"] });
      let err = "";
      second.stderr.on("data", (c) => (err += c));
      const [code, signal] = await new Promise((r) => second.on("exit", (c, sig) => r([c, sig])));
      assert.deepEqual({ code, signal }, { code: 0, signal: null }, `second launch ${i + 1} of ${launches}: ${err}`);
      await until("window shown again", async () => (await visibleWindows()).length === 1);
    }
    await driver.waitText("tunnel-status", (t) => t === "online");

    // Size and position survive Quit and a new start (tauri-plugin-window-state saves on exit).
    const wanted = { x: 60, y: 40, width: 900, height: 620 };
    await driver.s("/window/rect", "POST", wanted);
    const before = await until("window moved and resized", async () => {
      const r = await driver.s("/window/rect");
      return r.width === wanted.width && r.height === wanted.height ? r : null;
    });
    await tray.click("Quit");
    await until("app gone", async () => (await visibleWindows()).length === 0 && !(await get(serverPort, "localhost", "/healthz").then(() => true, () => false)));
    await driver.quit();
    await driver.start(APP);
    await driver.waitText("tunnel-status", (t) => t.length > 0);
    const after = await driver.s("/window/rect");
    assert.deepEqual(
      { x: after.x, y: after.y, width: after.width, height: after.height },
      { x: before.x, y: before.y, width: before.width, height: before.height },
      "window geometry restored",
    );
    console.log("e2e: ok");
  } catch (e) {
    await driver.shot("../../target/e2e-failure.png").catch(() => {});
    // What the window said, for a CI log that has no screenshot.
    const text = await driver.js("return document.body.innerText").catch((err) => `(unreadable: ${err})`);
    console.error(`--- window text at the failure ---\n${text}\n---`);
    throw e;
  } finally {
    await driver.quit();
    tray.stop();
    driverProc.kill("SIGTERM");
    origin.close();
    echo.close();
    await rm(configDir, { recursive: true, force: true });
  }
}

main().catch((e) => {
  console.error(e);
  process.exit(1);
});
