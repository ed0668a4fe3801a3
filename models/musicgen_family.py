"""MusicGen continuation behind the generator seam.

Why this module exists: a continuation is a long render that hands out chunks as the tokens
arrive and is cancelled between token steps. Behind :class:`~models.generator.Generator` it is
one request like any other, so the same worker body serves it as serves drum one-shots, and
the sidecar is built by the same code. Loading (three on-disk forms, offline) lives in
:mod:`models.musicgen`, the token loop in :mod:`models.continuation`.

Request parameters: ``audio`` (the prompt, channels x frames float32) and ``rate`` (its sample
rate) - both absent for text to music, a fresh piece - and the
:class:`~models.continuation.ContinuationSettings` fields (``seconds`` up to 300,
``prompt_seconds``, ``temperature``, ``top_k``, ``top_p``, ``guidance_scale``, ``description``,
``chunk_seconds``, ``first_chunk_seconds``, ``window_stride_seconds``). A render of N requests
is N takes in one batched pass, each sampled from its own request's seed; chunks are reported
as ``progress.chunk(index, audio, take)``.
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

#: The longest piece one request may ask for (windows slide past the model's own 30 s), and the
#: most takes of one request (one batched pass where the KV cache fits).
MAX_SECONDS = 300.0
MAX_TAKES = 8
SETTINGS = ("seconds", "prompt_seconds", "temperature", "top_k", "top_p", "guidance_scale", "description",
            "chunk_seconds", "first_chunk_seconds", "window_stride_seconds")
#: quantize -> the LM's weight format (models.linear_formats); "none" keeps the precision's.
QUANTIZE = {"int8": "int8", "int8w": "int8w", "int4": "int4"}


def weight_format(quantize: str, precision: str) -> str:
    """The LM's weight format for ``[continuation] quantize`` and ``precision``."""
    if quantize in QUANTIZE:
        return QUANTIZE[quantize]
    if quantize != "none":
        raise GeneratorError(f"quantize must be none, {', '.join(QUANTIZE)}; got {quantize!r}")
    return {"fp32": "fp32", "bf16": "bf16", "fp16": "fp16"}.get(precision, "fp32")


class MusicgenRenderer(Generator):
    def __init__(self, loaded: Any, name: str, device: Any, precision: str, quantize: str,
                 text_off: str = "", step_threads: int = 1, spin: bool = False,
                 cache_budget_mb: float = 2048.0) -> None:
        from models.continuation import lean_lm
        from models.devices import describe

        self.loaded = loaded
        self.device = device
        self.precision = precision
        #: spin_wait: token steps on every thread, decoding between them; else one thread each
        self.step_threads = step_threads if spin else 1
        self.background_decode = not spin
        self.cache_budget_mb = cache_budget_mb
        lm = lean_lm(loaded, loaded.weights)
        self.info = GeneratorInfo(
            family="musicgen", name=name, sample_rate=loaded.sample_rate, channels=loaded.channels, length=0,
            capabilities=Capabilities(seeded=True, batches=True, variations=False, continuation=True,
                                      text=bool(loaded.text_encoder_loaded) and not text_off, one_shots=False),
            device=str(device), device_name=describe(device), precision=precision, max_seconds=MAX_SECONDS,
            parameters=sum(p.numel() for p in loaded.model.parameters()) + lm_parameters(loaded.model.config),
            details={"source": loaded.source, "kind": loaded.kind, "frame_rate": loaded.frame_rate,
                     "text": bool(loaded.text_encoder_loaded), "quantize": quantize, "trained": True,
                     "weights": loaded.source, "weight_format": loaded.weights, "runtime": "genbridge token loop",
                     "window_s": round(lm.window / loaded.frame_rate, 3), "max_takes": MAX_TAKES,
                     "lm_weight_mb": round(lm.bytes / 1e6, 1), "step_threads": self.step_threads,
                     "spin_wait": spin, "cache_budget_mb": cache_budget_mb,
                     **({"text_off": text_off} if text_off else {})},
        )

    def render(self, requests: list[RenderRequest], params: Mapping[str, Any],
               progress: Progress | None = None) -> list[Rendered]:
        import numpy as np

        from models.continuation import ContinuationError, ContinuationSettings, generate
        from models.generator import Cancelled
        from models.musicgen_loop import GenerationCancelled

        progress = progress or Progress()
        fields = {k: params[k] for k in SETTINGS if k in params}
        settings = ContinuationSettings(**fields, seed=int(requests[0].seed), step_threads=self.step_threads,
                                        background_decode=self.background_decode,
                                        cache_budget_mb=self.cache_budget_mb)
        audio = params.get("audio")
        t0 = time.perf_counter()

        def should_stop() -> bool:
            return not progress.stepped(0, 0)

        def on_chunk(take: int, index: int, chunk: Any) -> None:
            if progress.chunk is not None:
                progress.chunk(index, chunk, take)

        try:
            result = generate(self.loaded, settings, audio=None if audio is None else np.asarray(audio, np.float32),
                              rate=None if audio is None else int(params["rate"]),
                              seeds=[int(r.seed) for r in requests], on_chunk=on_chunk,
                              on_progress=progress.fraction, should_stop=should_stop)
        except GenerationCancelled:
            raise Cancelled() from None
        except ContinuationError as exc:
            raise GeneratorError(str(exc)) from None
        gen_s = time.perf_counter() - t0
        fr = self.loaded.frame_rate
        shared = {"kind": "musicgen continuation" if audio is not None else "musicgen text-to-music",
                  "model_kind": self.loaded.kind,
                  **{k: v for k, v in dataclasses.asdict(settings).items() if k in SETTINGS and v is not None},
                  "takes": len(requests), "weight_format": self.loaded.weights,
                  "window_s": round(result.window_positions / fr, 3), "windows": result.windows,
                  "window_stride_s": round(result.stride_frames / fr, 3),
                  "max_context_positions": result.max_context_positions, "passes": result.passes,
                  "realtime_factor": round(len(requests) * settings.seconds / max(gen_s, 1e-9), 3),
                  "timing": result.timings.as_dict()}
        return [Rendered(a, shared | {"take": i}) for i, a in enumerate(result.audio)]

    def memory(self) -> dict[str, Any]:
        from models.devices import memory

        return memory(self.device)


def lm_parameters(config: Any) -> int:
    """The LM's parameter count from its config (its transformers module is dropped once the lean
    LM holds the weights)."""
    d, layers, ffn = config.decoder.hidden_size, config.decoder.num_hidden_layers, config.decoder.ffn_dim
    k, v = config.decoder.num_codebooks, config.decoder.vocab_size
    return layers * (8 * d * d + 2 * d * ffn) + k * (v + 1) * d + k * v * d


class MusicgenFamily(Family):
    """transformers, audiocraft and trainer-saved MusicGen models (models/musicgen.py), offline."""

    name = "musicgen"
    #: Takes one render makes together (bridge.continuations reads it).
    max_takes = MAX_TAKES

    def check_params(self, params: Mapping[str, Any], info: Mapping[str, Any] | None) -> dict[str, Any]:
        out = dict(params)
        seconds = out.get("seconds")
        if not isinstance(seconds, (int, float)) or not 0 < float(seconds) <= MAX_SECONDS:
            raise GeneratorError(f"seconds must be 0-{MAX_SECONDS:g}, got {seconds!r}")
        if ("audio" in out) != ("rate" in out):
            raise GeneratorError("a prompt needs both its audio and its rate")
        if out.get("description") and info and not info["capabilities"]["text"]:
            why = (info.get("details") or {}).get("text_off") or "this model's text encoder is not available offline"
            raise GeneratorError(f"{why}: leave the description empty")
        stride = out.get("window_stride_seconds")
        if stride is not None and (not isinstance(stride, (int, float)) or not 0 < float(stride) < MAX_SECONDS):
            raise GeneratorError(f"window_stride_seconds must be above 0, got {stride!r}")
        unknown = sorted(set(out) - set(SETTINGS) - {"audio", "rate"})
        if unknown:
            raise GeneratorError(f"the musicgen family takes no parameter {unknown[0]!r}")
        return out

    def load(self, spec: LoadSpec) -> Generator:
        import os

        from models.continuation import ContinuationError, lean_lm, load_tokenizer
        from models.devices import DeviceError, resolve, resolve_precision
        from models.musicgen import MusicgenLoadError, bake_weight_norm, load_musicgen
        from models.runtime_env import configure_torch_threads, spinning

        os.environ["HF_HUB_OFFLINE"] = "1"  # never a download at run time
        os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
        configure_torch_threads(spec.threads)
        opts = spec.options
        t0 = time.perf_counter()
        quantize = str(opts.get("quantize", "none"))
        try:
            # the int formats are CPU kernels: "auto" then means the CPU
            device = resolve("cpu" if quantize in QUANTIZE and spec.device == "auto" else spec.device)
            precision = resolve_precision(str(opts.get("precision", "fp32")), device)
            fmt = weight_format(quantize, precision)
        except (DeviceError, GeneratorError) as exc:
            raise MusicgenLoadError(str(exc)) from None
        if quantize in QUANTIZE and device.type != "cpu":
            raise MusicgenLoadError(f"quantize = {quantize!r} runs on a CPU (torch's int kernels); on {device} use "
                                    "quantize = 'none' (and precision 'bf16' or 'fp16')")
        loaded = load_musicgen(spec.path, lm_weights=opts.get("lm_weights") or None)
        loaded.model.to(device)
        bake_weight_norm(loaded.model.audio_encoder)
        loaded.weights = fmt
        spec.milestone()
        lean_lm(loaded, fmt)  # built now: the first job must not wait for it
        text_off = ""
        if loaded.text_encoder_loaded:
            try:  # a description must be refused before it is queued, not fail when its turn comes
                load_tokenizer(loaded)
            except ContinuationError as exc:
                text_off = str(exc)
                log.warning("descriptions are off for %s: %s", loaded.source, exc)
        # the lean LM holds the decoder's weights in its own format: transformers' copy would
        # double the memory (1.2 GB fp32 for musicgen-small beside 0.3 GB of int8)
        loaded.model.decoder = None
        log.info("MusicGen %s loaded on %s in %.1f s (LM weights %s)", loaded.source, device,
                 time.perf_counter() - t0, fmt)
        return MusicgenRenderer(loaded, spec.name, device, precision, quantize, text_off,
                                step_threads=max(1, spec.threads), spin=spinning(),
                                cache_budget_mb=float(opts.get("cache_budget_mb") or 2048.0))
