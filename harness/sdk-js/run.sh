#!/usr/bin/env bash
# Runs the JavaScript SDK acceptance suite against a cmkemu binary.
#   CMKEMU_BIN  the emulator (default: ../../build/cmkemu relative to this folder; a relative
#               path given by the caller is taken relative to the caller's directory)
# Extra arguments go to `node --test` (e.g. --test-name-pattern=rotation). Exit code = node's.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"

if [ -n "${CMKEMU_BIN:-}" ]; then
    case "$CMKEMU_BIN" in
        /*) ;;
        *) CMKEMU_BIN="$PWD/$CMKEMU_BIN" ;;
    esac
else
    CMKEMU_BIN="$here/../../build/cmkemu"
fi
export CMKEMU_BIN
cd "$here"

if ! command -v node >/dev/null 2>&1 || ! command -v npm >/dev/null 2>&1; then
    echo "sdk-js: node and npm are required (scripts/deps.sh installs them)" >&2
    exit 1
fi
if [ ! -x "$CMKEMU_BIN" ]; then
    echo "sdk-js: no cmkemu binary at $CMKEMU_BIN (build it first, or set CMKEMU_BIN)" >&2
    exit 1
fi

# (Re)install the pinned dependencies when node_modules is missing or older than the lock file.
if [ ! -f node_modules/.package-lock.json ] || [ package-lock.json -nt node_modules/.package-lock.json ]; then
    npm ci --no-audit --no-fund
fi

set +e
node --test --test-concurrency=1 "$@" test/*.test.mjs
rc=$?
set -e
exit $rc
