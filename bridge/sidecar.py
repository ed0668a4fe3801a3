"""The JSON sidecar of a generated clip, built in one place for every family and every path.

Why this module exists: the daemon's worker, ``genbridge generate``, the continuation queue and
``genbridge continue`` all write generated clips, and each used to build its own sidecar with
its own field names. Now each of them renders through :func:`bridge.rendering.render_clips`,
which calls :func:`clip_sidecar`; callers only add what they alone know (the job id, the prompt
file). The folder sink adds the file facts (rate, channels, frames, subtype).
"""

from __future__ import annotations

from typing import Any, Mapping


def clip_sidecar(model: str, info: Mapping[str, Any], *, seed: int, instrument: str | None,
                 facts: Mapping[str, Any], generation_s: float, batch: int,
                 finishing: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """What a clip's sidecar says about where it came from.

    ``info`` is the generator's :meth:`~models.generator.GeneratorInfo.to_json` (with the
    ``signature`` the worker adds); ``facts`` what the family reports for this clip (steps,
    sampler, the high-cut applied, continuation settings...).
    """
    details = info.get("details", {})
    meta: dict[str, Any] = {
        "model": model,
        "family": info.get("family"),
        "checkpoint": details.get("source"),
        "weights": details.get("weights"),
        "trained": details.get("trained"),
        "instrument": instrument,
        "seed": int(seed),
        **dict(facts),
        "runtime": details.get("runtime"),
        "model_signature": info.get("signature"),
        "precision": info.get("precision"),
        "device": info.get("device"),
        "generation_s": round(float(generation_s), 4),
        "batch": int(batch),
    }
    if finishing is not None:
        meta["finishing"] = dict(finishing)
    return meta
