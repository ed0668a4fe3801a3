"""Continue a clip with MusicGen, handing out the new audio in chunks as the tokens arrive.

Why this module exists: a continuation takes seconds to tens of seconds on a CPU, and a
performer wants to hear it (or at least see progress) long before it is done, and to stop it.
transformers' ``generate`` runs the token loop; a stopping criterion - called after every
token step with all tokens so far - is the one hook that sees each step, so it rebuilds the
finished frames from MusicGen's delay pattern, decodes each new stretch with EnCodec as soon as
enough has arrived, and answers "stop" when the job is cancelled.

Chunks are decoded from a window of codes with context on both sides and cut at frame
boundaries, so they join without gaps; the whole continuation is, by construction, the chunks
concatenated.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np
import torch

from models.musicgen import LoadedMusicgen

log = logging.getLogger(__name__)

#: Frames of already-decoded context on the left of a chunk's window, and frames held back on
#: the right until more tokens exist (EnCodec's decoder is not causal: a frame's audio depends
#: on its neighbours).
CONTEXT_FRAMES = 50
LOOKAHEAD_FRAMES = 10


class ContinuationCancelled(Exception):
    """The job was cancelled; the chunks handed out so far stay valid."""


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
    #: Guidance even without text (an empty description on both passes): only benchmarks want
    #: this, to measure what guidance costs.
    guidance_without_text: bool = False
    #: The decoder's self-attention KV cache: "dynamic" (grows per step) or "static" (allocated
    #: once for the whole continuation: fixed shapes, what CUDA graphs and torch.compile need).
    #: On a CPU they run at the same speed (bench/gpu.py); the tokens are the same.
    kv_cache: str = "dynamic"


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


class _Monitor:
    """The stopping criterion: rebuilds frames, emits chunks, reports progress, cancels."""

    def __init__(self, run: "_Run") -> None:
        self.run = run

    def __call__(self, input_ids: torch.Tensor, scores: Any, **kwargs: Any) -> torch.Tensor:
        stop = self.run.step(input_ids)
        return torch.full((1,), stop, dtype=torch.bool, device=input_ids.device)


class _Run:
    def __init__(self, loaded: LoadedMusicgen, prompt_codes: torch.Tensor, new_frames: int, chunk_frames: int,
                 on_chunk: Callable[[int, np.ndarray], None] | None,
                 on_progress: Callable[[float], None] | None, should_stop: Callable[[], bool] | None) -> None:
        self.loaded = loaded
        self.k = loaded.model.config.decoder.num_codebooks
        self.prompt_codes = prompt_codes  # (K, P)
        self.p = prompt_codes.shape[1]
        self.n = new_frames
        self.chunk_frames = chunk_frames
        self.on_chunk = on_chunk
        self.on_progress = on_progress
        self.should_stop = should_stop
        self.emitted = 0  # new frames handed out
        self.chunks: list[np.ndarray] = []
        self.cancelled = False
        self.last_progress = -1.0
        self.hop = int(math.prod(loaded.model.config.audio_encoder.upsampling_ratios))
        self.last_codes: torch.Tensor | None = None

    def codes(self, ids: torch.Tensor) -> torch.Tensor:
        """Finished frames (K, F) from the delay-pattern ids (K, L): codebook k's frame f sits at
        position 1 + k + f (position 0 is the start token); prompt frames are the prompt's."""
        ids = ids[: self.k]
        f = ids.shape[1] - self.k
        codes = torch.stack([ids[k, 1 + k: 1 + k + f] for k in range(self.k)])
        codes[:, : min(self.p, f)] = self.prompt_codes[:, : min(self.p, f)]
        return codes

    def step(self, ids: torch.Tensor) -> bool:
        if self.should_stop is not None and self.should_stop():
            self.cancelled = True
            return True
        codes = self.codes(ids)
        self.last_codes = codes
        done = min(self.n, codes.shape[1] - self.p)
        if self.on_progress is not None and done / self.n - self.last_progress >= 0.02:
            self.last_progress = done / self.n
            self.on_progress(min(1.0, done / self.n))
        ready = done - LOOKAHEAD_FRAMES
        if ready - self.emitted >= self.chunk_frames:
            self.emit(codes, self.emitted, ready)
        return False

    def emit(self, codes: torch.Tensor, start: int, end: int) -> None:
        """Decode new frames [start, end) (counted after the prompt) with context around them."""
        s, e = self.p + start, self.p + end
        w0, w1 = max(0, s - CONTEXT_FRAMES), min(codes.shape[1], e + LOOKAHEAD_FRAMES)
        with torch.no_grad():
            audio = self.loaded.model.audio_encoder.decode(codes[None, None, :, w0:w1], [None])[0]
        chunk = audio[0, :, (s - w0) * self.hop: (e - w0) * self.hop].float().cpu().numpy().copy()
        self.chunks.append(chunk)
        self.emitted = end
        if self.on_chunk is not None:
            self.on_chunk(len(self.chunks) - 1, chunk)


def continue_audio(loaded: LoadedMusicgen, audio: np.ndarray, rate: int, settings: ContinuationSettings, *,
                   on_chunk: Callable[[int, np.ndarray], None] | None = None,
                   on_progress: Callable[[float], None] | None = None,
                   should_stop: Callable[[], bool] | None = None,
                   on_codes: Callable[[torch.Tensor, int], None] | None = None) -> np.ndarray:
    """Continue the last ``prompt_seconds`` of ``audio``; returns the new audio (channels, frames)
    at the model's rate, which equals the chunks handed to ``on_chunk`` joined in order.
    ``on_codes(codes, prompt_frames)`` receives every frame's codes (K, frames) at the end."""
    from transformers import StoppingCriteriaList
    from transformers.modeling_outputs import BaseModelOutput

    if not 0 < settings.seconds <= 120:
        raise ContinuationError(f"seconds must be 0-120, got {settings.seconds}")
    model = loaded.model
    device = model.device
    prompt = prompt_tensor(loaded, audio, rate, settings.prompt_seconds).to(device)
    with torch.no_grad():
        prompt_codes = model.audio_encoder.encode(prompt).audio_codes[0, 0]  # (K, P)
    new_frames = max(1, int(round(settings.seconds * loaded.frame_rate)))
    chunk_frames = max(1, int(round(settings.chunk_seconds * loaded.frame_rate)))
    run = _Run(loaded, prompt_codes, new_frames, chunk_frames, on_chunk, on_progress, should_stop)
    k = model.config.decoder.num_codebooks
    kwargs: dict[str, Any] = dict(input_values=prompt, max_new_tokens=new_frames + k - 1, do_sample=True,
                                  temperature=settings.temperature, top_k=settings.top_k or None,
                                  top_p=settings.top_p or None, stopping_criteria=StoppingCriteriaList([_Monitor(run)]))
    if settings.description:
        kwargs |= {k: v.to(device) for k, v in _text_inputs(loaded, settings.description).items()}
        kwargs["guidance_scale"] = settings.guidance_scale if settings.guidance_scale > 1 else None
    else:
        text_dim = getattr(model.config.text_encoder, "d_model", None) or model.config.text_encoder.hidden_size
        kwargs |= {"encoder_outputs": BaseModelOutput(last_hidden_state=torch.zeros(1, 1, text_dim, device=device)),
                   "attention_mask": torch.zeros(1, 1, dtype=torch.long, device=device),
                   "guidance_scale": settings.guidance_scale if settings.guidance_without_text else None}
    if settings.kv_cache == "static":
        from transformers import DynamicCache, EncoderDecoderCache, StaticCache

        # room for the prompt's frames, the new ones and the delay pattern's k - 1 extra steps
        length = prompt_codes.shape[1] + new_frames + 2 * k
        kwargs["cache"] = EncoderDecoderCache(StaticCache(config=model.config.decoder, max_cache_len=length),
                                              DynamicCache(config=model.config.decoder))
    elif settings.kv_cache != "dynamic":
        raise ContinuationError(f"kv_cache must be 'dynamic' or 'static', got {settings.kv_cache!r}")
    prefill_once(model)
    torch.manual_seed(int(settings.seed))
    try:
        with torch.no_grad():
            model.generate(**kwargs)
    except RuntimeError:
        # stopped mid-pattern, transformers' own un-delaying of the (unused) result fails
        if not run.cancelled:
            raise
    if run.cancelled:
        raise ContinuationCancelled()
    if run.emitted < new_frames:
        # the final stretch: the monitor's last call saw the last token step, so every frame exists
        assert run.last_codes is not None and run.last_codes.shape[1] >= run.p + new_frames
        run.emit(run.last_codes, run.emitted, new_frames)
    if on_progress is not None:
        on_progress(1.0)
    if on_codes is not None and run.last_codes is not None:
        on_codes(run.last_codes[:, : run.p + new_frames], run.p)
    return np.concatenate(run.chunks, axis=1)


def prefill_once(model: Any) -> None:
    """Make MusicGen's ``generate`` run the prompt's prefill once instead of twice.

    transformers 5.24's ``MusicgenForConditionalGeneration.generate`` runs ``_prefill`` itself,
    keeps the result in ``model_kwargs["prefill_outputs"]``, and then ``GenerationMixin._sample``
    runs ``_prefill`` again and discards the first. With the dynamic cache the second pass only
    wastes time (0.5 s of the first chunk's wait for a 1 s prompt on this CPU; the tokens are bit-
    identical either way); a cache passed in (the static one) would take the prompt twice and
    shift every position. The patch hands back the kept result; on a version that keeps none it
    calls the original, so it can never change what an unpatched model computes.
    """
    if getattr(model, "_genbridge_prefill_once", False) or not hasattr(type(model), "_prefill"):
        return
    original = type(model)._prefill

    def _prefill(input_ids: Any, generation_config: Any, model_kwargs: dict[str, Any], *args: Any,
                 **kwargs: Any) -> Any:
        kept = model_kwargs.pop("prefill_outputs", None)
        if kept is not None:
            return kept
        return original(model, input_ids, generation_config, model_kwargs, *args, **kwargs)

    model._prefill = _prefill
    model._genbridge_prefill_once = True


def _text_inputs(loaded: LoadedMusicgen, description: str) -> dict[str, Any]:
    if not loaded.text_encoder_loaded:
        raise ContinuationError("this model's text encoder is not available offline, so descriptions are off; "
                                "leave the description empty (text-free continuation works)")
    from transformers import AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(loaded.source.split(" + ")[0], local_files_only=True)
    except (OSError, ValueError) as exc:
        raise ContinuationError(f"no tokenizer for the description beside the model ({exc})") from exc
    tokens = tokenizer([description], return_tensors="pt", padding=True)
    return {"input_ids": tokens["input_ids"], "attention_mask": tokens["attention_mask"]}
