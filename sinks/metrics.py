"""Prometheus metrics of the sink."""

from prometheus_client import Counter, Gauge, Histogram

ROWS = Counter("meterstream_sink_rows_inserted_total", "Rows inserted, by table.", ["table"])
INSERTS = Counter("meterstream_sink_inserts_total",
                  "Inserts that ClickHouse stored (one per table and month of a batch).",
                  ["table"])
INSERT_SECONDS = Histogram(
    "meterstream_sink_insert_seconds",
    "Duration of one insert (building the columns included), by table.", ["table"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
)
INSERT_FAILURES = Counter(
    "meterstream_sink_insert_failures_total",
    "Inserts ClickHouse refused or could not be reached for; retried with backoff.", ["table"],
)
DUPLICATES = Counter(
    "meterstream_sink_duplicates_skipped_total",
    "Records not inserted because the table holds them already (by their origin), by table.",
    ["table"],
)
PAUSED = Gauge("meterstream_sink_paused",
               "1 while the table's partitions are paused because its inserts fail.", ["table"])
BUFFERED = Gauge("meterstream_sink_buffered_rows", "Rows waiting for their insert, by table.",
                 ["table"])
DEAD_LETTERS = Counter(
    "meterstream_sink_dead_letters_total",
    "Messages or records the sink could not store, sent to the dead-letter topic.", ["table"],
)
COMMIT_FAILURES = Counter(
    "meterstream_sink_commit_failures_total",
    "Offset commits that failed after the rows were stored (they are read again and skipped).",
)
ASSIGNED = Gauge("meterstream_sink_assigned_partitions",
                 "Partitions of the sink's topics assigned to this sink.")
POISON = Counter(
    "meterstream_sink_poison_messages_total",
    "Origin messages whose records ClickHouse refused for their data "
    "METERSTREAM_SINK_MAX_ATTEMPTS times, sent to the dead-letter topic and skipped.",
    ["table"],
)
CONSUMER_LAG = Gauge(
    "meterstream_sink_consumer_lag",
    "Messages not yet committed by the sink's group, per partition of the record topics and "
    "the alerts topic this sink owns: end offset minus committed offset "
    "(meterstream/core/lag.py), measured every METERSTREAM_LAG_INTERVAL seconds.",
    ["topic", "partition"],
)
