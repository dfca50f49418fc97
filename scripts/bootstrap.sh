#!/usr/bin/env bash
# Installs what a fresh Debian machine lacks to build and test snap: the C libraries snap links
# (OpenSSL, zstd, libpq, zlib), pkg-config, and the PostgreSQL server and client binaries the tests
# and the demo start a throwaway cluster from. Installs nothing that is already there.
# Extra Debian packages given as arguments (the benchmarks' restic, borgbackup, time) are
# installed the same way.
set -euo pipefail

packages=(libssl-dev libzstd-dev libpq-dev zlib1g-dev pkg-config postgresql postgresql-client zstd "$@")
missing=()
for package in "${packages[@]}"; do
    dpkg-query -W -f='${Status}' "$package" 2>/dev/null | grep -q "install ok installed" || missing+=("$package")
done
if ((${#missing[@]})); then
    echo "bootstrap: installing ${missing[*]}" >&2
    sudo=""
    if [[ $(id -u) -ne 0 ]]; then sudo="sudo"; fi
    $sudo apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
command -v swift >/dev/null || { echo "bootstrap: swift is not on PATH (expected Swift 6.1 or newer)" >&2; exit 1; }
