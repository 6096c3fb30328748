# The meterstream services (receiver, worker, sink) for docker-compose.yml.
FROM python:3.11-slim
WORKDIR /app
COPY pyproject.toml README.md ./
COPY deploy/constraints.txt deploy/constraints.txt
COPY meterstream meterstream
COPY ingest ingest
COPY processors processors
COPY sinks sinks
COPY billing billing
RUN pip install --no-cache-dir -c deploy/constraints.txt .
ENV METERSTREAM_DATA_DIR=/var/lib/meterstream \
    METERSTREAM_BIND_HOST=0.0.0.0
ENTRYPOINT ["meterstream"]
