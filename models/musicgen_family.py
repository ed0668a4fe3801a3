"""MusicGen continuation behind the generator seam.

Why this module exists: a continuation is a long render that hands out chunks as the tokens
arrive and is cancelled between token steps. Behind :class:`~models.generator.Generator` it is
one request like any other, so the same worker body serves it as serves drum one-shots, and
the sidecar is built by the same code. Loading (three on-disk forms, offline) lives in
:mod:`models.musicgen`, the token loop in :mod:`models.continuation`.

Request parameters: ``audio`` (the prompt, channels x frames float32), ``rate`` (its sample
rate) and the :class:`~models.continuation.ContinuationSettings` fields (``seconds``,
``prompt_seconds``, ``temperature``, ``top_k``, ``top_p``, ``guidance_scale``, ``description``,
``chunk_seconds``); the request's seed seeds the sampling.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from typing import Any, Mapping

from models.generator import (
    Capabilities,
    Family,
    Generator,
    GeneratorError,
    GeneratorInfo,
    LoadSpec,
    Progress,
    Rendered,
    RenderRequest,
)

log = logging.getLogger(__name__)

MAX_SECONDS = 120.0
SETTINGS = ("seconds", "prompt_seconds", "temperature", "top_k", "top_p", "guidance_scale", "description",
            "chunk_seconds")


class MusicgenRenderer(Generator):
    def __init__(self, loaded: Any, name: str, device: Any, precision: str, quantize: str, kv_cache: str) -> None:
        from models.devices import describe

        self.loaded = loaded
        self.device = device
        self.precision = precision
        self.kv_cache = kv_cache
        self.info = GeneratorInfo(
            family="musicgen", name=name, sample_rate=loaded.sample_rate, channels=loaded.channels, length=0,
            capabilities=Capabilities(seeded=True, batches=False, variations=False, continuation=True,
                                      text=bool(loaded.text_encoder_loaded), one_shots=False),
            device=str(device), device_name=describe(device), precision=precision, max_seconds=MAX_SECONDS,
            parameters=sum(p.numel() for p in loaded.model.parameters()),
            details={"source": loaded.source, "kind": loaded.kind, "frame_rate": loaded.frame_rate,
                     "text": bool(loaded.text_encoder_loaded), "quantize": quantize, "trained": True,
                     "weights": loaded.source, "runtime": "transformers", "kv_cache": kv_cache},
        )

    def render(self, requests: list[RenderRequest], params: Mapping[str, Any],
               progress: Progress | None = None) -> list[Rendered]:
        import numpy as np
        import torch

        from models.continuation import ContinuationCancelled, ContinuationError, ContinuationSettings, continue_audio
        from models.devices import autocast_dtype
        from models.generator import Cancelled

        if len(requests) != 1:
            raise GeneratorError("MusicGen continues one prompt at a time")
        progress = progress or Progress()
        request = requests[0]
        fields = {k: params[k] for k in SETTINGS if k in params}
        settings = ContinuationSettings(**fields, seed=int(request.seed), kv_cache=self.kv_cache)
        dtype = autocast_dtype(self.precision)
        t0 = time.perf_counter()

        def should_stop() -> bool:
            return not progress.stepped(0, 0)

        try:
            with torch.autocast(self.device.type, dtype=dtype or torch.bfloat16, enabled=dtype is not None):
                audio = continue_audio(self.loaded, np.asarray(params["audio"], dtype=np.float32), int(params["rate"]),
                                       settings, on_chunk=progress.chunk, on_progress=progress.fraction,
                                       should_stop=should_stop)
        except ContinuationCancelled:
            raise Cancelled() from None
        except ContinuationError as exc:
            raise GeneratorError(str(exc)) from None
        gen_s = time.perf_counter() - t0
        facts = {"kind": "musicgen continuation", "model_kind": self.loaded.kind,
                 **{k: v for k, v in dataclasses.asdict(settings).items() if k in SETTINGS and v is not None},
                 "realtime_factor": round(audio.shape[1] / self.loaded.sample_rate / max(gen_s, 1e-9), 3)}
        return [Rendered(audio, facts)]

    def memory(self) -> dict[str, Any]:
        from models.devices import memory

        return memory(self.device)


class MusicgenFamily(Family):
    """transformers, audiocraft and trainer-saved MusicGen models (models/musicgen.py), offline."""

    name = "musicgen"

    def check_params(self, params: Mapping[str, Any], info: Mapping[str, Any] | None) -> dict[str, Any]:
        out = dict(params)
        seconds = out.get("seconds")
        if not isinstance(seconds, (int, float)) or not 0 < float(seconds) <= MAX_SECONDS:
            raise GeneratorError(f"seconds must be 0-{MAX_SECONDS:g}, got {seconds!r}")
        if "audio" not in out or "rate" not in out:
            raise GeneratorError("a continuation needs a prompt (audio and its rate)")
        if out.get("description") and info and not info["capabilities"]["text"]:
            raise GeneratorError("this model's text encoder is not available offline: leave the description empty")
        unknown = sorted(set(out) - set(SETTINGS) - {"audio", "rate"})
        if unknown:
            raise GeneratorError(f"the musicgen family takes no parameter {unknown[0]!r}")
        return out

    def load(self, spec: LoadSpec) -> Generator:
        import os

        import torch

        from models.devices import DeviceError, resolve, resolve_precision
        from models.musicgen import MusicgenLoadError, load_musicgen
        from models.runtime_env import configure_torch_threads

        os.environ["HF_HUB_OFFLINE"] = "1"  # never a download at run time
        os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
        configure_torch_threads(spec.threads)
        opts = spec.options
        t0 = time.perf_counter()
        quantize = str(opts.get("quantize", "none"))
        try:
            # int8 is torch's CPU dynamic quantisation: "auto" then means the CPU
            device = resolve("cpu" if quantize == "int8" and spec.device == "auto" else spec.device)
            precision = resolve_precision(str(opts.get("precision", "fp32")), device)
        except DeviceError as exc:
            raise MusicgenLoadError(str(exc)) from None
        kv_cache = str(opts.get("kv_cache", "dynamic"))
        if kv_cache not in ("dynamic", "static"):
            raise MusicgenLoadError(f"kv_cache must be 'dynamic' or 'static', got {kv_cache!r}")
        if quantize == "int8" and device.type != "cpu":
            raise MusicgenLoadError(f"quantize = 'int8' is torch's CPU dynamic quantisation; on {device} use "
                                    "quantize = 'none' (and precision 'bf16' or 'fp16')")
        loaded = load_musicgen(spec.path, lm_weights=opts.get("lm_weights") or None)
        if quantize == "int8":
            # dynamic int8 for the LM's Linear layers: decoding reads every weight once per frame,
            # so a quarter of the bytes is most of the speed (docs/ARCHITECTURE.md, "Measured reasons")
            loaded.model.decoder = torch.ao.quantization.quantize_dynamic(
                loaded.model.decoder, {torch.nn.Linear}, dtype=torch.qint8)
        loaded.model.to(device)
        log.info("MusicGen %s loaded on %s in %.1f s", loaded.source, device, time.perf_counter() - t0)
        return MusicgenRenderer(loaded, spec.name, device, precision, quantize, kv_cache)
