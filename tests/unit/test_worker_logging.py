"""The worker's logging keeps the level it is given (meterstream/processes/worker.py)."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterator
from pathlib import Path

import pytest

from meterstream.core.config import Settings
from meterstream.processes.worker import faust_worker
from processors.app import create_app


@pytest.fixture
def restored_logging() -> Iterator[None]:
    root = logging.getLogger()
    level, handlers = root.level, list(root.handlers)
    yield
    root.setLevel(level)
    root.handlers[:] = handlers


@pytest.mark.parametrize("level", ["warning", "error", "info"])
def test_faust_debug_lines_are_not_built_above_debug(level: str, tmp_path: Path,
                                                     restored_logging: None) -> None:
    settings = Settings.from_env({"METERSTREAM_LOG_LEVEL": level,
                                  "METERSTREAM_DATA_DIR": str(tmp_path)})
    loop = asyncio.new_event_loop()
    try:
        worker = faust_worker(create_app(settings), settings, [], loop)
        worker._setup_logging()
    finally:
        loop.close()
    assert logging.getLogger().level == logging.getLevelName(level.upper())
    # Faust logs every record it sends at debug level (faust/topics.py publish_message).
    assert not logging.getLogger("faust.topics").isEnabledFor(logging.DEBUG)
