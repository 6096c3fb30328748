-- Billing metrics per event, and rollups ClickHouse keeps by itself.
--
-- The metrics are those of meterstream/core/catalogue.py (reference section 5):
--   function_calls        every function execution (cached queries and OCC-failed
--                         attempts included) + every file download
--   database_io_*_bytes   usage.database_io_read_bytes / _write_bytes
--   action_compute_mb_ms  actions and HTTP actions: action_memory_used_mb (or
--                         memory_used_mb when that is 0) x execution_time_ms
--   data_egress_bytes     network_egress + file_storage_read (function_egress_bytes)
--                         + file downloads' egress + log-stream egress
--   search_query_bytes    text and vector search query bytes, reads and writes
--   tokens                agent usage total_tokens
-- Storage is not summed here: its GB-hours are the time between consecutive
-- snapshots, computed when asked (billing/storage.py) from storage_snapshots.
--
-- The rollups are AggregatingMergeTree tables whose columns say how rows merge
-- (SimpleAggregateFunction(sum) for counters, max for the region, which is empty
-- on the events that do not carry it). Materialized views add each inserted
-- block to them, so they are current as soon as an insert returns. A reader
-- still aggregates (sum(...) GROUP BY the key), because parts merge in the
-- background, whenever ClickHouse gets to it.

-- Every billable event as one row of billing metrics (all tables together).
-- Queries over short or unaligned ranges (minute resolution) read this; the
-- materialized views below use the same expressions, per table.
CREATE VIEW IF NOT EXISTS usage_events AS
SELECT
    deployment,
    timestamp,
    toString(deployment_region) AS region,
    toUInt64(1) AS function_calls,
    toUInt64(0) AS file_downloads,
    database_io_read_bytes,
    database_io_write_bytes,
    toUInt64(if(function_type IN ('action', 'http_action'),
                if(action_memory_used_mb != 0, action_memory_used_mb, memory_used_mb)
                    * execution_time_ms,
                0)) AS action_compute_mb_ms,
    toUInt64(network_egress_bytes + file_storage_read_bytes) AS function_egress_bytes,
    toUInt64(0) AS file_download_bytes,
    toUInt64(0) AS log_stream_egress_bytes,
    toUInt64(network_egress_bytes + file_storage_read_bytes) AS data_egress_bytes,
    toUInt64(text_search_query_bytes + text_search_write_query_bytes
             + vector_search_query_bytes + vector_search_write_query_bytes) AS search_query_bytes,
    toUInt64(0) AS tokens,
    toUInt64(0) AS agent_steps,
    toUInt64(0) AS storage_snapshots
FROM function_executions
UNION ALL
SELECT
    deployment, timestamp, '' AS region,
    toUInt64(1) AS function_calls, toUInt64(1) AS file_downloads,
    toUInt64(0) AS database_io_read_bytes, toUInt64(0) AS database_io_write_bytes,
    toUInt64(0) AS action_compute_mb_ms, toUInt64(0) AS function_egress_bytes,
    egress_bytes AS file_download_bytes, toUInt64(0) AS log_stream_egress_bytes,
    egress_bytes AS data_egress_bytes, toUInt64(0) AS search_query_bytes,
    toUInt64(0) AS tokens, toUInt64(0) AS agent_steps, toUInt64(0) AS storage_snapshots
FROM file_downloads
UNION ALL
SELECT
    deployment, timestamp, '' AS region,
    toUInt64(0) AS function_calls, toUInt64(0) AS file_downloads,
    toUInt64(0) AS database_io_read_bytes, toUInt64(0) AS database_io_write_bytes,
    toUInt64(0) AS action_compute_mb_ms, toUInt64(0) AS function_egress_bytes,
    toUInt64(0) AS file_download_bytes, egress_bytes AS log_stream_egress_bytes,
    egress_bytes AS data_egress_bytes, toUInt64(0) AS search_query_bytes,
    toUInt64(0) AS tokens, toUInt64(0) AS agent_steps, toUInt64(0) AS storage_snapshots
FROM log_stream_egress
UNION ALL
SELECT
    deployment, timestamp, '' AS region,
    toUInt64(0) AS function_calls, toUInt64(0) AS file_downloads,
    toUInt64(0) AS database_io_read_bytes, toUInt64(0) AS database_io_write_bytes,
    toUInt64(0) AS action_compute_mb_ms, toUInt64(0) AS function_egress_bytes,
    toUInt64(0) AS file_download_bytes, toUInt64(0) AS log_stream_egress_bytes,
    toUInt64(0) AS data_egress_bytes, toUInt64(0) AS search_query_bytes,
    total_tokens AS tokens, toUInt64(1) AS agent_steps, toUInt64(0) AS storage_snapshots
FROM agent_usage
UNION ALL
SELECT
    deployment, timestamp, toString(deployment_region) AS region,
    toUInt64(0) AS function_calls, toUInt64(0) AS file_downloads,
    toUInt64(0) AS database_io_read_bytes, toUInt64(0) AS database_io_write_bytes,
    toUInt64(0) AS action_compute_mb_ms, toUInt64(0) AS function_egress_bytes,
    toUInt64(0) AS file_download_bytes, toUInt64(0) AS log_stream_egress_bytes,
    toUInt64(0) AS data_egress_bytes, toUInt64(0) AS search_query_bytes,
    toUInt64(0) AS tokens, toUInt64(0) AS agent_steps, toUInt64(1) AS storage_snapshots
FROM storage_snapshots;

-- Billing metrics per deployment per UTC hour.
CREATE TABLE IF NOT EXISTS usage_hourly
(
    deployment LowCardinality(String),
    hour DateTime('UTC'),
    region SimpleAggregateFunction(max, LowCardinality(String)),
    function_calls SimpleAggregateFunction(sum, UInt64),
    file_downloads SimpleAggregateFunction(sum, UInt64),
    database_io_read_bytes SimpleAggregateFunction(sum, UInt64),
    database_io_write_bytes SimpleAggregateFunction(sum, UInt64),
    action_compute_mb_ms SimpleAggregateFunction(sum, UInt64),
    function_egress_bytes SimpleAggregateFunction(sum, UInt64),
    file_download_bytes SimpleAggregateFunction(sum, UInt64),
    log_stream_egress_bytes SimpleAggregateFunction(sum, UInt64),
    data_egress_bytes SimpleAggregateFunction(sum, UInt64),
    search_query_bytes SimpleAggregateFunction(sum, UInt64),
    tokens SimpleAggregateFunction(sum, UInt64),
    agent_steps SimpleAggregateFunction(sum, UInt64),
    storage_snapshots SimpleAggregateFunction(sum, UInt64)
)
ENGINE = AggregatingMergeTree
-- A billing month is one partition: the month's invoices read one partition,
-- and a closed month can be moved or dropped whole.
PARTITION BY toYYYYMM(hour)
-- The sorting key is also what rows merge by: one row per deployment and hour.
-- Deployment first, so "this deployment (or these) over a time range" reads one
-- narrow index range, as in the raw tables.
ORDER BY (deployment, hour);

-- The same per deployment per UTC day, for ranges of days and months (at most
-- 31 rows per deployment and month).
CREATE TABLE IF NOT EXISTS usage_daily
(
    deployment LowCardinality(String),
    day Date,
    region SimpleAggregateFunction(max, LowCardinality(String)),
    function_calls SimpleAggregateFunction(sum, UInt64),
    file_downloads SimpleAggregateFunction(sum, UInt64),
    database_io_read_bytes SimpleAggregateFunction(sum, UInt64),
    database_io_write_bytes SimpleAggregateFunction(sum, UInt64),
    action_compute_mb_ms SimpleAggregateFunction(sum, UInt64),
    function_egress_bytes SimpleAggregateFunction(sum, UInt64),
    file_download_bytes SimpleAggregateFunction(sum, UInt64),
    log_stream_egress_bytes SimpleAggregateFunction(sum, UInt64),
    data_egress_bytes SimpleAggregateFunction(sum, UInt64),
    search_query_bytes SimpleAggregateFunction(sum, UInt64),
    tokens SimpleAggregateFunction(sum, UInt64),
    agent_steps SimpleAggregateFunction(sum, UInt64),
    storage_snapshots SimpleAggregateFunction(sum, UInt64)
)
ENGINE = AggregatingMergeTree
-- Monthly like every table here: a month's invoices read one partition.
PARTITION BY toYYYYMM(day)
-- One row per deployment and day, deployment first (see usage_hourly).
ORDER BY (deployment, day);

-- Tokens per deployment, provider and model per UTC hour: the token cost of a
-- deployment or a team over any range of hours, days or months.
CREATE TABLE IF NOT EXISTS tokens_hourly
(
    deployment LowCardinality(String),
    hour DateTime('UTC'),
    provider LowCardinality(String),
    model LowCardinality(String),
    input_tokens SimpleAggregateFunction(sum, UInt64),
    non_cached_input_tokens SimpleAggregateFunction(sum, UInt64),
    cached_input_tokens SimpleAggregateFunction(sum, UInt64),
    cache_write_input_tokens SimpleAggregateFunction(sum, UInt64),
    output_tokens SimpleAggregateFunction(sum, UInt64),
    text_output_tokens SimpleAggregateFunction(sum, UInt64),
    reasoning_tokens SimpleAggregateFunction(sum, UInt64),
    total_tokens SimpleAggregateFunction(sum, UInt64),
    steps SimpleAggregateFunction(sum, UInt64)
)
ENGINE = AggregatingMergeTree
PARTITION BY toYYYYMM(hour)
-- Rows merge per deployment, hour, provider and model (each model is priced
-- apart); deployment and hour first for time-range reads of one deployment.
ORDER BY (deployment, hour, provider, model);

-- Tokens per end user per provider and model per UTC calendar month: what the
-- end users' invoices are made of. An end user is a userId within a deployment;
-- records without a userId are the user '' (the app itself).
CREATE TABLE IF NOT EXISTS user_tokens_monthly
(
    deployment LowCardinality(String),
    user_id String,
    month Date,
    provider LowCardinality(String),
    model LowCardinality(String),
    input_tokens SimpleAggregateFunction(sum, UInt64),
    non_cached_input_tokens SimpleAggregateFunction(sum, UInt64),
    cached_input_tokens SimpleAggregateFunction(sum, UInt64),
    cache_write_input_tokens SimpleAggregateFunction(sum, UInt64),
    output_tokens SimpleAggregateFunction(sum, UInt64),
    text_output_tokens SimpleAggregateFunction(sum, UInt64),
    reasoning_tokens SimpleAggregateFunction(sum, UInt64),
    total_tokens SimpleAggregateFunction(sum, UInt64),
    steps SimpleAggregateFunction(sum, UInt64)
)
ENGINE = AggregatingMergeTree
-- The month is the partition: a month's invoices read one partition.
PARTITION BY toYYYYMM(month)
-- One row per deployment, end user, month, provider and model; ordered so that
-- one user's months (a user's usage, a user's invoice) are one index range.
ORDER BY (deployment, user_id, month, provider, model);

-- Days are rolled up from the hours (a cascade: each block inserted into
-- usage_hourly, by the views below or a backfill, is added to usage_daily).
CREATE MATERIALIZED VIEW IF NOT EXISTS usage_daily_from_hourly TO usage_daily AS
SELECT
    deployment,
    toDate(hour) AS day,
    max(region) AS region,
    sum(function_calls) AS function_calls,
    sum(file_downloads) AS file_downloads,
    sum(database_io_read_bytes) AS database_io_read_bytes,
    sum(database_io_write_bytes) AS database_io_write_bytes,
    sum(action_compute_mb_ms) AS action_compute_mb_ms,
    sum(function_egress_bytes) AS function_egress_bytes,
    sum(file_download_bytes) AS file_download_bytes,
    sum(log_stream_egress_bytes) AS log_stream_egress_bytes,
    sum(data_egress_bytes) AS data_egress_bytes,
    sum(search_query_bytes) AS search_query_bytes,
    sum(tokens) AS tokens,
    sum(agent_steps) AS agent_steps,
    sum(storage_snapshots) AS storage_snapshots
FROM usage_hourly
GROUP BY deployment, day;

-- One view per raw table into usage_hourly, with the expressions of usage_events
-- (tests/integration/test_billing.py checks that both agree;
-- tests/unit/test_catalogue.py checks the rollups' columns against
-- meterstream/core/catalogue.py). Columns a view does not name are 0.
CREATE MATERIALIZED VIEW IF NOT EXISTS usage_hourly_from_function_executions TO usage_hourly AS
SELECT
    deployment,
    toStartOfHour(timestamp) AS hour,
    max(toString(deployment_region)) AS region,
    count() AS function_calls,
    sum(database_io_read_bytes) AS database_io_read_bytes,
    sum(database_io_write_bytes) AS database_io_write_bytes,
    sum(toUInt64(if(function_type IN ('action', 'http_action'),
                    if(action_memory_used_mb != 0, action_memory_used_mb, memory_used_mb)
                        * execution_time_ms,
                    0))) AS action_compute_mb_ms,
    sum(network_egress_bytes + file_storage_read_bytes) AS function_egress_bytes,
    sum(network_egress_bytes + file_storage_read_bytes) AS data_egress_bytes,
    sum(text_search_query_bytes + text_search_write_query_bytes
        + vector_search_query_bytes + vector_search_write_query_bytes) AS search_query_bytes
FROM function_executions
GROUP BY deployment, hour;

CREATE MATERIALIZED VIEW IF NOT EXISTS usage_hourly_from_file_downloads TO usage_hourly AS
SELECT
    deployment,
    toStartOfHour(timestamp) AS hour,
    count() AS function_calls,
    count() AS file_downloads,
    sum(egress_bytes) AS file_download_bytes,
    sum(egress_bytes) AS data_egress_bytes
FROM file_downloads
GROUP BY deployment, hour;

CREATE MATERIALIZED VIEW IF NOT EXISTS usage_hourly_from_log_stream_egress TO usage_hourly AS
SELECT
    deployment,
    toStartOfHour(timestamp) AS hour,
    sum(egress_bytes) AS log_stream_egress_bytes,
    sum(egress_bytes) AS data_egress_bytes
FROM log_stream_egress
GROUP BY deployment, hour;

CREATE MATERIALIZED VIEW IF NOT EXISTS usage_hourly_from_agent_usage TO usage_hourly AS
SELECT
    deployment,
    toStartOfHour(timestamp) AS hour,
    sum(total_tokens) AS tokens,
    count() AS agent_steps
FROM agent_usage
GROUP BY deployment, hour;

CREATE MATERIALIZED VIEW IF NOT EXISTS usage_hourly_from_storage_snapshots TO usage_hourly AS
SELECT
    deployment,
    toStartOfHour(timestamp) AS hour,
    max(toString(deployment_region)) AS region,
    count() AS storage_snapshots
FROM storage_snapshots
GROUP BY deployment, hour;

CREATE MATERIALIZED VIEW IF NOT EXISTS tokens_hourly_from_agent_usage TO tokens_hourly AS
SELECT
    deployment,
    toStartOfHour(timestamp) AS hour,
    provider,
    model,
    sum(input_tokens) AS input_tokens,
    sum(non_cached_input_tokens) AS non_cached_input_tokens,
    sum(cached_input_tokens) AS cached_input_tokens,
    sum(cache_write_input_tokens) AS cache_write_input_tokens,
    sum(output_tokens) AS output_tokens,
    sum(text_output_tokens) AS text_output_tokens,
    sum(reasoning_tokens) AS reasoning_tokens,
    sum(total_tokens) AS total_tokens,
    count() AS steps
FROM agent_usage
GROUP BY deployment, hour, provider, model;

CREATE MATERIALIZED VIEW IF NOT EXISTS user_tokens_monthly_from_agent_usage
TO user_tokens_monthly AS
SELECT
    deployment,
    user_id,
    toStartOfMonth(timestamp) AS month,
    provider,
    model,
    sum(input_tokens) AS input_tokens,
    sum(non_cached_input_tokens) AS non_cached_input_tokens,
    sum(cached_input_tokens) AS cached_input_tokens,
    sum(cache_write_input_tokens) AS cache_write_input_tokens,
    sum(output_tokens) AS output_tokens,
    sum(text_output_tokens) AS text_output_tokens,
    sum(reasoning_tokens) AS reasoning_tokens,
    sum(total_tokens) AS total_tokens,
    count() AS steps
FROM agent_usage
GROUP BY deployment, user_id, month, provider, model;

-- Backfill: rows stored before this migration (the views above see only new
-- inserts). Each runs only while its rollup is empty, so running this migration
-- again after a crash half-way, or from a second sink starting at the same time,
-- does not count a row twice. Migrations run before a sink writes, so no insert
-- falls between the creation of a view and its backfill. The columns are named, so
-- that this statement still runs (as tests/integration/test_billing.py runs it again)
-- once a later migration has added a column to the rollups.
INSERT INTO usage_hourly (deployment, hour, region, function_calls, file_downloads,
    database_io_read_bytes, database_io_write_bytes, action_compute_mb_ms,
    function_egress_bytes, file_download_bytes, log_stream_egress_bytes, data_egress_bytes,
    search_query_bytes, tokens, agent_steps, storage_snapshots)
SELECT
    deployment,
    toStartOfHour(timestamp) AS hour,
    max(region),
    sum(function_calls),
    sum(file_downloads),
    sum(database_io_read_bytes),
    sum(database_io_write_bytes),
    sum(action_compute_mb_ms),
    sum(function_egress_bytes),
    sum(file_download_bytes),
    sum(log_stream_egress_bytes),
    sum(data_egress_bytes),
    sum(search_query_bytes),
    sum(tokens),
    sum(agent_steps),
    sum(storage_snapshots)
FROM usage_events
WHERE (SELECT count() FROM usage_hourly) = 0
GROUP BY deployment, hour;

INSERT INTO tokens_hourly
SELECT
    deployment, toStartOfHour(timestamp) AS hour, provider, model,
    sum(input_tokens), sum(non_cached_input_tokens), sum(cached_input_tokens),
    sum(cache_write_input_tokens), sum(output_tokens), sum(text_output_tokens),
    sum(reasoning_tokens), sum(total_tokens), count()
FROM agent_usage
WHERE (SELECT count() FROM tokens_hourly) = 0
GROUP BY deployment, hour, provider, model;

INSERT INTO user_tokens_monthly
SELECT
    deployment, user_id, toStartOfMonth(timestamp) AS month, provider, model,
    sum(input_tokens), sum(non_cached_input_tokens), sum(cached_input_tokens),
    sum(cache_write_input_tokens), sum(output_tokens), sum(text_output_tokens),
    sum(reasoning_tokens), sum(total_tokens), count()
FROM agent_usage
WHERE (SELECT count() FROM user_tokens_monthly) = 0
GROUP BY deployment, user_id, month, provider, model;
