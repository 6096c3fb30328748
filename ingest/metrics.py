"""Prometheus metrics of the receiver."""

from prometheus_client import Counter, Gauge, Histogram

REQUESTS = Counter(
    "meterstream_receiver_requests_total",
    "Webhook requests answered, by endpoint, status and reason.",
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
IN_FLIGHT = Gauge("meterstream_receiver_produces_in_flight", "Produces awaiting the broker.")
