"""Rewrite the README's configuration table from meterstream.core.config.VARIABLES."""

from __future__ import annotations

from pathlib import Path

from meterstream.core.config import VARIABLES

HEADER = "| Variable | Default | Meaning |"


def main() -> None:
    readme = Path(__file__).resolve().parent.parent / "README.md"
    text = readme.read_text()
    start = text.index(HEADER)
    end = text.index("\n\n", start)
    rows = [HEADER, "|---|---|---|"]
    rows += [f"| `{v.name}` | `{v.default}` | {v.help} |" for v in VARIABLES]
    readme.write_text(text[:start] + "\n".join(rows) + text[end:])


if __name__ == "__main__":
    main()
