"""What the engine schedules: jobs (a request for clips), tasks (one clip being made), priorities.

Plain data, shared by the engine (which owns their life cycle) and the scheduler (which only
chooses among them), so the choice can be tested without processes or an event loop.
"""

from __future__ import annotations

import itertools
from collections import deque
from dataclasses import dataclass, field
from enum import IntEnum
from pathlib import Path
from typing import Any, Callable

from bridge.clip import Clip
from bridge.pools import Band


class EngineError(Exception):
    """A request the engine cannot serve; the message is meant for the musician."""


def checked_params(family: Any, params: dict[str, Any], info: dict[str, Any] | None) -> dict[str, Any]:
    """The family's own check of request parameters, before anything is queued (bad input
    changes nothing); its complaint becomes the musician's error reply."""
    from models.generator import GeneratorError

    try:
        return family.check_params(params, info or None)
    except GeneratorError as exc:
        raise EngineError(str(exc)) from None


class Priority(IntEnum):
    PLAY_WAIT = 0
    GENERATE = 1
    REFILL = 2


@dataclass
class Job:
    """A request for ``total`` clips of one instrument, with the family's parameters."""

    id: int
    priority: Priority
    instrument: str
    seeds: deque[int]
    #: Family-specific (diffusion: steps, sampler; a variation adds source, source_name, strength).
    params: dict[str, Any]
    total: int
    on_clip: Callable[[Clip], None] | None = None
    on_done: Callable[["Job"], None] | None = None
    on_error: Callable[["Job", str], None] | None = None
    delivered: int = 0
    last_path: Path | None = None
    running: int = 0
    writing: int = 0
    cancelled: bool = False
    failed: bool = False
    #: What a GENERATE job makes ("generate" or "vary"), for status.
    kind: str = "generate"
    #: The velocity (0-1) its clips are made at; None: the model's default. A model not
    #: conditioned on velocity ignores it.
    velocity: float | None = None

    @property
    def finished(self) -> bool:
        return not self.seeds and self.running == 0 and self.writing == 0


@dataclass
class Task:
    """One clip being made by a worker."""

    id: int
    instrument: str
    seed: int
    job: Job | None  # None: a pool refill
    #: The velocity (0-1) it is made at (None: the model's default).
    velocity: float | None = None
    #: A refill's pool band: where its place is reserved (``in_flight``) and its clip goes.
    band: Band | None = None


class JobIds:
    """Job ids shared by every job kind (one-shots, continuations), so /job/cancel is unambiguous."""

    def __init__(self) -> None:
        self._ids = itertools.count(1)

    def next(self) -> int:
        return next(self._ids)


@dataclass
class Counters:
    """What status reports under "counters"; each part of the daemon adds to its own keys."""

    values: dict[str, int] = field(default_factory=lambda: {
        "refused_busy": 0, "worker_crashes": 0, "worker_hangs": 0, "worker_memory_restarts": 0, "write_errors": 0,
        "tasks_cancelled": 0, "swept_files": 0, "swept_bytes": 0})

    def add(self, key: str, n: int = 1) -> None:
        self.values[key] = self.values.get(key, 0) + int(n)

    def to_json(self) -> dict[str, int]:
        return dict(self.values)
