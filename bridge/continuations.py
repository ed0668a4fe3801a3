"""Continuation jobs: a queue in front of the MusicGen worker, chunks and results to the folder.

Why this module exists: a continuation is a long job with a life of its own - queued behind
others, reporting progress, handing out chunks, cancellable - unlike a one-shot. This keeps that
life cycle (and the worker process that does the work) out of the drum engine, which it shares
only for job ids and the folder writer. It knows no transport: callbacks report to whoever asked.
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
    id: int
    seed: int
    source_name: str
    #: The musicgen family's parameters (the prompt audio and rate, the settings), checked.
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


class Continuations:
    """One MusicGen worker, one job at a time, the rest waiting in order."""

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
        self.waiting: deque[ContinuationJob] = deque()
        self.running: ContinuationJob | None = None
        self.last: Clip | None = None
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

    # ------------------------------------------------------------------ worker

    def start(self) -> None:
        self.state = "starting"
        self.worker = self.workers(self.spec, asyncio.get_running_loop(), self._on_message, self._on_exit)
        self.worker.start()

    def stop(self) -> None:
        self._stopping = True
        if self.worker is not None:
            self.worker.stop()
        for job in ([self.running] if self.running else []) + list(self.waiting):
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
        job, self.running = self.running, None
        why = (self.worker.health().get("last_exit") if self.worker is not None else None) or f"exit code {code}"
        if job is not None:
            self._fail(job, f"the MusicGen worker died ({why}) during the job; it is being restarted")
        if self.state == "failed" or restart_in is None:
            self.state = "failed"
            self.error = self.error or f"the MusicGen worker ended for good ({why})"
            for waiting in list(self.waiting):
                self._fail(waiting, f"MusicGen failed to load: {self.error}")
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
        job = self.running
        if job is None or msg.get("task") != job.id:
            return
        if op == "progress" and not job.cancelled:
            job.progress = float(msg["fraction"])
            if job.on_progress is not None:
                job.on_progress(job, job.progress)
        elif op == "chunk":
            audio = np.asarray(msg["audio"], dtype=np.float32)
            job.sample_rate = int(msg["sample_rate"])
            index = int(msg["index"])
            clip = Clip(audio, job.sample_rate, self._meta(job, msg["meta"], f"continue-j{job.id}-chunk{index:02d}"))
            job.chunks += 1
            job.writes.append(self._spawn(self._write_chunk(job, index, clip)))
        elif op == "clip":
            self.running = None
            self.memory = msg.get("memory") or self.memory
            meta = self._meta(job, msg["meta"], f"continue-j{job.id}") | {"chunks": job.chunks}
            clip = Clip(np.asarray(msg["audio"], dtype=np.float32), int(msg["sample_rate"]), meta)
            self._spawn(self._finish(job, clip))
            self._pump()
        elif op == "error":
            self.running = None
            prefix = "" if msg.get("kind") == "request" else "continuation failed: "
            self._fail(job, f"{prefix}{msg.get('error')}")
            self._pump()
        elif op == "cancelled":
            self.running = None
            if not job.failed:  # a job stopped because its writes failed was told so, not "cancelled"
                self.cancelled += 1
                if job.on_cancelled is not None:
                    job.on_cancelled(job)
            self._pump()

    # ------------------------------------------------------------------ jobs

    def submit(self, audio: np.ndarray, rate: int, source_name: str, seconds: float, *, description: str = "",
               seed: int | None = None, shape: BarShape | None = None,
               **callbacks: Any) -> tuple[ContinuationJob, int]:
        """Queue a continuation; returns the job and its position (0 = starts now). With ``shape``
        the model makes a little more than its bars and the result is cut (or looped) to them."""
        if self.state == "failed":
            raise EngineError(f"MusicGen failed to load: {self.error}")
        if shape is not None:
            seconds = shape.seconds_to_generate()
            if seconds > self.config.max_seconds:
                raise EngineError(f"{shape.bars:g} bars at {shape.bpm:.1f} BPM need {seconds:.1f} s, more than "
                                  f"continuation.max_seconds ({self.config.max_seconds:g})")
        if not 0 < seconds <= self.config.max_seconds:
            raise EngineError(f"seconds must be 0-{self.config.max_seconds:g} (continuation.max_seconds), "
                              f"got {seconds:g}")
        if len(self.waiting) >= self.config.queue_limit:
            raise EngineError(f"{len(self.waiting)} continuations are queued (continuation.queue_limit); try later")
        c = self.config
        params = {"audio": np.asarray(audio, dtype=np.float32), "rate": int(rate), "seconds": float(seconds),
                  "prompt_seconds": c.prompt_seconds, "temperature": c.temperature, "top_k": c.top_k,
                  "top_p": c.top_p, "guidance_scale": c.guidance_scale, "description": description or None,
                  "chunk_seconds": c.chunk_seconds}
        params = checked_params(self.family, params, self.info)
        seed = int(seed if seed is not None and seed >= 0 else np.random.randint(0, 2**31 - 1))
        job = ContinuationJob(self.job_ids.next(), seed, source_name, params, shape=shape, **callbacks)
        position = len(self.waiting) + (1 if self.running is not None or self.state != "ready" else 0)
        self.waiting.append(job)
        self._pump()
        return job, position

    def cancel(self, job_id: int) -> ContinuationJob | None:
        """Cancel a queued or running job; None if no such job is here."""
        if self.running is not None and self.running.id == job_id:
            self.running.cancelled = True
            if self.worker is not None:
                self.worker.send({"op": "cancel", "task": job_id})
            return self.running
        for job in list(self.waiting):
            if job.id == job_id:
                self.waiting.remove(job)
                job.cancelled = True
                self.cancelled += 1
                if job.on_cancelled is not None:
                    job.on_cancelled(job)
                return job
        return None

    def protected_paths(self) -> list[Path]:
        """Files the folder sweep must keep: sources of queued and running jobs, the last result."""
        paths = [Path(j.source_name) for j in ([self.running] if self.running else []) + list(self.waiting)]
        if self.last is not None and self.last.path is not None:
            paths.append(self.last.path)
        return paths

    def _pump(self) -> None:
        if self.state != "ready" or self.running is not None or not self.waiting or self._stopping:
            return
        job = self.waiting.popleft()
        self.running = job
        job.started_at = time.monotonic()
        assert self.worker is not None
        # the job id is the task id: one continuation is one render
        self.worker.send({"op": "render", "params": job.params, "tasks": [{"task": job.id, "seed": job.seed}]})
        # a worker that is gone fails the job from _on_exit and is restarted

    def _meta(self, job: ContinuationJob, meta: dict[str, Any], name: str) -> dict[str, Any]:
        """The worker's sidecar plus what only the queue knows: the job, its prompt, the file name.
        ``model`` names the MusicGen source, as continuation sidecars always have (drum sidecars
        name the config's model); chunks carry the job's settings like the whole."""
        settings = {k: v for k, v in job.params.items() if k not in ("audio", "rate") and v is not None}
        return settings | dict(meta) | {
            "instrument": name, "kind": "musicgen continuation", "model": self.info.get("source", self.spec.model_path),
            "model_kind": self.info.get("kind"), "job": job.id, "source": job.source_name, "created": time.time()}

    async def _write_chunk(self, job: ContinuationJob, index: int, clip: Clip) -> None:
        if job.failed:
            return
        try:
            await self.writer.save(clip)
        except OSError as exc:
            # the folder refuses (full, read-only): one error reply, and MusicGen stops rather than
            # spend minutes on audio that has nowhere to go
            self._fail(job, f"cannot write chunk {index}: {exc}")
            if self.running is job and self.worker is not None:
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
            self._fail(job, f"cannot write the continuation: {exc}")
            return
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
        return {"state": self.state, "error": self.error or None, "info": self.info, "memory": self.memory,
                "device": self.info.get("device", self.spec.device), "device_name": self.info.get("device_name"),
                "pid": self.worker.pid if self.worker else None,
                "restarts": self.worker.restarts if self.worker else 0,
                "health": self.worker.health() if self.worker else {},
                "running": self.running.id if self.running else None,
                "progress": round(self.running.progress, 4) if self.running else None,
                "queued": [j.id for j in self.waiting], "done": self.done, "failed": self.failed,
                "cancelled": self.cancelled}
