"""The engine's handle on one model worker process.

It starts the process (spawn: a clean interpreter, no inherited threads or torch state),
forwards the worker's messages into the asyncio loop from a reader thread, and reports the
process's death as an event, so the engine can fail the in-flight request and restart it.
"""

from __future__ import annotations

import asyncio
import logging
import multiprocessing as mp
from dataclasses import dataclass
from typing import Any, Callable

from bridge.child_process import read_child, spawn_child, stop_child
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
        # The child inherits the environment at spawn: make its OpenMP passive before torch loads.
        configure_threads_env(self.spec.threads)
        proc, conn = spawn_child(
            worker_main,
            (self.spec.model_name, self.spec.model_path, self.spec.options, self.spec.threads,
             self.spec.finishing, logging.getLogger().getEffectiveLevel()),
            name=f"genbridge-worker-{self.spec.model_name}",
        )
        self._generation += 1
        generation = self._generation
        self.process, self._conn = proc, conn
        read_child(conn, proc, self.loop,
                   on_message=lambda msg: self._deliver(generation, msg),
                   on_exit=lambda code: self._exited(generation, code),
                   name=f"worker {self.spec.model_name}")

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
        self._generation += 1  # ignore its last words
        stop_child(self.process, self._conn, timeout)
        self.process, self._conn = None, None
