"""Start a spawned child with a Pipe, and hear what it says and when it dies, on the event loop.

Model workers and the audio device process both need this: a reader thread blocks on the pipe
and hands every message - and finally the child's exit code - to the asyncio loop. Supervision
(restarts, dropping an earlier incarnation's messages) is bridge/supervisor.py's.
"""

from __future__ import annotations

import asyncio
import logging
import multiprocessing as mp
import queue
import threading
from multiprocessing.reduction import ForkingPickler
from typing import Any, Callable

from bridge.liveness import Pulse, child_entry

log = logging.getLogger(__name__)


def spawn_child(target: Callable[..., None], args: tuple[Any, ...], name: str, *,
                beat_s: float = 0.0, oom_score_adj: int = 0) -> tuple[mp.process.BaseProcess, Any, Pulse | None]:
    """Start ``target(child_conn, *args)`` in a spawned process; returns (process, parent_conn,
    pulse). With ``beat_s`` the child beats a :class:`~bridge.liveness.Pulse` the parent reads."""
    ctx = mp.get_context("spawn")
    parent, child = ctx.Pipe(duplex=True)
    pulse = Pulse(ctx) if beat_s > 0 else None
    if pulse is not None:
        proc = ctx.Process(target=child_entry, args=(target, pulse, beat_s, oom_score_adj, child, *args),
                           name=name, daemon=True)
    else:
        proc = ctx.Process(target=target, args=(child, *args), name=name, daemon=True)
    proc.start()
    child.close()  # so recv() in the parent sees EOF when the child dies
    return proc, parent, pulse


def stop_child(proc: mp.process.BaseProcess | None, timeout: float = 3.0) -> None:
    """Wait for a child that was asked to stop ({"op": "stop"}, through its :class:`Outbox`),
    then terminate it, then kill it (SIGKILL also ends a stopped process)."""
    if proc is not None:
        proc.join(timeout=timeout / 2)
        if proc.is_alive():
            proc.terminate()
            proc.join(timeout=timeout / 2)
        if proc.is_alive():
            proc.kill()
            proc.join(timeout=1)


def read_child(conn: Any, proc: mp.process.BaseProcess, loop: asyncio.AbstractEventLoop,
               on_message: Callable[[dict[str, Any]], None], on_exit: Callable[[int | None], None],
               name: str) -> None:
    """Forward messages, then the exit code, to ``loop`` from a daemon reader thread."""

    def post(fn: Callable[..., None], *args: Any) -> None:
        try:
            loop.call_soon_threadsafe(fn, *args)
        except RuntimeError:
            pass  # the loop closed during shutdown

    def run() -> None:
        while True:
            try:
                msg = conn.recv()
            except (EOFError, OSError):
                break
            except Exception as exc:  # an unreadable message: treat the child as broken
                log.error("%s sent an unreadable message: %s", name, exc)
                proc.kill()
                break
            post(on_message, msg)
        proc.join(timeout=5)
        post(on_exit, proc.exitcode)

    threading.Thread(target=run, name=f"reader-{name}", daemon=True).start()


class Outbox:
    """Messages to one child, written to its pipe by a thread of their own.

    Why: a child that stops reading (stopped with SIGSTOP, stuck in a driver or in PortAudio)
    fills its pipe after 64 KiB, and a send on the event loop would then block the loop - OSC,
    and the very watch that would kill the child. Messages are pickled here, on the caller's
    thread, as ``Connection.send`` would, so the outbox knows their size: past ``limit_bytes``
    waiting it refuses (the child is not reading; what it would get is stale by now)."""

    def __init__(self, conn: Any, name: str, limit_bytes: int = 64 * 2**20) -> None:
        self._conn = conn
        self.limit_bytes = limit_bytes
        self._queue: queue.SimpleQueue[bytes | None] = queue.SimpleQueue()
        self._waiting = 0
        self._lock = threading.Lock()
        self._closed = False
        threading.Thread(target=self._run, name=f"outbox-{name}", daemon=True).start()

    def put(self, msg: Any) -> bool:
        """Queue ``msg``; False when the pipe is broken or too much is waiting already."""
        data = bytes(ForkingPickler.dumps(msg))
        with self._lock:
            if self._closed or self._waiting + len(data) > self.limit_bytes:
                return False
            self._waiting += len(data)
        self._queue.put(data)
        return True

    def close(self) -> None:
        """Send what is queued, then end the thread (it also ends when the pipe breaks)."""
        self._queue.put(None)

    def _run(self) -> None:
        while (data := self._queue.get()) is not None:
            with self._lock:
                self._waiting -= len(data)
            if self._closed:
                continue
            try:
                self._conn.send_bytes(data)
            except (OSError, ValueError):  # the child is gone, or the pipe was closed
                with self._lock:
                    self._closed = True
