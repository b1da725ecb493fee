#!/usr/bin/env python3
"""ggrok benchmark: direct origin vs ggrok vs bore, on loopback, in one run.

Called by bench/run.sh, which installs wrk/nginx/bore and builds ggrok first.
Python 3.11 standard library only. Every process started here runs in its own
session (process group); all of them are killed on exit, including on errors and
SIGINT/SIGTERM/SIGHUP. Each started process's pid is also appended to
WORKDIR/pids so run.sh's EXIT trap can kill leftovers if this script is SIGKILLed.

Environment:
  DURATION     seconds per wrk run (default 10)
  GGROK_BIN    directory holding the ggrok and ggrok-server binaries (default target/release)
  BENCH_WORKDIR  scratch directory (default: a fresh mktemp dir, removed at exit)
  KEEP_LOGS=1  keep the scratch directory (nginx/ggrok/bore logs, raw wrk output)
"""

from __future__ import annotations

import datetime
import hashlib
import http.client
import json
import os
import platform
import resource
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import tomllib

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DURATION = int(os.environ.get("DURATION", "10"))
BIN = os.environ.get("GGROK_BIN", os.path.join(ROOT, "target", "release"))
SMALL_SIZE = 100
LARGE_SIZE = 10 * 1024 * 1024
BORE_CONTROL_PORT = 7835  # fixed in bore
READY_TIMEOUT = 30.0
SUBDOMAIN = "bench"

# (name, wrk connection/thread args, path)
WORKLOADS = [
    ("small 100 B, c50", ["-t2", "-c50"], "/small.bin"),
    ("large 10 MiB, c4", ["-t2", "-c4"], "/large.bin"),
    ("large 10 MiB, c1", ["-t1", "-c1"], "/large.bin"),  # wrk needs threads <= connections
]

WRK_LUA = r"""
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    "BENCHJSON {\"requests\":%d,\"duration_us\":%d,\"bytes\":%d," ..
    "\"p50_us\":%.1f,\"p99_us\":%.1f,\"mean_us\":%.1f," ..
    "\"connect\":%d,\"read\":%d,\"write\":%d,\"status\":%d,\"timeout\":%d}\n",
    summary.requests, summary.duration, summary.bytes,
    latency:percentile(50), latency:percentile(99), latency.mean,
    e.connect, e.read, e.write, e.status, e.timeout))
end
"""


def log(msg: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


class Fatal(Exception):
    pass


# --------------------------------------------------------------------------- processes

class Procs:
    def __init__(self, workdir: str):
        self.workdir = workdir
        self.live: list[tuple[str, subprocess.Popen]] = []

    def start(self, name: str, argv: list[str], env: dict | None = None,
              stdout=None) -> subprocess.Popen:
        logpath = os.path.join(self.workdir, f"{name}.log")
        logf = open(logpath, "ab")
        p = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=logf if stdout is None else stdout,
            stderr=logf,
            env={**os.environ, **(env or {})},
            start_new_session=True,
        )
        logf.close()
        self.live.append((name, p))
        with open(os.path.join(self.workdir, "pids"), "a") as f:
            f.write(f"{p.pid} {os.path.basename(argv[0])}\n")
        log(f"started {name} (pid {p.pid}): {' '.join(argv)}")
        return p

    def logtail(self, name: str, n: int = 20) -> str:
        try:
            with open(os.path.join(self.workdir, f"{name}.log"), "rb") as f:
                lines = f.read().decode(errors="replace").splitlines()
            return "\n".join(lines[-n:])
        except OSError:
            return ""

    def check_alive(self, name: str, p: subprocess.Popen) -> None:
        if p.poll() is not None:
            raise Fatal(f"{name} exited with status {p.returncode}; log tail:\n{self.logtail(name)}")

    def stop_all(self) -> None:
        for name, p in reversed(self.live):
            if p.poll() is None:
                try:
                    os.killpg(p.pid, signal.SIGTERM)
                except ProcessLookupError:
                    pass
        deadline = time.monotonic() + 5
        for name, p in reversed(self.live):
            try:
                p.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                pass
            # kill the whole group even if the leader is gone (nginx workers etc.)
            try:
                os.killpg(p.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
            try:
                p.wait(2)
            except subprocess.TimeoutExpired:
                log(f"warning: {name} (pid {p.pid}) did not exit")
        self.live.clear()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def port_free(port: int) -> bool:
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("0.0.0.0", port))
            return True
        except OSError:
            return False


def http_get(port: int, path: str, host: str | None = None, timeout: float = 5.0) -> tuple[int, bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.request("GET", path, headers={"Host": host} if host else {})
        r = conn.getresponse()
        return r.status, r.read()
    finally:
        conn.close()


def wait_http(procs: Procs, what: str, port: int, path: str, host: str | None,
              watched: list[tuple[str, subprocess.Popen]]) -> None:
    """Poll until GET returns 200 (no fixed sleeps; short back-off between polls)."""
    deadline = time.monotonic() + READY_TIMEOUT
    delay = 0.01
    last = "no answer"
    while time.monotonic() < deadline:
        for name, p in watched:
            procs.check_alive(name, p)
        try:
            status, _ = http_get(port, path, host, timeout=2)
            if status == 200:
                return
            last = f"HTTP {status}"
        except OSError as e:
            last = repr(e)
        time.sleep(delay)
        delay = min(delay * 2, 0.2)
    raise Fatal(f"{what} not ready after {READY_TIMEOUT:.0f}s (last: {last})")


def wait_tcp(procs: Procs, what: str, port: int, watched) -> None:
    deadline = time.monotonic() + READY_TIMEOUT
    delay = 0.01
    while time.monotonic() < deadline:
        for name, p in watched:
            procs.check_alive(name, p)
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                return
        except OSError:
            time.sleep(delay)
            delay = min(delay * 2, 0.2)
    raise Fatal(f"{what} not accepting on 127.0.0.1:{port} after {READY_TIMEOUT:.0f}s")


def cpu_seconds(pids: list[int]) -> list[float]:
    """user+system CPU seconds of each process (all its threads)."""
    tck = os.sysconf("SC_CLK_TCK")
    out = []
    for pid in pids:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        out.append((int(fields[11]) + int(fields[12])) / tck)  # utime, stime
    return out


def system_busy_seconds() -> float:
    """CPU seconds the whole machine spent not idle (all cores), from /proc/stat."""
    with open("/proc/stat") as f:
        v = [int(x) for x in f.readline().split()[1:9]]  # user nice system idle iowait irq softirq steal
    return (sum(v) - v[3] - v[4]) / os.sysconf("SC_CLK_TCK")


def with_children(pids: list[int]) -> list[int]:
    out = []
    for pid in pids:
        out.append(pid)
        try:
            with open(f"/proc/{pid}/task/{pid}/children") as f:
                out += [int(c) for c in f.read().split()]
        except OSError:
            pass
    return out


# --------------------------------------------------------------------------- setup

def start_origin(procs: Procs, workdir: str) -> tuple[int, dict[str, str], int]:
    www = os.path.join(workdir, "www")
    os.makedirs(www)
    os.chmod(workdir, 0o755)  # nginx workers run as nobody
    os.chmod(www, 0o755)
    small = os.urandom(SMALL_SIZE)
    large = os.urandom(LARGE_SIZE)
    for name, data in (("small.bin", small), ("large.bin", large)):
        path = os.path.join(www, name)
        with open(path, "wb") as f:
            f.write(data)
        os.chmod(path, 0o644)
    digests = {"/small.bin": hashlib.sha256(small).hexdigest(),
               "/large.bin": hashlib.sha256(large).hexdigest()}
    port = free_port()
    conf = os.path.join(workdir, "nginx.conf")
    with open(conf, "w") as f:
        f.write(f"""
worker_processes 1;
daemon off;
pid {workdir}/nginx.pid;
error_log {workdir}/nginx-error.log warn;
events {{ worker_connections 4096; }}
http {{
    access_log off;
    default_type application/octet-stream;
    sendfile on;
    tcp_nopush on;
    keepalive_requests 1000000;
    keepalive_timeout 300s;
    client_body_temp_path {workdir}/nginx-body;
    server {{
        listen 127.0.0.1:{port};
        root {www};
    }}
}}
""")
    nginx = shutil.which("nginx") or "/usr/sbin/nginx"
    p = procs.start("nginx", [nginx, "-p", workdir, "-e", f"{workdir}/nginx-error.log", "-c", conf])
    wait_http(procs, "nginx origin", port, "/small.bin", None, [("nginx", p)])
    log(f"origin nginx ready on 127.0.0.1:{port}")
    return port, digests, p.pid


def start_ggrok(procs: Procs, origin_port: int) -> tuple[int, str, list[int]]:
    port = free_port()
    env = {"RUST_LOG": "warn"}
    srv = procs.start("ggrok-server", [os.path.join(BIN, "ggrok-server"), "--listen", f"127.0.0.1:{port}",
                                       "--domain", "localhost"], env)
    wait_tcp(procs, "ggrok-server", port, [("ggrok-server", srv)])
    # The client prints one line per request on stdout: discard it (the URL line is not
    # needed, readiness is checked by polling the public URL until it answers 200).
    cli = procs.start("ggrok-client", [os.path.join(BIN, "ggrok"), "http", str(origin_port),
                                       "--server", f"http://127.0.0.1:{port}",
                                       "--subdomain", SUBDOMAIN, "--local-host", "127.0.0.1"],
                      env, stdout=subprocess.DEVNULL)
    host = f"{SUBDOMAIN}.localhost:{port}"
    wait_http(procs, "ggrok tunnel", port, "/small.bin", host,
              [("ggrok-server", srv), ("ggrok-client", cli)])
    log(f"ggrok ready: http://{host}")
    return port, host, [srv.pid, cli.pid]


def start_bore(procs: Procs, origin_port: int) -> tuple[int, list[int]]:
    if not port_free(BORE_CONTROL_PORT):
        raise Fatal(f"bore needs its fixed control port {BORE_CONTROL_PORT}, which is in use")
    bore = shutil.which("bore") or os.path.expanduser("~/.cargo/bin/bore")
    port = free_port()
    env = {"RUST_LOG": "warn"}
    srv = procs.start("bore-server", [bore, "server", "--bind-addr", "127.0.0.1",
                                      "--min-port", str(port), "--max-port", str(port)], env)
    wait_tcp(procs, "bore server", BORE_CONTROL_PORT, [("bore-server", srv)])
    cli = procs.start("bore-client", [bore, "local", str(origin_port), "--local-host", "127.0.0.1",
                                      "--to", "127.0.0.1", "--port", str(port)], env)
    wait_http(procs, "bore tunnel", port, "/small.bin", None,
              [("bore-server", srv), ("bore-client", cli)])
    log(f"bore ready: http://127.0.0.1:{port}")
    return port, [srv.pid, cli.pid]


def verify(target: str, port: int, host: str | None, digests: dict[str, str]) -> None:
    for path, digest in digests.items():
        status, body = http_get(port, path, host, timeout=30)
        got = hashlib.sha256(body).hexdigest()
        if status != 200 or got != digest:
            raise Fatal(f"{target}: GET {path} gave HTTP {status}, {len(body)} bytes, sha256 mismatch={got != digest}")


# --------------------------------------------------------------------------- wrk

def run_wrk(procs: Procs, workdir: str, label: str, args: list[str], port: int, path: str,
            host: str | None, duration: int) -> dict:
    argv = ["wrk", *args, f"-d{duration}s", "--latency", "-s", os.path.join(workdir, "report.lua")]
    if host:
        argv += ["-H", f"Host: {host}"]
    argv.append(f"http://127.0.0.1:{port}{path}")
    p = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                         stdin=subprocess.DEVNULL, start_new_session=True)
    procs.live.append((f"wrk {label}", p))
    with open(os.path.join(workdir, "pids"), "a") as f:
        f.write(f"{p.pid} wrk\n")
    try:
        out, _ = p.communicate(timeout=duration + 60)
    except subprocess.TimeoutExpired:
        raise Fatal(f"wrk {label} did not finish within {duration + 60}s")
    finally:
        procs.live.remove((f"wrk {label}", p))
    text = out.decode(errors="replace")
    with open(os.path.join(workdir, "wrk.log"), "a") as f:
        f.write(f"### {label}: {' '.join(argv)}\n{text}\n")
    line = next((l for l in text.splitlines() if l.startswith("BENCHJSON ")), None)
    if p.returncode != 0 or line is None:
        raise Fatal(f"wrk {label} failed (status {p.returncode}):\n{text}")
    r = json.loads(line[len("BENCHJSON "):])
    r["argv"] = argv
    return r


# --------------------------------------------------------------------------- report

def sh(argv: list[str]) -> str:
    try:
        out = subprocess.run(argv, capture_output=True, text=True, timeout=10, cwd=ROOT)
        return (out.stdout or out.stderr).strip()
    except (OSError, subprocess.TimeoutExpired):
        return "?"


def release_profile() -> str:
    try:
        with open(os.path.join(ROOT, "Cargo.toml"), "rb") as f:
            prof = tomllib.load(f).get("profile", {}).get("release", {})
        return ", ".join(f"{k} = {json.dumps(v)}" for k, v in prof.items()) or "(defaults)"
    except (OSError, tomllib.TOMLDecodeError):
        return "?"


def machine_header() -> list[str]:
    model = "?"
    with open("/proc/cpuinfo") as f:
        for l in f:
            if l.startswith("model name"):
                model = l.split(":", 1)[1].strip()
                break
    commit = sh(["git", "rev-parse", "--short", "HEAD"])
    dirty = sh(["git", "status", "--porcelain", "--", "tunnel", "server", "Cargo.toml", "Cargo.lock"])
    if dirty and dirty != "?":
        diff = subprocess.run(["git", "diff", "HEAD", "--", "tunnel", "server", "Cargo.toml", "Cargo.lock"],
                              capture_output=True, cwd=ROOT).stdout
        commit += (f" + uncommitted changes in tunnel/, server/ or Cargo files "
                   f"(`git diff HEAD` sha256 {hashlib.sha256(diff).hexdigest()[:10]})")
    bore = shutil.which("bore") or os.path.expanduser("~/.cargo/bin/bore")
    return [
        f"- date: {datetime.datetime.now(datetime.timezone.utc).strftime('%Y-%m-%d %H:%M UTC')}",
        f"- commit: {commit}; ggrok binaries built "
        f"{datetime.datetime.fromtimestamp(os.path.getmtime(os.path.join(BIN, 'ggrok-server')), datetime.timezone.utc).strftime('%Y-%m-%d %H:%M UTC')}"
        f"; `[profile.release]` {release_profile()}",
        f"- machine: {os.cpu_count()} CPUs (nproc {sh(['nproc'])}), {model}, "
        f"Linux {platform.release()}",
        f"- tools: {sh(['wrk', '-v']).splitlines()[0].split(' Copyright')[0]}; "
        f"{sh(['nginx', '-v']).replace('nginx version: ', '')}; {sh([bore, '--version'])}; {sh(['rustc', '-V'])}",
        f"- wrk: `-d{DURATION}s --latency`, small = `-t2 -c50`, large = `-t2 -c4` and `-t1 -c1`; "
        f"origin nginx 1 worker; everything on 127.0.0.1",
    ]


def children_cpu() -> float:
    """user+system seconds of reaped children (wrk runs are waited for, so this counts wrk)."""
    ru = resource.getrusage(resource.RUSAGE_CHILDREN)
    return ru.ru_utime + ru.ru_stime


def fmt_ms(us: float) -> str:
    return f"{us / 1000:.2f} ms"


def main() -> int:
    own = "BENCH_WORKDIR" not in os.environ
    workdir = os.environ.get("BENCH_WORKDIR") or tempfile.mkdtemp(prefix="ggrok-bench.")
    procs = Procs(workdir)

    def on_signal(signum, _frame):
        raise SystemExit(128 + signum)

    for s in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(s, on_signal)

    t0 = time.monotonic()
    header = machine_header()  # before the runs: the commit/diff right after run.sh's build
    try:
        with open(os.path.join(workdir, "report.lua"), "w") as f:
            f.write(WRK_LUA)
        if not port_free(BORE_CONTROL_PORT):
            raise Fatal(f"bore needs its fixed control port {BORE_CONTROL_PORT}, which is in use")
        origin_port, digests, nginx_pid = start_origin(procs, workdir)
        nginx_pids = with_children([nginx_pid])  # master + worker
        g_port, g_host, g_pids = start_ggrok(procs, origin_port)
        b_port, b_pids = start_bore(procs, origin_port)
        targets = [
            ("direct", origin_port, None, []),
            ("ggrok", g_port, g_host, g_pids),
            ("bore", b_port, None, b_pids),
        ]
        bench_pids = {"nginx": nginx_pids, "ggrok": g_pids, "bore": b_pids}
        for name, port, host, _ in targets:
            verify(name, port, host, digests)
        log("all targets serve byte-exact bodies; warming up")
        for name, port, host, _ in targets:
            run_wrk(procs, workdir, f"warmup {name}", ["-t2", "-c50"], port, "/small.bin", host, 1)

        results: dict[tuple[str, str], dict] = {}
        for wl, args, path in WORKLOADS:
            for name, port, host, pids in targets:
                label = f"{name} / {wl}"
                log(f"wrk {label} ({DURATION}s)")
                all_b = [p for _, pp in bench_pids.items() for p in pp]
                s0, a0, k0 = system_busy_seconds(), sum(cpu_seconds(all_b)), children_cpu()
                c0, w0 = cpu_seconds(pids), time.monotonic()
                r = run_wrk(procs, workdir, label, args, port, path, host, DURATION)
                c1, w1 = cpu_seconds(pids), time.monotonic()
                s1, a1, k1 = system_busy_seconds(), sum(cpu_seconds(all_b)), children_cpu()
                # CPU used on this machine by anything but wrk, nginx and both tunnels (other
                # sessions, builds, ...): a noise indicator. Approximate (softirq time is shared).
                r["other_cores"] = max(0.0, (s1 - s0) - (a1 - a0) - (k1 - k0)) / (w1 - w0)
                r["cpu_split"] = [b - a for a, b in zip(c0, c1)]  # [server, client]
                r["cpu_s"] = sum(r["cpu_split"]) if pids else None
                r["wall_s"] = w1 - w0
                secs = r["duration_us"] / 1e6
                r["rps"] = r["requests"] / secs
                r["mibps"] = r["bytes"] / secs / 2**20
                r["errors"] = sum(r[k] for k in ("connect", "read", "write", "status", "timeout"))
                results[(name, wl)] = r
                for name2, p in procs.live:
                    procs.check_alive(name2, p)
                if r["errors"]:
                    log(f"  errors: connect {r['connect']} read {r['read']} write {r['write']} "
                        f"non-2xx/3xx {r['status']} timeout {r['timeout']}")

        out = ["## ggrok benchmark", ""] + header + ["", (
            "| target | workload | req/s | × direct | × bore | p50 | p99 | MiB/s "
            "| tunnel CPU ms / 1k req (server + client) | tunnel CPU cores (server + client) | other load (cores) | errors |"),
            "|---|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|"]
        for wl, _, _ in WORKLOADS:
            d, b = results[("direct", wl)], results[("bore", wl)]
            for name, _, _, _ in targets:
                r = results[(name, wl)]
                vs_d = f"{r['rps'] / d['rps']:.2f}×" if name != "direct" else "1.00×"
                vs_b = f"{r['rps'] / b['rps']:.2f}×" if name != "direct" else "—"
                if r["cpu_s"] is None:
                    cpu_k = cpu_c = "—"
                else:
                    per_k = 1e6 / r["requests"] if r["requests"] else float("nan")  # s -> ms per 1k req
                    srv, cli = r["cpu_split"]
                    cpu_k = f"{r['cpu_s'] * per_k:,.1f} ({srv * per_k:,.0f} + {cli * per_k:,.0f})"
                    cpu_c = f"{r['cpu_s'] / r['wall_s']:.2f} ({srv / r['wall_s']:.2f} + {cli / r['wall_s']:.2f})"
                err = "0" if not r["errors"] else (
                    f"{r['errors']} (conn {r['connect']}, read {r['read']}, write {r['write']}, "
                    f"non-2xx {r['status']}, timeout {r['timeout']})")
                out.append(f"| {name} | {wl} | {r['rps']:,.0f} | {vs_d} | {vs_b} | {fmt_ms(r['p50_us'])} "
                           f"| {fmt_ms(r['p99_us'])} | {r['mibps']:,.1f} | {cpu_k} | {cpu_c} | {r['other_cores']:.2f} | {err} |")
        out += ["", f"Ratios are throughput (req/s; for a fixed body size MiB/s gives the same ratio). "
                f"Tunnel CPU = user+system time of the tunnel's server and client processes during the wrk "
                f"run (/proc/PID/stat, 10 ms ticks); \"cores\" = CPU seconds per wall second. \"Other load\" = "
                f"CPU the machine spent on anything but wrk, nginx and the two tunnels during that run "
                f"(/proc/stat; approximate): well above 0 means other work competed and the row is noisy. "
                f"Run took {time.monotonic() - t0:.0f} s."]
        print("\n".join(out), flush=True)
        return 0
    except Fatal as e:
        log(f"FAILED: {e}")
        return 1
    finally:
        procs.stop_all()
        if own and os.environ.get("KEEP_LOGS") != "1":
            shutil.rmtree(workdir, ignore_errors=True)
        elif own:
            log(f"logs kept in {workdir}")


if __name__ == "__main__":
    sys.exit(main())
