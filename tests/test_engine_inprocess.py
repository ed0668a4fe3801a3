"""The engine with an in-process worker handed to it (no processes): pools, jobs, batches, a death.

This is the seam a remote worker plugs into: the engine only ever sees a WorkerHandle made by
the factory it was given, speaking the worker protocol of bridge/model_worker.py.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import numpy as np

from bridge.config import config_from_mapping
from bridge.engine import Engine, EngineError
from bridge.folder_writer import FolderWriter
from bridge.sinks.folder import FolderSink
from bridge.worker_handle import WorkerSpec

RATE, LENGTH = 8000, 800


class InProcessWorker:
    """Answers every render on the next loop turn with a decaying tone per task."""

    def __init__(self, spec: WorkerSpec, loop: asyncio.AbstractEventLoop, on_message: Any, on_exit: Any) -> None:
        self.spec, self.loop, self.on_message, self.on_exit = spec, loop, on_message, on_exit
        self.batches: list[int] = []
        self.hold = False  # keep renders unanswered (to kill the worker mid-job)
        self.refuse = False  # answer renders as a GPU out of memory would
        self.pid, self.restarts = 4242, 0

    def start(self) -> None:
        info = {"family": "in-process", "sample_rate": RATE, "channels": 1, "length": LENGTH, "device": "cpu",
                "device_name": "test", "precision": "fp32", "capabilities": {"variations": False}}
        self.loop.call_soon(self.on_message, {"op": "ready", "info": info, "memory": {"rss_mb": 1.0}})

    def send(self, msg: dict[str, Any]) -> bool:
        if msg["op"] == "render":
            self.batches.append(len(msg["tasks"]))
            if self.refuse:
                for t in msg["tasks"]:
                    self.loop.call_soon(self.on_message, {"op": "error", "task": t["task"], "kind": "request",
                                                          "error": "out of memory on cuda:0"})
            elif not self.hold:
                for t in msg["tasks"]:
                    audio = (np.exp(-np.arange(LENGTH) / 100) * np.sin(np.arange(LENGTH) * (0.1 + t["seed"] % 7)))
                    meta = {"model": self.spec.model_name, "seed": t["seed"], "steps": msg["params"]["steps"]}
                    self.loop.call_soon(self.on_message, {"op": "clip", "task": t["task"], "sample_rate": RATE,
                                                          "audio": audio.astype(np.float32)[None], "meta": meta})
        return True

    def stop(self) -> None:
        pass

    def health(self) -> dict[str, Any]:
        return {"restarts": self.restarts, "last_exit": None}


def make_engine(tmp_path: Path, model: Path,
                refuse: bool = False) -> tuple[Engine, list[InProcessWorker], FolderWriter]:
    config = config_from_mapping({
        "audio": {"device": "none"}, "engine": {"refill_batch": 3},
        "models": {"m": {"path": str(model), "steps": 5}},
        "instruments": {"kick": {"model": "m", "pool": 4}, "snare": {"model": "m", "pool": 2}},
    })
    made: list[InProcessWorker] = []

    def factory(spec: WorkerSpec, loop: Any, on_message: Any, on_exit: Any) -> InProcessWorker:
        made.append(InProcessWorker(spec, loop, on_message, on_exit))
        made[-1].refuse = refuse
        return made[-1]

    writer = FolderWriter(FolderSink(tmp_path / "out"))
    return Engine(config, writer, workers=factory), made, writer


async def until(predicate: Any, what: str) -> None:
    for _ in range(2000):
        if predicate():
            return
        await asyncio.sleep(0.005)  # the writer thread's files land between loop turns
    raise AssertionError(f"timed out waiting for {what}")


def test_pools_fill_in_batches_and_jobs_deliver(tmp_path: Path, tiny_model: Path) -> None:
    async def run() -> None:
        engine, made, writer = make_engine(tmp_path, tiny_model)
        await engine.start()
        await until(lambda: len(engine.pools["kick"]) == 4 and len(engine.pools["snare"]) == 2, "the pools")
        worker = made[0]
        assert max(worker.batches) == 3 and sum(worker.batches) == 6, worker.batches
        played = await engine.play("kick")
        assert played.fresh and played.path.is_file()
        status = engine.status()["models"]["m"]
        assert status["family"] == "in-process" and status["device"] == "cpu" and status["pid"] == 4242

        done, clips = asyncio.Event(), []
        job = engine.generate("snare", 3, seed=10, params={"steps": 2}, on_clip=clips.append,
                              on_done=lambda j: done.set())
        await asyncio.wait_for(done.wait(), 10)
        assert job.delivered == 3 and [c.meta["seed"] for c in clips] == [10, 11, 12]
        assert all(c.meta["steps"] == 2 and c.path.is_file() for c in clips)

        # the worker dies mid-job: the job fails with a reason, the slot waits for its restart
        worker.hold = True
        errors: list[str] = []
        engine.generate("kick", 1, seed=1, on_error=lambda j, m: errors.append(m))
        await until(lambda: engine.slots["m"].running, "the job to run")
        worker.on_exit(-9, 0.5)
        assert errors and "died" in errors[0]
        assert engine.status()["models"]["m"]["state"] == "restarting"
        assert engine.counters.to_json()["worker_crashes"] == 1

        # bad parameters are refused by the family before anything is queued
        try:
            engine.generate("kick", 1, params={"steps": 5000})
        except EngineError as exc:
            assert "steps must be 0-1000" in str(exc)
        else:
            raise AssertionError("steps 5000 accepted")
        await engine.stop()
        writer.shutdown()

    asyncio.run(run())


def test_a_refused_refill_backs_off_and_halves_the_batch(tmp_path: Path, tiny_model: Path) -> None:
    """A refill batch the worker refuses (out of GPU memory) is not asked for again at once: the
    engine waits, then tries half the batch; plays and explicit jobs are not held back."""
    async def run() -> None:
        engine, made, writer = make_engine(tmp_path, tiny_model, refuse=True)
        await engine.start()
        await until(lambda: engine.slots["m"].refill_retry is not None, "the backoff")
        worker, slot = made[0], engine.slots["m"]
        assert worker.batches[-1] == 3 and slot.refill_limit == 1 and slot.refill_failures == 1
        asked = len(worker.batches)
        await asyncio.sleep(0.1)  # within the 0.5 s backoff: nothing is asked (absence over a window)
        assert len(worker.batches) == asked
        worker.refuse = False
        await until(lambda: len(worker.batches) > asked, "the retry")
        assert worker.batches[asked] == 1, "the retry asks for half the refused batch"
        await until(lambda: len(engine.pools["kick"]) == 4 and len(engine.pools["snare"]) == 2, "the pools again")
        assert slot.refill_failures == 0
        await engine.stop()
        writer.shutdown()

    asyncio.run(run())
