#!/usr/bin/env bash
# Starts cmkemu on a fresh data dir and a free port, runs a command against it, stops the
# server and removes the data dir; exits with the command's status, or 1 when the server died
# while it ran or did not shut down cleanly on SIGTERM (status 0 within 10 s).
#   with-emulator.sh CMKEMU_BIN [cmkemu serve options --] COMMAND [ARGS...]
# The command sees CMKH_URL (https://localhost:PORT), CMKH_CA (the server's certificate),
# CMKH_DATA (its data dir) and CMKH_AUTH (client-credential options of the demo world's
# kv-admin-app, space-separated). On failure the server's last stderr lines are printed.
# CMKEMU_WRAPPER (e.g. "valgrind --error-exitcode=99") runs the server under a tool;
# CMKEMU_START_SECONDS (default 60) and CMKEMU_STOP_SECONDS (default 10) bound start and stop.
set -uo pipefail
emu="${1:?usage: with-emulator.sh CMKEMU_BIN [serve options --] COMMAND [ARGS...]}"
shift
serve_opts=()
if printf '%s\n' "$@" | grep -qx -- '--'; then
    while [ "$1" != "--" ]; do serve_opts+=("$1"); shift; done
    shift
fi
start_s="${CMKEMU_START_SECONDS:-60}"
stop_s="${CMKEMU_STOP_SECONDS:-10}"
wrapper=()
# shellcheck disable=SC2206
[ -n "${CMKEMU_WRAPPER:-}" ] && wrapper=(${CMKEMU_WRAPPER})
tmp="$(mktemp -d "${TMPDIR:-/tmp}/cmkemu-run.XXXXXX")"
pid=""
cleanup() {
    if [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null; then
        kill "$pid" 2>/dev/null
        for _ in $(seq 1 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
        kill -9 "$pid" 2>/dev/null
        wait "$pid" 2>/dev/null
    fi
    rm -rf "$tmp"
}
# Stops the server with SIGTERM and checks that it shut down cleanly: exit status 0 (a
# sanitizer build or valgrind exits non-zero on a leak or a memory error) within stop_s.
stop_server() {
    kill "$pid" 2>/dev/null
    local i
    for i in $(seq 1 $((stop_s * 10))); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    if kill -0 "$pid" 2>/dev/null; then
        echo "with-emulator: cmkemu did not stop within $stop_s s of SIGTERM" >&2
        return 1
    fi
    wait "$pid"
    local src=$?
    pid=""
    if [ "$src" -ne 0 ]; then
        echo "with-emulator: cmkemu exited with status $src after SIGTERM" >&2
        echo "--- cmkemu stderr (last 80 lines) ---" >&2
        tail -n 80 "$tmp/err" >&2
        return 1
    fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

"${wrapper[@]}" "$emu" serve --listen 127.0.0.1:0 --data-dir "$tmp/data" --log-level warn "${serve_opts[@]}" \
    >"$tmp/out" 2>"$tmp/err" &
pid=$!
port=""
for _ in $(seq 1 $((start_s * 10))); do
    port="$(sed -n 's|.*serving https://[^:/ ]*:\([0-9][0-9]*\)/.*|\1|p' "$tmp/out" | head -n1)"
    [ -n "$port" ] && break
    if ! kill -0 "$pid" 2>/dev/null; then
        echo "with-emulator: cmkemu exited before serving" >&2
        cat "$tmp/out" "$tmp/err" >&2
        exit 1
    fi
    sleep 0.1
done
if [ -z "$port" ]; then
    echo "with-emulator: cmkemu did not print its serving line within ${start_s}s" >&2
    exit 1
fi
export CMKH_URL="https://localhost:$port"
export CMKH_CA="$tmp/data/tls/cert.pem"
export CMKH_DATA="$tmp/data"
export CMKH_AUTH="--client-id 0a000001-0000-4000-8000-00000000a001 --client-secret kv-admin-secret --tenant 72f988bf-0000-4000-8000-00000000c0de --authority $CMKH_URL"
"$@"
rc=$?
if [ "$rc" -ne 0 ] && [ -s "$tmp/err" ]; then
    echo "--- cmkemu stderr (last 50 lines) ---" >&2
    tail -n 50 "$tmp/err" >&2
fi
if ! kill -0 "$pid" 2>/dev/null; then
    wait "$pid"
    echo "with-emulator: cmkemu exited (status $?) while the command ran" >&2
    tail -n 80 "$tmp/err" >&2
    pid=""
    exit 1
fi
stop_server || exit 1
exit "$rc"
