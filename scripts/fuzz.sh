#!/usr/bin/env bash
# Fuzzes every target in fuzz/ for FUZZ_SECONDS each (default 20) over the checked-in corpus;
# fails on any crash, hang or invariant broken. Installs cargo-fuzz if it is missing.
# Mutations follow a fixed seed (FUZZ_SEED, default 1), so a run explores the same inputs
# every time and CI fails only on what a change did; FUZZ_SEED=0 lets libFuzzer pick one.
#   FUZZ_SEED=0 FUZZ_SECONDS=600 ./scripts/fuzz.sh   exploratory runs (see docs/fuzzing.md)
#   ./scripts/fuzz.sh frames                      one target
#   FUZZ_JOBS=2 ./scripts/fuzz.sh                 parallel workers per target
# Runs work on a scratch copy of the corpus, so fuzz/corpus/ never grows; new findings are
# left in fuzz/artifacts/TARGET/ (see docs/fuzzing.md to turn one into a seed).
set -euo pipefail
cd "$(dirname "$0")/.."
seconds=${FUZZ_SECONDS:-20}
jobs=${FUZZ_JOBS:-1}
seed=${FUZZ_SEED:-1}
targets=("$@")
[ ${#targets[@]} -gt 0 ] || targets=(frames handshake config hop local_answer visitor_head)

# A debug build of the tool: it only drives the build and the runs, and compiles faster than a release build.
command -v cargo-fuzz >/dev/null || cargo install cargo-fuzz --locked --debug

# No sanitizer by default: ggrok's crates forbid unsafe code, the cold build is shorter and runs
# are several times faster; debug assertions and overflow checks stay on (fuzz/Cargo.toml).
# This also builds on a stable toolchain, the only one a CI machine of this kind has. ASan
# (FUZZ_SANITIZER=address) needs -Zsanitizer: on stable, RUSTC_BOOTSTRAP=1 unlocks it.
sanitizer=${FUZZ_SANITIZER:-none}
if [ "$sanitizer" != none ] && ! rustc --version | grep -q nightly; then
  export RUSTC_BOOTSTRAP=1
fi
build_flags=(--sanitizer "$sanitizer" --release)
(cd fuzz && cargo fuzz build "${build_flags[@]}")

scratch=$(mktemp -d)
trap 'rm -rf "$scratch"' EXIT
for t in "${targets[@]}"; do
  mkdir -p "$scratch/$t" "fuzz/artifacts/$t"
  extra=()
  [ -f "fuzz/dict/$t.dict" ] && extra+=("-dict=dict/$t.dict")
  # -jobs sends output to fuzz-N.log files; only worth it with more than one worker.
  [ "$jobs" -gt 1 ] && extra+=("-jobs=$jobs" "-workers=$jobs")
  echo "== fuzz $t for ${seconds}s, seed $seed"
  # The checked-in seeds go in as a read-only second corpus; growth lands in the scratch dir.
  (cd fuzz && cargo fuzz run "${build_flags[@]}" "$t" "$scratch/$t" "corpus/$t" -- \
    -seed="$seed" -max_total_time="$seconds" -max_len=65536 -rss_limit_mb=2048 -timeout=20 \
    -print_final_stats=1 "${extra[@]}" \
    -artifact_prefix="artifacts/$t/")
done
echo "fuzz: all targets ran clean"
