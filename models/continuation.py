"""MusicGen jobs as a musician asks for them: continue a clip, or make music from a description.

Why this module exists: a job arrives as audio (any rate, any channels) or text, seconds and
sampling settings; the token loop (:mod:`models.musicgen_loop`) wants prompt codes, a projected
text memory and frame counts. This turns one into the other - the prompt's last seconds
resampled and encoded with EnCodec, the description tokenized and encoded by the model's own
T5, settings checked with messages for the musician - and keeps the lean LM
(:mod:`models.musicgen_lm`) of each weight format built once per loaded model.

Chunks are decoded from a stretch of codes with context on both sides and cut at frame
boundaries, so they join without gaps; a take's whole audio is, by construction, its chunks
concatenated.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np
import torch

from models.musicgen import LoadedMusicgen
from models.musicgen_family import MAX_SECONDS, MAX_TAKES
from models.musicgen_loop import GenerationCancelled, LoopResult, LoopSettings, Sampling, run_loop

log = logging.getLogger(__name__)



ContinuationCancelled = GenerationCancelled


class ContinuationError(ValueError):
    """A request the model cannot serve (e.g. a description without a text encoder)."""


@dataclass
class ContinuationSettings:
    seconds: float
    prompt_seconds: float = 3.0
    temperature: float = 1.0
    top_k: int = 250
    top_p: float = 0.0
    #: Classifier-free guidance, used only with a description: without text it doubles the work
    #: for nothing (the conditioned and unconditioned passes see the same empty memory).
    guidance_scale: float = 3.0
    seed: int = 0
    description: str | None = None
    chunk_seconds: float = 1.5
    #: The first chunk comes sooner (less to wait before anything sounds), the rest every chunk_seconds.
    first_chunk_seconds: float = 0.5
    #: Past the model's window each next window makes this many seconds and keeps the window's
    #: rest as context (audiocraft's extend_stride); clipped to 3/4 of the window.
    window_stride_seconds: float = 18.0
    #: Guidance even without text (an empty description on both passes): only benchmarks want
    #: this, to measure what guidance costs.
    guidance_without_text: bool = False
    #: Accepted for old configs: "dynamic" or "static". The lean loop's cache is always
    #: allocated once per window (fixed shapes), so both run the same.
    kv_cache: str = "static"
    #: The LM's weight format (models.linear_formats); "" = the model's loaded one.
    weights: str = ""
    #: torch threads for the token steps, and chunks decoded on a second thread meanwhile (the
    #: musicgen family sets both from whether its worker spins, ``spin_wait``: see models.musicgen_loop.LoopSettings).
    step_threads: int = 1
    background_decode: bool = True
    #: The most KV cache one pass of takes may hold (more takes go in further passes).
    cache_budget_mb: float = 2048.0


def prompt_tensor(loaded: LoadedMusicgen, audio: np.ndarray, rate: int, seconds: float) -> torch.Tensor:
    """The last ``seconds`` of ``audio`` (channels, frames) as (1, channels, n) at the model's rate."""
    from bridge.sources import fit_source

    audio = np.asarray(audio, dtype=np.float32)
    if audio.ndim == 1:
        audio = audio[None, :]
    keep = int(round(seconds * rate))
    if keep <= 0 or audio.shape[1] == 0:
        raise ContinuationError("the prompt is empty")
    tail = audio[:, -keep:]
    n = int(math.ceil(tail.shape[1] * loaded.sample_rate / rate))
    fitted = fit_source(tail, rate, sample_rate=loaded.sample_rate, channels=loaded.channels, length=n)
    return torch.from_numpy(fitted)[None]


def text_memory(loaded: LoadedMusicgen, description: str) -> tuple[torch.Tensor, torch.Tensor]:
    """The description as the LM's cross-attention memory: the model's T5 over its tokenizer's
    ids, projected to the LM's width where they differ (as transformers does); (1, T, hidden)
    and its (1, T) mask."""
    model = loaded.model
    inputs = {k: v.to(model.device) for k, v in _text_inputs(loaded, description).items()}
    with torch.no_grad():
        hidden = model.text_encoder(**inputs).last_hidden_state
        if (model.text_encoder.config.hidden_size != model.config.decoder.hidden_size
                and model.config.decoder.cross_attention_hidden_size is None):
            hidden = model.enc_to_dec_proj(hidden)
    return hidden.float(), inputs["attention_mask"]


def lean_lm(loaded: LoadedMusicgen, fmt: str = "fp32") -> Any:
    """The loaded model's LM in weight format ``fmt``, built on first use and kept."""
    from models.musicgen_lm import MusicgenLM

    key = f"{fmt}@{loaded.device}"
    if key not in loaded.lms:
        loaded.lms[key] = MusicgenLM(loaded.model, fmt, loaded.device)
    return loaded.lms[key]


def generate(loaded: LoadedMusicgen, settings: ContinuationSettings, *, audio: np.ndarray | None = None,
             rate: int | None = None, seeds: list[int] | None = None,
             on_chunk: Callable[[int, int, np.ndarray], None] | None = None,
             on_progress: Callable[[float], None] | None = None,
             should_stop: Callable[[], bool] | None = None) -> LoopResult:
    """Make ``settings.seconds`` of new audio for each seed (take; default ``[settings.seed]``):
    continuing ``audio``'s last ``prompt_seconds`` when given, else a fresh piece; conditioned on
    ``settings.description`` when there is one. ``on_chunk(take, index, audio)``."""
    t0 = time.perf_counter()
    seeds = [int(settings.seed)] if seeds is None else [int(s) for s in seeds]
    check(settings, len(seeds))
    lm = lean_lm(loaded, settings.weights or loaded.weights)
    prompt_codes = None
    if audio is not None:
        if rate is None:
            raise ContinuationError("a prompt needs its sample rate")
        prompt = prompt_tensor(loaded, audio, rate, settings.prompt_seconds).to(loaded.device)
        with torch.no_grad():
            prompt_codes = loaded.model.audio_encoder.encode(prompt).audio_codes[0, 0]  # (K, P)
    memory = mask = None
    if settings.description:
        memory, mask = text_memory(loaded, settings.description)
    fr = loaded.frame_rate
    loop = LoopSettings(
        frames=max(1, int(round(settings.seconds * fr))), seeds=seeds,
        sampling=Sampling(settings.temperature, settings.top_k, settings.top_p, settings.guidance_scale),
        stride_frames=max(1, int(round(settings.window_stride_seconds * fr))),
        chunk_frames=max(1, int(round(settings.chunk_seconds * fr))),
        first_chunk_frames=max(1, int(round(min(settings.first_chunk_seconds, settings.chunk_seconds) * fr))),
        guidance_without_text=settings.guidance_without_text, step_threads=settings.step_threads,
        background_decode=settings.background_decode, cache_budget_bytes=int(settings.cache_budget_mb * 2**20))
    return run_loop(lm, loaded, prompt_codes, loop, memory=memory, memory_mask=mask, on_chunk=on_chunk,
                    on_progress=on_progress, should_stop=should_stop, t0=t0)


def check(settings: ContinuationSettings, takes: int = 1) -> None:
    """Refuse what no model can serve, with the reason."""
    if not 0 < settings.seconds <= MAX_SECONDS:
        raise ContinuationError(f"seconds must be 0-{MAX_SECONDS:g}, got {settings.seconds}")
    if not 1 <= takes <= MAX_TAKES:
        raise ContinuationError(f"takes must be 1-{MAX_TAKES}, got {takes}")
    if settings.kv_cache not in ("dynamic", "static"):
        raise ContinuationError(f"kv_cache must be 'dynamic' or 'static', got {settings.kv_cache!r}")
    if settings.window_stride_seconds <= 0:
        raise ContinuationError(f"window_stride_seconds must be above 0, got {settings.window_stride_seconds}")


def continue_audio(loaded: LoadedMusicgen, audio: np.ndarray, rate: int, settings: ContinuationSettings, *,
                   on_chunk: Callable[[int, np.ndarray], None] | None = None,
                   on_progress: Callable[[float], None] | None = None,
                   should_stop: Callable[[], bool] | None = None,
                   on_codes: Callable[[torch.Tensor, int], None] | None = None) -> np.ndarray:
    """One take continuing the last ``prompt_seconds`` of ``audio``; returns the new audio
    (channels, frames) at the model's rate, which equals the chunks handed to ``on_chunk`` joined
    in order. ``on_codes(codes, prompt_frames)`` receives every frame's codes (K, frames) at the end."""
    result = generate(loaded, settings, audio=audio, rate=rate,
                      on_chunk=None if on_chunk is None else (lambda take, i, c: on_chunk(i, c)),
                      on_progress=on_progress, should_stop=should_stop)
    if on_codes is not None:
        codes = result.codes[0]
        on_codes(codes, codes.shape[1] - max(1, int(round(settings.seconds * loaded.frame_rate))))
    return result.audio[0]


def _text_inputs(loaded: LoadedMusicgen, description: str) -> dict[str, Any]:
    if not loaded.text_encoder_loaded:
        raise ContinuationError("this model's text encoder is not available offline, so descriptions are off; "
                                "leave the description empty (text-free continuation works)")
    tokenizer = load_tokenizer(loaded)
    tokens = tokenizer([description], return_tensors="pt", padding=True)
    if int(tokens["input_ids"].max()) >= loaded.model.text_encoder.config.vocab_size:
        raise ContinuationError("the tokenizer beside the model has more words than its text encoder: "
                                "they do not belong together")
    return {"input_ids": tokens["input_ids"], "attention_mask": tokens["attention_mask"]}


def load_tokenizer(loaded: LoadedMusicgen) -> Any:
    """The description's tokenizer from beside the model (or the local cache), loaded once."""
    from pathlib import Path

    from transformers import AutoTokenizer

    if loaded.tokenizer is None:
        source = loaded.source.split(" + ")[0]
        folder = Path(source).expanduser()
        # transformers 5 makes an empty T5 tokenizer from a folder without tokenizer files: every
        # word would become <unk>, so a folder must hold one of its own
        if folder.is_dir() and not any((folder / f).is_file() for f in TOKENIZER_FILES):
            raise ContinuationError(f"no tokenizer for the description beside the model in {folder} (one of "
                                    f"{', '.join(TOKENIZER_FILES)}): save the model's processor there")
        try:
            loaded.tokenizer = AutoTokenizer.from_pretrained(source, local_files_only=True)
        except (OSError, ValueError) as exc:
            raise ContinuationError(f"no tokenizer for the description beside the model ({exc})") from exc
    return loaded.tokenizer


#: Files a tokenizer saved beside a model leaves (save_pretrained of the processor or tokenizer).
TOKENIZER_FILES = ("tokenizer.json", "spiece.model", "tokenizer_config.json")
