#!/usr/bin/env bash
# ggrok desktop app benchmark: cold start (window mapped, first paint) and idle memory of the
# process tree, under Xvfb. Prints one markdown table on stdout; progress on stderr.
#
#   bench/desktop.sh              # builds the app as packaged (the `desktop` cargo profile; several minutes),
#                                 # then RUNS=5 cold starts (~20 s each)
#   SKIP_BUILD=1 bench/desktop.sh # reuse /work/target-desktop/desktop/ggrok-desktop (or $CARGO_TARGET_DIR)
#   SKIP_BUILD=1 APP_BIN=/usr/bin/ggrok-desktop bench/desktop.sh   # the installed package (.deb)
#
# Env: RUNS (default 5), SKIP_BUILD=1, APP_BIN (the binary to measure), BENCH_TUNNEL (1, the default:
#      one saved tunnel started on launch and checked online before memory is read; 0: none), IDLE_S (idle wait before measuring memory, default 10),
#      POLL_MS (screenshot/window poll interval, default 50), TIMEOUT_S (per run, default 60),
#      KEEP_FRAMES=1 (keep first-paint screenshots, app logs and raw JSON in /tmp/ggrok-desktop-bench.*;
#      kept without it when a run failed, and the failed run's app output is printed on stderr).
# Needs: xvfb-run (xvfb + xauth), dbus-run-session (dbus), xdotool, ImageMagick (/usr/bin/import,
#        /usr/bin/convert), python3 (stdlib only). Each run is its own `xvfb-run -a dbus-run-session`
#        with a fresh GGROK_CONFIG_DIR and XDG dirs; the embedded server binds 127.0.0.1 on a free port.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
root=$(dirname "$here")
RUNS=${RUNS:-5}
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-/work/target-desktop}
export APP_BIN=${APP_BIN:-"$CARGO_TARGET_DIR/desktop/ggrok-desktop"}

missing=()
command -v xvfb-run >/dev/null || missing+=(xvfb)
command -v xauth >/dev/null || missing+=(xauth)
command -v dbus-run-session >/dev/null || missing+=(dbus)
command -v xdotool >/dev/null || missing+=(xdotool)
[ -x /usr/bin/import ] && [ -x /usr/bin/convert ] || missing+=(imagemagick)
command -v python3 >/dev/null || missing+=(python3)
if [ ${#missing[@]} -gt 0 ]; then
    echo "missing tools; install them with:" >&2
    echo "  apt-get install -y --no-install-recommends ${missing[*]}" >&2
    exit 1
fi

if [ "${SKIP_BUILD:-0}" != 1 ]; then
    echo "[desktop] npm run build:ui && cargo build --profile desktop -p ggrok-desktop --features tauri/custom-protocol" >&2
    (cd "$root" && npm run build:ui >&2 \
        && cargo build --profile desktop -p ggrok-desktop --features tauri/custom-protocol >&2)
fi
[ -x "$APP_BIN" ] || { echo "no app binary at $APP_BIN (run without SKIP_BUILD=1)" >&2; exit 1; }

work=$(mktemp -d /tmp/ggrok-desktop-bench.XXXXXX)
export PIDFILE="$work/pids"
: >"$PIDFILE"
xpid=""
failed=""

cleanup() {
    local rc=$?
    trap - EXIT INT TERM HUP
    # the probe stops the app itself; this catches leftovers if it (or xvfb-run) was killed hard
    if [ -n "$xpid" ] && kill -0 "$xpid" 2>/dev/null; then
        kill -TERM -- "-$xpid" 2>/dev/null || true
        sleep 1
        kill -KILL -- "-$xpid" 2>/dev/null || true
    fi
    while read -r pid start; do
        # only a pid whose start time still matches (never a recycled one)
        [ -r "/proc/$pid/stat" ] || continue
        fields=$(sed 's/.*) //' "/proc/$pid/stat" 2>/dev/null) || continue
        read -r state _ <<<"$fields"
        now=$(awk '{print $20}' <<<"$fields")
        if [ "$now" = "$start" ] && [ "$state" != Z ]; then
            echo "[desktop] killing leftover pid $pid" >&2
            kill -KILL "$pid" 2>/dev/null || true
        fi
    done <"$PIDFILE"
    if [ "${KEEP_FRAMES:-0}" = 1 ]; then
        echo "[desktop] kept $work" >&2
    elif [ -n "$failed" ]; then
        # a failed run's app.log (its panic message) is what the next person needs
        echo "[desktop] kept $work: run(s)$failed failed; each run's app.log is in run*/" >&2
    else
        rm -rf "$work"
    fi
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM
trap 'exit 129' HUP

commit=$(cd "$root" && git rev-parse --short HEAD)
dirty=""
(cd "$root" && git diff --quiet HEAD -- src-tauri ui Cargo.toml Cargo.lock tunnel server) || dirty=" + uncommitted changes"
cpu=$(awk -F': ' '/^model name/{print $2; exit}' /proc/cpuinfo)
load_before=$(cut -d' ' -f1-3 /proc/loadavg)
started=$(date +%s)

results=()
for i in $(seq 1 "$RUNS"); do
    mkdir -p "$work/run$i"
    echo "[desktop] run $i/$RUNS" >&2
    rc=0
    # own process group (setsid), so the trap can take down xvfb-run, Xvfb and dbus with it
    FRAMES_DIR="$work/run$i" setsid xvfb-run -a -e "$work/run$i/xvfb.log" -s "-screen 0 1280x1024x24 -nolisten tcp" \
        dbus-run-session -- python3 "$here/desktop_probe.py" run "$work/run$i.json" &
    xpid=$!
    wait "$xpid" || rc=$?
    xpid=""
    if [ "$rc" -ne 0 ]; then
        echo "[desktop] run $i failed (rc $rc); its app log: $work/run$i/app.log" >&2
        failed="$failed $i"
    fi
    results+=("$work/run$i.json")
done

load_after=$(cut -d' ' -f1-3 /proc/loadavg)
echo "- date: $(date -u '+%Y-%m-%d %H:%M UTC')"
echo "- commit: $commit$dirty; binary $APP_BIN built $(date -u -r "$APP_BIN" '+%Y-%m-%d %H:%M UTC')"
echo "- machine: nproc $(nproc), $cpu, $(uname -sr); $(dpkg-query -W -f '${Package} ${Version}' libwebkit2gtk-4.1-0 2>/dev/null || true)"
echo "- load average (1/5/15 min) before: $load_before, after: $load_after"
echo "- tunnels while idle: $([ "${BENCH_TUNNEL:-1}" = 1 ] && echo "one, on the built-in server, checked online" || echo none)"
echo "- runs: $RUNS, each \`xvfb-run -a dbus-run-session\`, idle ${IDLE_S:-10} s, poll ${POLL_MS:-50} ms; took $(( $(date +%s) - started )) s"
echo
python3 "$here/desktop_probe.py" report "${results[@]}"
