"""Rows as a table for a person at a terminal, or as tab-separated values for a program.

`write_rows` picks: aligned columns when the output is a terminal, TSV (a header line, then
one line per row, as the commands always printed) when it is piped, so a script's output
does not change with the width of the data.

Cells a tenant chose (deployment, team, user names) may hold control characters; at a
terminal they are shown escaped, so that a name cannot move the cursor, recolour the screen
or hide the rows after it.
"""

from __future__ import annotations

import csv
import io
import re
from collections.abc import Mapping, Sequence
from decimal import Decimal
from typing import IO, Any

_GAP = "  "


def is_terminal(stream: IO[str]) -> bool:
    isatty = getattr(stream, "isatty", None)
    return bool(isatty is not None and isatty())


def _printable(value: Any) -> str:
    text = ("" if value is None else format(value, "f") if isinstance(value, Decimal)
            else str(value))
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)


_NUMBER = re.compile(r"-?\d+(?:\.\d+)?")


def _numeric(value: Any) -> bool:
    """A number, or text that is one (JSON-ready rows carry exact decimals as text)."""
    if isinstance(value, str):
        return _NUMBER.fullmatch(value) is not None
    return isinstance(value, (int, float, Decimal)) and not isinstance(value, bool)


def aligned(rows: Sequence[Mapping[str, Any]]) -> str:
    """The rows under their keys as a header, in columns two spaces apart; numbers (and
    their header) right-aligned, text left-aligned. The columns are the first row's keys."""
    if not rows:
        return ""
    columns = list(rows[0])
    cells = [[_printable(row.get(column)) for column in columns] for row in rows]
    right = [all(_numeric(row.get(column)) or row.get(column) in (None, "") for row in rows)
             for column in columns]
    widths = [max(len(column), *(len(line[i]) for line in cells))
              for i, column in enumerate(columns)]

    def line(values: list[str]) -> str:
        return _GAP.join(value.rjust(width) if is_right else value.ljust(width)
                         for value, width, is_right in zip(values, widths, right, strict=True)
                         ).rstrip()

    return "\n".join([line(columns), *(line(values) for values in cells)]) + "\n"


def tab_separated(rows: Sequence[Mapping[str, Any]]) -> str:
    """A header line of the first row's keys, then one tab-separated line per row."""
    if not rows:
        return ""
    out = io.StringIO()
    writer = csv.writer(out, delimiter="\t", lineterminator="\n")
    writer.writerow(rows[0].keys())
    for row in rows:
        writer.writerow(row.values())
    return out.getvalue()


def write_rows(rows: Sequence[Mapping[str, Any]], stream: IO[str]) -> None:
    """Aligned at a terminal, tab-separated otherwise."""
    stream.write(aligned(rows) if is_terminal(stream) else tab_separated(rows))
