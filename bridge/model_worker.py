"""The body of a model worker process (started with ``spawn``).

Why a process per model: the I/O process runs the OSC server, the folder writer and (later) the
audio callback; a generating model holds the GIL and spins OpenMP threads that would starve
them. Here the model owns its own threads (``OMP_WAIT_POLICY=PASSIVE``, an explicit count), and
a crash or hang costs one worker, which the engine restarts, not the set.

Messages (dicts over a multiprocessing Pipe):
    engine -> worker: {"op": "generate", "task", "seed", "steps", "sampler", "instrument"
                       [, "source" (float32 array), "source_name", "strength"]}   (a variation)
                      {"op": "batch", "tasks": [{"task", "seed", "instrument"}...], "steps", "sampler"}
                      {"op": "cancel", "task"}   {"op": "stop"}
    worker -> engine: {"op": "ready", "info"}    {"op": "fatal", "error"}
                      {"op": "clip", "task", "audio", "sample_rate", "meta"}
                      {"op": "error", "task", "error"}   {"op": "cancelled", "task"}
"""

from __future__ import annotations

import logging
import os
import time
from collections import deque
from multiprocessing.connection import Connection
from typing import Any


def configure_threads_env(threads: int) -> None:
    """Set before torch is imported: passive OpenMP waits and an explicit thread count."""
    os.environ["OMP_WAIT_POLICY"] = "PASSIVE"
    os.environ["OMP_NUM_THREADS"] = str(threads)
    os.environ["MKL_NUM_THREADS"] = str(threads)


def _load_onnx(model_name: str, model_path: str, onnx_path: str, threads: int, log: logging.Logger) -> Any:
    """The ONNX generator, exporting first when the export is missing or the model changed."""
    from pathlib import Path

    from export.onnx import default_onnx_path, export_denoiser, is_fresh
    from models.onnx_runtime import load_onnx_generator

    onnx_file = Path(onnx_path) if onnx_path else default_onnx_path(Path(model_path))
    if not is_fresh(onnx_file, Path(model_path)):
        log.info("exporting %s to ONNX at %s (missing or stale)", model_path, onnx_file)
        export_denoiser(model_path, onnx_file, name=model_name)
    return load_onnx_generator(onnx_file, name=model_name, threads=threads)


def worker_main(conn: Connection, model_name: str, model_path: str, options: dict[str, Any],
                threads: int, finishing: dict[str, Any], log_level: int = logging.INFO) -> None:
    configure_threads_env(threads)
    niceness = int(options.get("nice", 0))
    if niceness:
        try:  # generation is background work: the audio process and OSC get the CPU first
            os.nice(niceness)
        except OSError:
            pass
    logging.basicConfig(level=log_level, format=f"%(asctime)s worker[{model_name}] %(levelname)s %(message)s")
    log = logging.getLogger("genbridge.worker")

    import torch

    torch.set_num_threads(threads)
    try:
        torch.set_num_interop_threads(1)
    except RuntimeError:
        pass

    from bridge.finishing import FinishingSettings, finish_clip
    from models.diffusion import Cancelled, load_generator
    from models.output_filter import cutoff_for

    runtime = options.get("runtime", "torch")
    try:
        t0 = time.perf_counter()
        if runtime == "onnx":
            generator = _load_onnx(model_name, model_path, options.get("onnx_path") or "", threads, log)
        else:
            generator = load_generator(model_path, name=model_name, sdpa=options.get("sdpa", True),
                                       precision=options.get("precision", "fp32"))
        load_s = time.perf_counter() - t0
    except Exception as exc:  # a bad file must not take the daemon down: tell the engine
        log.error("cannot load model %r from %s: %s", model_name, model_path, exc)
        conn.send({"op": "fatal", "error": f"{type(exc).__name__}: {exc}"})
        return
    from models.signature import source_signature

    info = generator.info.to_json()
    info["runtime"] = runtime
    info["signature"] = source_signature(model_path)
    info["load_s"] = round(load_s, 3)
    info["threads"] = threads
    if options.get("steps"):
        info["default_steps"] = int(options["steps"])
    log.info("loaded %s (%.1f M parameters, %d Hz, %d ch, %d frames) in %.2f s",
             model_path, info["parameters"] / 1e6, info["sample_rate"], info["channels"],
             info["length"], load_s)
    conn.send({"op": "ready", "info": info})

    settings = FinishingSettings(**finishing)
    backlog: deque[dict[str, Any]] = deque()
    stopping = False

    def take_message(block: bool) -> dict[str, Any] | None:
        if backlog:
            return backlog.popleft()
        if block or conn.poll():
            return conn.recv()
        return None

    while not stopping:
        try:
            msg = take_message(block=True)
        except (EOFError, OSError):
            return  # the engine went away
        if msg is None:
            continue
        op = msg.get("op")
        if op == "stop":
            return
        if op not in ("generate", "batch"):
            continue  # a cancel for a task that already finished
        # One task ("generate", maybe a variation of a source clip) or several refills made in
        # one batch ("batch": same steps and sampler, each its own seed and instrument).
        tasks = msg["tasks"] if op == "batch" else [msg]
        ids = {t["task"] for t in tasks}

        def on_step(done: int, total: int) -> bool:
            nonlocal stopping
            while conn.poll():
                incoming = conn.recv()
                if incoming.get("op") == "cancel" and incoming.get("task") in ids:
                    return False
                if incoming.get("op") == "stop":
                    stopping = True
                    return False
                backlog.append(incoming)
            return True

        steps = int(msg.get("steps") or info["default_steps"])
        sampler = msg.get("sampler") or options.get("sampler") or info.get("default_sampler") or "ddim"
        source = msg.get("source")
        try:
            t0 = time.perf_counter()
            if source is not None:
                raws = [generator.vary(source, int(msg["seed"]), float(msg["strength"]), steps, on_step, sampler,
                                       instrument=msg.get("instrument"))]
            elif op == "batch":
                raws = generator.generate_batch([int(t["seed"]) for t in tasks], steps, on_step, sampler,
                                                instruments=[t.get("instrument") for t in tasks])
            else:
                raws = [generator.generate(int(msg["seed"]), steps, on_step, sampler,
                                           instrument=msg.get("instrument"))]
            gen_s = (time.perf_counter() - t0) / len(tasks)
            finished = [finish_clip(raw, generator.sample_rate, settings) for raw in raws]
        except Cancelled:
            for t in tasks:
                conn.send({"op": "cancelled", "task": t["task"]})
            continue
        except Exception as exc:
            log.exception("task(s) %s failed", sorted(ids))
            for t in tasks:
                conn.send({"op": "error", "task": t["task"], "error": f"{type(exc).__name__}: {exc}"})
            continue
        for t, (audio, report) in zip(tasks, finished):
            meta = {
                "model": model_name,
                "checkpoint": info["source"],
                "weights": info["weights"],
                "trained": info["trained"],
                "instrument": t.get("instrument"),
                "seed": int(t["seed"]),
                "steps": steps,
                "sampler": sampler,
                "runtime": runtime,
                "model_signature": info["signature"],
                "precision": info["precision"],
                "output_lowpass_hz": cutoff_for(generator.info.output_lowpass_hz, t.get("instrument")),
                "generation_s": round(gen_s, 4),
                "batch": len(tasks),
                "finishing": {"settings": settings.to_json(), "applied": report},
            }
            if source is not None:
                strength = float(msg["strength"])
                meta["variation"] = {"source": msg.get("source_name"), "strength": strength}
                meta["steps"] = max(1, round(steps * strength)) if strength > 0 else 0  # the steps run
            conn.send({"op": "clip", "task": t["task"], "audio": audio, "sample_rate": generator.sample_rate,
                       "meta": meta})
