"""Is a child process alive and working, and within its memory? What the supervisor watches.

Why this module exists: a child that *dies* is seen at once (its pipe closes); one that *hangs*
is not - a deadlock, a GPU driver call that never returns, a process stopped with SIGSTOP, a
PortAudio call stuck on a vanished server. Every later trigger of its instruments would wait or
replay forever. So every supervised child shares a :class:`Pulse` with its supervisor: three
numbers in shared memory, no pipe and no lock, that neither side can block on:

- the **heartbeat**, written every ``beat_s`` by a thread of the child's own. It stops when the
  whole process stops (SIGSTOP, a C call holding the GIL, the machine swapping it out);
- the **progress mark**, written by the child's main thread whenever it gets somewhere (a
  message read, a sampling step, a chunk). With the heartbeat still beating, an old mark while
  the child is *busy* is a main thread stuck (a deadlock, a driver call that never returns);
- the child's **state**: loading, idle or busy (an idle child waits for work and makes no marks).

:func:`verdict` turns these, the child's resident memory and a :class:`LivenessPolicy` into a
reason to kill it, or None; the supervisor kills (SIGKILL works on a stopped process too) and
restarts it like any other death. A memory ceiling is also given to the kernel where this
process may create a memory cgroup (:class:`MemoryCage`), so a worker that grows faster than the
watch is stopped there, and never the daemon or the audio process. See docs/ARCHITECTURE.md,
"Processes".
"""

from __future__ import annotations

import logging
import os
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from models.devices import rss_bytes

log = logging.getLogger(__name__)

LOADING, IDLE, BUSY = 0.0, 1.0, 2.0
STATE_NAMES = {LOADING: "loading", IDLE: "idle", BUSY: "busy"}
_BEAT, _MARK, _STATE, _WORKED = 0, 1, 2, 3

#: Workers are what the kernel's own out-of-memory killer should take first, before the daemon
#: (OSC, the folder) or the audio process: raising one's own score needs no privilege.
WORKER_OOM_SCORE_ADJ = 800


@dataclass(frozen=True)
class LivenessPolicy:
    """When a child counts as hung or too big. 0 turns a limit off."""

    #: How often the child's heartbeat thread writes.
    beat_s: float = 0.5
    #: No heartbeat for this long: the process is stopped or frozen.
    silent_after_s: float = 10.0
    #: Busy, heartbeat alive, but no progress for this long: its main thread is stuck.
    stalled_after_s: float = 120.0
    #: Still loading after this long (a model load or a device open that never returns).
    loading_after_s: float = 900.0
    #: Resident memory ceiling in MB: over it, the child is restarted with a clear error.
    memory_limit_mb: float = 0.0
    #: How often the supervisor looks.
    check_every_s: float = 1.0

    def to_json(self) -> dict[str, float]:
        return {"silent_after_s": self.silent_after_s, "stalled_after_s": self.stalled_after_s,
                "loading_after_s": self.loading_after_s, "memory_limit_mb": self.memory_limit_mb}


class Pulse:
    """Heartbeat, progress mark and state of one child, in shared memory (made by the parent,
    handed to the child at spawn). ``time.monotonic`` is the system-wide monotonic clock on
    Linux, so both sides read the same time."""

    def __init__(self, ctx: Any) -> None:
        self._values = ctx.RawArray("d", 4)
        now = time.monotonic()
        self._values[_BEAT], self._values[_MARK], self._values[_STATE] = now, now, LOADING
        self._values[_WORKED] = 0.0

    # ------------------------------------------------------------------ the child's side

    def beat(self) -> None:
        self._values[_BEAT] = time.monotonic()

    def mark(self) -> None:
        """The main thread got somewhere (call it at every step of long work)."""
        self._values[_MARK] = time.monotonic()

    def set_state(self, state: float) -> None:
        self._values[_MARK] = time.monotonic()
        if state == BUSY:
            self._values[_WORKED] += 1
        self._values[_STATE] = state

    def start_beating(self, beat_s: float) -> None:
        def run() -> None:
            while True:
                self.beat()
                time.sleep(beat_s)

        self.beat()
        threading.Thread(target=run, name="heartbeat", daemon=True).start()

    # ------------------------------------------------------------------ the supervisor's side

    @property
    def worked(self) -> bool:
        """The child took up work at least once (it got past loading and idling)."""
        return self._values[_WORKED] > 0

    def ages(self, now: float | None = None) -> tuple[float, float, float]:
        """(seconds since the heartbeat, seconds since the last mark, state)."""
        now = time.monotonic() if now is None else now
        return now - self._values[_BEAT], now - self._values[_MARK], self._values[_STATE]


#: The pulse of this process when it is a supervised child (set by :func:`child_entry`).
_pulse: Pulse | None = None


def mark() -> None:
    """Progress on the main thread; a no-op outside a supervised child (tests, the CLI)."""
    if _pulse is not None:
        _pulse.mark()


def set_state(state: float) -> None:
    """loading / idle / busy; a no-op outside a supervised child."""
    if _pulse is not None:
        _pulse.set_state(state)


def child_entry(target: Callable[..., None], pulse: Pulse, beat_s: float, oom_score_adj: int,
                conn: Any, *args: Any) -> None:
    """What a supervised child runs: start the heartbeat, then ``target(conn, *args)``."""
    global _pulse
    _pulse = pulse
    pulse.start_beating(beat_s)
    if oom_score_adj:
        try:
            Path("/proc/self/oom_score_adj").write_text(str(oom_score_adj))
        except OSError:
            pass
    target(conn, *args)


def physical_memory_mb() -> float:
    return os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE") / 2**20


def rss_mb(pid: int) -> float:
    """Resident memory of ``pid`` in MB (0 when it cannot be read: the process is gone)."""
    return rss_bytes(pid) / 2**20


def verdict(ages: tuple[float, float, float], rss: float, policy: LivenessPolicy) -> tuple[str, str] | None:
    """(kind, reason) this child must be killed for now - kind "hung" or "memory" - or None.
    Pure: the tests drive it with numbers."""
    beat_age, mark_age, state = ages
    if state == LOADING:
        if policy.loading_after_s and mark_age > policy.loading_after_s:
            return "hung", f"hung: still loading after {mark_age:.0f} s (loading limit {policy.loading_after_s:g} s)"
        # a load may hold the GIL for long stretches (imports, compiling): only the load limit applies
        return None
    if policy.silent_after_s and beat_age > policy.silent_after_s:
        return "hung", (f"hung: no heartbeat for {beat_age:.1f} s (stopped or frozen; limit "
                        f"{policy.silent_after_s:g} s)")
    if state == BUSY and policy.stalled_after_s and mark_age > policy.stalled_after_s:
        return "hung", f"hung: busy with no progress for {mark_age:.1f} s (limit {policy.stalled_after_s:g} s)"
    if policy.memory_limit_mb and rss > policy.memory_limit_mb:
        return "memory", f"over its memory ceiling: {rss:.0f} MB resident > {policy.memory_limit_mb:g} MB"
    return None


class MemoryCage:
    """A memory cgroup of one child (v2, or v1's memory controller) where this process may make
    one (root, or a delegated cgroup); else :meth:`open` returns None and only the supervisor's
    RSS watch applies. The kernel limit sits above the watched ceiling (``headroom``): the watch
    restarts a slowly growing worker with a clear reason first, the kernel stops a sudden spike
    inside the worker instead of letting it take the machine into swap."""

    def __init__(self, path: Path, version: int, limit_mb: float) -> None:
        self.path = path
        self.version = version
        #: The kernel's limit (the watched ceiling plus headroom).
        self.limit_mb = limit_mb

    @staticmethod
    def _own_dir() -> tuple[Path, int] | None:
        try:
            lines = Path("/proc/self/cgroup").read_text().splitlines()
        except OSError:
            return None
        for line in lines:  # "4:memory:/a/b" (v1) or "0::/a/b" (v2)
            _, controllers, rel = line.split(":", 2)
            if "memory" in controllers.split(","):
                base = Path("/sys/fs/cgroup/memory")
                if base.is_dir():
                    own = base / rel.lstrip("/")
                    return (own if own.is_dir() else base), 1
        for line in lines:
            if line.startswith("0::"):
                own = Path("/sys/fs/cgroup") / line[3:].lstrip("/")
                if (own / "cgroup.controllers").exists() and "memory" in (own / "cgroup.controllers").read_text():
                    return own, 2
        return None

    @classmethod
    def open(cls, name: str, limit_mb: float, headroom: float = 1.25) -> MemoryCage | None:
        found = cls._own_dir()
        if found is None or limit_mb <= 0:
            return None
        parent, version = found
        for stale in parent.glob("genbridge-*-*"):  # left by a daemon killed with -9
            pid = stale.name.split("-")[1]
            if pid.isdigit() and not Path(f"/proc/{pid}").exists():
                try:
                    stale.rmdir()
                except OSError:
                    pass
        path = parent / f"genbridge-{os.getpid()}-{name}"
        limit = str(int(limit_mb * headroom * 2**20))
        try:
            path.mkdir(exist_ok=True)
            (path / ("memory.limit_in_bytes" if version == 1 else "memory.max")).write_text(limit)
            if version == 1:  # no swap either, or the limit would only move the worker into swap
                try:
                    (path / "memory.memsw.limit_in_bytes").write_text(limit)
                except OSError:
                    pass
            else:
                try:
                    (path / "memory.swap.max").write_text("0")
                except OSError:
                    pass
        except OSError as exc:
            log.debug("no memory cgroup for %s (%s): the RSS watch alone applies", name, exc)
            try:
                path.rmdir()
            except OSError:
                pass
            return None
        return cls(path, version, limit_mb * headroom)

    def add(self, pid: int) -> bool:
        try:
            (self.path / "cgroup.procs").write_text(str(pid))
            return True
        except OSError as exc:
            log.warning("cannot put pid %d in %s: %s", pid, self.path, exc)
            return False

    def oom_kills(self) -> int:
        """How many times the kernel killed inside this cage for memory."""
        name = "memory.oom_control" if self.version == 1 else "memory.events"
        try:
            for line in (self.path / name).read_text().splitlines():
                key, _, value = line.partition(" ")
                if key == "oom_kill":
                    return int(value)
        except (OSError, ValueError):
            pass
        return 0

    def remove(self) -> None:
        try:
            self.path.rmdir()
        except OSError:
            pass

    def describe(self) -> str:
        return f"cgroup v{self.version}, {self.limit_mb:.0f} MB"
