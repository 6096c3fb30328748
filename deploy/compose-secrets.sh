#!/bin/sh
# The docker-compose stack's credentials, made once into the secrets volume (the `secrets`
# service runs this before every other service starts; later runs keep what exists):
#
#   clickhouse-password  the ClickHouse user `meterstream`'s password
#   clickhouse-url       METERSTREAM_CLICKHOUSE with that password (read via ..._FILE)
#   admin-token          METERSTREAM_ADMIN_TOKEN of the admin API
#   read-token           METERSTREAM_READ_TOKEN of the worker's quota API
#   secret-key           METERSTREAM_SECRET_KEY: seals webhook secrets in the registry
#
# Every file is 0600 and owned by the image's non-root user, so only the meterstream
# services (and the root entrypoint of ClickHouse, for its password) can read them.
set -eu
umask 077
dir=${1:-/run/meterstream-secrets}
owner=${METERSTREAM_UID:-10001}

random_text() { head -c 32 /dev/urandom | base64 | tr -d '/+=\n'; }

[ -s "$dir/clickhouse-password" ] || random_text > "$dir/clickhouse-password"
[ -s "$dir/admin-token" ] || random_text > "$dir/admin-token"
[ -s "$dir/read-token" ] || random_text > "$dir/read-token"
[ -s "$dir/secret-key" ] || head -c 32 /dev/urandom | base64 > "$dir/secret-key"
printf 'http://meterstream:%s@clickhouse:8123/meterstream\n' \
  "$(cat "$dir/clickhouse-password")" > "$dir/clickhouse-url"
chown "$owner:$owner" "$dir" "$dir"/*
chmod 0700 "$dir"
chmod 0600 "$dir"/*
echo "compose-secrets: credentials in $dir"
