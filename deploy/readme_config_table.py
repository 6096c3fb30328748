"""Rewrite the configuration table of docs/configuration.md from
meterstream.core.config.VARIABLES (tests/unit/test_docs.py fails when they differ).

    .venv/bin/python deploy/readme_config_table.py
"""

from __future__ import annotations

from pathlib import Path

from meterstream.core.config import VARIABLES

PAGE = Path(__file__).resolve().parent.parent / "docs" / "configuration.md"
HEADER = "| Variable | Default | Meaning |"


def cell(text: str) -> str:
    """A table cell: a `|` in the text (a shell pipe in a help) would end the cell."""
    return text.replace("|", "\\|")


def table() -> str:
    rows = [HEADER, "|---|---|---|"]
    rows += [f"| `{v.name}` | `{cell(v.default)}` | {cell(v.help)} |" for v in VARIABLES]
    return "\n".join(rows)


def rewrite(text: str) -> str:
    """`text` with its table (from HEADER to the next blank line or the end) replaced."""
    start = text.index(HEADER)
    end = text.find("\n\n", start)
    end = len(text.rstrip("\n")) if end == -1 else end
    return text[:start] + table() + text[end:]


def main() -> None:
    PAGE.write_text(rewrite(PAGE.read_text()).rstrip("\n") + "\n")


if __name__ == "__main__":
    main()
