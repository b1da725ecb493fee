#!/usr/bin/env bash
# Runs every test of the project on a fresh Debian 12 / Ubuntu machine (installs what is
# missing first). Everything listens on 127.0.0.1 only.
#   1. UI: type-check + build, Vitest, Playwright in Debian's Chromium with the IPC mocked;
#   2. Rust: unit and loopback integration tests of every crate, under a private D-Bus session
#      with an unlocked gnome-keyring so the real Secret Service test runs too; the desktop app
#      is built with the UI of step 1 embedded, and that binary is the one steps 4 and 5 run;
#      then the CLI's web inspector (embedded from ui/dist-inspector) in Chromium against the
#      real binaries (ui/tests/inspector.test.mjs);
#   3. Soak: server/examples/soak.rs, 2,000 requests through the real binaries while the client
#      and the server are killed (skip with GGROK_SKIP_SOAK=1);
#   4. E2E: the real desktop app under Xvfb via tauri-driver + WebKitWebDriver against a real
#      ggrok-server and origin (skip with GGROK_SKIP_E2E=1);
#   5. Install: the app bundled as a .deb, installed with apt-get, run as a new user under Xvfb,
#      removed (scripts/install-test.sh; skip with GGROK_SKIP_INSTALL=1);
#   6. Fuzz: every cargo-fuzz target for FUZZ_SECONDS (20) over fuzz/corpus, fixed seed (skip with
#      GGROK_SKIP_FUZZ=1; the corpus itself runs in step 2 either way).
# GGROK_LINT=1 (CI sets it) compiles the workspace crates of steps 2 and 3 with clippy-driver and
# -D warnings: `cargo clippy --workspace --all-targets -- -D warnings` folded into the test build.
set -euo pipefail
cd "$(dirname "$0")/.."
start=$(date +%s)
step() { printf '\n== %s (%ss)\n' "$*" "$(( $(date +%s) - start ))"; }

./scripts/deps.sh

if [ "${GGROK_LINT:-0}" = "1" ]; then
  # What `cargo clippy -- -D warnings` hands its driver; only workspace members go through it.
  # Exported for steps 2 and 3 only: `cargo install` and the fuzz build must not lint others' code.
  lint_env=(RUSTC_WORKSPACE_WRAPPER="$(command -v clippy-driver)" CLIPPY_ARGS="-D__CLIPPY_HACKERY__warnings__CLIPPY_HACKERY__")
else
  lint_env=()
fi

# The UI first: its build (ui/dist) is embedded into the app that the Rust step compiles.
step "UI: tsc + vite build, vitest, playwright (chromium, mocked IPC)"
npm run test:ui

step "Rust: cargo test --workspace (with a real Secret Service)"
# The keyring lives in a throwaway XDG_DATA_HOME: a fresh "login" keyring that the password
# below unlocks, and a developer's own keyrings are never touched.
keyring_home=$(mktemp -d)
trap 'rm -rf "$keyring_home"' EXIT
env "${lint_env[@]}" XDG_DATA_HOME="$keyring_home" dbus-run-session -- bash -c '
  set -e
  eval "$(printf ci-keyring-pw | gnome-keyring-daemon --unlock --components=secrets)"
  export GGROK_TEST_SECRET_SERVICE=1
  cargo test --workspace --all-targets --features ggrok-desktop/custom-protocol
'

# The binaries the tests used, the app with its UI embedded, and the soak tool. The features are
# the ones cargo test unified (dev-dependencies are on for examples), so nothing compiles again.
step "Build: binaries, examples, the app with the UI embedded"
env "${lint_env[@]}" npm run build:app

step "Inspector: the CLI's web inspector in Chromium against the real ggrok and ggrok-server"
npm run test:inspector

if [ "${GGROK_SKIP_SOAK:-0}" != "1" ]; then
  step "Fault soak: 2,000 requests while the client and the server are killed (debug build)"
  # bench/soak.sh runs the full soak on a release build.
  SOAK_REQUESTS=2000 SOAK_BIN="$PWD/target/debug" target/debug/examples/soak
fi

if [ "${GGROK_SKIP_E2E:-0}" != "1" ]; then
  step "E2E: tauri-driver"
  # A debug build: the driver only relays WebDriver calls, and it compiles faster than a release build.
  command -v tauri-driver >/dev/null || cargo install tauri-driver --locked --debug
  step "E2E: the real app under Xvfb"
  xvfb-run -a dbus-run-session -- node ui/tests/e2e.mjs
fi

if [ "${GGROK_SKIP_INSTALL:-0}" != "1" ]; then
  step "Install: .deb built, installed, run under Xvfb with an empty HOME, removed"
  ./scripts/install-test.sh
fi

if [ "${GGROK_SKIP_FUZZ:-0}" != "1" ]; then
  step "Fuzz: scripts/fuzz.sh (${FUZZ_SECONDS:-20}s per target, seed ${FUZZ_SEED:-1})"
  ./scripts/fuzz.sh
fi

step "all tests passed"
