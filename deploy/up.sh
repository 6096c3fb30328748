#!/usr/bin/env bash
# The whole pipeline on this machine: installs what is missing, starts the
# local Kafka broker, then runs receiver, worker and sink in the foreground
# with the embedded ClickHouse engine. Ctrl-C stops the pipeline; the broker
# keeps running (`.venv/bin/meterstream kafka stop` stops it).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
deploy/bootstrap.sh
# The data directory, its keys and the broker's logs: for this user only.
umask 077
# Local tokens, made once and kept private: the admin token of the registry's admin API,
# and the read token of the worker's quota API (the admin token works there too, but a
# dashboard or a script that only reads should not hold it).
for kind in admin read; do
  variable=METERSTREAM_${kind^^}_TOKEN file_variable=METERSTREAM_${kind^^}_TOKEN_FILE
  if [ -z "${!variable:-}" ] && [ -z "${!file_variable:-}" ]; then
    token_file="${METERSTREAM_DATA_DIR:-.meterstream}/$kind-token"
    if [ ! -s "$token_file" ]; then
      mkdir -p "$(dirname "$token_file")"
      (umask 077 && head -c 32 /dev/urandom | base64 | tr -d '/+=\n' > "$token_file")
    fi
    export "$variable=$(cat "$token_file")"
    echo "up: $kind API token in $token_file" >&2
  fi
done
if [ -z "${METERSTREAM_SECRET_KEY:-}${METERSTREAM_SECRET_KEY_FILE:-}" ]; then
  # `meterstream up` makes it there (0600) on first use; it seals the webhook secrets in
  # the registry topic, so back it up with the data: without it they cannot be read.
  echo "up: registry secret key in ${METERSTREAM_DATA_DIR:-.meterstream}/secret-key" >&2
fi
.venv/bin/meterstream kafka start
exec .venv/bin/meterstream up
