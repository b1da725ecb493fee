#!/usr/bin/env bash
# Runs every test of the project on a fresh Debian/Ubuntu machine: installs what is missing,
# then the Rust unit and loopback integration tests of every crate.
set -euo pipefail
cd "$(dirname "$0")/.."

SUDO=""
[ "$(id -u)" -eq 0 ] || SUDO="sudo"
# pebble: the ACME test server the certificate tests run against, on loopback.
if ! command -v pebble >/dev/null || ! command -v pebble-challtestsrv >/dev/null; then
  echo "== apt-get install pebble"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends pebble
fi

echo "== Rust: unit and loopback integration tests"
cargo test --workspace --all-targets
