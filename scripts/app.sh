#!/usr/bin/env bash
# Runs the ggrok desktop app on a fresh Debian 12 / Ubuntu desktop (installs what is missing
# first). The app starts its own ggrok-server on 127.0.0.1:7070 (domain localhost), so
# "Expose port" works at once and http://NAME.localhost:7070 opens in any browser.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/deps.sh
exec npm run app
