"""meterstream: real-time usage metering for Convex deployments.

This package holds what every service shares: configuration, logging, the
Kafka topics, the local broker control and the command line. The services
themselves live in the top-level packages ``ingest`` (webhook receiver),
``processors`` (Faust worker) and ``sinks`` (ClickHouse writer).
"""

__version__ = "0.1.0"
