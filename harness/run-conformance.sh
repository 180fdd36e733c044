#!/usr/bin/env bash
# ctest driver of `cmkharness conformance`: starts cmkemu on a fresh data dir and a free port,
# runs every case of fixtures/conformance/ against it with the demo world's kv-admin-app
# credentials, then checks that the runner really fails (harness/testdata/must-fail must end
# "1 passed, 1 failed" with exit 1), stops the server and removes the data dir.
#   run-conformance.sh CMKEMU_BIN CMKHARNESS_BIN [JUNIT_FILE]
# Extra options for the harness: CMKH_ARGS (e.g. CMKH_ARGS="--only keys/ --verbose").
set -uo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
emu="${1:?usage: run-conformance.sh CMKEMU_BIN CMKHARNESS_BIN [JUNIT_FILE]}"
harness="${2:?usage: run-conformance.sh CMKEMU_BIN CMKHARNESS_BIN [JUNIT_FILE]}"
junit="${3:-}"

tmp="$(mktemp -d "${TMPDIR:-/tmp}/cmkh-conformance.XXXXXX")"
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

"$emu" serve --listen 127.0.0.1:0 --data-dir "$tmp/data" --log-level warn >"$tmp/out" 2>"$tmp/err" &
pid=$!

port=""
for _ in $(seq 1 600); do
    port="$(sed -n 's|.*serving https://[^:/ ]*:\([0-9][0-9]*\)/.*|\1|p' "$tmp/out" | head -n1)"
    [ -n "$port" ] && break
    if ! kill -0 "$pid" 2>/dev/null; then
        echo "run-conformance: cmkemu exited before serving" >&2
        cat "$tmp/out" "$tmp/err" >&2
        exit 1
    fi
    sleep 0.1
done
if [ -z "$port" ]; then
    echo "run-conformance: cmkemu did not print its serving line within 60s" >&2
    cat "$tmp/out" "$tmp/err" >&2
    exit 1
fi
url="https://localhost:$port"
ca="$tmp/data/tls/cert.pem"

common=(--url "$url" --ca "$ca"
        --client-id 0a000001-0000-4000-8000-00000000a001 --client-secret kv-admin-secret
        --tenant 72f988bf-0000-4000-8000-00000000c0de --authority "$url")

args=("${common[@]}")
[ -n "$junit" ] && args+=(--junit "$junit")
# shellcheck disable=SC2206
[ -n "${CMKH_ARGS:-}" ] && args+=(${CMKH_ARGS})
"$harness" conformance "${args[@]}"
rc=$?

# The runner must be able to fail: one passing and one deliberately wrong case.
neg="$("$harness" conformance "${common[@]}" --cases "$here/testdata/must-fail" 2>&1)"
nrc=$?
if [ "$nrc" -ne 1 ] || ! printf '%s\n' "$neg" | grep -qx '1 passed, 1 failed'; then
    echo "run-conformance: the must-fail self-check did not fail as it should (exit $nrc):" >&2
    printf '%s\n' "$neg" >&2
    rc=1
else
    echo "self-check: a wrong expectation fails the run (exit 1, '1 passed, 1 failed')"
fi

if [ "$rc" -ne 0 ] && [ -s "$tmp/err" ]; then
    echo "--- cmkemu stderr (last 50 lines) ---" >&2
    tail -n 50 "$tmp/err" >&2
fi
exit "$rc"
