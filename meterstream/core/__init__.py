"""The shared core: what the receiver, the worker, the sink and billing all use.

Nothing here imports a service package (ingest, processors, sinks) or billing;
tests/unit/test_layers.py keeps it so."""
