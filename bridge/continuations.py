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
from typing import Any, Callable

import numpy as np

from bridge.child_process import read_child, spawn_child, stop_child
from bridge.clip import Clip
from bridge.config import ContinuationConfig
from bridge.engine import Engine, EngineError
from bridge.model_worker import configure_threads_env
from bridge.musicgen_worker import musicgen_worker_main

log = logging.getLogger(__name__)


@dataclass
class ContinuationJob:
    id: int
    audio: np.ndarray
    rate: int
    source_name: str
    settings: dict[str, Any]
    on_progress: Callable[["ContinuationJob", float], None] | None = None
    on_chunk: Callable[["ContinuationJob", int, Clip], None] | None = None
    on_done: Callable[["ContinuationJob", Clip], None] | None = None
    on_error: Callable[["ContinuationJob", str], None] | None = None
    on_cancelled: Callable[["ContinuationJob"], None] | None = None
    chunks: list[np.ndarray] = field(default_factory=list)
    sample_rate: int = 0
    queued_at: float = field(default_factory=time.monotonic)
    started_at: float = 0.0
    cancelled: bool = False
    #: Chunk writes in flight: the final file is written only after the last chunk's.
    writes: list[asyncio.Future[Any]] = field(default_factory=list)


class Continuations:
    """One MusicGen worker, one job at a time, the rest waiting in order."""

    def __init__(self, config: ContinuationConfig, engine: Engine, threads: int, nice: int) -> None:
        self.config = config
        self.engine = engine
        self.threads = config.threads or threads
        self.nice = nice
        self.state = "stopped"
        self.error = ""
        self.info: dict[str, Any] = {}
        self.waiting: deque[ContinuationJob] = deque()
        self.running: ContinuationJob | None = None
        self.last: Clip | None = None
        self.done = self.failed = self.cancelled = 0
        self._proc: Any = None
        self._conn: Any = None
        self._loop: asyncio.AbstractEventLoop | None = None
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
        self._loop = asyncio.get_running_loop()
        configure_threads_env(self.threads)
        options = {"precision": self.config.precision, "quantize": self.config.quantize, "nice": self.nice}
        self._proc, self._conn = spawn_child(
            musicgen_worker_main,
            (self.config.model, self.config.lm_weights, self.threads, options, logging.getLogger().getEffectiveLevel()),
            name="genbridge-musicgen")
        self.state = "starting"
        proc = self._proc
        read_child(self._conn, proc, self._loop, on_message=lambda m, p=proc: self._on_message(p, m),
                   on_exit=lambda code, p=proc: self._on_exit(p, code), name="musicgen worker")
        log.info("started the MusicGen worker for %s (pid %s, %d threads)", self.config.model, proc.pid, self.threads)

    def stop(self) -> None:
        self._stopping = True
        stop_child(self._proc, self._conn, 3.0)
        for job in ([self.running] if self.running else []) + list(self.waiting):
            self._fail(job, "the daemon is shutting down")
        self.waiting.clear()
        self.running = None
        self.state = "stopped"

    def _on_exit(self, proc: Any, code: int | None) -> None:
        if proc is not self._proc or self._stopping:
            return
        job, self.running = self.running, None
        if job is not None:
            self._fail(job, f"the MusicGen worker died (exit code {code}) during the job; it is being restarted")
        if self.state == "failed":
            for waiting in list(self.waiting):
                self._fail(waiting, f"MusicGen failed to load: {self.error}")
            self.waiting.clear()
            return
        log.error("MusicGen worker exited (code %s); restarting", code)
        self.start()

    def _on_message(self, proc: Any, msg: dict[str, Any]) -> None:
        if proc is not self._proc:
            return
        op = msg.get("op")
        if op == "ready":
            self.state, self.info = "ready", msg["info"]
            log.info("MusicGen ready: %s, %d Hz, %s, text %s, loaded in %s s", self.info["kind"],
                     self.info["sample_rate"], self.info["precision"], "on" if self.info["text"] else "off",
                     self.info["load_s"])
            self._pump()
            return
        if op == "fatal":
            self.state, self.error = "failed", str(msg.get("error"))
            log.error("MusicGen failed to load: %s", self.error)
            return
        job = self.running
        if job is None or msg.get("job") != job.id:
            return
        if op == "progress" and job.on_progress is not None and not job.cancelled:
            job.on_progress(job, float(msg["fraction"]))
        elif op == "chunk":
            audio = np.asarray(msg["audio"], dtype=np.float32)
            job.chunks.append(audio)
            job.sample_rate = int(msg["sample_rate"])
            index = int(msg["index"])
            meta = self._meta(job, f"continue-j{job.id}-chunk{index:02d}") | {"chunk": index}
            clip = Clip(audio, job.sample_rate, meta)
            job.writes.append(self._spawn(self._write_chunk(job, index, clip)))
        elif op == "done":
            self.running = None
            self._spawn(self._finish(job, float(msg.get("generation_s", 0.0))))
            self._pump()
        elif op == "error":
            self.running = None
            self._fail(job, f"continuation failed: {msg.get('error')}")
            self._pump()
        elif op == "cancelled":
            self.running = None
            self.cancelled += 1
            if job.on_cancelled is not None:
                job.on_cancelled(job)
            self._pump()

    # ------------------------------------------------------------------ jobs

    def submit(self, audio: np.ndarray, rate: int, source_name: str, seconds: float, *, description: str = "",
               seed: int | None = None, **callbacks: Any) -> tuple[ContinuationJob, int]:
        """Queue a continuation; returns the job and its position (0 = starts now)."""
        if self.state == "failed":
            raise EngineError(f"MusicGen failed to load: {self.error}")
        if not 0 < seconds <= self.config.max_seconds:
            raise EngineError(f"seconds must be 0-{self.config.max_seconds:g} (continuation.max_seconds), "
                              f"got {seconds:g}")
        if len(self.waiting) >= self.config.queue_limit:
            raise EngineError(f"{len(self.waiting)} continuations are queued (continuation.queue_limit); try later")
        if description and self.info and not self.info.get("text"):
            raise EngineError("this model's text encoder is not available offline: leave the description empty")
        c = self.config
        settings = {"seconds": float(seconds), "prompt_seconds": c.prompt_seconds, "temperature": c.temperature,
                    "top_k": c.top_k, "top_p": c.top_p, "guidance_scale": c.guidance_scale,
                    "seed": int(seed if seed is not None and seed >= 0 else np.random.randint(0, 2**31 - 1)),
                    "description": description or None, "chunk_seconds": c.chunk_seconds}
        job = ContinuationJob(self.engine.next_job_id(), np.asarray(audio, dtype=np.float32), int(rate), source_name,
                              settings, **callbacks)
        position = len(self.waiting) + (1 if self.running is not None or self.state != "ready" else 0)
        self.waiting.append(job)
        self._pump()
        return job, position

    def cancel(self, job_id: int) -> ContinuationJob | None:
        """Cancel a queued or running job; None if no such job is here."""
        if self.running is not None and self.running.id == job_id:
            self.running.cancelled = True
            if self._conn is not None:
                try:
                    self._conn.send({"op": "cancel", "job": job_id})
                except (OSError, ValueError):
                    pass
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

    def protected_paths(self) -> list:
        """Files the folder sweep must keep: sources of queued and running jobs, the last result."""
        from pathlib import Path

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
        try:
            self._conn.send({"op": "continue", "job": job.id, "audio": job.audio, "rate": job.rate,
                             "settings": job.settings})
        except (OSError, ValueError):
            pass  # the worker is gone; _on_exit fails the job and restarts it

    def _meta(self, job: ContinuationJob, name: str) -> dict[str, Any]:
        return {"instrument": name, "kind": "musicgen continuation", "job": job.id, "model": self.info.get("source"),
                "model_kind": self.info.get("kind"), "source": job.source_name, "created": time.time(),
                **{k: v for k, v in job.settings.items() if v is not None}}

    async def _write_chunk(self, job: ContinuationJob, index: int, clip: Clip) -> None:
        try:
            await self.engine.save_clip(clip)
        except OSError as exc:
            self._fail(job, f"cannot write chunk {index}: {exc}")
            return
        if job.on_chunk is not None and not job.cancelled:
            job.on_chunk(job, index, clip)

    async def _finish(self, job: ContinuationJob, generation_s: float) -> None:
        await asyncio.gather(*job.writes, return_exceptions=True)
        audio = np.concatenate(job.chunks, axis=1)
        clip = Clip(audio, job.sample_rate, self._meta(job, f"continue-j{job.id}") |
                    {"chunks": len(job.chunks), "generation_s": generation_s,
                     "realtime_factor": round(audio.shape[1] / job.sample_rate / max(generation_s, 1e-9), 3)})
        try:
            await self.engine.save_clip(clip)
        except OSError as exc:
            self._fail(job, f"cannot write the continuation: {exc}")
            return
        self.last = clip
        self.done += 1
        if job.on_done is not None:
            job.on_done(job, clip)

    def _fail(self, job: ContinuationJob, message: str) -> None:
        self.failed += 1
        if job.on_error is not None and not job.cancelled:
            job.on_error(job, message)

    def status(self) -> dict[str, Any]:
        return {"state": self.state, "error": self.error or None, "info": self.info,
                "running": self.running.id if self.running else None,
                "queued": [j.id for j in self.waiting], "done": self.done, "failed": self.failed,
                "cancelled": self.cancelled}
