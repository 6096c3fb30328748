"""What every benchmark script writes beside its figures: the machine, and its section of
BENCHMARKS.md."""

from __future__ import annotations

import os
import platform
import re
from pathlib import Path

BENCHMARKS = Path(__file__).resolve().parent.parent / "BENCHMARKS.md"


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def machine() -> str:
    return (f"{os.cpu_count()} cores ({cpu_model()}), {platform.python_implementation()} "
            f"{platform.python_version()}, {platform.machine()}")


def put_section(heading: str, text: str, at_top: bool = False) -> None:
    """Makes `text` the body of BENCHMARKS.md's `## heading` section: replaced where the
    section is (up to the next `#` or `##` heading), else added after the introduction
    (`at_top`) or at the end. `###` headings inside `text` belong to the section."""
    content = BENCHMARKS.read_text()
    section = f"## {heading}\n\n{text.strip()}\n"
    match = re.search(rf"^## {re.escape(heading)}\n.*?(?=^##? |\Z)", content, re.M | re.S)
    if match:
        rest = content[match.end():]
        content = content[:match.start()] + section + ("\n" + rest if rest else "")
    elif at_top:
        first = re.search(r"^##", content, re.M)
        cut = first.start() if first else len(content)
        content = content[:cut].rstrip("\n") + "\n\n" + section + "\n" + content[cut:]
    else:
        content = content.rstrip("\n") + "\n\n" + section
    BENCHMARKS.write_text(content)
