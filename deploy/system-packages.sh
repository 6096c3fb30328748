#!/usr/bin/env bash
# Installs the Debian packages listed in deploy/system-packages.txt that are missing.
# Idempotent: with all of them present it runs no apt at all. Needs root (or sudo) and
# apt; elsewhere it names what is missing and fails.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

mapfile -t wanted < <(sed -e 's/#.*//' -e 's/[[:space:]]//g' deploy/system-packages.txt | grep -v '^$')
missing=()
for package in "${wanted[@]}"; do
  dpkg-query -W -f='${Status}' "$package" 2>/dev/null | grep -q "install ok installed" || missing+=("$package")
done
[ ${#missing[@]} -eq 0 ] && exit 0

if [ "$(id -u)" -eq 0 ]; then sudo=(); elif command -v sudo >/dev/null 2>&1; then sudo=(sudo); else
  echo "system-packages: missing ${missing[*]}; install them as root (apt-get install ${missing[*]})" >&2
  exit 1
fi
command -v apt-get >/dev/null 2>&1 || { echo "system-packages: no apt-get; install ${missing[*]} by hand" >&2; exit 1; }
export DEBIAN_FRONTEND=noninteractive
# A fresh machine's package lists may be stale or absent: update once if the first try fails.
if ! "${sudo[@]}" apt-get install -y -q --no-install-recommends "${missing[@]}" >/dev/null; then
  "${sudo[@]}" apt-get update -q >/dev/null
  "${sudo[@]}" apt-get install -y -q --no-install-recommends "${missing[@]}" >/dev/null
fi
echo "system-packages: installed ${missing[*]}" >&2
