"""The body of a model worker process (started with ``spawn``), the same for every model family.

Why a process per model: the I/O process runs the OSC server, the folder writer and the audio
handle; a generating model holds the GIL and spins OpenMP threads that would starve them. Here
the model owns its own threads (``OMP_WAIT_POLICY=PASSIVE``, an explicit count), and a crash or
hang costs one worker, which its supervisor restarts, not the set.

This body knows no family: it loads whatever :func:`models.generator.get_family` names, renders
what the engine sends through :func:`bridge.rendering.render_clips`, and reports. Messages
(dicts over a multiprocessing Pipe):

    engine -> worker: {"op": "render", "tasks": [{"task", "seed", "instrument", "velocity"}...], "params"}
                      (velocity 0-1, or None/absent: the model's default)
                      {"op": "cancel", "task"}   {"op": "stop"}
    worker -> engine: {"op": "ready", "info", "memory"}    {"op": "fatal", "error"}
                      ({"op": "starting"} comes from the worker's handle when a restart begins)
                      {"op": "progress", "task", "fraction"}   (one per task of the render)
                      {"op": "chunk", "task", "index", "audio", "sample_rate", "meta"}
                      (``index`` counts per task: a render of several takes hands out each one's)
                      {"op": "clip", "task", "audio", "sample_rate", "meta", "memory"}
                      {"op": "error", "task", "error", "kind"}   {"op": "cancelled", "task"}

An ``error`` of kind "request" is the musician's (bad parameters, GPU out of memory for this
batch); kind "model" is a failure of the model. Neither ends the worker.

Liveness (bridge/liveness.py): the worker says when it is loading, idle or busy, and marks
progress at every message, step, chunk and fraction; its supervisor kills and restarts it when
it stops beating, stalls while busy, or outgrows ``memory_limit_mb``.
"""

from __future__ import annotations

import logging
import os
import time
from collections import deque
from multiprocessing.connection import Connection
from typing import Any

from bridge import liveness
from models.runtime_env import configure_threads_env


def worker_main(conn: Connection, spec: dict[str, Any], log_level: int = logging.INFO) -> None:
    """Load ``spec``'s model (keys of :class:`bridge.worker_handle.WorkerSpec`) and serve renders."""
    threads = int(spec["threads"])
    configure_threads_env(threads, bool(spec.get("spin")))
    if spec.get("nice"):
        try:  # generation is background work: the audio process and OSC get the CPU first
            os.nice(int(spec["nice"]))
        except OSError:
            pass
    name = spec["model_name"]
    logging.basicConfig(level=log_level, format=f"%(asctime)s worker[{name}] %(levelname)s %(message)s")
    log = logging.getLogger("genbridge.worker")

    from bridge.finishing import FinishingSettings
    from bridge.rendering import chunk_sidecar, generator_info, render_clips
    from models.generator import Cancelled, GeneratorError, LoadSpec, Progress, RenderRequest, get_family

    try:
        t0 = time.perf_counter()
        family = get_family(spec["family"])
        gpu_limit = float(spec.get("gpu_memory_limit_mb") or 0)
        options = dict(spec.get("options", {})) | ({"gpu_memory_limit_mb": gpu_limit} if gpu_limit else {})
        generator = family.load(LoadSpec(name=name, path=spec["model_path"], device=spec.get("device", "auto"),
                                         threads=threads, options=options, milestone=liveness.mark))
        load_s = time.perf_counter() - t0
        info = generator_info(generator, family, spec["model_path"]) | {"load_s": round(load_s, 3),
                                                                         "threads": threads}
        if gpu_limit and str(info["device"]).startswith("cuda"):  # where the family put it, not "auto"
            from models.devices import cap_gpu_memory, resolve

            info["gpu_memory_fraction"] = cap_gpu_memory(resolve(str(info["device"])), gpu_limit)
    except Exception as exc:  # a bad file must not take the daemon down: tell the engine
        log.error("cannot load model %r from %s: %s", name, spec["model_path"], exc)
        conn.send({"op": "fatal", "error": f"{type(exc).__name__}: {exc}"})
        return
    log.info("loaded %s (%s, %.1f M parameters, %d Hz, %d ch) on %s (%s) in %.2f s", spec["model_path"],
             info["family"], info["parameters"] / 1e6, info["sample_rate"], info["channels"], info["device"],
             info["device_name"], load_s)
    liveness.set_state(liveness.IDLE)
    conn.send({"op": "ready", "info": info, "memory": generator.memory()})

    finishing = FinishingSettings(**spec["finishing"]) if spec.get("finishing") is not None else None
    backlog: deque[dict[str, Any]] = deque()
    stopping = False

    while not stopping:
        liveness.set_state(liveness.IDLE)
        try:
            msg = backlog.popleft() if backlog else conn.recv()
        except (EOFError, OSError):
            break  # the engine went away
        liveness.set_state(liveness.BUSY)
        op = msg.get("op")
        if op == "stop":
            break
        if op != "render":
            continue  # a cancel for a task that already finished
        tasks = msg["tasks"]
        ids = {t["task"] for t in tasks}
        requests = [RenderRequest(int(t["task"]), int(t["seed"]), t.get("instrument"),
                                  None if t.get("velocity") is None else float(t["velocity"])) for t in tasks]

        def on_step(done: int, total: int) -> bool:
            nonlocal stopping
            liveness.mark()
            while conn.poll():
                incoming = conn.recv()
                if incoming.get("op") == "cancel" and incoming.get("task") in ids:
                    return False
                if incoming.get("op") == "stop":
                    stopping = True
                    return False
                backlog.append(incoming)
            return True

        def on_chunk(index: int, audio: Any, take: int = 0) -> None:
            # take: the index into requests (a family of one request calls chunk(index, audio))
            liveness.mark()
            meta = chunk_sidecar(name, info, requests[take], index, len(requests))
            conn.send({"op": "chunk", "task": tasks[take]["task"], "index": index, "audio": audio,
                       "sample_rate": info["sample_rate"], "meta": meta})

        def on_fraction(fraction: float) -> None:
            # one fraction for the whole render: the requests (takes) advance together
            liveness.mark()
            for t in tasks:
                conn.send({"op": "progress", "task": t["task"], "fraction": fraction})

        progress = Progress(step=on_step, fraction=on_fraction, chunk=on_chunk)
        try:
            clips = render_clips(generator, name, info, requests, msg.get("params", {}), finishing=finishing,
                                 progress=progress)
        except Cancelled:
            for t in tasks:
                conn.send({"op": "cancelled", "task": t["task"]})
            continue
        except GeneratorError as exc:
            log.warning("task(s) %s refused: %s", sorted(ids), exc)
            for t in tasks:
                conn.send({"op": "error", "task": t["task"], "error": str(exc), "kind": "request"})
            continue
        except Exception as exc:
            log.exception("task(s) %s failed", sorted(ids))
            for t in tasks:
                conn.send({"op": "error", "task": t["task"], "error": f"{type(exc).__name__}: {exc}",
                           "kind": "model"})
            continue
        memory = generator.memory()
        for t, clip in zip(tasks, clips, strict=True):
            conn.send({"op": "clip", "task": t["task"], "audio": clip.audio, "sample_rate": clip.sample_rate,
                       "meta": clip.meta, "memory": memory})
    generator.close()
