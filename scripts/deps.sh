#!/usr/bin/env bash
# Installs the Debian packages cmkemu needs, only when some are missing.
# Without root it prints the exact apt-get line and stops (exit 1).
set -euo pipefail
PKGS=(build-essential cmake pkg-config
      softhsm2 libsofthsm2-dev libp11-dev libp11-kit-dev libssl-dev opensc
      libcmocka-dev libsqlite3-dev libjansson-dev libmicrohttpd-dev libgnutls28-dev
      libcurl4-openssl-dev curl ca-certificates nodejs npm valgrind
      clang libclang-rt-14-dev)
missing=()
for p in "${PKGS[@]}"; do
    if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed'; then
        # nodejs/npm may come from elsewhere (a preinstalled Node): accept the commands
        case "$p" in
            nodejs) command -v node >/dev/null 2>&1 && continue ;;
            npm) command -v npm >/dev/null 2>&1 && continue ;;
        esac
        missing+=("$p")
    fi
done
# Debian's chromium for the dashboard's browser test (harness/ui-test). Optional: when it
# cannot be installed, that test reports skipped and everything else still builds and runs.
want_chromium() {
    dpkg-query -W -f='${Status}' chromium 2>/dev/null | grep -q 'install ok installed' && return 1
    [ "$(id -u)" -eq 0 ] || {
        echo "cmkemu setup: no chromium; the dashboard browser test will be skipped" \
             "(as root: apt-get install -y --no-install-recommends chromium)" >&2
        return 1
    }
}
install_chromium() {
    want_chromium || return 0
    echo "cmkemu setup: installing chromium (dashboard browser test)"
    local inst=(env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends chromium)
    if ! "${inst[@]}" >/dev/null 2>&1 && ! { apt-get update -qq && "${inst[@]}" >/dev/null; }; then
        echo "cmkemu setup: chromium could not be installed; the dashboard browser test will be skipped" >&2
    fi
}
if [ ${#missing[@]} -eq 0 ]; then
    install_chromium
    exit 0
fi
line="apt-get install -y --no-install-recommends ${missing[*]}"
if [ "$(id -u)" -ne 0 ]; then
    echo "cmkemu setup: missing Debian packages. Run as root:" >&2
    echo "  apt-get update && $line" >&2
    exit 1
fi
echo "cmkemu setup: installing ${missing[*]}"
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
install_chromium
