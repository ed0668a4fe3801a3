"""The body of the MusicGen continuation worker process (started with ``spawn``).

Why its own process: a continuation holds the CPU for seconds to minutes; in the I/O process it
would stall OSC replies and audio, and a crash would take the set down. One continuation runs at
a time (the rest queue in the parent); cancel and stop arrive on the same pipe and are read
between token steps.

Messages (dicts over a multiprocessing Pipe):
    parent -> worker: {"op": "continue", "job", "audio", "rate", "settings"}
                      {"op": "cancel", "job"}   {"op": "stop"}
    worker -> parent: {"op": "ready", "info"}   {"op": "fatal", "error"}
                      {"op": "progress", "job", "fraction"}
                      {"op": "chunk", "job", "index", "audio", "sample_rate"}
                      {"op": "done", "job", "generation_s"}   {"op": "error", "job", "error"}
                      {"op": "cancelled", "job"}
"""

from __future__ import annotations

import logging
import os
import time
from collections import deque
from multiprocessing.connection import Connection
from typing import Any

from bridge.model_worker import configure_threads_env


def musicgen_worker_main(conn: Connection, source: str, lm_weights: str, threads: int, options: dict[str, Any],
                         log_level: int = logging.INFO) -> None:
    configure_threads_env(threads)
    os.environ["HF_HUB_OFFLINE"] = "1"  # never a download at run time
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    if options.get("nice"):
        try:
            os.nice(int(options["nice"]))
        except OSError:
            pass
    logging.basicConfig(level=log_level, format="%(asctime)s worker[musicgen] %(levelname)s %(message)s")
    log = logging.getLogger("genbridge.musicgen")

    import torch

    torch.set_num_threads(threads)
    from models.continuation import ContinuationCancelled, ContinuationSettings, continue_audio
    from models.musicgen import load_musicgen

    try:
        t0 = time.perf_counter()
        loaded = load_musicgen(source, lm_weights=lm_weights or None)
        if options.get("quantize") == "int8":
            # dynamic int8 for the LM's Linear layers: decoding reads every weight once per
            # frame, so a quarter of the bytes is most of the speed (DESIGN.md section 4)
            loaded.model.decoder = torch.ao.quantization.quantize_dynamic(
                loaded.model.decoder, {torch.nn.Linear}, dtype=torch.qint8)
        load_s = time.perf_counter() - t0
    except Exception as exc:
        log.error("cannot load MusicGen from %s: %s", source, exc)
        conn.send({"op": "fatal", "error": f"{type(exc).__name__}: {exc}"})
        return
    bf16 = options.get("precision") == "bf16"
    info = {"source": loaded.source, "kind": loaded.kind, "sample_rate": loaded.sample_rate,
            "channels": loaded.channels, "frame_rate": loaded.frame_rate, "text": loaded.text_encoder_loaded,
            "load_s": round(load_s, 2), "threads": threads, "precision": options.get("precision", "fp32"),
            "quantize": options.get("quantize", "none"),
            "parameters": sum(p.numel() for p in loaded.model.parameters())}
    log.info("loaded MusicGen %s (%s) in %.1f s", loaded.source, loaded.kind, load_s)
    conn.send({"op": "ready", "info": info})

    backlog: deque[dict[str, Any]] = deque()
    while True:
        try:
            msg = backlog.popleft() if backlog else conn.recv()
        except (EOFError, OSError):
            return
        op = msg.get("op")
        if op == "stop":
            return
        if op != "continue":
            continue
        job = msg["job"]
        state = {"stop": False}

        def should_stop() -> bool:
            while conn.poll():
                incoming = conn.recv()
                if incoming.get("op") == "cancel" and incoming.get("job") == job:
                    return True
                if incoming.get("op") == "stop":
                    state["stop"] = True
                    return True
                backlog.append(incoming)
            return False

        settings = ContinuationSettings(**msg["settings"])
        try:
            t0 = time.perf_counter()
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
                continue_audio(
                    loaded, msg["audio"], int(msg["rate"]), settings,
                    on_chunk=lambda i, audio: conn.send({"op": "chunk", "job": job, "index": i, "audio": audio,
                                                         "sample_rate": loaded.sample_rate}),
                    on_progress=lambda f: conn.send({"op": "progress", "job": job, "fraction": f}),
                    should_stop=should_stop)
            conn.send({"op": "done", "job": job, "generation_s": round(time.perf_counter() - t0, 3)})
        except ContinuationCancelled:
            conn.send({"op": "cancelled", "job": job})
        except Exception as exc:  # a failed job must leave the worker usable
            log.exception("continuation job %s failed", job)
            conn.send({"op": "error", "job": job, "error": f"{type(exc).__name__}: {exc}"})
        if state["stop"]:
            return
