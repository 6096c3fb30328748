"""The month the billing tests bill: October 2026 for four deployments, inserted into the raw
tables, their owners in the deployment registry, and the invoices computed by hand from
the default price book."""

from __future__ import annotations

from decimal import Decimal

from clickhouse_connect.driver.client import Client

from billing.registry import Owner
from tests.support.billing_data import (
    GIB,
    function_execution,
    insert_download,
    insert_function_executions,
    insert_log_egress,
    insert_snapshot,
    insert_tokens,
    ms,
)

EU = "aws-eu-west-1"
US = "aws-us-east-1"
REGISTRY = {
    "eu-app": Owner("acme", "support-bot", "professional"),
    "us-app": Owner("acme", "landing", "starter"),
    "mystery-app": Owner("globex", "", "enterprise"),
    # quiet-app has no record: the default plan (professional), no team.
}


def october_usage(client: Client) -> None:
    """Inserts the month; the amounts below are its invoices, computed by hand."""
    # eu-app (professional, EU x1.3): 60 GiB of database (documents + indexes) and 2 GiB
    # of vector search storage for all of October (snapshots just before and after).
    for at in ("2026-09-30T23:30:00", "2026-11-01T00:30:00"):
        insert_snapshot(client, "eu-app", ms(at), EU, total_document_size_bytes=50 * GIB,
                        total_index_size_bytes=10 * GIB, total_vector_storage_bytes=2 * GIB)
    insert_function_executions(client, [
        function_execution("eu-app", ms("2026-10-03T10:00:00"), "query", EU,
                           network_egress_bytes=51 * GIB, database_io_read_bytes=50 * GIB),
        function_execution("eu-app", ms("2026-10-04T10:00:00"), "mutation", EU,
                           database_io_write_bytes=GIB // 2),
        # 1024 MB x 251 h = 251 GB-hours
        function_execution("eu-app", ms("2026-10-05T10:00:00"), "action", EU,
                           execution_time_ms=251 * 3_600_000, action_memory_used_mb=1024),
        # us-app (starter, US): 3001 query-GB of text search
        function_execution("us-app", ms("2026-10-10T12:00:00"), "query", US,
                           text_search_query_bytes=3001 * GIB),
        function_execution("quiet-app", ms("2026-10-11T12:00:00"), "query", US),
        function_execution("mystery-app", ms("2026-10-11T12:00:00"), "query", US),
    ])
    # us-app: two downloads of 1 GiB (2 function calls) and 0.5 GiB sent to log streams
    insert_download(client, "us-app", ms("2026-10-10T12:30:00"), GIB)
    insert_download(client, "us-app", ms("2026-10-10T13:30:00"), GIB)
    insert_log_egress(client, "us-app", ms("2026-10-10T14:00:00"), GIB // 2)
    # Tokens. user_2f9KqM: the reference's example step, a smaller one with the same
    # model, and one on a second provider.
    insert_tokens(client, "eu-app", "user_2f9KqM", ms("2026-10-05T10:00:00"), "openai.chat",
                  "gpt-4o-mini", "a1", input_tokens=1850, non_cached_input_tokens=826,
                  cached_input_tokens=1024, output_tokens=312, text_output_tokens=312,
                  total_tokens=2162)
    insert_tokens(client, "eu-app", "user_2f9KqM", ms("2026-10-06T10:00:00"), "openai.chat",
                  "gpt-4o-mini", "a2", input_tokens=100, non_cached_input_tokens=100,
                  output_tokens=50, text_output_tokens=50, total_tokens=150)
    insert_tokens(client, "eu-app", "user_2f9KqM", ms("2026-10-07T10:00:00"),
                  "anthropic.messages", "claude-sonnet-4-5", "a3", input_tokens=3000,
                  non_cached_input_tokens=1000, cache_write_input_tokens=2000,
                  output_tokens=500, text_output_tokens=300, reasoning_tokens=200,
                  total_tokens=3500)
    # A step without userId: the end user '' (the app itself).
    insert_tokens(client, "eu-app", "", ms("2026-10-08T10:00:00"), "openai", "gpt-4o", "a4",
                  input_tokens=1000, non_cached_input_tokens=1000, output_tokens=1000,
                  text_output_tokens=1000, total_tokens=2000)
    # A model the price book does not price.
    insert_tokens(client, "us-app", "bob", ms("2026-10-09T10:00:00"), "mystery", "model-x",
                  "a5", input_tokens=10, non_cached_input_tokens=10, total_tokens=10)


# Hand-computed, default price book:
# eu-app, professional x1.3: action compute (251 - 250) x 0.30 x 1.3 = 0.39; database
# storage (60 - 50) x 0.20 x 1.3 = 2.6; database I/O (50.5 - 50) x 0.20 x 1.3 = 0.13;
# data egress (51 - 50) x 0.12 x 1.3 = 0.156; search storage (2 - 1) x 0.50 x 1.3 = 0.65.
EU_APP_LINES = {"function_calls": "0", "action_compute": "0.39", "database_storage": "2.6",
                "database_io": "0.13", "file_storage": "0", "data_egress": "0.156",
                "search_storage": "0.65", "search_queries": "0"}
EU_APP = Decimal("3.926")
# us-app, starter: data egress 2 GiB downloads + 0.5 GiB log streams = 2.5 GB,
# (2.5 - 1) x 0.132 = 0.198; search queries (3001 - 3000) x 0.11 / 1000 = 0.00011.
US_APP = Decimal("0.19811")
# user_2f9KqM: gpt-4o-mini input (826 + 100) x 0.15 = 138.9, cached 1024 x 0.075 = 76.8,
# output (312 + 50) x 0.60 = 217.2 -> 432.9 per million = 0.0004329 (each token once,
# cached ones at their own price); claude-sonnet-4-5 input 1000 x 3 = 3000, cache write
# 2000 x 3.75 = 7500, output (500 - 200) x 15 = 4500, reasoning 200 x 15 = 3000 ->
# 18000 per million = 0.018.
USER = Decimal("0.0184329")
# The app's own tokens: gpt-4o input 1000 x 2.50 + output 1000 x 10 = 12500 per million.
ANONYMOUS = Decimal("0.0125")
