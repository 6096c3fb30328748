-- One table per normalised record type besides function executions (0001), and
-- the alerts. Columns are named after the fields of meterstream/core/records.py.
--
-- Every event table is sorted by (deployment, timestamp) and partitioned by UTC
-- calendar month, for the reasons given in 0001: questions are "this deployment
-- over this time range", and a month is the billing period.
--
-- raw_partition, raw_offset and event_index say where the event came from (the
-- raw webhook body's partition and offset in Kafka, and its position in the
-- body); together they identify an event, and the sink uses the highest
-- raw_offset stored per raw partition and month (the `high_water` projection) to
-- skip records it has stored already (see docs/exactly-once.md).

-- One row per current_storage_usage snapshot (about hourly per deployment).
CREATE TABLE IF NOT EXISTS storage_snapshots
(
    deployment LowCardinality(String),
    timestamp DateTime64(3, 'UTC'),
    total_document_size_bytes UInt64,
    total_index_size_bytes UInt64,
    total_vector_storage_bytes UInt64,
    total_text_storage_bytes UInt64,
    total_file_storage_bytes UInt64,
    total_backup_storage_bytes UInt64,
    system_table_document_size_bytes Map(String, UInt64),
    deployment_region LowCardinality(String),
    raw_partition UInt32,
    raw_offset UInt64,
    event_index UInt32,
    inserted_at DateTime64(3, 'UTC') DEFAULT now64(3),
    -- The sink's high-water marks, kept inside each part so that they are exact
    -- whatever was inserted and read in milliseconds at every partition assignment.
    PROJECTION high_water
    (
        SELECT raw_partition, toYYYYMM(timestamp), max(raw_offset)
        GROUP BY raw_partition, toYYYYMM(timestamp)
    )
)
ENGINE = MergeTree
PARTITION BY toYYYYMM(timestamp)
ORDER BY (deployment, timestamp)
SETTINGS non_replicated_deduplication_window = 1000;

-- One row per storage_api_bandwidth event: one file download.
CREATE TABLE IF NOT EXISTS file_downloads
(
    deployment LowCardinality(String),
    timestamp DateTime64(3, 'UTC'),
    storage_id String,
    egress_bytes UInt64,
    raw_partition UInt32,
    raw_offset UInt64,
    event_index UInt32,
    inserted_at DateTime64(3, 'UTC') DEFAULT now64(3),
    -- The sink's high-water marks, kept inside each part so that they are exact
    -- whatever was inserted and read in milliseconds at every partition assignment.
    PROJECTION high_water
    (
        SELECT raw_partition, toYYYYMM(timestamp), max(raw_offset)
        GROUP BY raw_partition, toYYYYMM(timestamp)
    )
)
ENGINE = MergeTree
PARTITION BY toYYYYMM(timestamp)
ORDER BY (deployment, timestamp)
SETTINGS non_replicated_deduplication_window = 1000;

-- One row per log_stream_egress event: bytes sent to log sinks in the last minute.
CREATE TABLE IF NOT EXISTS log_stream_egress
(
    deployment LowCardinality(String),
    timestamp DateTime64(3, 'UTC'),
    egress_bytes UInt64,
    raw_partition UInt32,
    raw_offset UInt64,
    event_index UInt32,
    inserted_at DateTime64(3, 'UTC') DEFAULT now64(3),
    -- The sink's high-water marks, kept inside each part so that they are exact
    -- whatever was inserted and read in milliseconds at every partition assignment.
    PROJECTION high_water
    (
        SELECT raw_partition, toYYYYMM(timestamp), max(raw_offset)
        GROUP BY raw_partition, toYYYYMM(timestamp)
    )
)
ENGINE = MergeTree
PARTITION BY toYYYYMM(timestamp)
ORDER BY (deployment, timestamp)
SETTINGS non_replicated_deduplication_window = 1000;

-- One row per agent usage record (one LLM step of the Convex Agent component).
CREATE TABLE IF NOT EXISTS agent_usage
(
    id String,
    deployment LowCardinality(String),
    timestamp DateTime64(3, 'UTC'),
    user_id String,
    thread_id String,
    agent_name LowCardinality(String),
    model LowCardinality(String),
    provider LowCardinality(String),
    input_tokens UInt64,
    non_cached_input_tokens UInt64,
    cached_input_tokens UInt64,
    cache_write_input_tokens UInt64,
    output_tokens UInt64,
    text_output_tokens UInt64,
    reasoning_tokens UInt64,
    total_tokens UInt64,
    -- The provider's own metadata object, as JSON text.
    provider_metadata String CODEC(ZSTD(3)),
    raw_partition UInt32,
    raw_offset UInt64,
    event_index UInt32,
    inserted_at DateTime64(3, 'UTC') DEFAULT now64(3),
    -- The sink's high-water marks, kept inside each part so that they are exact
    -- whatever was inserted and read in milliseconds at every partition assignment.
    PROJECTION high_water
    (
        SELECT raw_partition, toYYYYMM(timestamp), max(raw_offset)
        GROUP BY raw_partition, toYYYYMM(timestamp)
    )
)
ENGINE = MergeTree
PARTITION BY toYYYYMM(timestamp)
-- Invoices and token questions go per deployment, then per end user, over a period.
ORDER BY (deployment, user_id, timestamp)
SETTINGS non_replicated_deduplication_window = 1000;

-- Every other event (console, audit_log, verification, ...), kept whole as JSON text.
CREATE TABLE IF NOT EXISTS other_events
(
    topic LowCardinality(String),
    deployment LowCardinality(String),
    timestamp DateTime64(3, 'UTC'),
    event String CODEC(ZSTD(3)),
    raw_partition UInt32,
    raw_offset UInt64,
    event_index UInt32,
    inserted_at DateTime64(3, 'UTC') DEFAULT now64(3),
    -- The sink's high-water marks, kept inside each part so that they are exact
    -- whatever was inserted and read in milliseconds at every partition assignment.
    PROJECTION high_water
    (
        SELECT raw_partition, toYYYYMM(timestamp), max(raw_offset)
        GROUP BY raw_partition, toYYYYMM(timestamp)
    )
)
ENGINE = MergeTree
PARTITION BY toYYYYMM(timestamp)
ORDER BY (deployment, topic, timestamp)
-- Kept 90 days from the event's time; an event without a usable `timestamp` is
-- stored with timestamp 0 (1970-01-01) and kept 90 days from its insertion.
TTL toDateTime(if(timestamp = 0, inserted_at, timestamp)) + INTERVAL 90 DAY
SETTINGS non_replicated_deduplication_window = 1000;

-- Quota and runaway alerts as the worker published them on <ns>.alerts. An alert
-- is identified by `id`. The sink stores each message of <ns>.alerts once (by its
-- partition and offset, as for the event tables); should the worker ever publish
-- an id twice, the ReplacingMergeTree keeps one row per id after merges, and
-- `FINAL` or `GROUP BY id` gives one at once.
CREATE TABLE IF NOT EXISTS alerts
(
    id String,
    kind LowCardinality(String),
    deployment LowCardinality(String),
    metric LowCardinality(String),
    at DateTime64(3, 'UTC'),
    -- The whole alert as JSON text (quota: period, threshold, usage, limit, hard,
    -- user; runaway: minute, calls, baseline_per_minute, multiple).
    alert String,
    -- The alert message's partition and offset on <ns>.alerts: its origin, which the
    -- sink's high-water marks are kept by.
    kafka_partition UInt32,
    kafka_offset UInt64
)
ENGINE = ReplacingMergeTree
PARTITION BY toYYYYMM(at)
ORDER BY (deployment, id);

-- function_executions (0001) gets the same high-water projection. Parts written
-- before it lack it and are read in full when the marks are loaded: still exact,
-- only slower, until merges rewrite them.
ALTER TABLE function_executions ADD PROJECTION IF NOT EXISTS high_water
(
    SELECT raw_partition, toYYYYMM(timestamp), max(raw_offset)
    GROUP BY raw_partition, toYYYYMM(timestamp)
);
