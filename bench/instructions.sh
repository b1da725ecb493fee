#!/usr/bin/env bash
# User-space instructions per small request, for the server and the client of ggrok and of bore,
# counted by valgrind's callgrind, beside each process's system calls and context switches per
# request, counted by perf. CPU time per request moves by about ±1 µs from run to run on a shared
# machine; these counts repeat within a few percent and depend little on the CPU, so they show
# what a change to the request path saves and how ggrok's work per request compares with bore's
# on any machine (docs/benchmarks.md, "Why it is built this way").
#
# For each process in turn it runs that process under callgrind and the other natively, in front
# of an nginx origin serving 100 bytes; warms up, zeroes the counters, sends WRK_SECONDS of
# `wrk -t1 -c10` through the tunnel, dumps the counters and divides by the requests answered.
# bore is measured when it is installed and its fixed control port (7835) is free; the kernel
# columns need perf with access to tracepoints (root, or perf_event_paranoid ≤ -1).
# Before the session's own WebSocket framing (tunnel/src/ws.rs, 21ac26c), tungstenite zeroed its
# read buffer before every read: under valgrind's slow pace one memset per frame, a large share
# of the count but under 1% of the time under load. memset is still shown apart, so that older
# figures compare.
#
#   bench/instructions.sh                 # builds the release binaries first
#   SKIP_BUILD=1 bench/instructions.sh    # measures the binaries in target/release
#
# Env: WRK_SECONDS (5), SKIP_BUILD=1, GGROK_BIN (the binaries to count; default target/release:
# an A/B of a change counts a build of each side). Needs valgrind, wrk, nginx, curl, python3;
# bore and perf optional.
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$root"
for tool in valgrind callgrind_control callgrind_annotate wrk nginx curl python3; do
  command -v "$tool" >/dev/null || { echo "instructions: $tool is missing (apt-get install valgrind wrk nginx-light curl)" >&2; exit 1; }
done
[ "${SKIP_BUILD:-0}" = 1 ] || (cd "$root" && cargo build --release -p ggrok-tunnel -p ggrok-server >&2)
bin="${GGROK_BIN:-$root/target/release}"
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

# start TUNNEL SIDE: starts TUNNEL's (ggrok or bore) server and client, SIDE (server, client or
# none) under callgrind; sets s, c (their pids), url and host.
start() {
  local tunnel=$1 side=$2 port vg=(valgrind --tool=callgrind --callgrind-out-file="$work/cg.$1.$2.%p")
  port=$(free_port)
  local server client
  if [ "$tunnel" = ggrok ]; then
    server=("$bin/ggrok-server" --listen "127.0.0.1:$port" --domain localhost --db "$work/$side.$RANDOM.db")
    client=("$bin/ggrok" http "$origin" --server "http://127.0.0.1:$port" --subdomain bench
      --local-host 127.0.0.1)
    host=bench.localhost
  else
    server=(bore server --bind-addr 127.0.0.1 --min-port "$port" --max-port "$port")
    client=(bore local "$origin" --local-host 127.0.0.1 --to 127.0.0.1 --port "$port")
    host=127.0.0.1:$port
  fi
  if [ "$side" = server ]; then server=("${vg[@]}" "${server[@]}"); fi
  if [ "$side" = client ]; then client=("${vg[@]}" "${client[@]}"); fi
  RUST_LOG=warn "${server[@]}" >"$work/$tunnel.server.$side.log" 2>&1 &
  s=$!
  pids+=("$s")
  if [ "$tunnel" = ggrok ]; then
    wait_for "ggrok-server" curl -s -o /dev/null "http://127.0.0.1:$port/"
  else
    wait_for "bore server" bash -c 'exec 3<>/dev/tcp/127.0.0.1/7835'
  fi
  RUST_LOG=warn "${client[@]}" >/dev/null 2>"$work/$tunnel.client.$side.log" &
  c=$!
  pids+=("$c")
  url="http://127.0.0.1:$port/small.bin"
  wait_for "the $tunnel tunnel" curl -sf -H "Host: $host" "$url"
  wrk -t1 -c10 -d2s -H "Host: $host" "$url" >/dev/null
}

stop() {
  kill "$s" "$c" 2>/dev/null || true
  wait "$s" "$c" 2>/dev/null || true
}

# instructions TUNNEL SIDE: user-space instructions per request of that process, and without
# the read-buffer memset.
instructions() {
  local tunnel=$1 side=$2 vpid n dump
  start "$tunnel" "$side"
  vpid=$([ "$side" = server ] && echo "$s" || echo "$c")
  callgrind_control -z "$vpid" >/dev/null
  n=$(wrk -t1 -c10 -d"${seconds}s" -H "Host: $host" "$url" | awk '/requests in/{print $1}')
  callgrind_control -d "$vpid" >/dev/null
  stop
  dump=$(ls "$work"/cg."$tunnel.$side".*.1 | head -1)
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
print(f'{total / $n:,.0f} | {(total - memset) / $n:,.0f}')
"
}

# kernel TUNNEL: system calls and context switches per request of the server and the client,
# both native, counted by perf for the same load.
kernel() {
  local tunnel=$1 n
  start "$tunnel" none
  perf stat -x, -e raw_syscalls:sys_enter,context-switches -p "$s" -o "$work/perf.s" &
  local ps=$!
  perf stat -x, -e raw_syscalls:sys_enter,context-switches -p "$c" -o "$work/perf.c" &
  local pc=$!
  sleep 0.5
  n=$(wrk -t1 -c10 -d"${seconds}s" -H "Host: $host" "$url" | awk '/requests in/{print $1}')
  kill -INT "$ps" "$pc"
  wait "$ps" "$pc" 2>/dev/null || true
  stop
  for f in s c; do
    python3 -c "
import sys
counts = {}
for line in open('$work/perf.$f'):
    parts = line.strip().split(',')
    if len(parts) > 2 and parts[0].replace('.', '').isdigit():
        counts[parts[2]] = float(parts[0])
print(f\"{counts.get('raw_syscalls:sys_enter', 0) / $n:.1f} | {counts.get('context-switches', 0) / $n:.2f}\")
"
  done
}

peers=(ggrok)
if ! command -v bore >/dev/null; then
  echo "instructions: bore is not installed (cargo install bore-cli): measuring ggrok alone" >&2
elif (exec 3<>/dev/tcp/127.0.0.1/7835) 2>/dev/null; then
  echo "instructions: bore's fixed control port 7835 is in use: measuring ggrok alone" >&2
else
  peers+=(bore)
fi
have_perf=0
perf stat -e raw_syscalls:sys_enter -- true >/dev/null 2>&1 && have_perf=1

echo "## User-space instructions (callgrind), system calls and context switches (perf) per small request"
echo
echo "- date: $(date -u '+%Y-%m-%d %H:%M UTC'); commit: $(git -C "$root" rev-parse --short HEAD)$(git -C "$root" diff --quiet || echo ' + uncommitted changes'); CPU: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ *//')"
echo "- load: \`wrk -t1 -c10 -d${seconds}s\`, 100-byte responses from nginx, through each tunnel on 127.0.0.1; callgrind runs one process at a time, the other natively; perf counts both, natively, in a run of their own"
echo
echo "| tunnel | process | instructions / request | without the read-buffer memset | system calls / request | context switches / request |"
echo "|---|---|--:|--:|--:|--:|"
for tunnel in "${peers[@]}"; do
  kernel_rows=("— | —" "— | —")
  if [ "$have_perf" = 1 ]; then mapfile -t kernel_rows < <(kernel "$tunnel"); fi
  echo "| $tunnel | server | $(instructions "$tunnel" server) | ${kernel_rows[0]} |"
  echo "| $tunnel | client | $(instructions "$tunnel" client) | ${kernel_rows[1]} |"
done
