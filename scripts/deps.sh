#!/usr/bin/env bash
# Installs what building, running and testing ggrok need on a fresh Debian 12 / Ubuntu machine
# with Rust and Node.js 20+: system packages (only the missing ones) and the npm packages.
set -euo pipefail
cd "$(dirname "$0")/.."

SUDO=""
[ "$(id -u)" -eq 0 ] || SUDO="sudo"

APT_PACKAGES=(
  # Tauri v2 (WebKitGTK, tray, SVG icons) and the keyring's D-Bus.
  libwebkit2gtk-4.1-dev libgtk-3-dev libayatana-appindicator3-dev librsvg2-dev libssl-dev
  libdbus-1-dev pkg-config build-essential
  # Tests: Xvfb + WebDriver for the real app, Chromium for the UI, a Secret Service, pebble
  # (an ACME test server) for the certificate tests, and python3-gi for the test tray
  # (ui/tests/sni_host.py), HAProxy in front of the server for the PROXY protocol and
  # X-Forwarded-For tests (server/tests/haproxy.rs), OpenSSH through a TCP tunnel
  # (server/tests/tcp.rs).
  xvfb xauth xdotool imagemagick webkit2gtk-driver dbus-x11 gnome-keyring libsecret-tools python3-gi
  keyutils chromium pebble haproxy openssh-server openssh-client
  # The cluster: etcd and etcdctl for server/tests/cluster.rs, protoc for the etcd-client
  # crate's build script (it compiles etcd's gRPC definitions) and the well-known types
  # those import (libprotobuf-dev).
  etcd-server etcd-client protobuf-compiler libprotobuf-dev
)
missing=()
for p in "${APT_PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "== apt-get install ${missing[*]}"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi

command -v node >/dev/null || { echo "Node.js 20+ and npm are required" >&2; exit 1; }
if [ ! -d node_modules ] || [ package-lock.json -nt node_modules/.package-lock.json ]; then
  echo "== npm ci"
  npm ci --no-audit --no-fund
fi
