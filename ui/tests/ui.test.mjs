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

beforeEach(async () => {
  page = await browser.newPage();
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
  assert.match(await page.textContent(tid("subdomain-error")), /letters, digits and hyphens/);
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
  await exposeDemo("My-App", " 3000 ");
  assert.equal(await page.textContent(tid("result-url")), "http://my-app.localhost:7070");
  const expose = await page.evaluate(() => window.__fake.calls.find((c) => c.cmd === "expose").args.input);
  assert.deepEqual(expose, { serverId: "local", subdomain: "my-app", localHost: "localhost", localPort: 3000, startOnLaunch: false });
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

test("traffic table is capped", async () => {
  await exposeDemo();
  await page.click(tid("cancel"));
  await page.evaluate(() => {
    for (let i = 0; i < 520; i++) window.__fake.addTraffic("1", { path: `/r${i}` });
  });
  await page.waitForFunction(() => document.querySelector('[data-testid="tunnel-count"]').textContent === "520 req");
  assert.equal(await page.locator(tid("traffic-row")).count(), 500);
  assert.equal((await page.locator(tid("row-path")).first().textContent()), "/r519");
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
  await page.click(tid("open-log-folder"));
  await page.waitForFunction(() => window.__fake.calls.some((c) => c.cmd === "open_log_folder"));
  assert.deepEqual(pageErrors, []);
});
