#!/usr/bin/env bash
# CI installs what it built: bundles the desktop app as a .deb (the debug build the tests and the
# E2E ran, `npm run build:app`; `npm run package` makes the release bundles), installs it with apt-get,
# starts the INSTALLED binary under Xvfb as a new user (empty HOME: no config, an empty
# keyring), checks that its embedded server answers /healthz, that its window maps and shows
# the UI, that it writes its log file, takes a screenshot, then removes the package and checks
# that nothing of it is left. Root or sudo is needed for apt-get.
#   INSTALL_TEST_OUT: where the screenshot and the app's output go (target/install-test).
set -euo pipefail
cd "$(dirname "$0")/.."

if [ "${1:-}" = "--inside" ]; then
  # Under xvfb-run and dbus-run-session, with HOME pointing at an empty directory.
  out=$2
  eval "$(printf install-test-pw | gnome-keyring-daemon --unlock --components=secrets)"
  # Port 0: the OS picks a free one (never 7070, which a developer's app may hold); the app
  # logs the URL it got.
  GGROK_SERVER_PORT=0 /usr/bin/ggrok-desktop >"$out/app.log" 2>&1 &
  app=$!
  trap 'kill $app 2>/dev/null || true; wait $app 2>/dev/null || true' EXIT
  port=""
  for _ in $(seq 600); do
    kill -0 $app 2>/dev/null || { cat "$out/app.log"; echo "the installed app exited" >&2; exit 1; }
    port=$(grep -o 'url=http://localhost:[0-9]*' "$out/app.log" | head -1 | sed 's/.*://') || true
    [ -n "$port" ] && break
    sleep 0.1
  done
  [ -n "$port" ] || { cat "$out/app.log"; echo "no embedded server URL in the app's output" >&2; exit 1; }
  curl -fsS --max-time 5 -H "Host: localhost" "http://127.0.0.1:$port/healthz" >/dev/null
  echo "embedded server on 127.0.0.1:$port answers /healthz"
  timeout 60 xdotool search --sync --onlyvisible --name '^ggrok$' >/dev/null
  # The window maps before the page is drawn: wait until the screen is more than a blank fill.
  for _ in $(seq 300); do
    import -window root "$out/installed-app.png"
    colors=$(/usr/bin/convert "$out/installed-app.png" -format %k info:)
    [ "$colors" -gt 50 ] && break
    sleep 0.2
  done
  [ "$colors" -gt 50 ] || { echo "the window shows nothing ($colors colours)" >&2; exit 1; }
  echo "window mapped and drawn ($colors colours): $out/installed-app.png"
  test -s "$HOME/.local/share/dev.ggrok.desktop/logs/ggrok.log"
  echo "log file: ~/.local/share/dev.ggrok.desktop/logs/ggrok.log"
  exit 0
fi

SUDO=""
[ "$(id -u)" -eq 0 ] || SUDO="sudo"
out=${INSTALL_TEST_OUT:-$PWD/target/install-test}
rm -rf "$out" && mkdir -p "$out"

[ -f ui/dist/index.html ] || npm run build:ui
npm run build:app
npx tauri bundle --debug --bundles deb
deb=$(ls -t target/debug/bundle/deb/ggrok_*.deb | head -1)
echo "== $deb ($(du -h "$deb" | cut -f1))"
dpkg-deb --field "$deb" Package Version Depends Description
DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "./$deb"
trap 'DEBIAN_FRONTEND=noninteractive $SUDO apt-get remove -y -qq ggrok >/dev/null 2>&1 || true' EXIT
for f in /usr/bin/ggrok-desktop /usr/share/applications/ggrok.desktop \
  /usr/share/icons/hicolor/128x128/apps/ggrok-desktop.png; do
  test -e "$f" || { echo "missing after install: $f" >&2; dpkg -L ggrok >&2; exit 1; }
done
grep -q '^Exec=ggrok-desktop' /usr/share/applications/ggrok.desktop

home=$(mktemp -d)
env -u XDG_CONFIG_HOME -u XDG_DATA_HOME -u XDG_CACHE_HOME -u XDG_STATE_HOME HOME="$home" \
  xvfb-run -a -s "-screen 0 1280x800x24" dbus-run-session -- "$0" --inside "$out"
rm -rf "$home"

DEBIAN_FRONTEND=noninteractive $SUDO apt-get remove -y -qq ggrok
trap - EXIT
if dpkg-query -W -f='${Status}' ggrok 2>/dev/null | grep -q installed; then
  echo "ggrok still installed after apt-get remove" >&2
  exit 1
fi
for f in /usr/bin/ggrok-desktop /usr/share/applications/ggrok.desktop; do
  test ! -e "$f" || { echo "left behind by apt-get remove: $f" >&2; exit 1; }
done
echo "installed, ran and removed $(basename "$deb")"
