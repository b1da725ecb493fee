#!/usr/bin/env python3
"""ggrok cluster benchmark: two nodes on one etcd, a tunnel held by the first.

Measures, through the holding node and through the node that does not hold the tunnel (one
hop), wrk's small-request rate and large-body throughput with their p99, and the ratio of the
two; then the time to online including the claim in etcd (library, p50/p99), and the idle
memory per tunnel on two fresh nodes in cluster mode (the one holding the tunnels, and one that
only watches the claims). Goals (issue 15): the hop at >= 0.6x the direct path on small requests, >= 0.8x on large bodies; time to online p99 < 50 ms; <= 64 KiB per idle
tunnel. Prints a markdown table on stdout, progress on stderr.

Reuses run.py's helpers (nginx origin, etcd, cluster nodes, wrk, process bookkeeping). Run through bench/cluster.sh.
Env: DURATION (s per wrk run), QUICK=1, ONLINE_RUNS, CLUSTER_IDLE_TUNNELS (default 1000),
     IDLE_SECONDS, GGROK_BIN, KEEP_LOGS=1.
"""

import json
import os
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import run as b  # noqa: E402

IDLE_TUNNELS = b.env_int("CLUSTER_IDLE_TUNNELS", 1000, 200)
IDLE_WARM = 100


def main() -> int:
    workdir = os.environ.get("BENCH_WORKDIR") or b.tempfile.mkdtemp(prefix="ggrok-cluster-bench.")
    procs = b.Procs(workdir)
    t0 = time.monotonic()
    try:
        with open(os.path.join(workdir, "report.lua"), "w") as f:
            f.write(b.WRK_LUA)
        origin, digests, origin_procs, _echo = b.start_origin(procs, workdir)
        etcd_port, etcd_procs = b.start_etcd(procs, workdir)
        holder, holder_procs = b.start_node(procs, "node-holder", etcd_port)
        other, other_procs = b.start_node(procs, "node-other", etcd_port)
        cli = procs.start("ggrok-client", b.ggrok_client_argv(origin, holder, b.SUBDOMAIN),
                          {"RUST_LOG": "warn"}, stdout=subprocess.DEVNULL)
        watched = holder_procs + other_procs + etcd_procs + [("ggrok-client", cli)]
        host = lambda port: f"{b.SUBDOMAIN}.localhost:{port}"  # noqa: E731
        b.wait_http(procs, "tunnel on the holding node", holder, "/small.bin", host(holder), watched)
        b.wait_http(procs, "tunnel through the other node", other, "/small.bin", host(other), watched)

        results: dict = {}
        # Whose CPU a request costs: the holding node, the other node, the client.
        tunnel_pids = [holder_procs[0][1], other_procs[0][1], cli]
        for key, label, args, path in b.WORKLOADS:
            for where, port in (("direct", origin), ("holder", holder), ("hop", other)):
                h = None if where == "direct" else host(port)
                b.log(f"wrk {label} via {where}")
                cpu0 = [b.tree_cpu([p.pid]) for p in tunnel_pids]
                r = b.run_wrk(procs, workdir, f"{key}-{where}", args, port, path, h, b.DURATION)
                r["cpu"] = [b.tree_cpu([p.pid]) - c for p, c in zip(tunnel_pids, cpu0)]
                results[(where, key)] = r

        b.log(f"time to online including the claim: {b.ONLINE_RUNS} runs")
        target = ["--server", f"http://127.0.0.1:{holder}", "--port", str(origin)]
        online = json.loads(b.run_child(procs, workdir, "bench_idle online",
                                        [os.path.join(b.BENCH_BIN, "bench_idle"), "online", *target,
                                         "--runs", str(b.ONLINE_RUNS)], 120))

        # Idle memory on two fresh nodes: the nodes above have grown their allocator's pools under
        # load, so a tunnel's cost would hide in memory they already hold.
        b.log(f"idle: {IDLE_TUNNELS} tunnels on a fresh node, with a fresh second node watching")
        idle_holder, idle_procs = b.start_node(procs, "node-idle-holder", etcd_port)
        _idle_other, idle_other_procs = b.start_node(procs, "node-idle-other", etcd_port)
        nodes = (idle_procs[0][1], idle_other_procs[0][1])
        hold_argv = [os.path.join(b.BENCH_BIN, "bench_idle"), "hold", "--server", f"http://127.0.0.1:{idle_holder}",
                     "--port", str(origin), "--tunnels"]

        def hold(name: str, n: int) -> tuple[subprocess.Popen, dict]:
            p = procs.start(name, hold_argv + [str(n)], {"RUST_LOG": "warn"},
                            stdout=subprocess.PIPE, stdin=subprocess.PIPE)
            return p, b.Lines(procs, name, p).json(300)

        # A first tunnels' memory is mostly the node's own: allocator arenas of its threads, the
        # store's buffers. The cost per tunnel is what the next ones add.
        warm, _ = hold("bench_idle-warm", IDLE_WARM)
        rss0 = [b.rss_bytes(p.pid) for p in nodes]
        held, up = hold("bench_idle-hold", IDLE_TUNNELS)
        time.sleep(b.IDLE_SECONDS)  # the idle window itself, not a wait for readiness
        per_tunnel = ([(b.rss_bytes(p.pid) - r) / up["online"] for p, r in zip(nodes, rss0)]
                      if up["online"] else None)
        for p in (held, warm):
            p.stdin.close()
            p.stdin = None

        def row(key: str, what: str) -> str:
            cells = []
            for where in ("direct", "holder", "hop"):
                r = results[(where, key)]
                secs = r["duration_us"] / 1e6
                rate = (f"{r['requests'] / secs:,.0f} req/s" if key == "small"
                        else f"{r['bytes'] / secs / 2**20:,.1f} MiB/s")
                cells.append(f"{rate}, p99 {r['p99_us'] / 1e3:.1f} ms")
            d, h = results[("holder", key)], results[("hop", key)]
            ratio = (h["bytes"] / h["duration_us"]) / (d["bytes"] / d["duration_us"])
            return f"| {what} | " + " | ".join(cells) + f" | {ratio:.2f}× |"

        def cpu_row(key: str, what: str) -> str:
            cells = []
            for where in ("holder", "hop"):
                r = results[(where, key)]
                unit, per = ("µs per request", r["requests"]) if key == "small" else ("ms per MiB", r["bytes"] / 2**20)
                scale = 1e6 if key == "small" else 1e3
                node, other, client = (c * scale / per for c in r["cpu"])
                cells.append(f"{node + other + client:.1f} = {node:.1f} + {other:.1f} + {client:.1f}")
            return f"| {what} ({unit}) | " + " | ".join(cells) + " |"

        load = (f"- wrk: `-d{b.DURATION}s --latency`, small = `-t2 -c50`, large = `-t2 -c4` and `-t1 -c1`; "
                f"origin nginx 1 worker; idle: {IDLE_TUNNELS:,} tunnels after {IDLE_WARM} of warm-up, "
                f"{b.IDLE_SECONDS} s; time to online: {b.ONLINE_RUNS} runs; everything on 127.0.0.1")
        out = ["## ggrok cluster benchmark", ""] + b.machine_header(load) + ["",
               "| workload | direct | holding node | other node (one hop) | hop / holder |",
               "|---|---|---|---|---|"]
        for key, label, _args, _path in b.WORKLOADS:
            out.append(row(key, label))
        out += ["", "Tunnel CPU, holding node + other node + client:", "",
                "| workload | via the holding node | via the other node (one hop) |", "|---|---|---|"]
        for key, label, _args, _path in b.WORKLOADS:
            out.append(cpu_row(key, label))
        out += ["",
                f"Time to online including the claim in etcd (library, {online.get('runs')} runs): "
                f"p50 {online.get('p50_ms', 0):.1f} ms, p99 {online.get('p99_ms', 0):.1f} ms.",
                f"Idle memory in cluster mode, {up['online']} tunnels on a fresh node: "
                + (f"{per_tunnel[0] / 1024:.1f} KiB per tunnel on the node holding them, "
                   f"{per_tunnel[1] / 1024:.1f} KiB on a fresh node that only watches the claims."
                   if per_tunnel is not None else "none online."),
                "", f"Run took {time.monotonic() - t0:.0f} s."]
        print("\n".join(out), flush=True)
        return 0
    except (b.Fatal, b.PeerFailed) as e:
        b.log(f"failed: {e}")
        return 1
    finally:
        procs.stop_all()


if __name__ == "__main__":
    sys.exit(main())
