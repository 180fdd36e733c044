#!/usr/bin/env bash
# Installs the Debian packages cmkemu needs, only when some are missing.
# Without root it prints the exact apt-get line and stops (exit 1).
set -euo pipefail
PKGS=(build-essential cmake pkg-config
      softhsm2 libsofthsm2-dev libp11-dev libp11-kit-dev libssl-dev opensc
      libcmocka-dev libsqlite3-dev libjansson-dev libmicrohttpd-dev libgnutls28-dev
      libcurl4-openssl-dev curl ca-certificates nodejs npm)
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
if [ ${#missing[@]} -eq 0 ]; then
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
