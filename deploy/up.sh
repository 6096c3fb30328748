#!/usr/bin/env bash
# The whole pipeline on this machine: installs what is missing, starts the
# local Kafka broker, then runs receiver, worker and sink in the foreground
# with the embedded ClickHouse engine. Ctrl-C stops the pipeline; the broker
# keeps running (`.venv/bin/meterstream kafka stop` stops it).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
deploy/bootstrap.sh
.venv/bin/meterstream kafka start
exec .venv/bin/meterstream up
