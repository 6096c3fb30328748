-- One row per Convex function_execution event (query, mutation, action, HTTP
-- action), with every counter of its `usage` object in a column of the same name.
CREATE TABLE IF NOT EXISTS function_executions
(
    deployment LowCardinality(String),
    timestamp DateTime64(3, 'UTC'),
    function_path LowCardinality(String),
    function_type LowCardinality(String),
    function_cached Bool,
    component_path LowCardinality(String),
    request_id String,
    mutation_queue_length UInt32,
    mutation_retry_count UInt32,
    status LowCardinality(String),
    error_message String CODEC(ZSTD(3)),
    execution_time_ms UInt64,
    user_execution_time_ms UInt64,
    will_retry Bool,
    run_reason LowCardinality(String),
    occ_table_name LowCardinality(String),
    scheduler_job_id String,
    database_read_bytes UInt64,
    database_write_bytes UInt64,
    database_io_read_bytes UInt64,
    database_io_write_bytes UInt64,
    database_read_documents UInt64,
    database_write_documents UInt64,
    file_storage_read_bytes UInt64,
    file_storage_write_bytes UInt64,
    vector_storage_read_bytes UInt64,
    vector_storage_write_bytes UInt64,
    text_search_query_bytes UInt64,
    text_search_write_query_bytes UInt64,
    vector_search_query_bytes UInt64,
    vector_search_write_query_bytes UInt64,
    network_egress_bytes UInt64,
    memory_used_mb UInt64,
    action_memory_used_mb UInt64,
    audit_log_egress_bytes UInt64,
    function_args_bytes UInt64,
    function_returns_bytes UInt64,
    deployment_type LowCardinality(String),
    deployment_region LowCardinality(String),
    project_slug LowCardinality(String),
    -- Where the event came from: the raw webhook body's partition and offset in
    -- Kafka and its position in that body. Together they identify an event.
    raw_partition UInt32,
    raw_offset UInt64,
    event_index UInt32,
    inserted_at DateTime64(3, 'UTC') DEFAULT now64(3)
)
ENGINE = MergeTree
-- One partition per UTC calendar month, the billing period: a month's invoice
-- reads one partition, a closed month can be moved or dropped whole, and the
-- number of partitions stays small, as ClickHouse wants.
PARTITION BY toYYYYMM(timestamp)
-- Nearly every question is "this deployment over this time range" (usage so
-- far this month, a chart of the last day), so rows are sorted by deployment
-- first and time second: such a query reads one narrow range of the index.
ORDER BY (deployment, timestamp)
-- Remembers the last inserted blocks, so that an insert retried with the same
-- insert_deduplication_token is a no-op instead of a second copy.
SETTINGS non_replicated_deduplication_window = 1000;
