# The meterstream services (receiver, worker, sink) for docker-compose.yml.
FROM python:3.11-slim
# A fixed non-root user (numeric, so that a runtime can check it is not root) owning the
# data directory and the secrets volume's mount point: a named volume mounted there
# starts with this ownership and mode.
RUN useradd --system --uid 10001 --user-group --home-dir /var/lib/meterstream \
        --shell /usr/sbin/nologin meterstream \
    && mkdir -p /var/lib/meterstream /run/meterstream-secrets \
    && chown meterstream:meterstream /var/lib/meterstream /run/meterstream-secrets \
    && chmod 0700 /var/lib/meterstream /run/meterstream-secrets
WORKDIR /app
COPY pyproject.toml README.md ./
COPY deploy/constraints.txt deploy/constraints.txt
COPY deploy/compose-secrets.sh /usr/local/bin/meterstream-compose-secrets
COPY meterstream meterstream
COPY ingest ingest
COPY processors processors
COPY sinks sinks
COPY billing billing
RUN pip install --no-cache-dir -c deploy/constraints.txt .
ENV METERSTREAM_DATA_DIR=/var/lib/meterstream \
    METERSTREAM_BIND_HOST=0.0.0.0
USER 10001:10001
ENTRYPOINT ["meterstream"]
