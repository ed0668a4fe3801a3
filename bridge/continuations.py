"""Continuation jobs: a queue in front of the MusicGen worker, chunks and results to the folder.

Why this module exists: a continuation is a long job with a life of its own - queued behind
others, reporting progress, handing out chunks, cancellable - unlike a one-shot. This keeps that
life cycle (and the worker process that does the work) out of the drum engine, which it shares
only for job ids and the folder writer. It knows no transport: callbacks report to whoever asked.

A request is a continuation of a prompt or, without prompt audio, a new piece from text
(``music/generate``); a request of N takes is N jobs (ids J..J+N-1, seeds seed..seed+N-1) made
in one render, one batched pass: the worker's messages find their job by task id = job id.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np

from bridge.bar_shape import BarShape, ShapeError, shape
from bridge.clip import Clip
from bridge.config import ContinuationConfig
from bridge.folder_writer import FolderWriter
from bridge.jobs import EngineError, JobIds, checked_params
from bridge.worker_handle import WorkerFactory, WorkerHandle, WorkerSpec
from models.generator import get_family

log = logging.getLogger(__name__)


@dataclass
class ContinuationJob:
    """One take of a request: a continuation of a prompt, or (no prompt audio) a new piece from text."""

    id: int
    seed: int
    #: The prompt's file, "capture", or "text" for text-to-music (no prompt).
    source_name: str
    #: The musicgen family's parameters (the prompt audio and rate, the settings), checked; shared
    #: by every take of the request.
    params: dict[str, Any]
    on_progress: Callable[["ContinuationJob", float], None] | None = None
    on_chunk: Callable[["ContinuationJob", int, Clip], None] | None = None
    on_done: Callable[["ContinuationJob", Clip], None] | None = None
    on_error: Callable[["ContinuationJob", str], None] | None = None
    on_cancelled: Callable[["ContinuationJob"], None] | None = None
    chunks: int = 0
    #: The last progress fraction the worker reported (0-1), for status.
    progress: float = 0.0
    sample_rate: int = 0
    queued_at: float = field(default_factory=time.monotonic)
    started_at: float = 0.0
    cancelled: bool = False
    #: The job got its error reply (it gets one, however many of its writes fail).
    failed: bool = False
    #: Chunk writes in flight: the final file is written only after the last chunk's.
    writes: list[asyncio.Future[Any]] = field(default_factory=list)
    #: A length in bars: the result is cut on the bar (or looped) before it is written.
    shape: BarShape | None = None
    #: Which take of its request this is (seed = the request's first seed + take), of how many.
    take: int = 0
    takes: int = 1
    #: The worker has answered for it (its clip, error or cancel): nothing more of it comes.
    ended: bool = False

    @property
    def text_to_music(self) -> bool:
        """A new piece (no prompt audio), not a continuation."""
        return "audio" not in self.params

    @property
    def kind(self) -> str:
        return "musicgen text-to-music" if self.text_to_music else "musicgen continuation"

    @property
    def stem(self) -> str:
        """Its files' name: ``music-j7`` (text-to-music) or ``continue-j7``, chunks ``...-chunk00``."""
        return f"{'music' if self.text_to_music else 'continue'}-j{self.id}"


@dataclass
class ContinuationRender:
    """One request: the jobs of its takes, made together in one render (one batched pass)."""

    jobs: list[ContinuationJob]

    @property
    def params(self) -> dict[str, Any]:
        """The family's parameters, the same for every take."""
        return self.jobs[0].params

    def job(self, job_id: Any) -> ContinuationJob | None:
        return next((j for j in self.jobs if j.id == job_id), None)

    @property
    def unfinished(self) -> list[ContinuationJob]:
        """Its jobs the worker has not answered for yet."""
        return [j for j in self.jobs if not j.ended]


def family_max_takes(family: Any) -> int:
    """How many takes the family makes in one render: its ``max_takes`` (models/musicgen_family.py
    states it), 1 for a family that states none."""
    return int(getattr(family, "max_takes", 1))


class Continuations:
    """One MusicGen worker, one request (all its takes) at a time, the rest waiting in order."""

    def __init__(self, config: ContinuationConfig, spec: WorkerSpec, writer: FolderWriter, job_ids: JobIds, *,
                 workers: WorkerFactory) -> None:
        self.config = config
        self.spec = spec
        self.writer = writer
        self.job_ids = job_ids
        self.workers = workers
        self.family = get_family(spec.family)
        self.state = "stopped"
        self.error = ""
        self.info: dict[str, Any] = {}
        self.memory: dict[str, Any] = {}
        self.waiting: deque[ContinuationRender] = deque()
        self.running: ContinuationRender | None = None
        #: The last take finished (``last`` as a source).
        self.last: Clip | None = None
        #: Jobs (takes) done, failed and cancelled.
        self.done = self.failed = self.cancelled = 0
        self.worker: WorkerHandle | None = None
        self._stopping = False
        #: Writes and finishes under way (asyncio keeps only weak references to tasks).
        self._tasks: set[asyncio.Future[Any]] = set()

    def _spawn(self, coro: Any) -> asyncio.Future[Any]:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    def _jobs(self) -> list[ContinuationJob]:
        """The jobs of the running request and of the waiting ones, in order."""
        groups = ([self.running] if self.running else []) + list(self.waiting)
        return [job for group in groups for job in group.jobs]

    # ------------------------------------------------------------------ worker

    def start(self) -> None:
        self.state = "starting"
        self.worker = self.workers(self.spec, asyncio.get_running_loop(), self._on_message, self._on_exit)
        self.worker.start()

    def stop(self) -> None:
        self._stopping = True
        if self.worker is not None:
            self.worker.stop()
        for job in self._jobs():
            if not job.ended:
                self._fail(job, "the daemon is shutting down")
        self.waiting.clear()
        self.running = None
        self.state = "stopped"

    async def drain(self) -> None:
        """Wait for the chunk and result writes under way (before the folder writer stops)."""
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)

    def _on_exit(self, code: int | None, restart_in: float | None) -> None:
        if self._stopping:
            return
        group, self.running = self.running, None
        why = (self.worker.health().get("last_exit") if self.worker is not None else None) or f"exit code {code}"
        for job in group.unfinished if group is not None else []:
            job.ended = True
            self._fail(job, f"the MusicGen worker died ({why}) during the job; it is being restarted")
        if self.state == "failed" or restart_in is None:
            self.state = "failed"
            self.error = self.error or f"the MusicGen worker ended for good ({why})"
            for waiting in list(self.waiting):
                for job in waiting.jobs:
                    self._fail(job, f"MusicGen failed to load: {self.error}")
            self.waiting.clear()
            return
        self.state = "restarting"
        log.error("MusicGen worker ended (%s); restarting in %.1f s", why, restart_in)

    def _on_message(self, msg: dict[str, Any]) -> None:
        op = msg.get("op")
        if op == "starting":
            self.state = "starting"
            return
        if op == "ready":
            self.state, self.info = "ready", msg["info"]
            self.memory = msg.get("memory") or {}
            log.info("MusicGen ready: %s, %d Hz, %s on %s, text %s, loaded in %s s", self.info.get("kind"),
                     self.info["sample_rate"], self.info["precision"], self.info["device"],
                     "on" if self.info["capabilities"]["text"] else "off", self.info.get("load_s"))
            self._pump()
            return
        if op == "fatal":
            self.state, self.error = "failed", str(msg.get("error"))
            log.error("MusicGen failed to load: %s", self.error)
            return
        if op == "unreachable":  # a remote worker's cluster is gone (its running job gets an error)
            self.state, self.error = "unreachable", str(msg.get("error"))
            log.error("MusicGen: %s", self.error)
            return
        if op == "remote":
            return
        # a task's message: the task id is the job id of one take of the running request
        group = self.running
        job = group.job(msg.get("task")) if group is not None else None
        if job is None or job.ended:
            return
        if op == "progress" and not job.cancelled:
            job.progress = float(msg["fraction"])
            # a job that got its error reply says nothing more, though the worker is still stopping
            if job.on_progress is not None and not job.failed:
                job.on_progress(job, job.progress)
        elif op == "chunk":
            audio = np.asarray(msg["audio"], dtype=np.float32)
            job.sample_rate = int(msg["sample_rate"])
            index = int(msg["index"])
            clip = Clip(audio, job.sample_rate, self._meta(job, msg["meta"], f"{job.stem}-chunk{index:02d}"))
            job.chunks += 1
            job.writes.append(self._spawn(self._write_chunk(job, index, clip)))
        elif op == "clip":
            self.memory = msg.get("memory") or self.memory
            if job.cancelled:
                # cancelled after the worker had made it: as promised, nothing more of it is announced
                self._count_cancelled(job)
            else:
                meta = self._meta(job, msg["meta"], job.stem) | {"chunks": job.chunks}
                clip = Clip(np.asarray(msg["audio"], dtype=np.float32), int(msg["sample_rate"]), meta)
                self._spawn(self._finish(job, clip))
            self._ended(job)
        elif op == "error":
            prefix = "" if msg.get("kind") == "request" else "continuation failed: "
            self._fail(job, f"{prefix}{msg.get('error')}")
            self._ended(job)
        elif op == "cancelled":
            self._count_cancelled(job)
            self._ended(job)

    def _count_cancelled(self, job: ContinuationJob) -> None:
        if not job.failed:  # a job stopped because its writes failed was told so, not "cancelled"
            self.cancelled += 1
            if job.on_cancelled is not None:
                job.on_cancelled(job)

    def _ended(self, job: ContinuationJob) -> None:
        """The worker has answered for ``job``; once it has for every take, the next request starts."""
        job.ended = True
        if self.running is not None and not self.running.unfinished:
            self.running = None
            self._pump()

    # ------------------------------------------------------------------ jobs

    def max_takes(self) -> int:
        """The most takes a request may ask for: continuation.max_takes, within what the family makes."""
        return max(1, min(self.config.max_takes, family_max_takes(self.family)))

    def submit(self, audio: np.ndarray | None, rate: int | None, source_name: str, seconds: float, *,
               description: str = "", seed: int | None = None, shape: BarShape | None = None, takes: int = 1,
               **callbacks: Any) -> tuple[list[ContinuationJob], int]:
        """Queue a request of ``takes`` takes: a continuation of ``audio`` (at ``rate``), or with
        ``audio`` None a new piece from the description (text-to-music; the source is "text").
        Returns one job per take (take i: the next job id, seed ``seed + i``), made together in one
        render, and the request's position (0 = starts now). With ``shape`` the model makes a
        little more than its bars and each take is cut (or looped) to them. The callbacks are
        every take's; a job's ``take`` says which it is."""
        if self.state == "failed":
            raise EngineError(f"MusicGen failed to load: {self.error}")
        limit = self.max_takes()
        if isinstance(takes, bool) or not isinstance(takes, int) or not 1 <= takes <= limit:
            why = ("continuation.max_takes" if limit == self.config.max_takes
                   else "this MusicGen family makes one take at a time" if limit == 1
                   else "what the MusicGen family makes in one pass")
            raise EngineError(f"takes must be 1-{limit} ({why}), got {takes!r}")
        if shape is not None:
            seconds = shape.seconds_to_generate()
            if seconds > self.config.max_seconds:
                raise EngineError(f"{shape.bars:g} bars at {shape.bpm:.1f} BPM need {seconds:.1f} s, more than "
                                  f"continuation.max_seconds ({self.config.max_seconds:g})")
        if not 0 < seconds <= self.config.max_seconds:
            raise EngineError(f"seconds must be 0-{self.config.max_seconds:g} (continuation.max_seconds), "
                              f"got {seconds:g}")
        if len(self.waiting) >= self.config.queue_limit:
            raise EngineError(f"{len(self.waiting)} requests are queued for MusicGen (continuation.queue_limit); "
                              "try later")
        c = self.config
        params: dict[str, Any] = {
            "seconds": float(seconds), "prompt_seconds": c.prompt_seconds, "temperature": c.temperature,
            "top_k": c.top_k, "top_p": c.top_p, "guidance_scale": c.guidance_scale,
            "description": description or None, "chunk_seconds": c.chunk_seconds,
            "first_chunk_seconds": c.first_chunk_seconds, "window_stride_seconds": c.window_stride_seconds}
        if audio is not None:
            if rate is None:
                raise EngineError("a continuation's prompt needs its sample rate")
            params |= {"audio": np.asarray(audio, dtype=np.float32), "rate": int(rate)}
        else:
            source_name = "text"
        params = checked_params(self.family, params, self.info)
        first = int(seed if seed is not None and seed >= 0 else np.random.randint(0, 2**31 - 1 - takes))
        jobs = [ContinuationJob(self.job_ids.next(), first + i, source_name, params, shape=shape, take=i, takes=takes,
                                **callbacks) for i in range(takes)]
        position = len(self.waiting) + (1 if self.running is not None or self.state != "ready" else 0)
        self.waiting.append(ContinuationRender(list(jobs)))
        self._pump()
        return jobs, position

    def cancel(self, job_id: int) -> list[ContinuationJob]:
        """Cancel a job; returns the jobs it stops (none: no such job here). A running take
        stops every take of its request still being made (they share one pass); a waiting take
        leaves its request alone (the others are still made, together)."""
        group = self.running
        job = group.job(job_id) if group is not None else None
        if group is not None and job is not None and not job.ended:
            stopped = group.unfinished
            for other in stopped:
                other.cancelled = True
            if self.worker is not None:
                self.worker.send({"op": "cancel", "task": job_id})
            return stopped
        for waiting in list(self.waiting):
            job = waiting.job(job_id)
            if job is None:
                continue
            waiting.jobs.remove(job)
            if not waiting.jobs:
                self.waiting.remove(waiting)
            job.cancelled = job.ended = True
            self._count_cancelled(job)
            return [job]
        return []

    def protected_paths(self) -> list[Path]:
        """Files the folder sweep must keep: prompts of queued and running jobs, the last result."""
        paths = [Path(j.source_name) for j in self._jobs() if not j.text_to_music]
        if self.last is not None and self.last.path is not None:
            paths.append(self.last.path)
        return paths

    def _pump(self) -> None:
        if self.state != "ready" or self.running is not None or not self.waiting or self._stopping:
            return
        group = self.waiting.popleft()
        self.running = group
        now = time.monotonic()
        for job in group.jobs:
            job.started_at = now
        assert self.worker is not None
        # each take's job id is its task id: one request is one render, its takes one batch
        self.worker.send({"op": "render", "params": group.params,
                          "tasks": [{"task": job.id, "seed": job.seed} for job in group.jobs]})
        # a worker that is gone fails the jobs from _on_exit and is restarted

    def _meta(self, job: ContinuationJob, meta: dict[str, Any], name: str) -> dict[str, Any]:
        """The worker's sidecar plus what only the queue knows: the job, its take, its prompt, the
        file name. ``model`` names the MusicGen source, as continuation sidecars always have (drum
        sidecars name the config's model); chunks carry the job's settings like the whole."""
        settings = {k: v for k, v in job.params.items() if k not in ("audio", "rate") and v is not None}
        return settings | dict(meta) | {
            "instrument": name, "kind": job.kind, "model": self.info.get("source", self.spec.model_path),
            "model_kind": self.info.get("kind"), "job": job.id, "take": job.take, "takes": job.takes,
            "source": job.source_name, "created": time.time()}

    async def _write_chunk(self, job: ContinuationJob, index: int, clip: Clip) -> None:
        if job.failed:
            return
        try:
            await self.writer.save(clip)
        except OSError as exc:
            # the folder refuses (full, read-only): one error reply, and MusicGen stops rather than
            # spend minutes on audio that has nowhere to go (the other takes of the pass with it)
            self._fail(job, f"cannot write chunk {index}: {exc}")
            group = self.running
            if group is not None and job in group.jobs and not job.ended:
                for other in group.unfinished:
                    self._fail(other, f"stopped with take {job.take} (job {job.id}), whose chunk {index} could "
                                      f"not be written: {exc}")
                if self.worker is not None:
                    self.worker.send({"op": "cancel", "task": job.id})
            return
        if job.on_chunk is not None and not job.cancelled:
            job.on_chunk(job, index, clip)

    async def _finish(self, job: ContinuationJob, clip: Clip) -> None:
        await asyncio.gather(*job.writes, return_exceptions=True)
        if job.failed:
            return
        if job.shape is not None:
            try:
                clip = Clip(shape(clip.audio, clip.sample_rate, job.shape), clip.sample_rate,
                            clip.meta | job.shape.meta() | {"generated_s": round(clip.duration_s, 6)})
            except ShapeError as exc:
                self._fail(job, f"cannot cut the continuation to {job.shape.bars:g} bars: {exc}")
                return
        try:
            await self.writer.save(clip)
        except OSError as exc:
            self._fail(job, f"cannot write the {'piece' if job.text_to_music else 'continuation'}: {exc}")
            return
        if job.take == 0 or self.last is None:
            # 'last' is what played: take 0 (the takes' files finish in any order)
            self.last = clip
        self.done += 1
        if job.on_done is not None:
            job.on_done(job, clip)

    def _fail(self, job: ContinuationJob, message: str) -> None:
        if job.failed:
            return
        job.failed = True
        self.failed += 1
        if job.on_error is not None and not job.cancelled:
            job.on_error(job, message)

    def status(self) -> dict[str, Any]:
        group = self.running
        first = (group.unfinished or group.jobs)[0] if group is not None else None
        return {"state": self.state, "error": self.error or None, "info": self.info, "memory": self.memory,
                "device": self.info.get("device", self.spec.device), "device_name": self.info.get("device_name"),
                "pid": self.worker.pid if self.worker else None,
                "restarts": self.worker.restarts if self.worker else 0,
                "health": self.worker.health() if self.worker else {},
                "running": first.id if first is not None else None,
                "running_jobs": [j.id for j in group.jobs] if group is not None else [],
                "progress": round(max(j.progress for j in group.jobs), 4) if group is not None else None,
                "queued": [j.id for waiting in self.waiting for j in waiting.jobs], "done": self.done,
                "failed": self.failed, "cancelled": self.cancelled, "max_takes": self.max_takes()}
