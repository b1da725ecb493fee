// The CLI's web inspector in Debian's headless Chromium, against the real binaries: a
// ggrok-server and `ggrok http` (with the inspector embedded) on 127.0.0.1:0, and an echo origin.
// Needs target/debug/{ggrok,ggrok-server} built after ui/dist-inspector (scripts/test.sh does).
// Run: npm run test:inspector
import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import { mkdtemp, rm } from "node:fs/promises";
import { createServer, request } from "node:http";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { createInterface } from "node:readline";
import { after, before, test } from "node:test";
import { chromium } from "playwright-core";

const BIN = process.env.GGROK_BIN ?? new URL("../../target/debug/", import.meta.url).pathname;
const CHROMIUM = process.env.CHROMIUM ?? "/usr/bin/chromium";
const XSS_HEADER = "<img src=x onerror=alert(1)>";
const XSS_BODY = "<script>alert(2)</script><b onmouseover=alert(3)>hi</b>";

let origin, server, client, browser, dir, serverPort, inspector;
const children = [];

/** Resolves with the first stderr line of `child` that `pattern` matches (its match). */
function lineOf(child, pattern) {
  return new Promise((resolve, reject) => {
    const lines = createInterface({ input: child.stderr });
    const timer = setTimeout(() => reject(new Error(`no line matching ${pattern}`)), 10_000);
    lines.on("line", (line) => {
      const m = line.match(pattern);
      if (m) {
        clearTimeout(timer);
        resolve(m);
      }
    });
  });
}

function run(cmd, args, env = {}) {
  const child = spawn(join(BIN, cmd), args, {
    env: { ...process.env, RUST_LOG: "info", ...env },
    stdio: ["ignore", "pipe", "pipe"],
  });
  children.push(child);
  return child;
}

/** A request through the tunnel; resolves with the status. */
function visit(method, path, headers, body) {
  return new Promise((resolve, reject) => {
    const req = request(
      { host: "127.0.0.1", port: serverPort, method, path, headers: { host: `web.localhost:${serverPort}`, ...headers } },
      (res) => {
        res.resume();
        res.on("end", () => resolve(res.statusCode));
      },
    );
    req.on("error", reject);
    req.end(body);
  });
}

const api = async (path) => (await fetch(`${inspector}${path}`)).json();

before(async () => {
  // Echo origin: the request's method, path and a header back in headers, its body as the body.
  origin = createServer((req, res) => {
    const chunks = [];
    req.on("data", (c) => chunks.push(c));
    req.on("end", () => {
      res.writeHead(200, {
        "content-type": "text/html",
        "x-echo-method": req.method,
        "x-echo-path": req.url,
        "x-evil": XSS_HEADER,
      });
      res.end(Buffer.concat(chunks));
    });
  });
  await new Promise((r) => origin.listen(0, "127.0.0.1", r));
  dir = await mkdtemp(join(tmpdir(), "ggrok-inspector-"));
  server = run("ggrok-server", ["--listen", "127.0.0.1:0", "--db", join(dir, "ggrok.db"), "--log-format", "json"]);
  serverPort = Number((await lineOf(server, /"addr":"127\.0\.0\.1:(\d+)"/))[1]);
  client = run("ggrok", ["http", String(origin.address().port), "--server", `http://127.0.0.1:${serverPort}`, "--subdomain", "web"], {
    GGROK_INSPECT_PORT: "0",
  });
  inspector = (await lineOf(client, /inspector on (http:\/\/127\.0\.0\.1:\d+)/))[1];
  browser = await chromium.launch({
    executablePath: CHROMIUM,
    args: ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--no-first-run"],
  });
});

after(async () => {
  await browser?.close();
  for (const c of children) c.kill();
  origin?.close();
  if (dir) await rm(dir, { recursive: true, force: true });
});

const tid = (id) => `[data-testid="${id}"]`;

async function openPage() {
  const page = await browser.newPage();
  const dialogs = [];
  const errors = [];
  page.on("dialog", (d) => {
    dialogs.push(d.message());
    void d.dismiss();
  });
  page.on("pageerror", (e) => errors.push(String(e)));
  // The page must work under its own CSP: a violation is a console error.
  page.on("console", (m) => {
    if (m.type() === "error") errors.push(m.text());
  });
  await page.route(/^(?!http:\/\/127\.0\.0\.1)/, (r) => r.abort());
  await page.goto(`${inspector}/`);
  return { page, dialogs, errors };
}

test("traffic shows as text; replay with edits goes through the API", async () => {
  assert.equal(
    await visit("POST", "/form?q=%3Ci%3Ex%3C/i%3E", { "content-type": "text/plain", "x-payload": XSS_HEADER }, XSS_BODY),
    200,
  );
  const { page, dialogs, errors } = await openPage();
  await page.waitForSelector(tid("traffic-row"));
  assert.match(await page.textContent(tid("tunnel-url")), /^http:\/\/web\.localhost:/);
  // No tunnel list here: the traffic takes the page's width, not the app's list column.
  const share = await page.evaluate(() => document.querySelector(".traffic-root").getBoundingClientRect().width / innerWidth);
  assert.ok(share > 0.9, `the traffic takes ${share} of the page's width`);
  await page.click(tid("traffic-row"));
  await page.waitForSelector(tid("req-body"));
  assert.equal(await page.textContent(tid("req-body")), XSS_BODY);
  assert.equal(await page.textContent(tid("res-body")), XSS_BODY);
  assert.match(await page.textContent(tid("req-headers")), /<img src=x onerror=alert\(1\)>/);
  assert.match(await page.textContent(tid("res-headers")), /<img src=x onerror=alert\(1\)>/);
  assert.equal(await page.locator("#app img, #app script, #app b, #app i").count(), 0, "no element injected");

  await page.click(tid("edit-replay"));
  await page.fill(tid("edit-method"), "PUT");
  await page.fill(tid("edit-path"), "/edited?n=2");
  await page.fill(tid("edit-headers"), "content-type: text/plain\nx-added: yes");
  await page.fill(tid("edit-body"), "edited body");
  await page.click(tid("edit-send"));
  await page.waitForFunction(() => document.querySelector('[data-testid="detail-line"]')?.textContent === "PUT /edited?n=2");
  assert.equal(await page.textContent(tid("req-body")), "edited body");
  assert.equal(await page.textContent(tid("res-body")), "edited body");
  assert.match(await page.textContent(tid("res-headers")), /x-echo-method\s*PUT/);
  assert.match(await page.textContent(tid("req-headers")), /x-added\s*yes/);
  await page.waitForFunction(() => document.querySelectorAll('[data-testid="traffic-row"]').length === 2);
  const { requests } = await api("/api/requests/http");
  assert.equal(requests[0].request.method, "PUT");
  assert.equal(requests[0].request.uri, "/edited?n=2");

  // A bad edit is said next to the form, and nothing is sent.
  await page.click(tid("edit-replay"));
  await page.fill(tid("edit-headers"), "no colon here");
  await page.click(tid("edit-send"));
  assert.match(await page.textContent(tid("edit-error")), /Not a header/);
  assert.equal((await api("/api/requests/http")).requests.length, 2);

  assert.deepEqual(dialogs, [], "no script ran");
  assert.deepEqual(errors, []);
  await page.close();
});

test("a page of another origin cannot replay or wipe", async () => {
  await visit("GET", "/target", {});
  const before = (await api("/api/requests/http")).requests;
  const id = before[0].id;
  const page = await browser.newPage();
  // Another origin on this machine: the echo origin's own page.
  await page.goto(`http://127.0.0.1:${origin.address().port}/`);
  const outcomes = await page.evaluate(
    async ({ url, id }) => {
      const tries = [
        // A simple request needs no preflight: refused by the server itself (Origin, not JSON).
        fetch(url, { method: "POST", mode: "no-cors", headers: { "content-type": "text/plain" }, body: JSON.stringify({ id }) }),
        // JSON or DELETE need a preflight, which the inspector never grants.
        fetch(url, { method: "POST", headers: { "content-type": "application/json" }, body: JSON.stringify({ id }) }),
        fetch(url, { method: "DELETE" }),
      ];
      return Promise.all(tries.map((p) => p.then((r) => `status ${r.status}`, (e) => `failed ${e.name}`)));
    },
    { url: `${inspector}/api/requests/http`, id },
  );
  assert.equal(outcomes[0], "status 0", "opaque: the browser shows the page nothing");
  assert.deepEqual(outcomes.slice(1), ["failed TypeError", "failed TypeError"]);
  const afterwards = (await api("/api/requests/http")).requests;
  assert.deepEqual(afterwards.map((r) => r.id), before.map((r) => r.id), "nothing replayed or wiped");
  await page.close();
});

test("the page is served with a CSP", async () => {
  const resp = await fetch(`${inspector}/`);
  assert.match(resp.headers.get("content-security-policy"), /script-src 'self'/);
  assert.equal(resp.headers.get("x-frame-options"), "DENY");
});

test("a tunnel the API starts shows up in an open page, with a picker of tunnels", async () => {
  const { page, errors } = await openPage();
  await page.waitForSelector(tid("tunnel-url"));
  assert.equal(await page.isVisible(tid("tunnel-select")), false, "one tunnel: no picker");
  const resp = await fetch(`${inspector}/api/tunnels`, {
    method: "POST",
    headers: { "content-type": "application/json" },
    body: JSON.stringify({ name: "second", addr: String(origin.address().port), proto: "http", subdomain: "second" }),
  });
  assert.equal(resp.status, 201);
  assert.match((await resp.json()).public_url, /^http:\/\/second\.localhost:/);
  // The live stream ends on the change; the page reconnects and lists both.
  await page.waitForSelector(tid("tunnel-select"), { state: "visible" });
  assert.deepEqual(await page.locator(`${tid("tunnel-select")} option`).allTextContents(), ["command_line", "second"]);
  await page.selectOption(tid("tunnel-select"), "second");
  await page.waitForFunction(() => document.querySelector('[data-testid="tunnel-url"]')?.textContent?.startsWith("http://second."));
  const status = await new Promise((resolve, reject) => {
    const req = request(
      { host: "127.0.0.1", port: serverPort, path: "/from-second", headers: { host: `second.localhost:${serverPort}` } },
      (res) => {
        res.resume();
        res.on("end", () => resolve(res.statusCode));
      },
    );
    req.on("error", reject);
    req.end();
  });
  assert.equal(status, 200);
  await page.waitForFunction(() => [...document.querySelectorAll('[data-testid="traffic-row"]')].some((r) => r.textContent.includes("/from-second")));

  assert.equal((await fetch(`${inspector}/api/tunnels/second`, { method: "DELETE" })).status, 204);
  await page.waitForSelector(tid("tunnel-select"), { state: "hidden" });
  assert.match(await page.textContent(tid("tunnel-url")), /^http:\/\/web\.localhost:/);
  assert.deepEqual(errors, []);
  await page.close();
});
