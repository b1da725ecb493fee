#!/usr/bin/env bash
# ggrok benchmark: nginx origin served directly, through ggrok and through bore, in one run.
# Prints one markdown table (req/s, ratios, p50/p99, MiB/s, tunnel CPU) on stdout; progress on stderr.
#
#   bench/run.sh                  # DURATION=10 per wrk run, ~2 minutes in total
#   DURATION=3 bench/run.sh       # quick run
#
# Env: DURATION (s per wrk run, default 10), SKIP_INSTALL=1 (don't apt/cargo install),
#      SKIP_BUILD=1 (use the existing target/release binaries), KEEP_LOGS=1 (keep scratch dir with
#      nginx/ggrok/bore logs and raw wrk output).
# Needs: Debian/Ubuntu (apt) or wrk+nginx already installed, cargo, python3 (stdlib only).
# Uses bore's fixed control port 7835 on 127.0.0.1; all other ports are free ephemeral ones.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
root=$(dirname "$here")
export DURATION=${DURATION:-10}
export PATH="$PATH:/usr/sbin:$HOME/.cargo/bin"

sudo=""
[ "$(id -u)" -eq 0 ] || sudo="sudo"

if [ "${SKIP_INSTALL:-0}" != 1 ]; then
    pkgs=()
    command -v wrk >/dev/null || pkgs+=(wrk)
    command -v nginx >/dev/null || pkgs+=(nginx-light)
    command -v python3 >/dev/null || pkgs+=(python3)
    if [ ${#pkgs[@]} -gt 0 ]; then
        echo "[bench] apt-get install ${pkgs[*]}" >&2
        $sudo apt-get update -qq >&2
        $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${pkgs[@]}" >&2
    fi
    if ! command -v bore >/dev/null; then
        echo "[bench] cargo install bore-cli --locked" >&2
        cargo install bore-cli --locked >&2
    fi
fi

if [ "${SKIP_BUILD:-0}" != 1 ]; then
    echo "[bench] cargo build --release -p ggrok-tunnel -p ggrok-server" >&2
    (cd "$root" && cargo build --release -p ggrok-tunnel -p ggrok-server >&2)
fi

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
python3 "$here/run.py" &
py=$!
wait "$py"
