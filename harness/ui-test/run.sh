#!/usr/bin/env bash
# Browser test of the trainer dashboard (/_emulator/ui/): Debian chromium, headless, driven by
# playwright-core (npm, pinned in package-lock.json), against a throw-away emulator.
#   CMKEMU_BIN     the emulator (default ../../build/cmkemu)
#   UI_ARTIFACTS   where the screenshots go (default ../../build/ui-test)
#   CHROMIUM       the browser (default /usr/bin/chromium)
# Exit: node's status; 77 (ctest: skipped) only when no chromium is installed.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
abs() { case "$1" in /*) printf '%s\n' "$1" ;; *) printf '%s\n' "$PWD/$1" ;; esac; }
CMKEMU_BIN="$(abs "${CMKEMU_BIN:-$here/../../build/cmkemu}")"
UI_ARTIFACTS="$(abs "${UI_ARTIFACTS:-$here/../../build/ui-test}")"
CHROMIUM="${CHROMIUM:-/usr/bin/chromium}"
export CMKEMU_BIN UI_ARTIFACTS CHROMIUM
cd "$here"

if [ ! -x "$CHROMIUM" ]; then
    echo "ui-test: SKIPPED: no chromium at $CHROMIUM (scripts/deps.sh installs Debian's chromium;" \
         "it could not be installed here)" >&2
    exit 77
fi
if ! command -v node >/dev/null 2>&1 || ! command -v npm >/dev/null 2>&1; then
    echo "ui-test: node and npm are required (scripts/deps.sh installs them)" >&2
    exit 1
fi
if [ ! -x "$CMKEMU_BIN" ]; then
    echo "ui-test: no cmkemu binary at $CMKEMU_BIN (build it first, or set CMKEMU_BIN)" >&2
    exit 1
fi
if [ ! -f node_modules/.package-lock.json ] || [ package-lock.json -nt node_modules/.package-lock.json ]; then
    npm ci --no-audit --no-fund
fi
mkdir -p "$UI_ARTIFACTS"
set +e
"$here/../with-emulator.sh" "$CMKEMU_BIN" node --test --test-concurrency=1 "$@" test/*.test.mjs
rc=$?
# the same page under --auth strict, on its own emulator
"$here/../with-emulator.sh" "$CMKEMU_BIN" --auth strict -- node --test "$@" strict/*.test.mjs
rc2=$?
[ "$rc" -ne 0 ] || rc=$rc2
set -e
exit $rc
