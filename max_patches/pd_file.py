"""Read a Pd patch: its boxes in Pd's own numbering, and its connections.

Shared by the checker and the renderer so both see a patch the same way.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

#: The "#X" lines Pd numbers for "connect": objects, messages, comments, atoms, subpatches.
NUMBERED = ("obj", "msg", "text", "restore", "floatatom", "symbolatom")


@dataclass
class PdBox:
    kind: str
    x: float
    y: float
    words: list[str]  # what the box says (empty for a subpatch/graph)


def read_pd(path: Path) -> tuple[list[PdBox], list[tuple[int, int, int, int]]]:
    """(boxes, connections as (source, outlet, destination, inlet)); escapes undone."""
    boxes: list[PdBox] = []
    connects = []
    text = path.read_text().replace("\\$", "$").replace("\\,", ",")
    for raw in re.split(r";\s*\n", text):
        words = raw.split()
        if len(words) < 2 or words[0] != "#X":
            continue  # canvas headers (#N) carry no box number
        if words[1] in NUMBERED:
            boxes.append(PdBox(words[1], float(words[2]), float(words[3]),
                               words[4:] if words[1] != "restore" else []))
        elif words[1] == "connect":
            connects.append((int(words[2]), int(words[3]), int(words[4]), int(words[5])))
    return boxes, connects
