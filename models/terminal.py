"""Progress bars that draw on every terminal.

Why this module exists: tqdm draws nothing at all on a terminal that reports a size of 0 - a
pseudo-terminal nobody sized (``script``, ``docker exec -t``, some CI runners' ttys) - because it
hides a bar below the last of 0 rows. Every bar genbridge shows (training, ``generate``,
``export``) passes :func:`unsized_terminal_bar` to tqdm, so the fix is made once.
"""

from __future__ import annotations

import os
import sys
from typing import IO, Any


def unsized_terminal_bar(stream: IO[str] | None = None) -> dict[str, Any]:
    """tqdm keyword arguments for ``stream`` (stderr by default): 80x24 on a terminal that
    reports size 0, else nothing (a sized terminal, a pipe or a file keep tqdm's own choice)."""
    try:
        fd = (stream or sys.stderr).fileno()
        if not os.isatty(fd):
            return {}
        size = os.get_terminal_size(fd)
    except (OSError, ValueError, AttributeError):
        return {}
    return {} if size.columns > 0 and size.lines > 0 else {"ncols": 80, "nrows": 24}
