#!/usr/bin/env python3
"""ggrok desktop benchmark probe: one cold start of the app, or the report over several.

Called by bench/desktop.sh (Python 3.11 standard library only):

  desktop_probe.py run OUT.json      # inside `xvfb-run -a dbus-run-session`: one cold start
  desktop_probe.py report A.json...  # markdown table over the runs, on stdout

`run` starts APP_BIN (env) in its own session with a fresh GGROK_CONFIG_DIR and fresh XDG
config/cache/data dirs, GGROK_SERVER_PORT=0 and GGROK_NO_KEYRING=1, then:

- window mapped: the first `xdotool search --onlyvisible --name '^ggrok$'` that finds the window
  (polled every POLL_MS; `--sync` is not used because it re-checks only every 0.5 s);
- first paint: the first `import -window ID` screenshot that is not one flat colour AND shows the
  app's rendered UI: its page background #0f172a covers >= 30 % of the window, the header panel
  #1e293b and the "Expose port" button #0369a1 are present, and there are >= 20 distinct colours
  (anti-aliased text). Time = when that screenshot had been taken (an upper bound; the previous
  screenshot, which did not show the UI, bounds it from below: see `paint_gap_ms`);
- idle: IDLE_S seconds after first paint, RSS (VmRSS) and PSS (/proc/PID/smaps_rollup) summed over
  the app's process tree (all descendants via /proc/*/stat ppid links), plus the tree's CPU during
  the idle window;
- load: busy CPU of the whole machine (/proc/stat) during the start window (t0 -> first paint)
  minus the app tree, Xvfb and this probe with its xdotool/import children = "other load".

Everything started is killed at the end (SIGTERM to the app's process group and every pid seen in
its tree, then SIGKILL), also on errors and SIGINT/SIGTERM/SIGHUP. Each app tree pid is appended to
PIDFILE (env, optional) as "pid starttime" so desktop.sh can kill leftovers if this is SIGKILLed.
"""

from __future__ import annotations

import datetime
import http.client
import http.server
import json
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time

CLK = os.sysconf("SC_CLK_TCK")
PAGE = os.sysconf("SC_PAGE_SIZE")
POLL_MS = float(os.environ.get("POLL_MS", "50"))
TIMEOUT_S = float(os.environ.get("TIMEOUT_S", "60"))
IDLE_S = float(os.environ.get("IDLE_S", "10"))
TITLE_RE = "^ggrok$"

BG = (0x0F, 0x17, 0x2A)      # --bg: page background
PANEL = (0x1E, 0x29, 0x3B)   # --panel: header
PRIMARY = (0x03, 0x69, 0xA1)  # button.primary ("Expose port")
STEP = 3  # analyse every 3rd pixel of every 3rd row


def log(msg: str) -> None:
    print(f"[probe] {msg}", file=sys.stderr, flush=True)


# ---------------------------------------------------------------- /proc helpers

def read_stat(pid: int) -> dict | None:
    try:
        with open(f"/proc/{pid}/stat") as f:
            s = f.read()
    except OSError:
        return None
    lp, rp = s.index("("), s.rindex(")")
    rest = s[rp + 2:].split()
    # rest[0] = state (field 3); utime=14, stime=15, starttime=22 -> rest[11], rest[12], rest[19]
    return {"pid": pid, "comm": s[lp + 1:rp], "ppid": int(rest[1]), "pgrp": int(rest[2]),
            "cpu_ticks": int(rest[11]) + int(rest[12]), "start": int(rest[19]),
            "rss_pages": int(rest[21])}


def all_stats() -> dict[int, dict]:
    out = {}
    for name in os.listdir("/proc"):
        if name.isdigit():
            st = read_stat(int(name))
            if st:
                out[st["pid"]] = st
    return out


def tree(root: int) -> list[dict]:
    """root and all its descendants (by ppid links), root first."""
    stats = all_stats()
    if root not in stats:
        return []
    kids: dict[int, list[int]] = {}
    for st in stats.values():
        kids.setdefault(st["ppid"], []).append(st["pid"])
    out, todo = [], [root]
    while todo:
        pid = todo.pop(0)
        out.append(stats[pid])
        todo += sorted(kids.get(pid, []))
    return out


def mem_kib(pid: int) -> tuple[int | None, int | None]:
    rss = pss = None
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    rss = int(line.split()[1])
    except OSError:
        pass
    try:
        with open(f"/proc/{pid}/smaps_rollup") as f:
            for line in f:
                if line.startswith("Pss:"):
                    pss = int(line.split()[1])
    except OSError:
        pass
    return rss, pss


def machine_busy_ticks() -> int:
    with open("/proc/stat") as f:
        v = [int(x) for x in f.readline().split()[1:9]]  # user nice system idle iowait irq softirq steal
    return sum(v) - v[3] - v[4]


def self_and_children_ticks() -> float:
    t = os.times()
    return (t.user + t.system + t.children_user + t.children_system) * CLK


def uptime_ticks() -> float:
    with open("/proc/uptime") as f:
        return float(f.read().split()[0]) * CLK


# ---------------------------------------------------------------- X helpers

def find_window() -> str | None:
    r = subprocess.run(["xdotool", "search", "--onlyvisible", "--name", TITLE_RE],
                       capture_output=True, text=True)
    ids = r.stdout.split()
    return ids[-1] if ids else None


def grab(wid: str) -> tuple[int, int, bytes] | None:
    r = subprocess.run(["/usr/bin/import", "-silent", "-window", wid, "-depth", "8", "ppm:-"],
                       capture_output=True)
    d = r.stdout
    if r.returncode != 0 or not d.startswith(b"P6"):
        return None
    # P6\n<w> <h>\n<max>\n<data>
    fields, pos = [], 2
    while len(fields) < 3:
        while d[pos:pos + 1].isspace():
            pos += 1
        if d[pos:pos + 1] == b"#":
            pos = d.index(b"\n", pos) + 1
            continue
        end = pos
        while not d[end:end + 1].isspace():
            end += 1
        fields.append(int(d[pos:end]))
        pos = end
    pos += 1
    w, h, _ = fields
    return w, h, d[pos:pos + w * h * 3]


def analyse(w: int, h: int, px: bytes) -> dict:
    counts: dict[tuple[int, int, int], int] = {}
    row_bytes = w * 3
    stride = STEP * 3
    for y in range(0, h, STEP):
        row = px[y * row_bytes:(y + 1) * row_bytes]
        for c in zip(row[0::stride], row[1::stride], row[2::stride]):
            counts[c] = counts.get(c, 0) + 1
    n = sum(counts.values()) or 1
    info = {"w": w, "h": h, "colours": len(counts), "bg_frac": round(counts.get(BG, 0) / n, 3),
            "panel": counts.get(PANEL, 0), "primary": counts.get(PRIMARY, 0)}
    info["flat"] = len(counts) <= 1
    info["ui"] = (not info["flat"] and info["bg_frac"] >= 0.30 and info["panel"] > 0
                  and info["primary"] > 0 and info["colours"] >= 20)
    return info


def save_png(w: int, h: int, px: bytes, path: str) -> None:
    ppm = path + ".ppm"
    with open(ppm, "wb") as f:
        f.write(b"P6\n%d %d\n255\n" % (w, h) + px)
    subprocess.run(["/usr/bin/convert", ppm, path], check=False)
    os.unlink(ppm)


# ---------------------------------------------------------------- one run

class App:
    def __init__(self) -> None:
        self.proc: subprocess.Popen | None = None
        self.seen: dict[int, int] = {}  # pid -> starttime
        self.pidfile = os.environ.get("PIDFILE")

    def note(self, procs: list[dict]) -> None:
        for st in procs:
            if st["pid"] not in self.seen:
                self.seen[st["pid"]] = st["start"]
                if self.pidfile:
                    with open(self.pidfile, "a") as f:
                        f.write(f"{st['pid']} {st['start']}\n")

    def alive(self) -> list[int]:
        out = []
        for pid, start in self.seen.items():
            st = read_stat(pid)
            if st and st["start"] == start and st.get("comm") and read_state(pid) != "Z":
                out.append(pid)
        return out

    def stop(self) -> None:
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.note(tree(self.proc.pid))
        for sig in (signal.SIGTERM, signal.SIGKILL):
            if self.proc.poll() is None:
                try:
                    os.killpg(self.proc.pid, sig)
                except ProcessLookupError:
                    pass
            for pid in self.alive():
                try:
                    os.kill(pid, sig)
                except ProcessLookupError:
                    pass
            deadline = time.monotonic() + 5
            while time.monotonic() < deadline:
                if self.proc.poll() is not None and not self.alive():
                    break
                time.sleep(0.05)
            if self.proc.poll() is not None and not self.alive():
                break
        try:
            self.proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            log(f"app pid {self.proc.pid} did not exit")
        left = self.alive()
        if left:
            log(f"leftover pids after SIGKILL: {left}")
        self.proc = None


def read_state(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/stat") as f:
            s = f.read()
        return s[s.rindex(")") + 2]
    except OSError:
        return "?"


def xvfb_pid() -> int | None:
    """Xvfb started by our xvfb-run: a child of an ancestor of this process."""
    disp = os.environ.get("DISPLAY", "")
    stats = all_stats()
    for st in stats.values():
        if st["comm"] == "Xvfb":
            try:
                with open(f"/proc/{st['pid']}/cmdline", "rb") as f:
                    argv = f.read().split(b"\0")
            except OSError:
                continue
            if disp and disp.encode() in argv:
                return st["pid"]
    return None


def ticks_of(pid: int | None) -> int:
    if pid is None:
        return 0
    st = read_stat(pid)
    return st["cpu_ticks"] if st else 0


class Origin(http.server.BaseHTTPRequestHandler):
    """The bench tunnel's local service: 200 "ok", no log lines."""

    def do_GET(self):
        self.send_response(200)
        self.send_header("content-length", "2")
        self.end_headers()
        self.wfile.write(b"ok")

    def log_message(self, *args):
        pass


def tunnel_status(app_log: str):
    """HTTP status of GET / through the bench tunnel, via the embedded server the app logged."""
    with open(app_log, "rb") as f:
        m = re.search(rb"url=http://localhost:(\d+)", f.read())
    if not m:
        return None
    conn = http.client.HTTPConnection("127.0.0.1", int(m.group(1)), timeout=5)
    try:
        conn.request("GET", "/", headers={"Host": f"bench.localhost:{int(m.group(1))}"})
        return conn.getresponse().status
    except OSError:
        return None
    finally:
        conn.close()


def run_once(out_path: str) -> int:
    app_bin = os.environ["APP_BIN"]
    frames = os.environ.get("FRAMES_DIR")
    scratch = tempfile.mkdtemp(prefix="ggrok-desktop-run.")
    env = dict(os.environ)
    env.update({
        "GGROK_CONFIG_DIR": os.path.join(scratch, "config"),
        "GGROK_SERVER_PORT": "0",
        "GGROK_NO_KEYRING": "1",
        "XDG_CONFIG_HOME": os.path.join(scratch, "xdg-config"),
        "XDG_CACHE_HOME": os.path.join(scratch, "xdg-cache"),
        "XDG_DATA_HOME": os.path.join(scratch, "xdg-data"),
        "RUST_LOG": "info",
    })
    for k in ("GGROK_CONFIG_DIR", "XDG_CONFIG_HOME", "XDG_CACHE_HOME", "XDG_DATA_HOME"):
        os.makedirs(env[k])
    # One tunnel online while idle (BENCH_TUNNEL=0: none): a saved tunnel on the built-in server,
    # started on launch, to a local origin served from this process.
    origin = None
    if os.environ.get("BENCH_TUNNEL", "1") == "1":
        origin = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Origin)
        threading.Thread(target=origin.serve_forever, daemon=True).start()
        with open(os.path.join(env["GGROK_CONFIG_DIR"], "config.json"), "w") as f:
            json.dump({"version": 1, "servers": [], "tunnels": [{
                "id": "bench", "server_id": "local", "subdomain": "bench", "local_host": "127.0.0.1",
                "local_port": origin.server_address[1], "start_on_launch": True}], "settings": {}}, f)
    app = App()
    res: dict = {"display": os.environ.get("DISPLAY")}
    xvfb = xvfb_pid()
    applog = open(os.path.join(scratch, "app.log"), "wb")

    def on_signal(signum, _frame):
        raise SystemExit(128 + signum)
    for s in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(s, on_signal)

    try:
        busy0, xvfb0, self0 = machine_busy_ticks(), ticks_of(xvfb), self_and_children_ticks()
        wall0 = time.time()
        t0 = time.monotonic()  # just before exec
        app.proc = subprocess.Popen([app_bin], env=env, stdout=applog, stderr=subprocess.STDOUT,
                                    stdin=subprocess.DEVNULL, start_new_session=True)
        pid = app.proc.pid
        app_start = read_stat(pid)["start"]
        deadline = t0 + TIMEOUT_S
        poll = POLL_MS / 1000

        def ms(t: float) -> float:
            return round((t - t0) * 1000, 1)

        # 1. window mapped
        wid = None
        while wid is None:
            if app.proc.poll() is not None:
                # Is the display there now? (The status-101 exits were GTK failing to open it.)
                r = subprocess.run(["xdotool", "getdisplaygeometry"], capture_output=True, text=True)
                res["display_after_exit"] = (r.stdout or r.stderr).strip() + f" (rc {r.returncode})"
                log(f"the display after the app exited: {res['display_after_exit']}")
                raise RuntimeError(f"app exited with {app.proc.returncode} before mapping a window")
            if time.monotonic() > deadline:
                raise RuntimeError("timeout waiting for the window")
            app.note(tree(pid))
            nxt = time.monotonic() + poll
            wid = find_window()
            if wid is None:
                time.sleep(max(0.0, nxt - time.monotonic()))
        res["window_ms"] = ms(time.monotonic())
        res["window_id"] = wid

        # 2. first paint
        prev_end = None
        first_nonflat = None
        last_blank = None
        shots = 0
        while True:
            if app.proc.poll() is not None:
                raise RuntimeError(f"app exited with {app.proc.returncode} before first paint")
            if time.monotonic() > deadline:
                raise RuntimeError("timeout waiting for first paint")
            ts = time.monotonic()
            g = grab(wid)
            te = time.monotonic()
            shots += 1
            app.note(tree(pid))
            if g is not None:
                info = analyse(*g)
                if not info["flat"] and first_nonflat is None:
                    first_nonflat = ms(te)
                if info["ui"]:
                    res["paint_ms"] = ms(te)
                    res["paint_gap_ms"] = round((te - (prev_end if prev_end else ts)) * 1000, 1)
                    res["paint_frame"] = info
                    break
                last_blank = (g, info)
            prev_end = te
            time.sleep(max(0.0, poll - (time.monotonic() - te)))
        t_paint = time.monotonic()
        res["first_nonflat_ms"] = first_nonflat
        res["shots"] = shots
        res["shot_ms_mean"] = round((t_paint - t0) * 1000 / max(1, shots), 1)  # rough
        busy1, xvfb1, self1 = machine_busy_ticks(), ticks_of(xvfb), self_and_children_ticks()
        procs = tree(pid)
        app.note(procs)
        app_ticks = sum(p["cpu_ticks"] for p in procs)
        elapsed_ticks = (t_paint - t0) * CLK
        res["start_cpu"] = [{"comm": p["comm"], "pid": p["pid"],
                             "started_ms": round((p["start"] - app_start) * 1000 / CLK),
                             "cpu_ms": round(p["cpu_ticks"] * 1000 / CLK)} for p in procs]
        res["start_app_tree_cores"] = round(app_ticks / elapsed_ticks, 2)
        res["start_probe_cores"] = round((self1 - self0) / elapsed_ticks, 2)
        res["start_xvfb_cores"] = round((xvfb1 - xvfb0) / elapsed_ticks, 2)
        res["other_load_cores"] = round(
            ((busy1 - busy0) - app_ticks - (xvfb1 - xvfb0) - (self1 - self0)) / elapsed_ticks, 2)
        if frames:
            save_png(*g, os.path.join(frames, "first-paint.png"))
            if last_blank:
                save_png(*last_blank[0], os.path.join(frames, "last-before-paint.png"))
                res["last_before_paint_frame"] = last_blank[1]

        # 3. idle
        idle0 = sum(p["cpu_ticks"] for p in tree(pid))
        time.sleep(IDLE_S)
        if app.proc.poll() is not None:
            raise RuntimeError(f"app exited with {app.proc.returncode} while idle")
        if origin is not None:
            res["tunnel_status"] = tunnel_status(os.path.join(scratch, "app.log"))
            if res["tunnel_status"] != 200:
                raise RuntimeError(f"the tunnel is not online: GET through it gave {res['tunnel_status']}")
        procs = tree(pid)
        app.note(procs)
        rss = pss = 0
        per = []
        pss_ok = True
        for p in procs:
            r, s = mem_kib(p["pid"])
            if s is None:
                pss_ok = False
            rss += r or 0
            pss += s or 0
            per.append({"comm": p["comm"], "pid": p["pid"], "rss_kib": r, "pss_kib": s,
                        "cpu_ms": round(p["cpu_ticks"] * 1000 / CLK)})
        idle1 = sum(p["cpu_ticks"] for p in procs)
        res["idle_rss_mib"] = round(rss / 1024, 1)
        res["idle_pss_mib"] = round(pss / 1024, 1) if pss_ok else None
        res["idle_procs"] = len(procs)
        res["idle_tree"] = per
        # session helpers the app caused (dbus-daemon, AT-SPI bus activated by GTK): outside its tree
        mine = {p["pid"] for p in tree(os.getpid())}
        helpers = [p for p in tree(os.getppid())[1:] if p["pid"] not in mine]
        res["session_helpers"] = [{"comm": p["comm"], "rss_kib": mem_kib(p["pid"])[0]} for p in helpers]
        res["idle_cpu_cores"] = round((idle1 - idle0) / (IDLE_S * CLK), 3)
        # app log: when did Rust init (embedded server + settings) finish, in wall-clock terms
        applog.flush()
        with open(os.path.join(scratch, "app.log"), "rb") as f:
            lines = re.sub(r"\x1b\[[0-9;]*m", "", f.read().decode(errors="replace")).splitlines()
        res["app_log_head"] = lines[:6]
        for line in lines:
            if " settings" in line or "settings " in line:
                try:
                    ts = datetime.datetime.fromisoformat(line.split()[0].replace("Z", "+00:00"))
                    res["settings_logged_ms"] = round((ts.timestamp() - wall0) * 1000, 1)
                except ValueError:
                    pass
                break
        res["ok"] = True
    except (RuntimeError, SystemExit) as e:
        res["ok"] = False
        res["error"] = str(e)
        log(f"FAILED: {e}")
    finally:
        app.stop()
        applog.close()
        if not res.get("ok"):
            # The app's own words (a panic message and its backtrace go to stderr, which is the
            # same file): on stderr now, and in the JSON for the report.
            with open(os.path.join(scratch, "app.log"), "rb") as f:
                tail = f.read().decode(errors="replace").splitlines()[-60:]
            res["app_log_tail"] = tail
            at = next((i for i, ln in enumerate(tail) if "panicked at" in ln), None)
            if at is not None:
                # "thread 'main' panicked at FILE:LINE:COL:" and, on the next line, the message
                res["panic"] = " ".join(ln.strip() for ln in tail[at:at + 2])
            log("the app's output (last 60 lines):\n" + "\n".join(tail))
        if origin is not None:
            origin.shutdown()
        if frames:
            shutil.copy(os.path.join(scratch, "app.log"), os.path.join(frames, "app.log"))
        shutil.rmtree(scratch, ignore_errors=True)
        with open(out_path, "w") as f:
            json.dump(res, f, indent=1)
    return 0 if res["ok"] else 1


# ---------------------------------------------------------------- report

def fmt(v, nd=0) -> str:
    if v is None:
        return "—"
    return f"{v:,.{nd}f}"


def report(paths: list[str]) -> int:
    runs = []
    for p in paths:
        with open(p) as f:
            runs.append(json.load(f))
    ok = [r for r in runs if r.get("ok")]
    cols = [("window mapped (ms)", "window_ms", 0), ("first paint (ms)", "paint_ms", 0),
            ("paint poll gap (ms)", "paint_gap_ms", 0),
            ("idle RSS (MiB)", "idle_rss_mib", 1), ("idle PSS (MiB)", "idle_pss_mib", 1),
            ("processes", "idle_procs", 0), ("idle CPU (cores)", "idle_cpu_cores", 3),
            ("other load during start (cores)", "other_load_cores", 2)]
    out = ["| run | " + " | ".join(c[0] for c in cols) + " |",
           "|---|" + "--:|" * len(cols)]
    for i, r in enumerate(runs, 1):
        if not r.get("ok"):
            why = r.get("error")
            if r.get("panic"):
                why += f" ({r['panic']})".replace("|", "\\|")
            out.append(f"| {i} | failed: {why} |" + " |" * (len(cols) - 1))
            continue
        out.append(f"| {i} | " + " | ".join(fmt(r.get(k), nd) for _, k, nd in cols) + " |")
    if ok:
        med = []
        for _, k, nd in cols:
            vals = [r[k] for r in ok if r.get(k) is not None]
            med.append(f"**{fmt(statistics.median(vals), nd)}**" if vals else "—")
        out.append(f"| **median** | " + " | ".join(med) + " |")
    print("\n".join(out))
    if ok:
        # where the start time goes (medians over runs, per process name)
        by: dict[str, dict[str, list]] = {}
        for r in ok:
            for p in r["start_cpu"]:
                d = by.setdefault(p["comm"], {"started": [], "cpu": []})
                d["started"].append(p["started_ms"])
                d["cpu"].append(p["cpu_ms"])
        parts = [f"{c} started +{statistics.median(d['started']):.0f} ms, {statistics.median(d['cpu']):.0f} ms CPU"
                 for c, d in by.items()]
        print("\nAt first paint (medians; process start times relative to the app's, 10 ms resolution): "
              + "; ".join(parts) + ".")
        sl = [r["settings_logged_ms"] for r in ok if r.get("settings_logged_ms") is not None]
        if sl:
            print(f"Rust init (embedded server bound + settings loaded, from the app's own log line): "
                  f"median {statistics.median(sl):.0f} ms after exec.")
        nf = [r["first_nonflat_ms"] for r in ok if r.get("first_nonflat_ms") is not None]
        probe = [r["start_probe_cores"] for r in ok]
        shots = [r["shot_ms_mean"] for r in ok]
        print(f"First non-flat frame: median {statistics.median(nf):.0f} ms. "
              f"The probe (xdotool + import + analysis) used median {statistics.median(probe):.2f} cores "
              f"during start; Xvfb {statistics.median([r['start_xvfb_cores'] for r in ok]):.2f}.")
        mem: dict[str, list] = {}
        for r in ok:
            agg: dict[str, list] = {}
            for p in r["idle_tree"]:
                a = agg.setdefault(p["comm"], [0, 0])
                a[0] += p["rss_kib"] or 0
                a[1] += p["pss_kib"] or 0
            for c, a in agg.items():
                mem.setdefault(c, []).append(a)
        print("Idle memory by process (medians, RSS / PSS MiB): " + "; ".join(
            f"{c} {statistics.median(x[0] for x in v) / 1024:.1f} / {statistics.median(x[1] for x in v) / 1024:.1f}"
            for c, v in mem.items()) + ".")
        hl = [sum(h["rss_kib"] or 0 for h in r.get("session_helpers", [])) / 1024 for r in ok]
        names = sorted({h["comm"] for r in ok for h in r.get("session_helpers", [])})
        print(f"Not counted above: the per-run session bus ({', '.join(names)}), median "
              f"{statistics.median(hl):.1f} MiB RSS, and GTK's AT-SPI accessibility bus, which the app "
              f"activates over D-Bus (it runs outside the app's process tree).")
    return 0 if len(ok) == len(runs) else 1


def main() -> int:
    if len(sys.argv) >= 3 and sys.argv[1] == "run":
        return run_once(sys.argv[2])
    if len(sys.argv) >= 3 and sys.argv[1] == "report":
        return report(sys.argv[2:])
    print(__doc__, file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
