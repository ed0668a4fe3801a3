"""The one thread that writes the shared folder.

Why one: files appear in the order they were made, a slow disk never blocks the event loop,
and the folder sweep runs between writes rather than beside them. The engine (one-shots), the
continuation queue (chunks and results) and input capture all write through this.

Why it also counts held clips: when the folder refuses writes (a full disk, a read-only
remount), the engine keeps the refills it could not store in memory and offers them again
later, rather than losing them or rendering new ones in vain; status shows how many wait.

Why it owns the session's ``index.html`` (:class:`~bridge.session_index.SessionIndex`): the page
is rewritten whole, on this same thread, so it must not be rewritten per clip. A change asks
for a write only when none is queued yet; the queued one runs after the clip writes queued
before it and writes whatever the state is by then, so a burst of clips costs one rewrite and
at most one index write ever waits. Rewrites are also spaced (``INDEX_MIN_GAP_S``, or
``INDEX_COST_FACTOR`` times what the last one took): late in a long set the page lists
thousands of clips (10 MB at 7000), and clips landing one by one must not mean 10 MB per clip.
The spacing is kept by a small scheduler thread, so asking for a rewrite from a trigger's path
(a pooled clip moved in on the event loop) costs a lock and a notify, not a timer thread.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Callable, TypeVar

from bridge.clip import Clip
from bridge.session_index import SessionIndex
from bridge.sinks.folder import FolderSink

T = TypeVar("T")


class FolderWriter:
    #: The least time between the starts of two index.html rewrites, and the multiple of the last
    #: rewrite's duration that must pass before the next (so the page takes at most ~1/10 of the
    #: writer thread however long it grows), up to ``INDEX_MAX_GAP_S`` (how stale it may get).
    INDEX_MIN_GAP_S = 0.2
    INDEX_COST_FACTOR = 10.0
    INDEX_MAX_GAP_S = 5.0

    def __init__(self, sink: FolderSink) -> None:
        self.sink = sink
        self._thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="folder-writer")
        #: Clips made but not stored yet because the folder refused them, by instrument.
        self.held: Counter[str] = Counter()
        self._index_lock = threading.Lock()
        self._index_wakeup = threading.Condition(self._index_lock)
        self._index_wanted = False  # a change is not on the page yet and no rewrite has started since
        self._index_submitted = False  # a rewrite waits on the writer thread
        self._index_next = 0.0  # time.monotonic() before which no rewrite starts
        self._index_scheduler: threading.Thread | None = None
        self._closed = False
        #: The session folder's clips and its index.html (written on this thread).
        self.index = SessionIndex(sink.session_dir, on_change=self.request_index_write)
        sink.add_observer(self.index)
        sink.when_opened(self.request_index_write)  # an empty session shows an empty page

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

    def request_index_write(self) -> None:
        """Have index.html rewritten with the latest state: at once (on the writer thread, after
        the writes queued before) unless a rewrite is waiting already (it will show this change
        too) or the last one was too recent (then once its spacing is over). Thread-safe and
        quick (it runs on a trigger's path): the spacing is kept by a scheduler thread, not here.
        Once :meth:`shutdown` began it does nothing."""
        with self._index_lock:
            if self._closed or self._index_wanted:
                return
            self._index_wanted = True
            if self._index_scheduler is None:
                self._index_scheduler = threading.Thread(target=self._schedule_index, daemon=True,
                                                         name="folder-writer-index")
                self._index_scheduler.start()
            self._index_wakeup.notify()

    def _schedule_index(self) -> None:
        """Submit a wanted rewrite to the writer thread once the spacing since the last one is over;
        at most one is submitted and not started at any time."""
        with self._index_lock:
            while not self._closed:
                if not self._index_wanted or self._index_submitted:
                    self._index_wakeup.wait()
                    continue
                wait = self._index_next - time.monotonic()
                if wait > 0:
                    self._index_wakeup.wait(wait)  # the last rewrite may still lengthen its spacing: look again
                    continue
                try:
                    self._thread.submit(self._write_index)
                except RuntimeError:  # the thread is stopping: shutdown writes the last state itself
                    return
                self._index_submitted = True

    def _write_index(self) -> None:
        start = time.monotonic()
        with self._index_lock:
            # from here on a change wants the next rewrite (this one may have read the state before it)
            self._index_wanted = self._index_submitted = False
            self._index_next = start + self.INDEX_MIN_GAP_S
        self.index.write()
        took = time.monotonic() - start
        with self._index_lock:
            gap = min(self.INDEX_MAX_GAP_S, max(self.INDEX_MIN_GAP_S, self.INDEX_COST_FACTOR * took))
            self._index_next = start + gap

    def shutdown(self) -> None:
        """Finish the writes under way, then stop the thread. index.html is left showing the last
        state: a change that came after the last queued rewrite (or while the thread drained) is
        written here, once the thread has stopped, so no two index writes ever overlap."""
        with self._index_lock:
            self._closed = True
            self._index_wakeup.notify_all()
            scheduler = self._index_scheduler
        if scheduler is not None:
            scheduler.join()
        self._thread.shutdown(wait=True)
        if self.index.dirty and self.sink.session_dir.is_dir():
            self.index.write()
