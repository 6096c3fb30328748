"""Reading the worker's record messages back in tests, whichever record format they are in
(meterstream/core/record_format.py)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import orjson
import pyarrow as pa

from meterstream.core import events, record_format

Headers = Sequence[tuple[str, bytes]] | None


def rows_of(route: str, value: bytes, headers: Headers) -> list[dict[str, Any]]:
    """The records of one record message as dicts: version 1 as sent, version 2 as the
    table's rows with times as ms integers (JSON text columns stay text)."""
    if not record_format.is_arrow(headers):
        return list(orjson.loads(value))
    event_type = events.BY_TOPIC.get(route, events.OTHER)
    batch = record_format.decode(event_type, value)
    columns = {}
    for (name, type_), column in zip(event_type.columns, batch.columns, strict=True):
        if type_ == events.TIME:
            column = column.cast(pa.int64())
        values = column.to_pylist()
        if type_ == events.U64_MAP:
            values = [dict(pairs) for pairs in values]
        columns[name] = values
    return [dict(zip(columns, row, strict=True)) for row in zip(*columns.values(), strict=True)]
