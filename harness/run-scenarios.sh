#!/usr/bin/env bash
# ctest driver (run under with-emulator.sh): `cmkharness scenario run all` must pass, and a
# scenario with a wrong expectation (harness/testdata/must-fail-scenario) must fail with exit 1.
set -uo pipefail
harness="${1:?usage: run-scenarios.sh CMKHARNESS_BIN}"
here="$(cd "$(dirname "$0")" && pwd)"
# shellcheck disable=SC2086
"$harness" scenario run all --url "$CMKH_URL" --ca "$CMKH_CA" $CMKH_AUTH
rc=$?
# shellcheck disable=SC2086
out="$("$harness" scenario run wrong --scenarios "$here/testdata/must-fail-scenario" \
       --url "$CMKH_URL" --ca "$CMKH_CA" $CMKH_AUTH 2>&1)"
nrc=$?
if [ "$nrc" -ne 1 ] || ! printf '%s\n' "$out" | grep -q "FAILED at step 2"; then
    echo "run-scenarios: the must-fail scenario did not fail as it should (exit $nrc):" >&2
    printf '%s\n' "$out" >&2
    rc=1
else
    echo "self-check: a scenario whose expectation is wrong fails (exit 1)"
fi
exit "$rc"
