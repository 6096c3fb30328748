"""Sinks: records from Kafka into ClickHouse, in batches, counted once."""
