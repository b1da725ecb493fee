#!/usr/bin/env bash
# Slow transfers: a 1 GiB download read at 1 MB/s and a 1 GiB upload to a local service reading
# at 1 MB/s (about 18 minutes each), through the real ggrok-server and ggrok binaries, with both
# processes' peak RSS (limit 64 MB) and a fast transfer's throughput alone and next to the slow
# one on the same tunnel. One markdown table on stdout; exits non-zero on a bad checksum or RSS
# over the limit. See server/examples/slow.rs.
#
#   bench/slow.sh                                             # the issue's figures
#   SLOW_SIZE=67108864 SLOW_RATE=8000000 bench/slow.sh        # a quick run (~8 s per phase)
#
# Env: SLOW_SIZE (bytes), SLOW_RATE (bytes/s), FAST_SIZE (bytes, 256 MiB), SLOW_LIMIT_MB (64),
#      SLOW_PHASES (down,up), SKIP_BUILD=1 (use the existing target/release builds).
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$root"
# shellcheck source=bench/build.sh
. "$root/bench/build.sh"
build_release slow ggrok-server slow
SLOW_BIN="$root/target/release" "$root/target/release/examples/slow"
