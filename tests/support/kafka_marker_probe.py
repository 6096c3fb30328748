"""A pytest plugin for tests/unit/test_markers.py: after collection (and any `-m`
deselection) it prints, for every selected test, whether it carries the `kafka` marker and
whether it looks like it needs the broker: it requests the `kafka_bootstrap` fixture
(directly or through another fixture), or its own source starts a broker or a pipeline of
its own.

    python -m pytest --collect-only -q -p tests.support.kafka_marker_probe tests/unit
"""

from __future__ import annotations

import inspect

import pytest

# Calls that need a broker even without the session fixture.
BROKER_CALLS = ("own_broker_env(", "running_pipeline(", "start_sink(", '"kafka", "start"')
NEEDS = "NEEDS-KAFKA "
MARKED = "MARKED-KAFKA "


def needs_broker(item: pytest.Item) -> bool:
    if "kafka_bootstrap" in getattr(item, "fixturenames", ()):
        return True
    function = getattr(item, "function", None)
    try:
        source = inspect.getsource(function) if function is not None else ""
    except (OSError, TypeError):
        source = ""
    return any(call in source for call in BROKER_CALLS)


def pytest_collection_finish(session: pytest.Session) -> None:
    for item in session.items:
        if needs_broker(item):
            print(NEEDS + item.nodeid)
        if item.get_closest_marker("kafka") is not None:
            print(MARKED + item.nodeid)
