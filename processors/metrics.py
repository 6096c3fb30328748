"""Prometheus metrics of the worker."""

from prometheus_client import Counter

RAW_BATCHES = Counter("meterstream_worker_raw_batches_total", "Raw webhook bodies processed.")
EVENTS = Counter(
    "meterstream_worker_events_total",
    "Events split out of raw bodies, by where they went.",
    ["route"],
)
