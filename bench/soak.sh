#!/usr/bin/env bash
# Fault soak: 10,000 requests of random kinds and sizes through the real ggrok-server and ggrok
# binaries while the client is SIGKILLed and restarted 10 times and the server 3 times; then every
# outcome is classified and both processes' fds and RSS are compared with their idle baseline.
# Prints one markdown table of counts and one of resources on stdout; progress on stderr. Exits
# non-zero on any WRONG or HUNG outcome or a process left above its baseline.
# See server/examples/soak.rs for the request mix, the size distribution and the outcome classes.
#
#   bench/soak.sh                        # the full run (10,000 requests)
#   SOAK_REQUESTS=2000 bench/soak.sh     # CI-sized
#
# Env: SOAK_REQUESTS, SOAK_CONCURRENCY (32), SOAK_CLIENT_KILLS (10), SOAK_SERVER_KILLS (3),
#      SOAK_TIMEOUT (per request, s; 30), SOAK_WARMUP (fault-free requests before the
#      baselines; 1000), SOAK_SEED (random; printed, to repeat a run),
#      SOAK_LOGS (dir for the processes' logs; default a temp dir kept only on failure),
#      SKIP_BUILD=1 (use the existing target/release binaries and example).
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$root"
# shellcheck source=bench/build.sh
. "$root/bench/build.sh"
build_release soak ggrok-server soak
# Each restart of the client reconnects; the default 1,024 descriptors are plenty, but a low
# limit inherited from a CI runner should not fail the run.
ulimit -n 4096 2>/dev/null || true
start=$(date +%s)
SOAK_BIN="$root/target/release" "$root/target/release/examples/soak"
echo "[soak] done in $(($(date +%s) - start)) s" >&2
