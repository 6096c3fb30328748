"""Running the `meterstream` command with its stdout on a pseudo-terminal, as a person sees it."""

from __future__ import annotations

import os
import pty
import subprocess
import sys
from collections.abc import Mapping

from tests.support import REPO


def at_terminal(args: list[str], env: Mapping[str, str]) -> tuple[int, str]:
    """Runs `meterstream ARGS` with stdout on a pseudo-terminal (stderr discarded); its exit
    code and what it printed, with the terminal's CRLF turned back into LF."""
    main, child = pty.openpty()
    process = subprocess.Popen([sys.executable, "-m", "meterstream", *args],
                               env={**os.environ, **env}, stdout=child,
                               stderr=subprocess.DEVNULL, cwd=REPO)
    os.close(child)
    chunks = []
    while True:
        try:
            chunk = os.read(main, 65536)
        except OSError:  # EIO: the child closed the terminal
            break
        if not chunk:
            break
        chunks.append(chunk)
    os.close(main)
    return process.wait(60), b"".join(chunks).decode().replace("\r\n", "\n")
