// UI tests: the built harness (real UI + fake backend through @tauri-apps/api/mocks) in Debian's
// headless Chromium via playwright-core. Run: npm run test:ui
import assert from "node:assert/strict";
import { createServer } from "node:http";
import { readFile } from "node:fs/promises";
import { extname, join, normalize } from "node:path";
import { after, before, beforeEach, test } from "node:test";
import { fileURLToPath } from "node:url";
import { chromium } from "playwright-core";

const DIST = fileURLToPath(new URL("./dist/", import.meta.url));
const TYPES = { ".html": "text/html", ".js": "text/javascript", ".css": "text/css", ".png": "image/png" };
const CHROMIUM = process.env.CHROMIUM ?? "/usr/bin/chromium";

let server, base, browser, page, dialogs, pageErrors;

before(async () => {
  server = createServer(async (req, res) => {
    const path = normalize(decodeURIComponent(new URL(req.url, "http://x").pathname)).replace(/^(\.\.[/\\])+/, "");
    try {
      const body = await readFile(join(DIST, path === "/" ? "tests/harness.html" : path));
      res.writeHead(200, { "content-type": TYPES[extname(path)] ?? "application/octet-stream" });
      res.end(body);
    } catch {
      res.writeHead(404).end();
    }
  });
  await new Promise((r) => server.listen(0, "127.0.0.1", r));
  base = `http://127.0.0.1:${server.address().port}`;
  browser = await chromium.launch({
    executablePath: CHROMIUM,
    args: [
      "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
      "--disable-component-update", "--disable-sync", "--no-first-run", "--disable-quic",
    ],
  });
});

after(async () => {
  await browser?.close();
  server?.close();
});

// A user action returns once the UI has settled: the backend calls it made are answered and the
// render they asked for is drawn. Checks that follow an action then read what the user would see,
// not a frame that has yet to be drawn.
const ACTIONS = ["click", "dblclick", "fill", "check", "uncheck", "setChecked", "press", "selectOption"];
function settleAfterActions(proto) {
  if (proto.__settles) return;
  proto.__settles = true;
  for (const name of ACTIONS) {
    const act = proto[name];
    proto[name] = async function (...args) {
      const result = await act.apply(this, args);
      const owner = typeof this.page === "function" ? this.page() : this;
      // A page that is gone (closed) has nothing left to settle.
      await owner.evaluate(() => window.__fake?.settled()).catch(() => {});
      return result;
    };
  }
}

beforeEach(async () => {
  page = await browser.newPage();
  settleAfterActions(Object.getPrototypeOf(page));
  settleAfterActions(Object.getPrototypeOf(page.locator("body")));
  dialogs = [];
  pageErrors = [];
  page.on("dialog", (d) => {
    dialogs.push(d.message());
    void d.dismiss();
  });
  page.on("pageerror", (e) => pageErrors.push(String(e)));
  // Nothing may leave loopback.
  await page.route(/^(?!http:\/\/127\.0\.0\.1)/, (r) => r.abort());
  await page.goto(`${base}/tests/harness.html`);
  await page.waitForFunction(() => window.__ready === true);
});

const tid = (id) => `[data-testid="${id}"]`;

async function exposeDemo(sub = "demo", port = "3000") {
  await page.click(tid("expose"));
  await page.fill(tid("port"), port);
  await page.fill(tid("subdomain"), sub);
  await page.click(tid("submit"));
  await page.waitForSelector(tid("result-url"));
}

test("empty list and built-in server", async () => {
  await page.waitForSelector(tid("no-tunnels"));
  assert.match(await page.textContent(tid("builtin-url")), /http:\/\/localhost:7070/);
});

test("expose form validates port and subdomain inline", async () => {
  await page.click(tid("expose"));
  await page.click(tid("submit"));
  assert.match(await page.textContent(tid("port-error")), /Enter the local port/);

  await page.fill(tid("port"), "70000");
  assert.match(await page.textContent(tid("port-error")), /between 1 and 65535/);
  await page.fill(tid("subdomain"), "-bad");
  assert.match(await page.textContent(tid("subdomain-error")), /hyphen/);
  await page.fill(tid("subdomain"), "a.b");
  assert.match(await page.textContent(tid("subdomain-error")), /a–z, 0–9 and hyphens/);
  // The CLI's rule: uppercase is refused with the spelling to use, not changed silently.
  await page.fill(tid("subdomain"), "My-App");
  assert.equal(await page.textContent(tid("subdomain-error")), "Use lowercase: my-app");
  await page.click(tid("submit"));
  const calls = await page.evaluate(() => window.__fake.calls.map((c) => c.cmd));
  assert.ok(!calls.includes("expose"), "invalid input never reaches the backend");

  // A server-side refusal lands next to its field.
  await page.fill(tid("port"), "8080");
  await page.fill(tid("subdomain"), "taken");
  await page.click(tid("submit"));
  await page.waitForFunction(() => document.querySelector('[data-testid="subdomain-error"]').textContent.includes("taken"));
  assert.equal(await page.textContent(tid("port-error")), "");
});

test("expose starts, saves and shows the URL; list shows the tunnel", async () => {
  await exposeDemo("my-app", " 3000 ");
  assert.equal(await page.textContent(tid("result-url")), "http://my-app.localhost:7070");
  const expose = await page.evaluate(() => window.__fake.calls.find((c) => c.cmd === "expose").args.input);
  assert.deepEqual(expose, {
    kind: "http", remotePort: null, serverId: "local", subdomain: "my-app", localHost: "localhost", localPort: 3000, startOnLaunch: false,
    basicAuth: "", allowIps: [], keepHost: false, localTls: false, upstreamInsecure: false, upstreamHttp2: false, hostHeader: null,
  });
  await page.click(tid("result-copy"));
  await page.click(tid("cancel"));

  const card = page.locator(tid("tunnel"));
  assert.equal(await card.count(), 1);
  assert.equal(await card.locator(tid("tunnel-name")).textContent(), "my-app");
  assert.equal(await card.locator(tid("tunnel-target")).textContent(), "→ localhost:3000");
  assert.equal(await card.locator(tid("tunnel-url")).textContent(), "http://my-app.localhost:7070");
  assert.equal(await card.locator(tid("tunnel-status")).textContent(), "online");

  // Status events: reconnect attempt with reason, then the server's refusal.
  await page.evaluate(() => window.__fake.setStatus("1", { state: "reconnecting", attempt: 2, reason: "connection refused" }));
  await page.waitForFunction(() => document.querySelector('[data-testid="tunnel-status"]').textContent === "reconnecting (attempt 2): connection refused");
  await page.evaluate(() => window.__fake.setStatus("1", { state: "failed", kind: "name_taken", message: "the name my-app is in use" }));
  await page.waitForFunction(() => document.querySelector('[data-testid="tunnel-status"]').textContent === "error: the name my-app is in use");

  // Stop / start toggle.
  await page.evaluate(() => window.__fake.setStatus("1", { state: "online", url: "http://my-app.localhost:7070", name: "my-app" }));
  await page.click(tid("toggle"));
  await page.waitForFunction(() => document.querySelector('[data-testid="tunnel-status"]').textContent === "offline");
  assert.equal(await page.locator(tid("tunnel-url")).count(), 0);
  await page.click(tid("toggle"));
  await page.waitForSelector(tid("tunnel-url"));

  // Delete asks first.
  await page.click(tid("delete"));
  assert.equal(await page.locator(tid("tunnel")).count(), 1);
  await page.click(tid("confirm-delete"));
  await page.waitForSelector(tid("no-tunnels"));
  const cmds = await page.evaluate(() => window.__fake.calls.map((c) => c.cmd));
  assert.ok(cmds.includes("delete_tunnel"));
});

test("an answer older than a status event does not undo it", async () => {
  await page.evaluate(() => (window.__fake.race.expose = true));
  await exposeDemo("late");
  assert.equal(await page.textContent(tid("result-url")), "http://late.localhost:7070");
  await page.click(tid("cancel"));
  assert.equal(await page.textContent(tid("tunnel-status")), "online");
});

test("the expose form gets its servers even when they load after it opens", async () => {
  await page.goto(`${base}/tests/harness.html?slow-servers`);
  await page.waitForFunction(() => window.__ready === true);
  await page.click(tid("expose"));
  assert.equal(await page.locator(`${tid("server")} option`).count(), 0);
  await page.fill(tid("port"), "3000");
  await page.evaluate(() => window.__fake.releaseServers());
  await page.waitForFunction(() => document.querySelector('[data-testid="server"]').value === "local");
  await page.click(tid("submit"));
  await page.waitForSelector(tid("result-url"));
});

test("traffic table: live rows, count, filter, detail, replay, and wire data as text", async () => {
  await exposeDemo();
  await page.click(tid("cancel"));
  const xss = "/<img src=x onerror=alert(1)>";
  await page.evaluate((xss) => {
    window.__fake.addTraffic("1", { method: "POST", path: "/api/users", status: 201, size: 14,
      requestHeaders: [["content-type", "application/json"]],
      requestBody: { kind: "json", text: '{\n  "name": "ann"\n}', size: 14, truncated: false },
      responseHeaders: [["content-type", "text/html"], ["x-evil", "<b onmouseover=alert(2)>hi</b>"]],
      responseBody: { kind: "text", text: "<script>alert(3)</script>", size: 25, truncated: false } });
    window.__fake.addTraffic("1", { method: "GET", path: xss, status: 404, size: 9 });
  }, xss);
  await page.waitForFunction(() => document.querySelectorAll('[data-testid="traffic-row"]').length === 2);
  const paths = await page.locator(tid("row-path")).allTextContents();
  assert.deepEqual(paths, [xss, "/api/users"], "newest first, path shown literally");
  assert.equal(await page.textContent(tid("tunnel-count")), "2 req");
  assert.equal(await page.locator("main img").count(), 0, "no element injected");

  await page.fill(tid("filter"), "post");
  await page.waitForFunction(() => document.querySelectorAll('[data-testid="traffic-row"]').length === 1);
  await page.fill(tid("filter"), "nomatch");
  await page.waitForSelector(tid("no-traffic"));
  await page.fill(tid("filter"), "");

  await page.click(`${tid("traffic-row")}:has-text("/api/users")`);
  await page.waitForSelector(tid("req-body"));
  assert.equal(await page.textContent(tid("req-body")), '{\n  "name": "ann"\n}');
  assert.equal(await page.textContent(tid("res-body")), "<script>alert(3)</script>");
  assert.match(await page.textContent(tid("res-headers")), /<b onmouseover=alert\(2\)>hi<\/b>/);
  assert.equal(await page.locator("#app b, #app script").count(), 0);

  await page.click(tid("replay"));
  await page.waitForFunction(() => document.querySelectorAll('[data-testid="traffic-row"]').length === 3);
  assert.equal((await page.locator(tid("row-path")).allTextContents())[0], "/api/users");
  assert.equal(await page.textContent(tid("tunnel-count")), "3 req");

  await page.click(`${tid("traffic-row")}:has-text("onerror")`);
  await page.waitForFunction((xss) => document.querySelector('[data-testid="detail-line"]')?.textContent === `GET ${xss}`, xss);

  assert.deepEqual(dialogs, [], "no script ran");
  assert.deepEqual(pageErrors, []);
});

test("edit & replay, copy as curl, HAR of the listed rows, and a cut body says so", async () => {
  await exposeDemo();
  await page.click(tid("cancel"));
  await page.evaluate(() => {
    window.__fake.addTraffic("1", { method: "POST", path: "/hook", status: 200, size: 3355443,
      requestHeaders: [["content-type", "text/plain"]],
      requestBody: { kind: "text", text: "original", size: 8, captured: 8, truncated: false },
      responseBody: { kind: "text", text: "x".repeat(64), size: 3355443, captured: 1048576, truncated: true } });
    window.__fake.addTraffic("1", { method: "GET", path: "/other" });
  });
  await page.click(`${tid("traffic-row")}:has-text("/hook")`);
  await page.waitForSelector(tid("res-body"));
  assert.equal(await page.textContent(tid("res-body-size")), "Body: text, 1.0 MB of 3.2 MB shown");
  assert.equal(await page.textContent(tid("req-body-size")), "Body: text, 8 B");

  await page.click(tid("copy-curl"));
  await page.waitForFunction(() => document.querySelector('[data-testid="detail-note"]').textContent === "Copied as curl");

  await page.click(tid("edit-replay"));
  assert.equal(await page.inputValue(tid("edit-headers")), "content-type: text/plain");
  assert.equal(await page.inputValue(tid("edit-body")), "original");
  await page.fill(tid("edit-path"), "/hook?again=1");
  await page.fill(tid("edit-headers"), "content-type: application/json\nx-sig: abc");
  await page.fill(tid("edit-body"), '{"edited":true}');
  await page.click(tid("edit-send"));
  await page.waitForFunction(() => document.querySelector('[data-testid="detail-line"]')?.textContent === "POST /hook?again=1");
  const sent = await page.evaluate(() => window.__fake.calls.filter((c) => c.cmd === "replay").at(-1).args);
  assert.deepEqual(sent.edits, {
    method: "POST", path: "/hook?again=1",
    headers: [["content-type", "application/json"], ["x-sig", "abc"]], body: '{"edited":true}',
  });
  assert.equal(await page.locator(tid("edit-form")).count(), 0, "the form closes once sent");
  assert.equal(await page.locator(tid("frames")).count(), 0, "no frames table for plain HTTP");

  // HAR of the rows the filter lists.
  await page.fill(tid("filter"), "hook");
  await page.waitForFunction(() => document.querySelectorAll('[data-testid="traffic-row"]').length === 2);
  await page.click(tid("export-har"));
  await page.waitForFunction(() => document.querySelector('[data-testid="har-note"]').textContent.startsWith("Saved"));
  const har = await page.evaluate(() => window.__fake.calls.find((c) => c.cmd === "export_har").args);
  assert.equal(har.exchanges.length, 2);
  assert.deepEqual(pageErrors, []);
});

test("WebSocket frames: direction, time, kind, size and data as text", async () => {
  await exposeDemo();
  await page.click(tid("cancel"));
  await page.evaluate(() => {
    window.__fake.addTraffic("1", { method: "GET", path: "/ws", status: 101, upgraded: true, framesDropped: 3,
      frames: [
        { fromVisitor: true, atMs: 5, kind: "text", size: 22, text: "<img src=x onerror=alert(9)>", truncated: false },
        { fromVisitor: false, atMs: 1200, kind: "binary", size: 70000, text: "07 07 07", truncated: true },
      ] });
  });
  await page.click(tid("traffic-row"));
  await page.waitForSelector(tid("frames"));
  const rows = await page.locator(`${tid("frame")}`).allInnerTexts();
  assert.equal(rows.length, 2);
  assert.match(rows[0], /→\s+\+5 ms\s+text\s+22 B\s+<img src=x onerror=alert\(9\)>/);
  assert.match(rows[1], /←\s+\+1\.20 s\s+binary\s+68\.4 KB\s+07 07 07…/);
  assert.match(await page.textContent(".frames h3"), /3 more not kept/);
  assert.equal(await page.locator("#app img").count(), 0);
  assert.deepEqual(dialogs, []);
  // Live: frames that pass while the exchange is shown appear without a click.
  const id = await page.evaluate(() => window.__fake.calls.filter((c) => c.cmd === "get_exchange").at(-1).args.exchange);
  await page.evaluate((id) => window.__fake.addFrames("1", id, [
    { fromVisitor: true, atMs: 2500, kind: "text", size: 5, text: "later", truncated: false },
  ]), id);
  await page.waitForFunction(() => document.querySelectorAll('[data-testid="frame"]').length === 3);
  assert.match((await page.locator(tid("frame")).allInnerTexts())[2], /later/);
});

test("traffic table is capped", async () => {
  await exposeDemo();
  await page.click(tid("cancel"));
  await page.evaluate(() => {
    for (let i = 0; i < 520; i++) window.__fake.addTraffic("1", { path: `/r${i}` });
  });
  await page.waitForFunction(() => document.querySelector('[data-testid="tunnel-count"]').textContent === "520 req");
  assert.equal(await page.getAttribute(tid("traffic"), "data-rows"), "500");
  assert.equal((await page.locator(tid("row-path")).first().textContent()), "/r519");
});

const calls = (cmd) => page.evaluate((cmd) => window.__fake.calls.filter((c) => c.cmd === cmd).length, cmd);

test("one submit, one tunnel; the same subdomain twice is refused in the form", async () => {
  await exposeDemo("demo");
  // After success the form only shows the result: Start is gone, Enter and a second submit do nothing.
  assert.equal(await page.locator(tid("submit")).count(), 0);
  await page.evaluate(() => document.querySelector('[data-testid="expose-form"]').requestSubmit());
  await page.keyboard.press("Enter");
  assert.equal(await calls("expose"), 1);
  assert.equal(await page.locator(tid("tunnel")).count(), 1);

  await page.click(tid("expose"));
  await page.fill(tid("port"), "4000");
  await page.fill(tid("subdomain"), "demo");
  await page.click(tid("submit"));
  assert.equal(await page.textContent(tid("subdomain-error")), "another saved tunnel already uses demo on this server");
  assert.equal(await calls("expose"), 1, "never sent");
  // Editing the tunnel itself keeps its name.
  await page.keyboard.press("Escape");
  // Closed at the next animation frame, as every render.
  await page.waitForFunction(() => !document.querySelector('[data-testid="expose-form"]'), null, { timeout: 2000 });
  await page.click(tid("edit"));
  await page.click(tid("submit"));
  await page.waitForFunction(() => !document.querySelector('[data-testid="expose-form"]'));
  assert.equal(await calls("update_tunnel"), 1);
});

test("hints are not placeholders that look like values", async () => {
  await page.click(tid("expose"));
  for (const id of ["port", "subdomain", "host"]) {
    assert.equal(await page.getAttribute(tid(id), "placeholder"), null, id);
  }
  assert.match(await page.textContent("label[for=f-port]"), /e\.g\. 3000/);
  await page.click(tid("submit"));
  assert.match(await page.textContent(tid("port-error")), /Enter the local port/);
});

test("a dead local port is shown on the card", async () => {
  await exposeDemo();
  await page.click(tid("cancel"));
  await page.evaluate(() =>
    window.__fake.setStatus("1", { state: "online", url: "http://demo.localhost:7070", name: "demo" }, "nothing is listening on localhost:3000"));
  await page.waitForSelector(tid("local-warning"));
  assert.equal(await page.textContent(tid("local-warning")), "nothing is listening on localhost:3000");
  assert.equal(await page.locator(`${tid("tunnel")} .dot.warn`).count(), 1, "not a green dot");
  await page.evaluate(() => window.__fake.setStatus("1", { state: "online", url: "http://demo.localhost:7070", name: "demo" }, null));
  await page.waitForFunction(() => !document.querySelector('[data-testid="local-warning"]'));
});

test("a failed tunnel offers Retry, and a token refusal points to Settings", async () => {
  await exposeDemo();
  await page.click(tid("cancel"));
  await page.evaluate(() => window.__fake.setStatus("1", { state: "failed", kind: "unauthorized", message: "this server requires a token" }));
  await page.waitForSelector(tid("retry"));
  assert.equal(await page.locator(tid("toggle")).count(), 0, "no Stop on a failed tunnel");
  await page.click(tid("to-settings"));
  await page.waitForSelector(tid("settings"), { state: "visible" });
  await page.click(tid("settings-toggle"));
  await page.click(tid("retry"));
  await page.waitForSelector(tid("tunnel-url"));
  assert.equal(await calls("start_tunnel"), 1);
});

test("a card's error shows on the card and goes when resolved; banners close", async () => {
  await page.goto(`${base}/tests/harness.html?no-keyring`);
  await page.waitForFunction(() => window.__ready === true);
  await page.waitForSelector(tid("warning"));
  await exposeDemo();
  await page.click(tid("cancel"));
  await page.click(tid("toggle"));
  await page.waitForFunction(() => document.querySelector('[data-testid="tunnel-status"]').textContent === "offline");
  await page.evaluate(() => (window.__fake.fail.start = "cannot reach the server"));
  await page.click(tid("toggle"));
  await page.waitForSelector(tid("card-error"));
  assert.equal(await page.textContent(tid("card-error")), "cannot reach the server");
  assert.equal(await page.locator(tid("error")).count(), 0, "not a banner far away");
  await page.click(tid("toggle"));
  await page.waitForFunction(() => !document.querySelector('[data-testid="card-error"]'));

  await page.click(tid("dismiss"));
  await page.waitForFunction(() => !document.querySelector('[data-testid="warning"]'));
});

test("settings: bad URL next to its field, Test connection, keyring text, remove asks first", async () => {
  await page.goto(`${base}/tests/harness.html?no-keyring`);
  await page.waitForFunction(() => window.__ready === true);
  await page.click(tid("settings-toggle"));
  assert.match(await page.textContent(tid("token-storage")), /memory for this run only/);
  assert.doesNotMatch(await page.textContent(tid("token-storage")), /kept in the system keyring/);
  await page.fill(tid("server-name"), "work");
  await page.fill(tid("server-url"), "tunnel example com");
  await page.click(tid("server-test"));
  await page.waitForFunction(() => document.querySelector('[data-testid="server-url-error"]').textContent !== "");
  assert.match(await page.textContent(tid("server-url-error")), /bad server URL/);
  await page.click(tid("server-save"));
  assert.equal(await page.locator(tid("server-row")).count(), 1, "not saved");

  await page.fill(tid("server-url"), "https://www.example.org");
  await page.click(tid("server-test"));
  await page.waitForSelector(`${tid("test-result")}[data-outcome="not_ggrok"]`);
  assert.match(await page.textContent(tid("test-result")), /not a ggrok server: GET \/healthz gave 404/);
  await page.fill(tid("server-url"), "https://tunnel.example.com");
  await page.fill(tid("server-token-input"), "wrong");
  await page.click(tid("server-test"));
  await page.waitForFunction(() => document.querySelector('[data-testid="test-result"]').textContent.includes("requires a token"));
  await page.fill(tid("server-token-input"), "right");
  await page.click(tid("server-test"));
  await page.waitForFunction(() => document.querySelector('[data-testid="test-result"]').textContent.includes("accepted"));
  await page.click(tid("server-save"));
  await page.waitForFunction(() => document.querySelectorAll('[data-testid="server-row"]').length === 2);

  await page.click(tid("remove-server"));
  assert.equal(await page.locator(tid("server-row")).count(), 2, "asks first");
  await page.click(tid("confirm-remove"));
  await page.waitForFunction(() => document.querySelectorAll('[data-testid="server-row"]').length === 1);
});

test("the traffic pane names its tunnel and marks replays", async () => {
  await exposeDemo("named");
  await page.click(tid("cancel"));
  assert.equal(await page.textContent(tid("traffic-title")), "Traffic of named");
  await page.evaluate(() => window.__fake.addTraffic("1", { path: "/orig" }));
  await page.click(`${tid("traffic-row")}:has-text("/orig")`);
  await page.click(tid("replay"));
  await page.waitForFunction(() => document.querySelectorAll('[data-testid="traffic-row"]').length === 2);
  await page.waitForSelector(`${tid("traffic-row")}.replayed`);
  assert.equal(await page.locator(`${tid("traffic-row")}.replayed`).count(), 1);
  assert.equal(await page.getAttribute(`${tid("traffic-row")}.replayed`, "data-id"), String(await page.evaluate(() => Math.max(...[...document.querySelectorAll('[data-testid="traffic-row"]')].map((r) => Number(r.dataset.id))))));
});

test("rows are kept between renders and 5,000 rows are virtualised", async () => {
  await page.goto(`${base}/tests/harness.html?cap=5000`);
  await page.waitForFunction(() => window.__ready === true);
  await exposeDemo();
  await page.click(tid("cancel"));
  await page.evaluate(() => window.__fake.addTraffic("1", { path: "/first" }));
  await page.waitForSelector(tid("traffic-row"));
  await page.evaluate(() => (document.querySelector('[data-testid="traffic-row"]').__kept = true));
  await page.evaluate(() => window.__fake.addTraffic("1", { path: "/second" }));
  await page.waitForFunction(() => document.querySelectorAll('[data-testid="traffic-row"]').length === 2);
  assert.equal(await page.evaluate(() => [...document.querySelectorAll('[data-testid="traffic-row"]')].find((r) => r.textContent.includes("/first")).__kept), true,
    "an existing row is not rebuilt");

  await page.evaluate(() => {
    for (let i = 0; i < 5000; i++) window.__fake.addTraffic("1", { path: `/r${i}` });
  });
  await page.waitForFunction(() => document.querySelector('[data-testid="traffic"]').dataset.rows === "5000");
  const inDom = await page.locator(tid("traffic-row")).count();
  assert.ok(inDom < 120, `${inDom} rows in the DOM`);
  await page.evaluate(() => { const t = document.querySelector('[data-testid="traffic"]'); t.scrollTop = t.scrollHeight; });
  await page.waitForFunction(() => [...document.querySelectorAll('[data-testid="row-path"]')].some((p) => p.textContent === "/r0"));
});

for (const [width, height] of [[1100, 740], [720, 480]]) {
  test(`layout at ${width}×${height}: no page scroll under a banner, columns fit, paths ellipsised`, async () => {
    await page.setViewportSize({ width, height });
    await page.goto(`${base}/tests/harness.html?no-keyring`);
    await page.waitForFunction(() => window.__ready === true);
    await page.waitForSelector(tid("warning"));
    await exposeDemo();
    await page.click(tid("cancel"));
    const long = `/api/${"very-long-segment/".repeat(20)}end?query=${"x".repeat(100)}`;
    await page.evaluate((long) => {
      window.__fake.addTraffic("1", { path: long, responseBody: { kind: "text", text: "y\n".repeat(300), size: 600, truncated: false } });
      for (let i = 0; i < 60; i++) window.__fake.addTraffic("1", { path: `/r${i}` });
    }, long);
    await page.waitForFunction(() => document.querySelector('[data-testid="traffic"]').dataset.rows === "61");
    await page.evaluate(() => { const t = document.querySelector('[data-testid="traffic"]'); t.scrollTop = t.scrollHeight; });
    const cell = page.locator(`${tid("row-path")}[title="${long}"]`);
    await cell.waitFor();
    await cell.click();
    await page.waitForSelector(tid("res-body"));
    await page.mouse.move(width - 100, height - 40);
    for (let i = 0; i < 5; i++) await page.mouse.wheel(0, 400);
    const m = await page.evaluate(() => {
      const row = document.querySelector('[data-testid="traffic-row"]').getBoundingClientRect();
      const path = document.querySelector('[data-testid="row-path"]');
      const lastCells = [...document.querySelectorAll(".thead .th")].map((c) => c.getBoundingClientRect().right);
      const card = document.querySelector('[data-testid="tunnel"] .actions');
      return {
        pageScroll: document.scrollingElement.scrollTop,
        scrollable: document.scrollingElement.scrollHeight - innerHeight,
        headerTop: document.querySelector("header").getBoundingClientRect().top,
        exposeVisible: document.querySelector('[data-testid="expose"]').getBoundingClientRect().bottom > 0,
        rowRight: row.right,
        colsRight: Math.max(...lastCells),
        columns: lastCells.length,
        cardWraps: card.scrollWidth > card.clientWidth || [...card.children].some((b) => b.getBoundingClientRect().top !== card.children[0].getBoundingClientRect().top),
        width: innerWidth,
        overflowX: document.scrollingElement.scrollWidth - innerWidth,
        ellipsis: getComputedStyle(path).textOverflow,
      };
    });
    assert.equal(m.pageScroll, 0);
    assert.ok(m.scrollable <= 0, `page scrolls by ${m.scrollable}px`);
    assert.equal(m.headerTop, 0);
    assert.ok(m.exposeVisible);
    assert.equal(m.columns, 6);
    assert.ok(m.colsRight <= m.width, `columns end at ${m.colsRight} of ${m.width}`);
    assert.ok(m.overflowX <= 0, "no sideways scroll");
    assert.equal(m.ellipsis, "ellipsis");
    assert.equal(m.cardWraps, false, "card buttons on one line");
    assert.equal(await cell.getAttribute("title"), long, "full path in the tooltip");
  });
}

test("a tunnel without a fixed subdomain is labelled by the name it was given, also offline", async () => {
  await exposeDemo("");
  await page.click(tid("cancel"));
  assert.equal(await page.textContent(tid("tunnel-name")), "rand1");
  await page.click(tid("toggle"));
  await page.waitForFunction(() => document.querySelector('[data-testid="tunnel-status"]').textContent === "offline");
  assert.equal(await page.textContent(tid("tunnel-name")), "rand1");
  assert.equal(await page.textContent(tid("traffic-title")), "Traffic of rand1");
});

test("More: basic auth, IP allowlist and host header, as the CLI has them", async () => {
  await page.click(tid("expose"));
  await page.fill(tid("port"), "3000");
  assert.equal(await page.isVisible(tid("basic-auth")), false, "folded away");
  await page.click(`${tid("more")} summary`);
  await page.fill(tid("basic-auth"), "ann:pw");
  await page.fill(tid("allow-ips"), "10.0.0.0/8, nonsense");
  await page.check(tid("keep-host"));
  await page.click(tid("submit"));
  await page.waitForFunction(() => document.querySelector('[data-testid="allow-ips-error"]').textContent !== "");
  await page.fill(tid("allow-ips"), "10.0.0.0/8, 192.168.1.7");
  await page.click(tid("submit"));
  await page.waitForSelector(tid("result-url"));
  const input = await page.evaluate(() => window.__fake.calls.filter((c) => c.cmd === "expose").at(-1).args.input);
  assert.equal(input.basicAuth, "ann:pw");
  assert.deepEqual(input.allowIps, ["10.0.0.0/8", "192.168.1.7"]);
  assert.equal(input.keepHost, true);
  await page.click(tid("cancel"));
  // Editing shows the settings (never the password) and keeps the login unless changed.
  await page.click(tid("edit"));
  assert.equal(await page.inputValue(tid("allow-ips")), "10.0.0.0/8, 192.168.1.7");
  assert.equal(await page.inputValue(tid("basic-auth")), "");
  assert.equal(await page.isChecked(tid("keep-host")), true);
  await page.click(tid("submit"));
  await page.waitForFunction(() => !document.querySelector('[data-testid="expose-form"]'));
  const update = await page.evaluate(() => window.__fake.calls.find((c) => c.cmd === "update_tunnel").args.input);
  assert.equal(update.basicAuth, null, "kept");
});

test("More: an HTTPS or HTTP/2 local service and a Host value, as ggrok http takes them", async () => {
  await page.click(tid("expose"));
  await page.fill(tid("port"), "5173");
  await page.fill(tid("subdomain"), "vite");
  await page.click(`${tid("more")} summary`);
  assert.equal(await page.isDisabled(tid("upstream-insecure")), true, "for HTTPS only");
  await page.check(tid("local-tls"));
  await page.check(tid("upstream-insecure"));
  await page.fill(tid("host-header"), "app.test");
  await page.check(tid("keep-host"));
  assert.equal(await page.isDisabled(tid("host-header")), true, "the public host wins");
  await page.uncheck(tid("keep-host"));
  await page.click(tid("submit"));
  await page.waitForSelector(tid("result-url"));
  const input = await page.evaluate(() => window.__fake.calls.filter((c) => c.cmd === "expose").at(-1).args.input);
  assert.deepEqual(
    [input.localTls, input.upstreamInsecure, input.upstreamHttp2, input.hostHeader, input.keepHost],
    [true, true, false, "app.test", false],
  );
  await page.click(tid("cancel"));
  const card = page.locator(tid("tunnel"), { hasText: "vite" });
  assert.equal(await card.locator(tid("tunnel-target")).textContent(), "→ https://localhost:5173");
  // Editing shows them, folded open; HTTPS off takes its certificate setting along.
  await card.locator(tid("edit")).click();
  assert.equal(await page.isVisible(tid("local-tls")), true, "More is open");
  assert.equal(await page.isChecked(tid("upstream-insecure")), true);
  assert.equal(await page.inputValue(tid("host-header")), "app.test");
  await page.uncheck(tid("local-tls"));
  await page.check(tid("upstream-http2"));
  await page.click(tid("submit"));
  await page.waitForFunction(() => !document.querySelector('[data-testid="expose-form"]'));
  const update = await page.evaluate(() => window.__fake.calls.filter((c) => c.cmd === "update_tunnel").at(-1).args.input);
  assert.deepEqual([update.localTls, update.upstreamInsecure, update.upstreamHttp2], [false, false, true]);
});

test("a failed replay is said next to Replay, not in a banner", async () => {
  await exposeDemo();
  await page.click(tid("cancel"));
  await page.evaluate(() => window.__fake.addTraffic("1", { path: "/x" }));
  await page.click(`${tid("traffic-row")}:has-text("/x")`);
  await page.evaluate(() => (window.__fake.fail.replay = "the tunnel is not running"));
  await page.click(tid("replay"));
  await page.waitForFunction(() => document.querySelector('[data-testid="replay-error"]')?.textContent === "the tunnel is not running");
  assert.equal(await page.locator(tid("error")).count(), 0);
});

test("Listening on this machine: the form lists local ports, one click fills the port, exposed ones marked", async () => {
  await page.click(tid("expose"));
  await page.waitForSelector(`${tid("pick-port")}[data-port="5173"]`);
  assert.deepEqual(await page.locator(tid("pick-port")).allTextContents(), ["5173 node", "8000 python3"]);
  assert.match(await page.getAttribute(`${tid("pick-port")}[data-port="8000"]`, "title"), /python3 \(pid 1200\) on all interfaces/);
  await page.click(`${tid("pick-port")}[data-port="5173"]`);
  assert.equal(await page.inputValue(tid("port")), "5173");
  await page.click(tid("submit"));
  await page.waitForSelector(tid("result-url"));
  assert.equal(await page.locator(tid("listening")).count(), 0, "no picker beside the result");
  await page.click(tid("cancel"));

  // Refreshed while the form is open; the exposed port is marked.
  await page.click(tid("expose"));
  await page.evaluate(() => window.__fake.listening.unshift({ port: 9090, loopback: true, pid: 5000, process: "vite", exposed: false }));
  await page.waitForSelector(`${tid("pick-port")}[data-port="9090"]`, { timeout: 5000 });
  assert.match(await page.textContent(`${tid("pick-port")}[data-port="5173"]`), /exposed/);
  await page.keyboard.press("Escape");
  // No polling once no picker is shown.
  const before = await calls("list_listening");
  await page.waitForTimeout(2500);
  assert.equal(await calls("list_listening"), before);
});

test("the empty state lists local ports with Expose: two clicks to a public URL in the clipboard", async () => {
  await page.waitForSelector(`${tid("quick-expose")}[data-port="8000"]`);
  await page.click(`${tid("quick-expose")}[data-port="8000"]`);
  await page.waitForSelector(tid("tunnel-url"));
  const input = await page.evaluate(() => window.__fake.calls.find((c) => c.cmd === "expose").args.input);
  assert.equal(input.localPort, 8000);
  assert.equal(input.serverId, "local");
  assert.equal(await calls("copy_url"), 1);
  assert.equal(await page.locator(tid("listening-empty")).count(), 0);
});

test("a port of another user's process is listed without a name", async () => {
  await page.evaluate(() => window.__fake.listening.unshift({ port: 6379, loopback: true, pid: null, process: null, exposed: false }));
  const quick = `${tid("quick-expose")}[data-port="6379"]`;
  // The app's default window size (src-tauri/tauri.conf.json).
  await page.setViewportSize({ width: 1100, height: 740 });
  await page.waitForSelector(quick, { timeout: 5000 });
  const proc = page.locator("li", { has: page.locator(quick) }).locator(".proc");
  assert.equal(await proc.textContent(), "a process of another user (name not visible)");
  // Read whole, not cut to "a process of another use…".
  assert.ok(await proc.evaluate((el) => el.scrollWidth <= el.clientWidth), "the owner text is cut");
  await page.click(tid("expose"));
  const pick = `${tid("pick-port")}[data-port="6379"]`;
  await page.waitForSelector(pick);
  assert.equal(await page.textContent(pick), "6379 (other user)");
  assert.match(await page.getAttribute(pick, "title"), /^a process of another user \(name not visible\) on loopback$/);
  await page.click(pick);
  assert.equal(await page.inputValue(tid("port")), "6379");
  assert.deepEqual(pageErrors, []);
});

test("the empty state says so when nothing listens, then lists a port once one does", async () => {
  await page.goto(`${base}/tests/harness.html?no-listening`);
  await page.waitForFunction(() => window.__ready === true);
  await page.waitForSelector(tid("nothing-listening"));
  assert.equal(await page.textContent(tid("no-tunnels")), "No tunnels yet. Click “Expose port” to share a local port.");
  assert.match(await page.textContent(tid("nothing-listening")), /Nothing is listening on this machine yet/);
  assert.equal(await page.locator(tid("listening-empty")).count(), 0);
  await page.evaluate(() => window.__fake.listening.push({ port: 5173, loopback: true, pid: 4242, process: "node", exposed: false }));
  await page.waitForSelector(`${tid("quick-expose")}[data-port="5173"]`, { timeout: 5000 });
  assert.match(await page.textContent(tid("no-tunnels")), /or pick one listening here:$/);
  assert.equal(await page.locator(tid("nothing-listening")).count(), 0);
});

test("QR code of the public URL beside Copy, on the card and in the Expose result", async () => {
  await exposeDemo();
  const result = page.locator(tid("expose-result"));
  await result.locator(tid("qr-toggle")).click();
  const qr = result.locator(`${tid("qr")} svg`);
  await qr.waitFor();
  assert.equal(await qr.getAttribute("aria-label"), "QR code of http://demo.localhost:7070");
  // Version 2 (25 modules) holds this URL at level M; 2 modules of quiet zone on each side.
  assert.equal(await qr.getAttribute("data-modules"), "29");
  assert.ok((await qr.locator("path").getAttribute("d")).length > 100, "modules drawn");
  await page.click(tid("cancel"));
  // Closing the form hides the QR it opened, at the next render.
  await page.waitForFunction(() => !document.querySelector('[data-testid="expose-form"]'));

  const card = page.locator(tid("tunnel"));
  assert.equal(await card.locator(tid("qr")).count(), 0, "hidden until asked for");
  const buttons = await card.locator(".actions button").allTextContents();
  assert.equal(buttons[buttons.indexOf("Copy") + 1], "QR", "next to Copy");
  await card.locator(tid("qr-toggle")).click();
  await card.locator(tid("qr")).waitFor();
  assert.equal(await card.locator(tid("qr-toggle")).getAttribute("aria-expanded"), "true");
  // The URL comes from the server: it is encoded and captioned as text, never parsed as markup.
  const evil = "http://demo.localhost:7070/<img src=x onerror=alert(1)>";
  await page.evaluate((url) => window.__fake.setStatus("1", { state: "online", url, name: "demo" }), evil);
  await page.waitForFunction((url) => document.querySelector('[data-testid="qr"] figcaption')?.textContent === url, evil);
  assert.equal(await page.locator(`${tid("qr")} img`).count(), 0);
  assert.equal(await card.locator(`${tid("qr")} svg`).getAttribute("aria-label"), `QR code of ${evil}`);
  await card.locator(tid("qr-toggle")).click();
  await page.waitForFunction(() => !document.querySelector('[data-testid="qr"]'));
  // Offline: no URL, no QR button.
  await page.click(tid("toggle"));
  await page.waitForFunction(() => document.querySelector('[data-testid="tunnel-status"]').textContent === "offline");
  assert.equal(await card.locator(tid("qr-toggle")).count(), 0);
  assert.deepEqual(pageErrors, []);
  assert.deepEqual(dialogs, []);
});

test("settings: start at login, notifications and the server's port", async () => {
  await page.click(tid("settings-toggle"));
  await page.waitForSelector(tid("start-at-login"));
  assert.match(await page.textContent(tid("server-port-note")), /Listening on 127\.0\.0\.1:7070/);
  await page.check(tid("start-at-login"));
  await page.waitForFunction(() =>
    window.__fake.calls.some((c) => c.cmd === "save_background_settings" && c.args.input.startAtLogin),
  );
  await page.fill(tid("server-port"), "70000");
  await page.click(tid("server-port-save"));
  await page.waitForSelector(`${tid("background-error")}:has-text("between 1 and 65535")`);
  await page.fill(tid("server-port"), "7171");
  await page.click(tid("server-port-save"));
  await page.waitForSelector(`${tid("server-port-note")}:has-text("Port 7171 applies when ggrok next starts")`);
  assert.equal(await page.isChecked(tid("start-at-login")), true);
  assert.equal(await page.isChecked(tid("notifications")), true);
  // The body capture limit, in KiB.
  assert.equal(await page.inputValue(tid("capture-limit")), "64");
  await page.fill(tid("capture-limit"), "99999");
  await page.click(tid("server-port-save"));
  await page.waitForSelector(`${tid("background-error")}:has-text("between 0 and 16384 KiB")`);
  await page.fill(tid("capture-limit"), "1024");
  await page.click(tid("server-port-save"));
  await page.waitForFunction(() =>
    window.__fake.calls.some((c) => c.cmd === "save_background_settings" && c.args.input.captureLimit === 1 << 20),
  );
  await page.click(tid("open-log-folder"));
  await page.waitForFunction(() => window.__fake.calls.some((c) => c.cmd === "open_log_folder"));
  assert.deepEqual(pageErrors, []);
});

test("TCP: the form offers TCP with an optional public port; the card shows tcp:// with Copy and QR", async () => {
  await page.click(tid("expose"));
  assert.ok(await page.isVisible(tid("subdomain")));
  assert.ok(!(await page.isVisible(tid("remote-port"))));
  await page.check(tid("kind-tcp"));
  // A TCP tunnel has a port, not a name; no Basic auth or Host header either.
  assert.ok(!(await page.isVisible(tid("subdomain"))));
  assert.ok(await page.isVisible(tid("remote-port")));
  await page.click(tid("more") + " summary");
  assert.ok(!(await page.isVisible(tid("basic-auth"))));
  assert.ok(!(await page.isVisible(tid("keep-host"))));
  assert.ok(await page.isVisible(tid("allow-ips")));
  await page.fill(tid("port"), "22");
  await page.fill(tid("remote-port"), "70000");
  assert.match(await page.textContent(tid("remote-port-error")), /between 1 and 65535/);
  await page.click(tid("submit"));
  assert.equal(await calls("expose"), 0);
  await page.fill(tid("remote-port"), "");
  assert.equal(await page.textContent(tid("remote-port-error")), "");
  await page.click(tid("submit"));
  const url = await page.textContent(tid("result-url"));
  assert.equal(url, "tcp://localhost:20001");
  const input = await page.evaluate(() => window.__fake.calls.find((c) => c.cmd === "expose").args.input);
  assert.deepEqual(input, {
    kind: "tcp", remotePort: null, serverId: "local", subdomain: null, localHost: "localhost", localPort: 22,
    startOnLaunch: false, basicAuth: "", allowIps: [], keepHost: false, localTls: false, upstreamInsecure: false,
    upstreamHttp2: false, hostHeader: null,
  });
  assert.equal(await page.textContent(tid("result-hint")), "Connect any TCP client to host localhost, port 20001.");
  // No browser for a TCP address.
  assert.equal(await page.locator(`${tid("expose-result")} button`, { hasText: "Open in browser" }).count(), 0);
  await page.click(tid("cancel"));

  const card = page.locator(tid("tunnel"));
  assert.equal(await card.locator(tid("tunnel-name")).textContent(), "tcp:20001");
  assert.equal(await card.locator(tid("tunnel-target")).textContent(), "→ localhost:22");
  assert.equal(await card.locator(tid("tunnel-url")).textContent(), url);
  assert.equal(await card.locator(tid("tunnel-count")).textContent(), "0 conn");
  assert.equal(await card.locator(tid("open")).count(), 0);
  await card.locator(tid("copy")).click();
  assert.equal(await calls("copy_url"), 1);
  await card.locator(tid("qr-toggle")).click();
  assert.match(await page.textContent(tid("qr")), /tcp:\/\/localhost:20001/);

  // A fixed public port is sent as asked, and the same port twice is refused in the form.
  await page.click(tid("expose"));
  await page.check(tid("kind-tcp"));
  await page.fill(tid("port"), "5432");
  await page.fill(tid("remote-port"), "20500");
  await page.click(tid("submit"));
  assert.equal(await page.textContent(tid("result-url")), "tcp://localhost:20500");
  await page.click(tid("cancel"));
  await page.click(tid("expose"));
  await page.check(tid("kind-tcp"));
  await page.fill(tid("port"), "5433");
  await page.fill(tid("remote-port"), "20500");
  await page.click(tid("submit"));
  assert.match(await page.textContent(tid("remote-port-error")), /already uses port 20500/);
  assert.equal(await calls("expose"), 2);
  // Editing keeps the kind.
  await page.click(tid("cancel"));
  await page.evaluate(() => ["1", "2"].forEach((id) => window.__fake.connection(id, {})));
  await page.waitForSelector(".thead");
  await page.locator(tid("edit")).first().click();
  assert.ok(await page.isChecked(tid("kind-tcp")));
  assert.ok(await page.isDisabled(tid("kind-http")));
  assert.equal(await page.inputValue(tid("remote-port")), "");
  assert.equal(await page.textContent("#f-remote-hint"), "optional; empty asks for 20001 again");
  // The form is drawn above the traffic pane's sticky header.
  assert.equal(
    await page.evaluate(() => {
      const head = document.querySelector(".thead");
      const r = head.getBoundingClientRect();
      const top = document.elementFromPoint(r.left + r.width / 2, r.top + r.height / 2);
      return Boolean(top?.closest(".modal"));
    }),
    true,
  );
  assert.deepEqual(pageErrors, []);
});

test("TCP: the traffic view lists connections live, the visitor's address as text", async () => {
  await page.click(tid("expose"));
  await page.check(tid("kind-tcp"));
  await page.fill(tid("port"), "22");
  await page.click(tid("submit"));
  await page.waitForSelector(tid("result-url"));
  await page.click(tid("cancel"));
  await page.waitForSelector(tid("no-connections"));
  assert.equal(await page.textContent(tid("traffic-title")), "Connections of tcp:20001");
  assert.equal(await page.getAttribute(tid("filter"), "placeholder"), "Filter: address, how it ended");

  const evil = "<img src=x onerror=alert(1)>:4711";
  const id = await page.evaluate((from) => window.__fake.connection("1", { from }), evil);
  await page.waitForSelector(tid("connection-row"));
  assert.equal(await page.textContent(tid("conn-from")), evil);
  assert.equal(await page.textContent(tid("conn-end")), "open");
  // Bytes are known when it ends.
  assert.equal(await page.textContent(tid("conn-up")), "—");
  await page.waitForFunction(() => document.querySelector('[data-testid="tunnel-count"]').textContent === "1 conn");
  // Its end replaces the open row in place.
  await page.evaluate(
    (id) => window.__fake.connection("1", { id, durationMs: 1500, bytesUp: 2048, bytesDown: 5, endKind: "closed", end: "closed" }),
    id,
  );
  await page.waitForFunction(() => document.querySelector('[data-testid="conn-end"]').textContent === "closed");
  assert.equal(await page.locator(tid("connection-row")).count(), 1);
  assert.equal(await page.textContent(tid("conn-up")), "2.0 KB");
  assert.equal(await page.textContent(tid("conn-down")), "5 B");
  await page.evaluate(() =>
    window.__fake.connection("1", { from: "10.0.0.7:5000", durationMs: 3, endKind: "unreachable", end: "local service unreachable: connection refused" }),
  );
  await page.waitForFunction(() => document.querySelectorAll('[data-testid="connection-row"]').length === 2);
  const rows = page.locator(tid("connection-row"));
  assert.equal(await rows.first().locator(tid("conn-from")).textContent(), "10.0.0.7:5000", "newest first");
  assert.match(await rows.first().getAttribute("class"), /\bbad\b/);
  await page.fill(tid("filter"), "unreachable");
  await page.waitForFunction(() => document.querySelectorAll('[data-testid="connection-row"]').length === 1);
  assert.equal(await page.locator("main img").count(), 0);
  assert.deepEqual(dialogs, []);

  // Selecting a TCP tunnel reads its connections, not HTTP traffic.
  assert.ok((await calls("list_connections")) >= 1);
  assert.equal(await calls("list_traffic"), 0);
  assert.deepEqual(pageErrors, []);
});
