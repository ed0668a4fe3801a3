"""The one thread that writes the shared folder.

Why one: files appear in the order they were made, a slow disk never blocks the event loop,
and the folder sweep runs between writes rather than beside them. The engine (one-shots), the
continuation queue (chunks and results) and input capture all write through this.

Why it also counts held clips: when the folder refuses writes (a full disk, a read-only
remount), the engine keeps the refills it could not store in memory and offers them again
later, rather than losing them or rendering new ones in vain; status shows how many wait.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Callable, TypeVar

from bridge.clip import Clip
from bridge.sinks.folder import FolderSink

T = TypeVar("T")


class FolderWriter:
    def __init__(self, sink: FolderSink) -> None:
        self.sink = sink
        self._thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="folder-writer")
        #: Clips made but not stored yet because the folder refused them, by instrument.
        self.held: Counter[str] = Counter()

    async def run(self, fn: Callable[..., T], *args: Any) -> T:
        """Run ``fn(*args)`` on the writer thread, after every write queued before it."""
        return await asyncio.get_running_loop().run_in_executor(self._thread, fn, *args)

    async def save(self, clip: Clip) -> Path:
        """Write a clip to the session folder (atomically, sidecar first); returns the WAV path.
        Raises :class:`~bridge.sinks.folder.FolderError` (an OSError) naming the folder."""
        return await self.run(self.sink.write_to_session, clip)

    def status(self) -> dict[str, Any]:
        """The ``output`` section of /genbridge/status: the folder's health and the held clips."""
        return self.sink.health() | {"held_clips": {k: n for k, n in self.held.items() if n > 0}}

    def shutdown(self) -> None:
        """Finish the writes under way, then stop the thread."""
        self._thread.shutdown(wait=True)
