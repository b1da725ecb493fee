#!/usr/bin/env python3
"""The local service of bench/run.py's raw TCP section: `tcp_probe.py PORT`.

Each connection sends one byte that says what it wants:
  b"D"  download: the service sends 1 MiB buffers until the visitor closes;
  b"E"  exchange: the service answers one byte (b"e") and closes its side.
One thread per connection; the send and receive calls release the GIL.
"""

from __future__ import annotations

import os
import socket
import sys
import threading

CHUNK = memoryview(os.urandom(1 << 20))


def serve(conn: socket.socket) -> None:
    with conn:
        try:
            what = conn.recv(1)
            if what == b"D":
                while True:
                    conn.sendall(CHUNK)
            elif what == b"E":
                conn.sendall(b"e")
                conn.shutdown(socket.SHUT_WR)
                conn.recv(1)  # until the visitor closes
        except OSError:
            pass


def main() -> None:
    listener = socket.create_server(("127.0.0.1", int(sys.argv[1])), backlog=4096)
    print("ready", flush=True)
    while True:
        conn, _ = listener.accept()
        conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        threading.Thread(target=serve, args=(conn,), daemon=True).start()


if __name__ == "__main__":
    main()
