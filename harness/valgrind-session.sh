#!/usr/bin/env bash
# A server session under valgrind memcheck: cmkemu (demo world) runs the conformance suite and
# the Power Platform lock scenarios that touch every layer (link, records, revoke/lock, rotate,
# purge), then stops on SIGTERM; it passes when every command passed and memcheck reports no
# error and no definite or indirect leak (valgrind's exit status 99 otherwise).
#   valgrind-session.sh CMKEMU_BIN CMKHARNESS_BIN
# Exit 77 (skipped) only when valgrind is not installed.
set -uo pipefail
inner=0
if [ "${1:-}" = "--inner" ]; then inner=1; shift; fi
emu="${1:?usage: valgrind-session.sh CMKEMU_BIN CMKHARNESS_BIN}"
harness="${2:?usage: valgrind-session.sh CMKEMU_BIN CMKHARNESS_BIN}"
here="$(cd "$(dirname "$0")" && pwd)"
if ! command -v valgrind >/dev/null 2>&1; then
    echo "valgrind-session: valgrind is not installed (scripts/deps.sh installs it); skipped" >&2
    exit 77
fi
scenarios=(setup-and-link lock-revoke-access rotate-key purge-crypto-shredding coverage-retail-csu)

if [ "$inner" -eq 1 ]; then
    rc=0
    # shellcheck disable=SC2086
    "$harness" conformance --url "$CMKH_URL" --ca "$CMKH_CA" $CMKH_AUTH >"$CMKH_DATA/../conf.out" 2>&1 || rc=1
    echo "conformance: $(tail -n 1 "$CMKH_DATA/../conf.out") at $SECONDS s"
    for s in "${scenarios[@]}"; do
        # shellcheck disable=SC2086
        if "$harness" scenario run "$s" --no-color --url "$CMKH_URL" --ca "$CMKH_CA" $CMKH_AUTH \
            >"$CMKH_DATA/../scen.out" 2>&1; then
            echo "scenario $s: passed at $SECONDS s"
        else
            echo "scenario $s: FAILED" >&2
            tail -n 20 "$CMKH_DATA/../scen.out" >&2
            rc=1
        fi
    done
    [ "$rc" -eq 0 ] || tail -n 30 "$CMKH_DATA/../conf.out" >&2
    exit "$rc"
fi

vgdir="$(mktemp -d "${TMPDIR:-/tmp}/cmkemu-vg.XXXXXX")"
trap 'rm -rf "$vgdir"' EXIT
export CMKEMU_WRAPPER="valgrind --quiet --leak-check=full --errors-for-leak-kinds=definite,indirect --show-leak-kinds=definite,indirect --error-exitcode=99 --log-file=$vgdir/memcheck.log"
export CMKEMU_START_SECONDS=300 CMKEMU_STOP_SECONDS=120
start=$(date +%s)
"$here/with-emulator.sh" "$emu" "$0" --inner "$emu" "$harness"
rc=$?
echo "valgrind-session: $(( $(date +%s) - start )) s, exit $rc"
if [ -s "$vgdir/memcheck.log" ]; then
    echo "--- memcheck report ---" >&2
    head -n 200 "$vgdir/memcheck.log" >&2
fi
exit "$rc"
