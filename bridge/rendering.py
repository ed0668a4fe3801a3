"""Render requests into finished clips with their sidecars: the one path every caller takes.

Why this module exists: the worker process, ``genbridge generate`` and ``genbridge continue``
all turn a generator's raw output into clips the folder sink can write - finished (one-shots
only: normalised, tail trimmed) and described by one sidecar. Doing it here once keeps their
files alike and the worker body free of any family's knowledge.
"""

from __future__ import annotations

import time
from typing import Any, Mapping

from bridge.clip import Clip
from bridge.finishing import FinishingSettings, finish_clip
from bridge.sidecar import clip_sidecar


def generator_info(generator: Any, family: Any, path: str) -> dict[str, Any]:
    """What a loaded generator says about itself (status, sidecars): its info JSON with the
    family's details also at the top level, where clients of earlier releases read them in status
    (info.trained, info.runtime, info.default_steps...), and the signature of its files."""
    return generator.info.details | generator.info.to_json() | {"signature": family.signature(path)}


def render_clips(generator: Any, model: str, info: Mapping[str, Any], requests: list[Any],
                 params: Mapping[str, Any], *, finishing: FinishingSettings | None = None,
                 progress: Any = None) -> list[Clip]:
    """``generator.render`` the requests, finish one-shots, and attach each clip's sidecar.

    ``info`` is the generator's info JSON (plus the worker's ``signature``); ``finishing`` is
    applied when given and the family makes one-shots. Exceptions of the render pass through.
    """
    t0 = time.perf_counter()
    rendered = generator.render(requests, params, progress)
    gen_s = (time.perf_counter() - t0) / max(1, len(requests))
    rate = int(info["sample_rate"])
    one_shots = bool(info.get("capabilities", {}).get("one_shots", True))
    clips = []
    for request, made in zip(requests, rendered, strict=True):
        audio, finished = made.audio, None
        if finishing is not None and one_shots:
            audio, report = finish_clip(audio, rate, finishing)
            finished = {"settings": finishing.to_json(), "applied": report}
        meta = clip_sidecar(model, info, seed=request.seed, instrument=request.instrument, facts=made.facts,
                            generation_s=gen_s, batch=len(requests), finishing=finished)
        clips.append(Clip(audio, rate, meta))
    return clips


def chunk_sidecar(model: str, info: Mapping[str, Any], request: Any, index: int, batch: int = 1) -> dict[str, Any]:
    """The sidecar of a chunk a long render hands out before it is done (a continuation's, one
    take's of a ``batch`` made together); it has no generation time of its own, so it states none."""
    meta = clip_sidecar(model, info, seed=request.seed, instrument=request.instrument,
                        facts={"chunk": int(index)}, generation_s=0.0, batch=batch)
    del meta["generation_s"]
    return meta
