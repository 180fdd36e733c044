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

# A fresh emulator on a free port (with-emulator.sh runs this script again inside it).
if [ -z "${CMKH_URL:-}" ]; then
    exec "$here/with-emulator.sh" "$emu" "$0" "$@"
fi
url="$CMKH_URL"
ca="$CMKH_CA"

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

exit "$rc"
