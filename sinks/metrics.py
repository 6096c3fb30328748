"""Prometheus metrics of the sink."""

from prometheus_client import Counter, Histogram

ROWS = Counter("meterstream_sink_rows_inserted_total", "Rows inserted, by table.", ["table"])
INSERT_SECONDS = Histogram(
    "meterstream_sink_insert_seconds", "Duration of one batch insert, by table.", ["table"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
)
INSERT_FAILURES = Counter(
    "meterstream_sink_insert_failures_total", "Batch inserts that failed and were retried.",
    ["table"],
)
