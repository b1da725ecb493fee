#!/usr/bin/env bash
# User-space instructions per small request, for the ggrok server and the ggrok client, counted by
# valgrind's callgrind. CPU time per request moves by about ±1 µs from run to run on a shared
# machine; instruction counts repeat within a few percent, so they show what a change to the
# request path saves (docs/benchmarks.md, "Why it is built this way").
#
# For each process in turn it runs that process under callgrind and the other natively, in front
# of an nginx origin serving 100 bytes; warms up, zeroes the counters, sends WRK_SECONDS of
# `wrk -t1 -c10` through the tunnel, dumps the counters and divides by the requests answered.
# Tungstenite zeroes its read buffer before every read; under valgrind's slow pace that is one
# memset per frame, a large share of the count but under 1% of the time under load, so it is
# shown apart.
#
#   bench/instructions.sh                 # builds the release binaries first
#   SKIP_BUILD=1 bench/instructions.sh    # measures the binaries in target/release
#
# Env: WRK_SECONDS (5), SKIP_BUILD=1. Needs valgrind, wrk, nginx, curl, python3.
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$root"
for tool in valgrind callgrind_control callgrind_annotate wrk nginx curl python3; do
  command -v "$tool" >/dev/null || { echo "instructions: $tool is missing (apt-get install valgrind wrk nginx-light curl)" >&2; exit 1; }
done
[ "${SKIP_BUILD:-0}" = 1 ] || (cd "$root" && cargo build --release -p ggrok-tunnel -p ggrok-server >&2)
bin="$root/target/release"
seconds=${WRK_SECONDS:-5}

work=$(mktemp -d /tmp/ggrok-instr.XXXXXX)
chmod 755 "$work"
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
wait_for() { # wait_for WHAT CMD...: retries CMD for up to 60 s (valgrind starts slowly)
  local what=$1; shift
  for _ in $(seq 600); do "$@" >/dev/null 2>&1 && return 0; sleep 0.1; done
  echo "instructions: $what did not come up; logs in $work" >&2
  trap - EXIT
  exit 1
}

origin=$(free_port)
head -c 100 /dev/urandom >"$work/small.bin"
cat >"$work/nginx.conf" <<EOF
worker_processes 1;
daemon off;
pid $work/nginx.pid;
error_log $work/nginx.err;
events { worker_connections 4096; }
http { access_log off; sendfile on; keepalive_requests 1000000; keepalive_timeout 300s;
  server { listen 127.0.0.1:$origin; root $work; } }
EOF
nginx -c "$work/nginx.conf" &
pids+=($!)
wait_for nginx curl -sf "http://127.0.0.1:$origin/small.bin"

measure() { # measure server|client: prints one table row
  local side=$1 port vg=(valgrind --tool=callgrind --callgrind-out-file="$work/cg.$1.%p")
  port=$(free_port)
  local server=("$bin/ggrok-server" --listen "127.0.0.1:$port" --domain localhost --db "$work/$side.db")
  local client=("$bin/ggrok" http "$origin" --server "http://127.0.0.1:$port" --subdomain bench
    --local-host 127.0.0.1)
  if [ "$side" = server ]; then server=("${vg[@]}" "${server[@]}"); else client=("${vg[@]}" "${client[@]}"); fi
  "${server[@]}" >"$work/server.$side.log" 2>&1 &
  local s=$!
  wait_for "ggrok-server" curl -s -o /dev/null "http://127.0.0.1:$port/"
  "${client[@]}" >/dev/null 2>"$work/client.$side.log" &
  local c=$!
  pids+=("$s" "$c")
  wait_for "the tunnel" curl -sf -H "Host: bench.localhost" "http://127.0.0.1:$port/small.bin"
  local url="http://127.0.0.1:$port/small.bin"
  wrk -t1 -c10 -d2s -H "Host: bench.localhost" "$url" >/dev/null
  local vpid
  vpid=$([ "$side" = server ] && echo "$s" || echo "$c")
  callgrind_control -z "$vpid" >/dev/null
  local n
  n=$(wrk -t1 -c10 -d"${seconds}s" -H "Host: bench.localhost" "$url" | awk '/requests in/{print $1}')
  callgrind_control -d "$vpid" >/dev/null
  kill "$s" "$c" 2>/dev/null || true
  wait "$s" "$c" 2>/dev/null || true
  local dump
  dump=$(ls "$work"/cg."$side".*.1 | head -1)
  callgrind_annotate --threshold=100 "$dump" 2>/dev/null | python3 -c "
import re, sys
total = memset = 0
for line in sys.stdin:
    m = re.match(r'\s*([\d,]+) \(\s*[\d.]+%\)\s+(.*)', line)
    if not m:
        continue
    n = int(m.group(1).replace(',', ''))
    if 'PROGRAM TOTALS' in m.group(2):
        total = n
    elif 'memset' in m.group(2):
        memset += n
req = $n
print(f'| {\"$side\"} | {req:,} | {total / req:,.0f} | {(total - memset) / req:,.0f} |')
"
}

echo "## ggrok: user-space instructions per small request (callgrind)"
echo
echo "- date: $(date -u '+%Y-%m-%d %H:%M UTC'); commit: $(git -C "$root" rev-parse --short HEAD)$(git -C "$root" diff --quiet || echo ' + uncommitted changes')"
echo "- load: \`wrk -t1 -c10 -d${seconds}s\`, 100-byte responses from nginx, through ggrok on 127.0.0.1; the other process runs natively"
echo
echo "| process | requests | instructions / request | without the read-buffer memset |"
echo "|---|--:|--:|--:|"
measure server
measure client
