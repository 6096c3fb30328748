"""Prometheus metrics of the worker."""

from prometheus_client import Counter, Histogram

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
ALERTS = Counter("meterstream_worker_alerts_total", "Alerts published, by kind.", ["kind"])
LATE = Counter(
    "meterstream_worker_late_events_total",
    "Events sent to the dead-letter topic because their time is outside the grace.",
)
WINDOWS_EXPIRED = Counter("meterstream_worker_windows_expired_total",
                          "Usage windows the live state forgot after their retention.")
ALERT_WEBHOOK_ATTEMPTS = Counter(
    "meterstream_worker_alert_webhook_attempts_total",
    "Alert webhook requests, by outcome: ok (2xx), retry (connection error, timeout, 408, "
    "429 or 5xx), refused (any other status).",
    ["outcome"],
)
ALERT_WEBHOOK_DELIVERIES = Counter(
    "meterstream_worker_alert_webhook_deliveries_total",
    "Alerts per webhook URL, by final outcome: delivered, refused or gave_up.",
    ["outcome"],
)
ALERT_WEBHOOK_SECONDS = Histogram(
    "meterstream_worker_alert_webhook_delivery_seconds",
    "Time from an alert's first attempt at a webhook URL to its delivery there.",
    buckets=(0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 900, 3600),
)
REWINDS = Counter("meterstream_worker_stream_rewinds_total",
                  "Raw partitions sought back after Faust dropped fetched records "
                  "(processors/stall_guard.py).")
