"""Prometheus metrics of the worker."""

from prometheus_client import Counter

RAW_BATCHES = Counter("meterstream_worker_raw_batches_total", "Raw webhook bodies processed.")
EVENTS = Counter(
    "meterstream_worker_events_total",
    "Events split out of raw bodies, by where they went.",
    ["route"],
)
DUPLICATES = Counter(
    "meterstream_worker_duplicates_total",
    "Repeats dropped: whole webhook bodies (Convex retries) and agent usage records by id.",
    ["kind"],
)
EXPIRED = Counter("meterstream_worker_dedup_expired_total", "Deduplication entries expired.")
