#!/usr/bin/env bash
# Runs ggrok locally: a ggrok-server on loopback (domain localhost). Expose a port with
#   ./target/release/ggrok http PORT --server http://127.0.0.1:8080
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release -p ggrok-server -p ggrok-tunnel
echo "ggrok-server on http://127.0.0.1:8080 — in another terminal:"
echo "  ./target/release/ggrok http 3000 --server http://127.0.0.1:8080 --subdomain myapp"
exec ./target/release/ggrok-server --listen 127.0.0.1:8080 --domain localhost
