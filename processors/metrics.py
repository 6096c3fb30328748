"""Prometheus metrics of the worker."""

from prometheus_client import Counter, Gauge, Histogram

RAW_BATCHES = Counter("meterstream_worker_raw_batches_total", "Raw webhook bodies processed.")
RAW_PARTITIONS = Gauge("meterstream_worker_raw_partitions",
                       "Partitions of the raw topic this worker owns (after the last rebalance).")
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
ENFORCEMENT_CHANGES = Counter(
    "meterstream_worker_enforcement_changes_total",
    "Changes of a Convex deployment's enforcement variable made and recorded, by action: "
    "set (a hard quota exceeded, or what is exceeded changed), removed.",
    ["action"],
)
ENFORCEMENT_FAILURES = Counter(
    "meterstream_worker_enforcement_failures_total",
    "Changes of an enforcement variable that Convex did not take, by reason: refused (a 4xx "
    "other than 429), unavailable (no answer after the retries), no_deploy_key (the "
    "deployment has none stored: provision it); each is tried again later.",
    ["reason"],
)
ENFORCEMENT_RETRIES = Counter(
    "meterstream_worker_enforcement_retries_total",
    "Requests to Convex's update_environment_variables repeated after a connection error, "
    "a timeout, 429 or 5xx.",
)
ENFORCED_DEPLOYMENTS = Gauge(
    "meterstream_worker_enforced_deployments",
    "Deployments of this worker's alert partitions whose enforcement variable is set.",
)
ENFORCEMENT_PARTITIONS = Gauge(
    "meterstream_worker_enforcement_partitions",
    "Alert partitions the enforcement loop holds and has read to their end (it decides "
    "nothing for a partition before), at its last pass.",
)
REWINDS = Counter("meterstream_worker_stream_rewinds_total",
                  "Raw partitions sought back after Faust dropped fetched records "
                  "(processors/stall_guard.py).")
MODELS_FOLDED = Counter(
    "meterstream_worker_models_folded_total",
    "Agent usage records whose provider/model the price book does not price, counted in the "
    "live windows under 'other' (ClickHouse keeps their names).",
)
USERS_FOLDED = Counter(
    "meterstream_worker_users_folded_total",
    "End users of a message beyond METERSTREAM_WORKER_MAX_USERS of their deployment window, "
    "counted in the window's aggregate user bucket (once per user, window and message).",
)
STATE_TOO_LARGE = Counter(
    "meterstream_worker_state_too_large_total",
    "Messages refused because a live-state value would exceed the changelog's limit.",
)
USER_ALERTS_FOLDED = Counter(
    "meterstream_worker_user_alerts_folded_total",
    "Per-user quota alerts not published by user because METERSTREAM_WORKER_MAX_USER_ALERTS "
    "users of the deployment, quota and period had one (an aggregate quota_users alert "
    "tells instead).",
)
MESSAGE_FAILURES = Counter(
    "meterstream_worker_message_failures_total",
    "Attempts at processing a raw message that raised (retried up to "
    "METERSTREAM_WORKER_MAX_ATTEMPTS times).",
)
POISON = Counter(
    "meterstream_worker_poison_messages_total",
    "Raw messages dead-lettered and skipped because every attempt at processing them raised.",
)
WRONG_ORIGIN = Counter(
    "meterstream_worker_wrong_origin_total",
    "Events dead-lettered because their type may not come through the door their message "
    "came in by (agent_usage in a webhook body).",
)
JSON_RECORDS = Counter(
    "meterstream_worker_json_records_total",
    "Records forwarded as record format version 1 (JSON) because a value did not fit its "
    "column in version 2 (Arrow); the sink dead-letters the record that cannot be stored.",
)
API_REFUSED = Counter(
    "meterstream_worker_api_refused_total",
    "Requests to the worker's web server refused before any view ran (processors/"
    "web_access.py), by reason: api_disabled, unauthenticated, forbidden.",
    ["reason"],
)
CONSUMER_LAG = Gauge(
    "meterstream_worker_consumer_lag",
    "Raw messages not yet committed by the worker's group, per raw partition this worker "
    "owns: end offset minus committed offset (meterstream/core/lag.py), measured every "
    "METERSTREAM_LAG_INTERVAL seconds.",
    ["topic", "partition"],
)
HEALTH_CHECKS = Counter(
    "meterstream_worker_stream_health_checks_total",
    "Passes of the stream health check over the deployments of this worker's partitions "
    "(every METERSTREAM_HEALTH_CHECK_INTERVAL).",
)
STREAM_STATUS_CHECKS = Counter(
    "meterstream_worker_stream_status_checks_total",
    "Convex log stream statuses read from the Platform API for provisioned deployments, by "
    "what they meant: active, failed, gone, elsewhere, pending, restarting, unknown (no "
    "answer).",
    ["state"],
)
HEALTH_CHECK_FAILURES = Counter(
    "meterstream_worker_stream_health_check_failures_total",
    "Passes of a stream health check that raised (logged; the next pass tries again), by "
    "check: HealthCheck (events seen), StreamStatusCheck (Convex stream status).",
    ["check"],
)
DEPLOYMENTS_BY_HEALTH = Gauge(
    "meterstream_worker_deployments_by_health",
    "Deployments of this worker's partitions by stream health at the last check: ok, stale "
    "(no storage heartbeat), silent (quiet against its own baseline).",
    ["state"],
)
