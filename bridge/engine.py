"""The engine: pools of fresh clips, the model workers that fill them, and the jobs they serve.

It knows no transport and no model family: OSC and MIDI reach it through the service
(``play``/``generate``/``vary``/``cancel``/``select_kit``/``status``) and get clips, paths and
:class:`EngineError` back; models are workers it was handed a factory for, speaking the worker
protocol of :mod:`bridge.model_worker`, with parameters it passes through and lets the family
check (:meth:`models.generator.Family.check_params`). What to render next is decided by
:mod:`bridge.scheduling`; files are written by the one :class:`~bridge.folder_writer.FolderWriter`.
Everything here runs on the asyncio loop thread. See docs/ARCHITECTURE.md, "The flow of a request".
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import random
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np

from bridge import __version__
from bridge.clip import Clip
from bridge.config import Config
from bridge.folder_writer import FolderWriter
from bridge.jobs import Counters, EngineError, Job, JobIds, Priority, Task, checked_params
from bridge.pool_restore import restore_pools
from bridge.pools import Band, ClipPool
from bridge.scheduling import next_dispatch
from bridge.sinks.folder import FolderError, PooledFileGone
from bridge.worker_handle import WorkerFactory, WorkerHandle, WorkerSpec, drum_worker_spec
from models.generator import get_family

log = logging.getLogger(__name__)

MAX_SEED = 2**31 - 1
#: A refill the folder refused (full disk, read-only) is offered again after this, doubling to the max.
WRITE_RETRY_S = 0.25
WRITE_RETRY_MAX_S = 2.0

__all__ = ["Engine", "EngineError", "Job", "PlayResult", "Priority"]


@dataclass
class PlayResult:
    instrument: str
    path: Path
    fresh: bool
    velocity: float
    clip: Clip


@dataclass
class ModelSlot:
    """One model's worker as the engine sees it: its state, what it makes now, what waits for it."""

    name: str
    spec: WorkerSpec
    worker: WorkerHandle | None = None
    state: str = "stopped"  # starting, ready, restarting, failed, stopped, unreachable (a remote worker)
    info: dict[str, Any] = field(default_factory=dict)
    memory: dict[str, Any] = field(default_factory=dict)
    error: str = ""
    #: Tasks the worker is making now (one, or a batch of refills), by task id.
    running: dict[int, Task] = field(default_factory=dict)
    queue: list[Job] = field(default_factory=list)
    #: Refills that failed in a row, the largest refill batch still tried (halved after a batch
    #: the worker refused, e.g. out of GPU memory) and the pending retry: a failing refill backs
    #: off instead of being asked again at once, forever.
    refill_failures: int = 0
    refill_limit: int = 0
    #: Clips in the render now running (running shrinks as its clips come back).
    dispatched: int = 0
    #: Clips its workers made since the daemon started (a restarted worker is working when it grows).
    made: int = 0
    refill_retry: asyncio.TimerHandle | None = None
    #: A remote worker's report (Ray: the cluster, its actors, who shares them); {} for local ones.
    remote: dict[str, Any] = field(default_factory=dict)


class Engine:
    def __init__(self, config: Config, writer: FolderWriter, *, workers: WorkerFactory,
                 job_ids: JobIds | None = None, counters: Counters | None = None,
                 prepare: Callable[[Clip], None] | None = None) -> None:
        self.config = config
        self.writer = writer
        self.sink = writer.sink
        self.workers = workers
        self.job_ids = job_ids or JobIds()
        self.counters = counters or Counters()
        #: Called on the writer thread for every clip that may be played (the audio handle
        #: resamples it to the device rate there, once, not in the callback).
        self.prepare = prepare
        self.started_at = time.time()
        # laid out in the configured velocity bands until each model says whether it is conditioned
        # on velocity (its ready message): clips restored from an earlier run keep their bands
        self.pools: dict[str, ClipPool] = {
            name: ClipPool(name, inst.pool, self._configured_bands()) for name, inst in config.instruments.items()
        }
        self.waiters: dict[str, deque[asyncio.Future[Clip]]] = {name: deque() for name in config.instruments}
        # Every model an instrument or a kit names gets a warm worker: switching kits mid-set
        # must not wait for a model to load.
        kit_models = {m for kit in config.kits.values() for m in kit.values()}
        self.slots: dict[str, ModelSlot] = {
            name: ModelSlot(name, drum_worker_spec(config, name))
            for name in sorted({inst.model for inst in config.instruments.values()} | kit_models)
        }
        self.kit: str | None = None
        self.jobs: dict[int, Job] = {}
        self._task_ids = itertools.count(1)
        self._rng = random.Random()
        self._background: set[asyncio.Task[Any]] = set()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stopping = False

    # ------------------------------------------------------------------ lifecycle

    async def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self.sink.open()

        signatures = {name: get_family(slot.spec.family).signature(slot.spec.model_path)
                      for name, slot in self.slots.items()}  # one walk of each model's files

        def model_of(instrument: str) -> tuple[str, str]:
            model = self.config.instruments[instrument].model
            return model, signatures[model]

        # restore first: a worker that started refilling meanwhile would overfill the pools
        await self.writer.run(restore_pools, self.sink, self.pools, model_of, self.prepare)
        for slot in self.slots.values():
            self._start_worker(slot)

    def _start_worker(self, slot: ModelSlot) -> None:
        assert self._loop is not None
        slot.state = "starting"
        slot.worker = self.workers(slot.spec, self._loop, lambda msg, s=slot: self._on_message(s, msg),
                                   lambda code, restart_in, s=slot: self._on_exit(s, code, restart_in))
        slot.worker.start()

    async def stop(self) -> None:
        """Stop workers, fail what is pending, and finish the writes already started."""
        self._stopping = True
        for slot in self.slots.values():
            if slot.refill_retry is not None:
                slot.refill_retry.cancel()
            if slot.worker is not None:
                slot.worker.stop()
            slot.state = "stopped"
            self._fail_slot_jobs(slot, "the daemon is shutting down")
        for waiters in self.waiters.values():
            for fut in waiters:
                if not fut.done():
                    fut.set_exception(EngineError("the daemon is shutting down"))
        if self._background:
            await asyncio.gather(*self._background, return_exceptions=True)

    def _configured_bands(self) -> list[float | None]:
        """engine.velocity_bands as velocities 0-1 ([None]: one pool at the model's default)."""
        return [v / 127 for v in sorted(self.config.engine.velocity_bands)] or [None]

    def _band_layout(self, instrument: str) -> tuple[list[float | None], float | None]:
        """The bands an instrument's pool has with the model it plays now, and the velocity that
        counts as the model's default: the configured bands for a model conditioned on velocity
        (``capabilities.velocity``), one pool for any other."""
        info = self.slots[self.config.instruments[instrument].model].info
        if not info.get("capabilities", {}).get("velocity"):
            return [None], None
        default = info.get("details", {}).get("default_velocity")
        return self._configured_bands(), float(default) if isinstance(default, (int, float)) else None

    def _lay_out(self, instrument: str) -> None:
        self.pools[instrument].set_bands(*self._band_layout(instrument))

    def lacks(self, instrument: str) -> str:
        """Why the instrument's model cannot make it ("" when it can): a class-conditioned model
        makes only its classes, and asking it for another fails every refill it is batched with."""
        slot = self.slots[self.config.instruments[instrument].model]
        classes = slot.info.get("classes")
        if classes and instrument not in classes:
            return (f"model {slot.name!r} makes {', '.join(classes)}, not {instrument!r}: give "
                    f"instruments.{instrument} another model, or leave it out of [instruments]")
        return ""

    def protected_paths(self) -> list[Path]:
        """Files the folder sweep must keep: the clip each dry pool would replay."""
        return [p.last_played.path for p in self.pools.values()
                if p.last_played is not None and p.last_played.path is not None]

    # ------------------------------------------------------------------ requests

    def _instrument(self, name: str) -> tuple[ClipPool, ModelSlot]:
        pool = self.pools.get(name)
        if pool is None:
            raise EngineError(f"unknown instrument {name!r} (known: {', '.join(self.pools)})")
        slot = self.slots[self.config.instruments[name].model]
        if slot.state == "failed":
            raise EngineError(f"model {slot.name!r} for {name} failed to load: {slot.error}")
        lacking = self.lacks(name)
        if lacking:
            raise EngineError(lacking)
        return pool, slot

    def _generating_slot(self, instrument: str) -> ModelSlot:
        """The slot that makes a new clip now: not one whose remote cluster is unreachable (a
        request queued there would wait for the network; the musician is told why at once)."""
        _, slot = self._instrument(instrument)
        if slot.state == "unreachable":
            raise EngineError(f"model {slot.name!r} for {instrument} cannot generate now: {slot.error}")
        return slot

    async def play(self, instrument: str, velocity: float = 1.0) -> PlayResult:
        """Hand out a never-played clip - from the velocity band nearest ``velocity`` (0-1) when the
        pool has bands, else the nearest band holding one; on a dry pool apply the configured policy."""
        pool, slot = self._instrument(instrument)
        before = pool.last_played
        clip = pool.take_fresh(velocity)
        if clip is not None:
            path = await self._publish(pool, clip, before)
            self._pump(slot)
            return PlayResult(instrument, path, True, velocity, clip)
        if self.config.engine.dry_policy == "replay":
            last = pool.take_replay()
            if last is not None and last.path is not None:  # the pad still sounds, whatever the disk does
                return PlayResult(instrument, await self._replayable(last), False, velocity, last)
        self._refuse_if_unstorable(instrument)
        # "wait" policy, or a cold start with nothing to replay: the next clip is ours.
        fut: asyncio.Future[Clip] = asyncio.get_running_loop().create_future()
        self.waiters[instrument].append(fut)
        self._enqueue(slot, Priority.PLAY_WAIT, instrument, [self._random_seed()], self.params_of(instrument),
                      velocity=pool.band_for(velocity).velocity)
        try:
            clip = await asyncio.wait_for(fut, self.config.engine.wait_timeout_s)
        except asyncio.TimeoutError:
            raise EngineError(
                f"no {instrument} clip ready within {self.config.engine.wait_timeout_s:g} s "
                f"(model {slot.name!r} is {slot.state})") from None
        pool.last_played = clip
        pool.stats.served_waited += 1
        assert clip.path is not None
        return PlayResult(instrument, clip.path, True, velocity, clip)

    def params_of(self, instrument: str, overrides: dict[str, Any] | None = None) -> dict[str, Any]:
        """The parameters an instrument's clips are rendered with: the config's (which a MIDI CC
        may change mid-set), then a request's own where it gives one (0 and "" give none)."""
        return self.config.instrument_params(instrument) | {k: v for k, v in (overrides or {}).items() if v}

    def _checked(self, slot: ModelSlot, params: dict[str, Any]) -> dict[str, Any]:
        return checked_params(get_family(slot.spec.family), params, slot.info)

    def generate(self, instrument: str, count: int = 1, seed: int | None = None,
                 params: dict[str, Any] | None = None, *, velocity: float | None = None,
                 on_clip: Callable[[Clip], None] | None = None,
                 on_done: Callable[[Job], None] | None = None,
                 on_error: Callable[[Job, str], None] | None = None) -> Job:
        """Queue ``count`` new clips (seeds seed, seed+1, ...) at ``velocity`` (0-1; None: the
        model's default); callbacks report each one."""
        slot = self._generating_slot(instrument)
        limit = self.config.server.max_count
        if not 1 <= count <= limit:
            raise EngineError(f"count must be 1-{limit} (server.max_count), got {count}")
        if seed is None:
            seeds = [self._random_seed() for _ in range(count)]
        else:
            if not 0 <= seed <= MAX_SEED - count:
                raise EngineError(f"seed must be 0-{MAX_SEED - count} for count {count}, got {seed}")
            seeds = [seed + k for k in range(count)]
        checked = self._checked(slot, self.params_of(instrument, params))
        return self._enqueue(slot, Priority.GENERATE, instrument, seeds, checked, velocity=_velocity(velocity),
                             on_clip=on_clip, on_done=on_done, on_error=on_error)

    def vary(self, instrument: str, source: str, strength: float, seed: int | None = None,
             params: dict[str, Any] | None = None, *, velocity: float | None = None,
             on_clip: Callable[[Clip], None] | None = None,
             on_done: Callable[[Job], None] | None = None,
             on_error: Callable[[Job, str], None] | None = None) -> Job:
        """Queue a variation of ``source`` ("last": the instrument's last played clip; else a
        file inside the shared folder) at ``strength`` (0 = the source, 1 = a new clip), denoised
        at ``velocity`` (0-1; None: the model's default)."""
        from bridge.sources import SourceError, fit_source, read_source, resolve_inside

        pool, slot = self._instrument(instrument)
        if slot.state != "ready" or not slot.info:
            raise EngineError(f"model {slot.name!r} is {slot.state}; try again when it is ready")
        if not slot.info.get("capabilities", {}).get("variations"):
            raise EngineError(f"model {slot.name!r} ({slot.info.get('family')}) makes no variations")
        shape = {"sample_rate": int(slot.info["sample_rate"]), "channels": int(slot.info["channels"]),
                 "length": int(slot.info["length"])}
        if seed is None:
            seed = self._random_seed()
        elif not 0 <= seed <= MAX_SEED:
            raise EngineError(f"seed must be 0-{MAX_SEED}, got {seed}")
        checked = self._checked(slot, self.params_of(instrument, params) | {"strength": strength})
        try:
            if source == "last":
                last = pool.last_played
                if last is None:
                    raise SourceError(f"no {instrument} clip has been played yet ('last' needs one)")
                audio = fit_source(last.audio, last.sample_rate, **shape)
                name = str(last.path or "last")
            else:
                path = resolve_inside(self.sink.root, source)
                audio = read_source(path, **shape)
                name = str(path)
        except SourceError as exc:
            raise EngineError(str(exc)) from None
        return self._enqueue(slot, Priority.GENERATE, instrument, [seed],
                             checked | {"source": audio, "source_name": name}, velocity=_velocity(velocity),
                             on_clip=on_clip, on_done=on_done, on_error=on_error, kind="vary")

    def cancel(self, job_id: int) -> Job:
        job = self.jobs.get(job_id)
        if job is None or job.priority != Priority.GENERATE:
            raise EngineError(f"no running generate job {job_id}")
        job.cancelled = True
        job.seeds.clear()
        slot = self.slots[self.config.instruments[job.instrument].model]
        for task in slot.running.values():
            if task.job is job and slot.worker is not None:
                slot.worker.send({"op": "cancel", "task": task.id})
        self._maybe_finish(job)
        return job

    def select_kit(self, kit: str) -> dict[str, str]:
        """Point instruments at the kit's models. Their pools are emptied (those clips are the
        old model's) and refill from the new worker; returns instrument -> model."""
        mapping = self.config.kits.get(kit)
        if mapping is None:
            known = ", ".join(self.config.kits) or "none configured"
            raise EngineError(f"unknown kit {kit!r} (kits: {known})")
        for instrument, model in mapping.items():
            inst = self.config.instruments[instrument]
            if inst.model == model:
                continue
            inst.model = model
            pool = self.pools[instrument]
            pool.clear()
            self._lay_out(instrument)  # the new model's bands (one pool if it ignores velocity)
            self.sink.discard_pool_files(instrument)
            log.info("kit %s: %s now plays model %s", kit, instrument, model)
        self.kit = kit
        for slot in self.slots.values():
            self._pump(slot)
        return dict(mapping)

    def _enqueue(self, slot: ModelSlot, priority: Priority, instrument: str, seeds: list[int],
                 params: dict[str, Any], velocity: float | None = None, **callbacks: Any) -> Job:
        if len(slot.queue) >= self.config.engine.queue_limit:
            self.counters.add("refused_busy")
            raise EngineError(f"model {slot.name!r} is busy: {len(slot.queue)} requests queued "
                              f"(engine.queue_limit)")
        job = Job(self.job_ids.next(), priority, instrument, deque(seeds), params, len(seeds), velocity=velocity,
                  **callbacks)
        self.jobs[job.id] = job
        slot.queue.append(job)
        self._pump(slot)
        return job

    def _random_seed(self) -> int:
        return self._rng.randint(0, MAX_SEED)

    # ------------------------------------------------------------------ scheduling

    def _pump(self, slot: ModelSlot) -> None:
        """Give an idle, ready worker its next clip (or batch of refills) to make."""
        if slot.state != "ready" or slot.running or self._stopping:
            return
        # refills wait out a backoff after failures; plays and jobs never do
        pools = ([] if slot.refill_retry is not None else
                 [p for name, p in self.pools.items()
                  if self.config.instruments[name].model == slot.name and not self.lacks(name)])
        batch = self.config.engine.refill_batch if slot.info.get("capabilities", {}).get("batches", True) else 1
        dispatch = next_dispatch(slot.queue, pools, self.params_of, min(batch, slot.refill_limit or batch))
        job = dispatch.job if dispatch is not None else None
        if job is not None:
            tasks = [Task(next(self._task_ids), job.instrument, job.seeds.popleft(), job, job.velocity)]
            job.running += 1
        slot.queue = [j for j in slot.queue if j.seeds and not j.cancelled]
        if dispatch is None:
            return
        if job is None:
            tasks = [Task(next(self._task_ids), inst, self._random_seed(), None, band.velocity, band)
                     for inst, band in zip(dispatch.instruments, dispatch.bands, strict=True)]
            for task in tasks:
                assert task.band is not None
                task.band.in_flight += 1
        slot.running = {t.id: t for t in tasks}
        slot.dispatched = len(tasks)
        assert slot.worker is not None
        slot.worker.send({"op": "render", "params": dispatch.params,
                          "tasks": [{"task": t.id, "seed": t.seed, "instrument": t.instrument, "velocity": t.velocity}
                                    for t in tasks]})

    def _task_over(self, slot: ModelSlot, task_id: Any, keep_reservation: bool = False) -> Task | None:
        """Clear the worker's current task. A refill's place in the pool stays reserved
        (``in_flight``) when its clip is still on its way into the pool, so the scheduler does
        not ask for a replacement in the meantime."""
        task = slot.running.pop(task_id, None) if isinstance(task_id, int) else None
        if task is None:
            return None
        if task.job is not None:
            task.job.running -= 1
        elif not keep_reservation and task.band is not None:
            task.band.in_flight -= 1
        return task

    def _on_message(self, slot: ModelSlot, msg: dict[str, Any]) -> None:
        op = msg.get("op")
        if op == "starting":
            slot.state = "starting"
        elif op == "ready":
            slot.state, slot.info, slot.error = "ready", msg["info"], ""
            slot.memory = msg.get("memory") or {}
            log.info("model %r ready: %s", slot.name, describe_model(slot.info))
            for name, inst in self.config.instruments.items():
                if inst.model == slot.name:
                    self._lay_out(name)
                    if self.lacks(name):
                        log.error("instrument %s cannot play: %s", name, self.lacks(name))
        elif op == "unreachable":  # a remote worker's cluster is gone: its pools replay until it is back
            slot.state, slot.error = "unreachable", str(msg.get("error"))
            log.error("model %r: %s", slot.name, slot.error)
            self._fail_slot_jobs(slot, f"model {slot.name!r} cannot generate now: {slot.error}")
        elif op == "remote":  # where a remote worker's model runs, and who shares it
            slot.remote = {k: v for k, v in msg.items() if k != "op"}
        elif op == "fatal":
            slot.state, slot.error = "failed", str(msg.get("error"))
            log.error("model %r failed to load: %s", slot.name, slot.error)
            self._fail_slot_jobs(slot, f"model {slot.name!r} failed to load: {slot.error}")
        elif op == "clip":
            slot.memory = msg.get("memory") or slot.memory
            slot.made += 1
            task = self._task_over(slot, msg.get("task"), keep_reservation=True)
            if task is not None and task.job is None:
                slot.refill_failures = 0
            if task is not None:
                meta = dict(msg["meta"], instrument=task.instrument, created=time.time())
                clip = Clip(np.asarray(msg["audio"], dtype=np.float32), int(msg["sample_rate"]), meta)
                self._spawn(self._deliver(task, clip))
        elif op == "error":
            task = self._task_over(slot, msg.get("task"))
            if task is not None and task.job is not None:
                prefix = "" if msg.get("kind") == "request" else "generation failed: "
                self._fail_job(task.job, f"{prefix}{msg.get('error')}")
            elif task is not None:
                self._refill_failed(slot, msg)
        elif op == "cancelled":
            task = self._task_over(slot, msg.get("task"))
            self.counters.add("tasks_cancelled", task is not None)
            if task is not None and task.job is not None:
                self._maybe_finish(task.job)
        self._pump(slot)

    def _on_exit(self, slot: ModelSlot, exitcode: int | None, restart_in: float | None) -> None:
        if self._stopping or slot.state == "stopped":
            return
        health = slot.worker.health() if slot.worker is not None else {}
        why = health.get("last_exit") or f"exit code {exitcode}"
        for task in list(slot.running.values()):
            self._task_over(slot, task.id)
            if task.job is not None:
                self._fail_job(task.job, f"model worker {slot.name!r} died ({why}) while generating; "
                                         f"it is being restarted")
        if slot.state == "failed":
            return  # a load failure: restarting would fail the same way
        if restart_in is None:  # gone for good without saying why (a remote worker's host went away)
            slot.state, slot.error = "failed", slot.error or f"the worker ended for good ({why})"
            self._fail_slot_jobs(slot, f"model {slot.name!r} is gone: {slot.error}")
            return
        kind = health.get("last_exit_kind") or "exit"
        self.counters.add({"hung": "worker_hangs", "memory": "worker_memory_restarts"}.get(kind, "worker_crashes"))
        slot.state = "restarting"
        log.error("worker for model %r ended (%s); restarting in %.1f s", slot.name, why, restart_in)

    def _refill_failed(self, slot: ModelSlot, msg: dict[str, Any]) -> None:
        """Back off before the next refill (0.5 s doubling to 30 s); a batch the worker refused
        as a request (out of GPU memory) halves the refill batch for this model."""
        if slot.running:
            return  # the rest of this batch fails with it: count the batch once, at its last clip
        slot.refill_failures += 1
        log.error("refill of model %r (%d clips) failed: %s", slot.name, slot.dispatched, msg.get("error"))
        if msg.get("kind") == "request" and slot.dispatched > 1:
            slot.refill_limit = max(1, slot.dispatched // 2)
            log.warning("model %r: refill batch lowered to %d", slot.name, slot.refill_limit)
        delay = min(30.0, 0.5 * 2 ** (slot.refill_failures - 1))
        assert self._loop is not None

        def retry() -> None:
            slot.refill_retry = None
            self._pump(slot)

        slot.refill_retry = self._loop.call_later(delay, retry)

    # ------------------------------------------------------------------ delivery

    def _spawn(self, coro: Any) -> None:
        task = asyncio.ensure_future(coro)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def _deliver(self, task: Task, clip: Clip) -> None:
        job = task.job
        if job is not None and job.priority == Priority.GENERATE:
            if job.failed:  # its requester was told it failed: a clip still on its way is dropped
                self._maybe_finish(job)
                return
            job.writing += 1
            try:
                await self.writer.save(clip)
            except Exception as exc:  # the folder refused it (or a bug): the job says so rather than hang
                job.writing -= 1
                self._fail_job(job, self._write_failure(clip, exc))
                return
            job.writing -= 1
            job.delivered += 1
            job.last_path = clip.path
            if not job.cancelled and not job.failed and job.on_clip is not None:
                job.on_clip(clip)
            self._maybe_finish(job)
            return
        if job is not None:
            job.delivered += 1
            self._maybe_finish(job)
        await self._deliver_fresh(task.instrument, clip, reserved=job is None, band=task.band)

    async def _deliver_fresh(self, instrument: str, clip: Clip, reserved: bool, waited_s: float = 0.0,
                             band: Band | None = None) -> None:
        """A new clip for an instrument: to a waiting play if there is one (whatever band the play
        is for: a fresh clip now beats the exact one later), else into the pool - ``band``, the
        one a refill was asked for, or the band of the velocity it was made at.

        ``reserved``: the clip is a refill whose place in ``band`` is counted in ``in_flight`` until now.
        A refill the folder refuses (a full disk, a read-only remount) keeps that place and waits
        in memory (counted in ``writer.held``) to be offered again after ``WRITE_RETRY_S``,
        doubling to ``WRITE_RETRY_MAX_S``: no clip is lost and none is rendered in vain while the
        folder cannot take it. ``waited_s`` is the wait just over (0: a new clip).
        """
        pool = self.pools[instrument]
        held = waited_s > 0
        keep = False
        fut: asyncio.Future[Clip] | None = None
        try:
            if clip.meta.get("model") != self.config.instruments[instrument].model:  # a kit switch overtook it
                return
            waiters = self.waiters[instrument]
            while waiters and waiters[0].done():
                waiters.popleft()
            if waiters:
                fut = waiters.popleft()
                await self.writer.run(self._prepared(self.sink.write_to_session), clip)
                if not fut.done():
                    fut.set_result(clip)
                    return
                fut = None
                # the play gave up meanwhile: the clip was never heard, so pool it as fresh
                await self.writer.run(self.sink.return_to_pool, clip)
            else:
                await self.writer.run(self._prepared(self.sink.write_to_pool), clip)
            pool.add(clip, band)
        except Exception as exc:
            message = self._write_failure(clip, exc, count=not held)
            if fut is not None and not fut.done():  # the waiting play hears why, now, not at its timeout
                fut.set_exception(EngineError(f"no fresh {instrument} clip: {message}"))
            keep = reserved and isinstance(exc, OSError) and not self._stopping
            if not held:
                log.error("cannot store a %s clip%s: %s", instrument, " (it waits in memory)" if keep else "", message)
            if keep:
                self._store_later(instrument, clip, waited_s, band)
        finally:
            if held and not keep:
                self.writer.held[instrument] -= 1
            if reserved and not keep and band is not None:
                band.in_flight -= 1
            self._pump(self.slots[self.config.instruments[instrument].model])

    def _store_later(self, instrument: str, clip: Clip, waited_s: float, band: Band | None) -> None:
        """Offer a refill the folder refused again after a backoff; it keeps its pool place."""
        assert self._loop is not None
        delay = WRITE_RETRY_S if waited_s <= 0 else min(WRITE_RETRY_MAX_S, waited_s * 2)
        if waited_s <= 0:
            self.writer.held[instrument] += 1

        def retry() -> None:
            if not self._stopping:
                self._spawn(self._deliver_fresh(instrument, clip, True, delay, band))

        self._loop.call_later(delay, retry)

    def _write_failure(self, clip: Clip, exc: BaseException, count: bool = True) -> str:
        """The musician's message for a clip the folder did not take (a FolderError names the
        folder and the reason); an exception that is no OSError is a bug, logged with its traceback."""
        if isinstance(exc, OSError):
            if count:
                self.counters.add("write_errors")
            return str(exc) if isinstance(exc, FolderError) else f"cannot write to the shared folder: {exc}"
        log.error("cannot write a %s clip", clip.instrument, exc_info=exc)
        return f"internal error writing the clip: {type(exc).__name__}: {exc}"

    async def _publish(self, pool: ClipPool, clip: Clip, before: Clip | None) -> Path:
        """Move a pooled clip into the session folder for a trigger (two renames). Its file gone
        (the folder was removed): written again from memory, since the clip was never heard. The
        folder refusing: the clip goes back to the front of its pool, unheard, and the play is told
        why; ``before`` is the pool's last played clip to restore then."""
        try:
            try:
                return self.sink.publish_pooled(clip)
            except PooledFileGone:
                log.warning("the pooled %s clip %s vanished; writing it again from memory", clip.instrument, clip.path)
                return await self.writer.run(self.sink.write_to_session, clip)
        except OSError as exc:
            # back to the front of its pool, unheard - unless the pool moved on during the rewrite's
            # await (a kit switch, another play): then it is only not played
            if pool.last_played is clip and clip.meta.get("model") == self.config.instruments[clip.instrument].model:
                pool.put_back(clip, before)
            self.counters.add("write_errors")
            raise EngineError(str(exc) if isinstance(exc, FolderError)
                              else f"cannot move the clip into the shared folder: {exc}") from exc

    def _refuse_if_unstorable(self, instrument: str) -> None:
        """A pool dry because the folder refuses its refills (they wait in memory), and nothing to
        replay: waiting would not help, so the play is told what is wrong with the folder now."""
        failure = self.sink.failure
        if failure is not None and self.writer.held.get(instrument, 0) > 0:
            raise EngineError(f"no fresh {instrument} clip: {failure}")

    async def _replayable(self, clip: Clip) -> Path:
        """The file a replay names: the last played clip's, written again from memory when it was
        removed (a reply must not name a file that is not there)."""
        assert clip.path is not None
        if clip.path.is_file():
            return clip.path
        try:
            return await self.writer.run(self.sink.write_to_session, clip)
        except OSError as exc:
            raise EngineError(str(exc)) from exc

    def _prepared(self, write: Callable[[Clip], Path]) -> Callable[[Clip], Path]:
        def prepare_and_write(clip: Clip) -> Path:
            if self.prepare is not None:
                try:
                    self.prepare(clip)
                except Exception:  # the clip still goes to the folder; play() retries
                    log.exception("cannot prepare a %s clip for the audio device", clip.instrument)
            return write(clip)

        return prepare_and_write

    def _fail_job(self, job: Job, message: str) -> None:
        """Tell the job's requester once; forget the job when nothing of it is left in flight
        (a later task's failure must still let it go, or failed jobs pile up in ``jobs``)."""
        job.seeds.clear()
        if not job.failed:
            job.failed = True
            if job.priority == Priority.PLAY_WAIT:
                waiters = self.waiters[job.instrument]
                if waiters:
                    fut = waiters.popleft()
                    if not fut.done():
                        fut.set_exception(EngineError(message))
            elif job.on_error is not None and not job.cancelled:
                job.on_error(job, message)
        self._maybe_finish(job)

    def _fail_slot_jobs(self, slot: ModelSlot, message: str) -> None:
        for job in list(slot.queue):
            self._fail_job(job, message)
        slot.queue = []

    def _maybe_finish(self, job: Job) -> None:
        if job.finished and self.jobs.pop(job.id, None) is not None:
            if job.priority == Priority.GENERATE and not job.failed and not job.cancelled and job.on_done:
                job.on_done(job)

    # ------------------------------------------------------------------ status

    def status(self) -> dict[str, Any]:
        return {
            "version": __version__,
            "uptime_s": round(time.time() - self.started_at, 1),
            "out_dir": str(self.sink.session_dir),
            "dry_policy": self.config.engine.dry_policy,
            "kit": self.kit,
            "instruments": {
                name: {"model": self.config.instruments[name].model, **pool.to_json(),
                       # refills made but refused by the folder keep their pool place: not "generating"
                       "generating": pool.in_flight - self.writer.held.get(name, 0),
                       "held": self.writer.held.get(name, 0),
                       "waiting_plays": sum(not f.done() for f in self.waiters[name]),
                       "error": self.lacks(name) or None}
                for name, pool in self.pools.items()
            },
            "models": {name: model_status(s) for name, s in self.slots.items()},
            "jobs": {"active": len(self.jobs), "queue_limit": self.config.engine.queue_limit,
                     "list": [{"id": job.id, "instrument": job.instrument,
                               "kind": job.kind,
                               "total": job.total, "delivered": job.delivered}
                              for job in self.jobs.values() if job.priority == Priority.GENERATE][:100]},
            "counters": self.counters.to_json(),
        }


def _velocity(velocity: float | None) -> float | None:
    if velocity is not None and not 0.0 <= float(velocity) <= 1.0:
        raise EngineError(f"velocity must be 0-1, got {velocity!r}")
    return None if velocity is None else float(velocity)


def model_status(slot: ModelSlot) -> dict[str, Any]:
    """One model in /genbridge/status: its state, where it runs (the configured device until the
    worker says what it resolved to) and the memory it holds there."""
    info = slot.info
    return {
        "state": slot.state,
        "error": slot.error or None,
        "family": info.get("family", slot.spec.family),
        "device": info.get("device", slot.spec.device),
        "device_name": info.get("device_name"),
        "memory": slot.memory,
        "pid": slot.worker.pid if slot.worker else None,
        "restarts": slot.worker.restarts if slot.worker else 0,
        "health": slot.worker.health() if slot.worker else {},
        "busy": bool(slot.running),
        "made": slot.made,
        "batch": len(slot.running),
        "queued_jobs": len(slot.queue),
        "info": info,
        **({"remote": slot.remote} if slot.remote else {}),
    }


def describe_model(info: dict[str, Any]) -> str:
    d = info.get("details", {})
    trained = "trained" if d.get("trained", True) else "UNTRAINED (random weights)"
    return (f"{info.get('family')} {trained}, {info.get('parameters', 0) / 1e6:.1f} M params, "
            f"{info.get('sample_rate')} Hz x {info.get('channels')} ch, {info.get('length') or 'any'} frames, "
            f"on {info.get('device')} ({info.get('device_name')}, {info.get('precision')}), "
            f"loaded in {info.get('load_s')} s")
