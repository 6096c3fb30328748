#!/usr/bin/env bash
# Installs meterstream with its test tools into .venv, pinned by deploy/constraints.txt.
# Idempotent: a second run with unchanged dependencies returns at once.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

python=${PYTHON:-python3}
command -v "$python" >/dev/null 2>&1 || { echo "bootstrap: $python not found; install Python 3.11 or newer" >&2; exit 1; }
"$python" -c 'import sys; sys.exit(sys.version_info < (3, 11))' \
  || { echo "bootstrap: meterstream needs Python 3.11+, $python is $("$python" -V 2>&1)" >&2; exit 1; }
for tool in java mvn; do
  command -v "$tool" >/dev/null 2>&1 || echo "bootstrap: warning: '$tool' not found; the local Kafka broker needs Java 17+ and Maven" >&2
done

stamp=.venv/.meterstream-installed
want=$(cat pyproject.toml deploy/constraints.txt | sha256sum | cut -d' ' -f1)
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
  exit 0
fi
[ -x .venv/bin/python ] || "$python" -m venv .venv
.venv/bin/python -m pip install --quiet --disable-pip-version-check -c deploy/constraints.txt -e ".[test]"
echo "$want" > "$stamp"
echo "bootstrap: installed meterstream into .venv" >&2
