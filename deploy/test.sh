#!/usr/bin/env bash
# The test suite: installs what is missing (Python packages, and the Debian packages of
# deploy/system-packages.txt), checks style and types, runs pytest. The
# session's Kafka broker is started by the tests themselves (tests/conftest.py)
# unless METERSTREAM_KAFKA names one. Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
deploy/bootstrap.sh
deploy/system-packages.sh
.venv/bin/ruff check .
.venv/bin/mypy
set +e
.venv/bin/python -m pytest "$@"
code=$?
set -e
if [ "$code" -eq 5 ]; then
  # pytest's 5 means no test was selected (e.g. a -k matching nothing): report it, not a failure.
  echo "test.sh: pytest selected no tests" >&2
  exit 0
fi
exit "$code"
