"""Prometheus metrics of the receiver."""

from prometheus_client import Counter, Gauge, Histogram

REQUESTS = Counter(
    "meterstream_receiver_requests_total",
    "Requests answered, by endpoint, status and reason; every cap that bites counts here "
    "under its reason (too_large, too_many_records, encoding, ...).",
    ["endpoint", "status", "reason"],
)
EVENTS_ACCEPTED = Counter(
    "meterstream_receiver_events_accepted_total",
    "Events in bodies acknowledged after Kafka stored them, by topic.",
    ["topic"],
)
BYTES_ACCEPTED = Counter(
    "meterstream_receiver_bytes_accepted_total",
    "Body bytes acknowledged after Kafka stored them, by topic.",
    ["topic"],
)
PRODUCE_SECONDS = Histogram(
    "meterstream_receiver_produce_seconds",
    "Time from handing a body to the producer to the broker's acknowledgement.",
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
)
IN_FLIGHT = Gauge("meterstream_receiver_produces_in_flight",
                  "Produces awaiting the broker (summed over the receiver's live processes).",
                  multiprocess_mode="livesum")
BODIES_PARSED = Counter(
    "meterstream_receiver_bodies_parsed_total",
    "Request bodies parsed as JSON, by endpoint: only ever after the request was "
    "authenticated (a refusal before that leaves this unchanged).",
    ["endpoint"],
)
MESSAGES_STORED = Counter(
    "meterstream_receiver_messages_stored_total",
    "Raw messages stored, by endpoint; an agent request whose records exceed one message's "
    "size is stored as several.",
    ["endpoint"],
)
PROBLEMS_TRUNCATED = Counter(
    "meterstream_receiver_problems_truncated_total",
    "400 answers that listed only the first METERSTREAM_MAX_PROBLEMS of their problems.",
    ["endpoint"],
)
READ_TOKENS = Counter(
    "meterstream_receiver_read_tokens_total",
    "Read tokens of the scoped usage view issued or revoked through the admin API, by "
    "action (issued, revoked) and scope kind (deployment, team, end_user).",
    ["action", "kind"],
)
