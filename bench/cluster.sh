#!/usr/bin/env bash
# ggrok cluster benchmark (bench/cluster.py): two nodes on one etcd, the hop against the
# holding node and the origin. Needs etcd (Debian etcd-server), wrk and nginx (installed if
# missing unless SKIP_INSTALL=1), and the release build (skipped with SKIP_BUILD=1).
#
#   bench/cluster.sh            # DURATION=10 per wrk run, about 2 minutes plus the build
#   QUICK=1 bench/cluster.sh    # DURATION=3
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
root=$(dirname "$here")
export PATH="$PATH:/usr/sbin:$HOME/.cargo/bin"
ulimit -n 65536 2>/dev/null || true
sudo=""
[ "$(id -u)" -eq 0 ] || sudo="sudo"

if [ "${SKIP_INSTALL:-0}" != 1 ]; then
    pkgs=()
    command -v wrk >/dev/null || pkgs+=(wrk)
    command -v nginx >/dev/null || pkgs+=(nginx-light)
    # The server's etcd client compiles etcd's gRPC definitions when it is built.
    [ -f /usr/include/google/protobuf/descriptor.proto ] && command -v protoc >/dev/null ||
        pkgs+=(protobuf-compiler libprotobuf-dev)
    command -v etcd >/dev/null || pkgs+=(etcd-server)
    if [ ${#pkgs[@]} -gt 0 ]; then
        $sudo apt-get update -qq >&2
        $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${pkgs[@]}" >&2
    fi
fi

cd "$root"
# shellcheck source=bench/build.sh
. "$root/bench/build.sh"
build_release bench ggrok-tunnel bench_ws bench_idle

BENCH_WORKDIR=$(mktemp -d /tmp/ggrok-cluster-bench.XXXXXX)
export BENCH_WORKDIR
cleanup() {
    local rc=$?
    if [ "${KEEP_LOGS:-0}" = 1 ]; then
        echo "[bench] logs kept in $BENCH_WORKDIR" >&2
    else
        rm -rf "$BENCH_WORKDIR"
    fi
    exit "$rc"
}
trap cleanup EXIT
python3 "$here/cluster.py"
