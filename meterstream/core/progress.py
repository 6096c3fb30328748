"""Progress bars for long CLI work (load generation, backfills, invoice runs).

One place decides how a bar looks and where it goes: stderr, so that a command's
output on stdout (totals, JSON, CSV) stays clean; hidden when stderr is not a
terminal unless asked for.
"""

from __future__ import annotations

import sys
from typing import Any

from tqdm import tqdm


def bar(total: float | None, description: str, unit: str = "it",
        force: bool | None = None, **options: Any) -> tqdm:
    """A bar counting `unit`s up to `total` (None: unknown total, a counter)."""
    disable = not sys.stderr.isatty() if force is None else not force
    return tqdm(total=total, desc=description, unit=unit, unit_scale=True,
                dynamic_ncols=True, file=sys.stderr, disable=disable, **options)
