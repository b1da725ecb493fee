#!/usr/bin/env python3
"""Memory of stalled uploads: N visitors upload through one tunnel to a local service that reads
each request's head and then never reads again, so every upload stalls with as much of its body
in flight as the tunnel lets in. Prints the RSS of ggrok-server and ggrok idle, at the plateau
(no visitor can write more for a few seconds), and after the visitors went away, as one markdown
table. Exits non-zero if either process grows by more than STALLED_LIMIT_KB per upload.

    bench/stalled.py                         # 500 uploads of 8 MiB, release binaries
    STALLED_UPLOADS=100 bench/stalled.py

Env: STALLED_UPLOADS (500), STALLED_SIZE (bytes per upload, 8 MiB), STALLED_LIMIT_KB (256),
     GGROK_BIN (directory of ggrok and ggrok-server; target/release).
Everything listens on 127.0.0.1; the stall timeout (--body-idle-timeout) is set above the run's
length so the plateau is what the bounds hold, not what the timeout frees.
"""
import os
import selectors
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BIN = os.environ.get("GGROK_BIN", os.path.join(ROOT, "target", "release"))
UPLOADS = int(os.environ.get("STALLED_UPLOADS", "500"))
SIZE = int(os.environ.get("STALLED_SIZE", str(8 << 20)))
LIMIT_KB = float(os.environ.get("STALLED_LIMIT_KB", "256"))
QUIET = 3.0  # seconds without any visitor writing: the plateau


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def rss_mb(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    raise RuntimeError(f"no VmRSS for {pid}")


def wait_until(what, check, timeout=30):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if check():
                return
        except OSError:
            pass
        time.sleep(0.05)
    sys.exit(f"stalled: {what} did not come up")


def stalling_service():
    """A local service that reads each upload's head and then never reads again (a GET, the
    readiness probe, gets an answer)."""
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(1024)
    held = []

    def serve():
        while True:
            conn, _ = srv.accept()
            data = b""
            while b"\r\n\r\n" not in data:
                chunk = conn.recv(4096)
                if not chunk:
                    break
                data += chunk
            if data.startswith(b"GET "):
                conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok")
                conn.close()
                continue
            conn.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            held.append(conn)

    threading.Thread(target=serve, daemon=True).start()
    return srv.getsockname()[1], held


def main():
    work = tempfile.mkdtemp(prefix="ggrok-stalled.")
    service_port, held = stalling_service()
    port = free_port()
    timeout = "600"
    server = subprocess.Popen(
        [os.path.join(BIN, "ggrok-server"), "--listen", f"127.0.0.1:{port}", "--domain", "localhost",
         "--db", os.path.join(work, "db"), "--connect-rate", "0", "--max-conns-per-ip", "0",
         "--max-conns", "0", "--body-idle-timeout", timeout],
        stdout=subprocess.DEVNULL, stderr=open(os.path.join(work, "server.log"), "w"))
    procs = [server]
    try:
        wait_until("ggrok-server", lambda: urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz"))
        client = subprocess.Popen(
            [os.path.join(BIN, "ggrok"), "http", str(service_port), "--server", f"http://127.0.0.1:{port}",
             "--subdomain", "stall", "--local-host", "127.0.0.1"],
            stdout=subprocess.DEVNULL, stderr=open(os.path.join(work, "client.log"), "w"))
        procs.append(client)

        wait_until("the tunnel", lambda: urllib.request.urlopen(urllib.request.Request(
            f"http://127.0.0.1:{port}/", headers={"Host": "stall.localhost"})).status == 200)
        time.sleep(1)
        idle = (rss_mb(server.pid), rss_mb(client.pid))

        sel = selectors.DefaultSelector()
        head = (f"POST /upload HTTP/1.1\r\nHost: stall.localhost\r\n"
                f"Content-Length: {SIZE}\r\n\r\n").encode()
        chunk = b"x" * 65536
        sent = {}
        for _ in range(UPLOADS):
            s = socket.create_connection(("127.0.0.1", port))
            s.sendall(head)
            s.setblocking(False)
            sent[s] = 0
            sel.register(s, selectors.EVENT_WRITE)
        last_progress = time.monotonic()
        while time.monotonic() - last_progress < QUIET:
            for key, _ in sel.select(timeout=0.5):
                s = key.fileobj
                try:
                    n = s.send(chunk[: SIZE - sent[s]])
                except (BlockingIOError, InterruptedError):
                    continue
                except OSError:
                    sel.unregister(s)
                    continue
                sent[s] += n
                last_progress = time.monotonic()
                if sent[s] >= SIZE:
                    sel.unregister(s)
        plateau = (rss_mb(server.pid), rss_mb(client.pid))
        in_flight = sum(sent.values())
        done = sum(1 for n in sent.values() if n >= SIZE)
        for s in sent:
            s.close()
        for c in held:
            c.close()
        time.sleep(QUIET)
        after = (rss_mb(server.pid), rss_mb(client.pid))

        print(f"## {UPLOADS} stalled uploads of {SIZE >> 20} MiB through one tunnel")
        print()
        print(f"- visitors wrote {in_flight / 2**20:.1f} MiB in all before every one was stalled "
              f"({done} finished their body); the kernel's socket buffers hold part of it")
        print()
        print("| process | idle RSS (MiB) | 500 stalled (MiB) | growth (MiB) | per upload (KiB) | after (MiB) |"
              .replace("500", str(UPLOADS)))
        print("|---|--:|--:|--:|--:|--:|")
        worst = 0.0
        for name, i, p, a in zip(("ggrok-server", "ggrok"), idle, plateau, after):
            growth = p - i
            worst = max(worst, growth)
            print(f"| {name} | {i:.1f} | {p:.1f} | {growth:.1f} | {growth * 1024 / UPLOADS:.0f} | {a:.1f} |")
        if worst * 1024 / UPLOADS > LIMIT_KB:
            sys.exit(f"stalled: a process grew by {worst:.1f} MiB, over {LIMIT_KB:.0f} KiB per upload")
    finally:
        for p in procs:
            p.kill()
            p.wait()


if __name__ == "__main__":
    main()
