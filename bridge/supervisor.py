"""One supervisor for every child process: spawn, hear it on the event loop, restart with backoff.

Why this module exists: the daemon runs each model in a worker process and the audio device in
a process of its own, and each must come back when it dies without taking the set down: a
crash costs one request, a crash loop must not spin the CPU, and the last words of a dead child
must not be mistaken for its successor's. Model workers, the MusicGen worker and the audio
process used to have three restart policies of their own; now each is a :class:`SupervisedChild`
with a :class:`RestartPolicy`. See docs/ARCHITECTURE.md, "Processes".
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass
from typing import Any, Callable

from bridge.child_process import Outbox, read_child, spawn_child, stop_child
from bridge.liveness import STATE_NAMES, LivenessPolicy, MemoryCage, Pulse, rss_mb, verdict

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class RestartPolicy:
    """Restart after ``first_delay_s``, times ``factor`` for every crash in a row, at most
    ``max_delay_s``; a child that stayed healthy for ``stable_after_s`` starts the count again."""

    first_delay_s: float = 0.5
    factor: float = 2.0
    max_delay_s: float = 30.0
    stable_after_s: float = 60.0

    def delay(self, crashes_in_a_row: int) -> float:
        return float(min(self.max_delay_s, self.first_delay_s * self.factor ** max(0, crashes_in_a_row)))


class SupervisedChild:
    """One child process kept running; every callback runs on the event loop thread.

    ``on_message(msg)`` gets what the current child sends; ``on_exit(code, restart_in)`` hears
    its death, with the delay before the next start, or None when it will not be restarted
    (:meth:`give_up` was called: a load that failed would fail again; or the owner is stopping).
    ``before_spawn`` runs just before each start (environment the child inherits).

    With ``liveness`` the child beats a heartbeat and the supervisor looks every
    ``check_every_s``: a child that hangs, stalls or outgrows its memory ceiling is killed
    (:attr:`last_exit` says why) and restarted. ``oom_score_adj`` makes the kernel's own
    out-of-memory killer pick this child before its parent.
    """

    def __init__(self, name: str, target: Callable[..., None], args: tuple[Any, ...],
                 loop: asyncio.AbstractEventLoop, *, on_message: Callable[[dict[str, Any]], None],
                 on_exit: Callable[[int | None, float | None], None], policy: RestartPolicy,
                 before_spawn: Callable[[], None] | None = None, liveness: LivenessPolicy | None = None,
                 oom_score_adj: int = 0) -> None:
        self.name = name
        self.target = target
        self.args = args
        self.loop = loop
        self.on_message = on_message
        self.on_exit = on_exit
        self.policy = policy
        self.before_spawn = before_spawn
        #: Bumped at every start and stop: messages and exits of an older child are dropped.
        self.generation = 0
        self.restarts = 0
        self.crashes_in_a_row = 0
        self.process: Any = None
        self._conn: Any = None
        self._outbox: Outbox | None = None
        self._healthy_since: float | None = None
        self._gave_up = False
        self._stopping = False
        self._restart: asyncio.TimerHandle | None = None
        self.liveness = liveness
        self.oom_score_adj = oom_score_adj
        self._pulse: Pulse | None = None
        self._watch: asyncio.TimerHandle | None = None
        self._cage: MemoryCage | None = None
        self._cage_kills = 0
        #: (kind, reason) the supervisor killed the current child for (None: it was not killed by us).
        self._kill_reason: tuple[str, str] | None = None
        #: Why the previous child ended: "exit code N", or the supervisor's reason for killing it;
        #: and its kind: "exit", "hung" or "memory".
        self.last_exit: str | None = None
        self.last_exit_kind: str | None = None
        self.peak_rss_mb = 0.0
        #: The watch's last reading (status shows it rather than reading /proc again).
        self._rss_mb = 0.0

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process is not None else None

    @property
    def alive(self) -> bool:
        return self.process is not None

    def start(self) -> None:
        self._restart = None
        if self._stopping:
            return
        if self.before_spawn is not None:
            self.before_spawn()
        self.generation += 1
        generation = self.generation
        self._gave_up = False
        self._healthy_since = None
        self._kill_reason = None
        self._rss_mb = 0.0
        lv = self.liveness
        self.process, self._conn, self._pulse = spawn_child(
            self.target, self.args, name=f"genbridge-{self.name}", beat_s=lv.beat_s if lv else 0.0,
            oom_score_adj=self.oom_score_adj)
        self._outbox = Outbox(self._conn, self.name)
        if lv is not None and lv.memory_limit_mb:
            if self._cage is None:
                self._cage = MemoryCage.open(self.name, lv.memory_limit_mb)
            if self._cage is not None:
                self._cage_kills = self._cage.oom_kills()
                if not self._cage.add(self.process.pid):  # then only the RSS watch holds it
                    self._cage.remove()
                    self._cage = None
        read_child(self._conn, self.process, self.loop,
                   on_message=lambda msg: self._message(generation, msg),
                   on_exit=lambda code: self._exited(generation, code), name=self.name)
        if lv is not None:
            self._watch = self.loop.call_later(lv.check_every_s, self._check, generation)

    def _check(self, generation: int) -> None:
        """The watch: kill the current child when :func:`~bridge.liveness.verdict` says so."""
        self._watch = None
        if generation != self.generation or self.process is None or self._pulse is None or self.liveness is None:
            return
        rss = self._rss_mb = rss_mb(self.process.pid)
        self.peak_rss_mb = max(self.peak_rss_mb, rss)
        found = verdict(self._pulse.ages(), rss, self.liveness)
        if found is not None and found[0] == "memory" and not self._pulse.worked:
            # over the ceiling before doing any work: every restart would be killed the same way
            found = ("memory", f"over its memory ceiling before any work: {rss:.0f} MB resident > "
                               f"{self.liveness.memory_limit_mb:g} MB; it needs a higher memory_limit_mb")
            self._gave_up = True
        if found is not None and self._kill_reason is None:
            self._kill_reason = found
            log.error("%s (pid %s) %s: killing it; it will be restarted", self.name, self.process.pid, found[1])
            try:
                self.process.kill()  # SIGKILL ends a stopped process too; the exit is seen as usual
            except (OSError, ValueError):
                pass
        self._watch = self.loop.call_later(self.liveness.check_every_s, self._check, generation)

    def health(self) -> dict[str, Any]:
        """Heartbeat and progress ages, state, memory and restarts, for status."""
        out: dict[str, Any] = {"restarts": self.restarts, "last_exit": self.last_exit,
                               "last_exit_kind": self.last_exit_kind}
        if self._pulse is not None and self.process is not None:
            beat_age, mark_age, state = self._pulse.ages()
            out |= {"heartbeat_age_s": round(beat_age, 2), "progress_age_s": round(mark_age, 2),
                    "state": STATE_NAMES.get(state, "?"), "rss_mb": round(self._rss_mb, 1)}
        if self.liveness is not None:
            out["memory_limit_mb"] = self.liveness.memory_limit_mb or None
            out["memory_limit_os"] = self._cage.describe() if self._cage is not None else None
        return out

    def healthy(self) -> None:
        """The child is doing its job (loaded, device open): counts toward ``stable_after_s``."""
        self._healthy_since = time.monotonic()

    def give_up(self) -> None:
        """Do not restart this child when it exits (it said its work cannot succeed)."""
        self._gave_up = True

    def send(self, msg: dict[str, Any]) -> bool:
        """Send to the child without ever blocking the loop (its :class:`Outbox` writes the pipe);
        False if it is gone or not reading (its death, or its kill, is reported separately)."""
        if self._outbox is None:
            return False
        return self._outbox.put(msg)

    def stop(self, timeout: float = 3.0) -> None:
        """Ask the child to stop, then terminate and kill it; no restart, no more callbacks."""
        self._stopping = True
        if self._restart is not None:
            self._restart.cancel()
            self._restart = None
        self.generation += 1  # ignore its last words
        self._end_watch()
        if self._outbox is not None:
            self._outbox.put({"op": "stop"})  # after what is queued; never blocks on a child that does not read
        stop_child(self.process, timeout)
        if self._outbox is not None:
            self._outbox.close()
        if self._conn is not None:
            self._conn.close()
        self.process, self._conn, self._outbox = None, None, None
        if self._cage is not None:
            self._cage.remove()
            self._cage = None

    def _end_watch(self) -> None:
        if self._watch is not None:
            self._watch.cancel()
            self._watch = None

    def _message(self, generation: int, msg: dict[str, Any]) -> None:
        if generation == self.generation:
            self.on_message(msg)

    def _exited(self, generation: int, code: int | None) -> None:
        if generation != self.generation:
            return
        if self._outbox is not None:
            self._outbox.close()
        self.process, self._conn, self._outbox = None, None, None
        self._end_watch()
        if self._kill_reason is not None:
            self.last_exit_kind, self.last_exit = self._kill_reason
        elif self._cage is not None and self._cage.oom_kills() > self._cage_kills:
            self.last_exit_kind = "memory"
            self.last_exit = f"over its memory ceiling: killed by the kernel ({self._cage.describe()})"
            if self._pulse is not None and not self._pulse.worked:  # it would be, again, at every restart
                self.last_exit += " before any work; it needs a higher memory_limit_mb"
                self._gave_up = True
        else:
            self.last_exit_kind, self.last_exit = "exit", f"exit code {code}"
        if self._stopping or self._gave_up:
            self.on_exit(code, None)
            return
        if self._healthy_since is not None and time.monotonic() - self._healthy_since > self.policy.stable_after_s:
            self.crashes_in_a_row = 0
        delay = self.policy.delay(self.crashes_in_a_row)
        self.crashes_in_a_row += 1
        self.restarts += 1
        self._restart = self.loop.call_later(delay, self.start)
        self.on_exit(code, delay)
