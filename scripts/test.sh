#!/usr/bin/env bash
# Runs every test of the project on a fresh Debian/Ubuntu machine: installs what is missing,
# then the Rust unit and loopback integration tests of every crate.
set -euo pipefail
cd "$(dirname "$0")/.."

echo "== Rust: unit and loopback integration tests"
cargo test --workspace --all-targets
