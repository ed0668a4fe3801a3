"""The engine's handle on one model worker process.

It starts the process (spawn: a clean interpreter, no inherited threads or torch state),
forwards the worker's messages into the asyncio loop from a reader thread, and reports the
process's death as an event, so the engine can fail the in-flight request and restart it.
"""

from __future__ import annotations

import asyncio
import logging
import multiprocessing as mp
import threading
from dataclasses import dataclass
from typing import Any, Callable

from bridge.model_worker import configure_threads_env, worker_main

log = logging.getLogger(__name__)


@dataclass
class WorkerSpec:
    model_name: str
    model_path: str
    options: dict[str, Any]
    threads: int
    finishing: dict[str, Any]


class WorkerClient:
    """One running (or restartable) worker; callbacks run on the event loop thread."""

    def __init__(self, spec: WorkerSpec, loop: asyncio.AbstractEventLoop,
                 on_message: Callable[[dict[str, Any]], None], on_exit: Callable[[int | None], None]) -> None:
        self.spec = spec
        self.loop = loop
        self.on_message = on_message
        self.on_exit = on_exit
        self.process: mp.process.BaseProcess | None = None
        self._conn: Any = None
        self._generation = 0

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process is not None else None

    def start(self) -> None:
        ctx = mp.get_context("spawn")
        parent, child = ctx.Pipe(duplex=True)
        # The child inherits the environment at spawn: make its OpenMP passive before torch loads.
        configure_threads_env(self.spec.threads)
        proc = ctx.Process(
            target=worker_main,
            args=(child, self.spec.model_name, self.spec.model_path, self.spec.options,
                  self.spec.threads, self.spec.finishing, logging.getLogger().getEffectiveLevel()),
            name=f"genbridge-worker-{self.spec.model_name}",
            daemon=True,
        )
        proc.start()
        child.close()  # so recv() sees EOF when the worker dies
        self._generation += 1
        self.process, self._conn = proc, parent
        threading.Thread(target=self._read, args=(parent, proc, self._generation),
                         name=f"reader-{self.spec.model_name}", daemon=True).start()

    def _read(self, conn: Any, proc: mp.process.BaseProcess, generation: int) -> None:
        while True:
            try:
                msg = conn.recv()
            except (EOFError, OSError):
                break
            except Exception as exc:  # an unpicklable message: treat the worker as broken
                log.error("worker %s sent an unreadable message: %s", self.spec.model_name, exc)
                proc.kill()
                break
            self._post(self._deliver, generation, msg)
        proc.join(timeout=5)
        self._post(self._exited, generation, proc.exitcode)

    def _post(self, fn: Callable[..., None], *args: Any) -> None:
        try:
            self.loop.call_soon_threadsafe(fn, *args)
        except RuntimeError:
            pass  # loop closed during shutdown

    def _deliver(self, generation: int, msg: dict[str, Any]) -> None:
        if generation == self._generation:
            self.on_message(msg)

    def _exited(self, generation: int, exitcode: int | None) -> None:
        if generation == self._generation:
            self.process = None
            self.on_exit(exitcode)

    def send(self, msg: dict[str, Any]) -> bool:
        """Send to the worker; False if it is gone (its death is reported separately)."""
        if self._conn is None:
            return False
        try:
            self._conn.send(msg)
            return True
        except (OSError, ValueError):
            return False

    def stop(self, timeout: float = 3.0) -> None:
        """Ask the worker to stop, then terminate and kill it if it does not."""
        proc, self._generation = self.process, self._generation + 1  # ignore its last words
        self.send({"op": "stop"})
        if proc is not None:
            proc.join(timeout=timeout / 2)
            if proc.is_alive():
                proc.terminate()
                proc.join(timeout=timeout / 2)
            if proc.is_alive():
                proc.kill()
                proc.join(timeout=1)
        if self._conn is not None:
            self._conn.close()
        self.process, self._conn = None, None
