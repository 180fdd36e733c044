#!/usr/bin/env bash
# Starts cmkemu on a fresh data dir and a free port, runs a command against it, stops the
# server and removes the data dir; exits with the command's status.
#   with-emulator.sh CMKEMU_BIN [cmkemu serve options --] COMMAND [ARGS...]
# The command sees CMKH_URL (https://localhost:PORT), CMKH_CA (the server's certificate),
# CMKH_DATA (its data dir) and CMKH_AUTH (client-credential options of the demo world's
# kv-admin-app, space-separated). On failure the server's last stderr lines are printed.
set -uo pipefail
emu="${1:?usage: with-emulator.sh CMKEMU_BIN [serve options --] COMMAND [ARGS...]}"
shift
serve_opts=()
if printf '%s\n' "$@" | grep -qx -- '--'; then
    while [ "$1" != "--" ]; do serve_opts+=("$1"); shift; done
    shift
fi
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
trap cleanup EXIT
trap 'exit 130' INT TERM

"$emu" serve --listen 127.0.0.1:0 --data-dir "$tmp/data" --log-level warn "${serve_opts[@]}" \
    >"$tmp/out" 2>"$tmp/err" &
pid=$!
port=""
for _ in $(seq 1 600); do
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
    echo "with-emulator: cmkemu did not print its serving line within 60s" >&2
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
exit "$rc"
