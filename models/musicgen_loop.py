"""MusicGen's token loop: the delay pattern, guidance, sampling, takes and sliding windows.

Why this module exists: every MusicGen job - continuing a clip, text to music, several takes of
either, pieces longer than the model's window - is the same loop over token steps, and it must
hand out audio while it runs, stop between steps when cancelled, and never give the LM more
positions than it was trained on. Here:

- **Delay pattern**: at decoder position p, codebook k holds frame p - 1 - k (position 0 is the
  start token), so a window of C context frames and G new ones takes C + G + K - 1 positions.
  Context frames are forced; new ones are sampled.
- **Guidance**: with a description, each take has a conditioned and an unconditioned row;
  logits = uncond + (cond - uncond) * scale, then temperature, top-k, top-p, as transformers'
  processors do in that order.
- **Takes**: N takes are N rows of one batch (2N with guidance) - memory-bound decoding reads
  the weights once for all of them - each sampled from its own generator, so take i with
  seed s is the same music whichever other takes run beside it (up to the last bits of the
  batched products).
- **Windows**: past the window (the model's ``generation_config.max_length``: 30 s for the
  public models) generation slides: each next window starts from the last ``window - stride``
  seconds of codes as context and makes ``stride`` seconds more, keeping the text, as
  audiocraft's ``extend_stride`` does. The LM's cache is allocated to the window's size, so a
  longer context cannot happen silently; ``max_context_positions`` records what it held.
- **Chunks**: finished frames are decoded with EnCodec from a stretch with context on both
  sides and cut at frame boundaries, so chunks join without a seam; a short first chunk comes
  early (``first_chunk_seconds``), the rest every ``chunk_seconds``.

It knows no transport and no worker: callbacks report to whoever called.
"""

from __future__ import annotations

import logging
import math
import time
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np
import torch

from models.musicgen_lm import MusicgenLM

log = logging.getLogger(__name__)

#: Frames of decoded context on the left of a chunk's stretch, and frames held back on the
#: right until more tokens exist (EnCodec's decoder is not causal: a frame's audio depends on
#: its neighbours). musicgen-small's EnCodec with 25 and 5 decodes a stretch to within 1e-7 of
#: one decode of everything (50 and 10 gave the same; 12 gave 4e-6): the decode per chunk of
#: 1.5 s is 1.4x its frames, not 1.8x.
CONTEXT_FRAMES = 25
LOOKAHEAD_FRAMES = 5


class GenerationCancelled(Exception):
    """The job was cancelled; the chunks handed out so far stay valid."""


@dataclass
class Sampling:
    temperature: float = 1.0
    top_k: int = 250
    top_p: float = 0.0
    #: > 1 with text: classifier-free guidance (two rows per take).
    guidance_scale: float = 3.0


@dataclass
class LoopSettings:
    #: New frames per take.
    frames: int
    seeds: list[int]
    sampling: Sampling = field(default_factory=Sampling)
    #: Frames of a window after the first: new frames per window (the rest is context).
    stride_frames: int = 900
    chunk_frames: int = 75
    first_chunk_frames: int = 25
    #: Guidance rows even without text (benchmarks measure what guidance costs).
    guidance_without_text: bool = False
    #: Most bytes of KV cache one pass may hold: more takes than fit run in several passes.
    cache_budget_bytes: int = 2 << 30
    #: torch threads for the token steps (a window's prefill uses the process's count). One
    #: matrix-vector product per weight is too little work to share: with passive OpenMP waits
    #: (the workers' rule, so an idle or waiting model never spins on a shared core) waking a
    #: second thread ~100 times a step cost more than it brought (bench/continuation.py).
    step_threads: int = 1
    #: Decode chunks on a second thread while the token steps go on.
    background_decode: bool = True


@dataclass
class Timings:
    """Where a run's time went, in seconds (the benchmark's split)."""

    lm: float = 0.0
    sampling: float = 0.0
    decode: float = 0.0
    steps: int = 0
    first_chunk: float | None = None

    def as_dict(self) -> dict[str, Any]:
        return {"lm_s": round(self.lm, 4), "sampling_s": round(self.sampling, 4), "decode_s": round(self.decode, 4),
                "steps": self.steps, "first_chunk_s": None if self.first_chunk is None else round(self.first_chunk, 4)}


@dataclass
class LoopResult:
    #: Per take: (channels, frames) float32 at the model's rate, the new audio only.
    audio: list[np.ndarray]
    #: Per take: every frame's codes (K, prompt + new).
    codes: list[torch.Tensor]
    windows: list[dict[str, float]]
    window_positions: int
    max_context_positions: int
    stride_frames: int
    passes: int
    timings: Timings


def sample(logits: torch.Tensor, sampling: Sampling, generators: list[torch.Generator]) -> torch.Tensor:
    """(rows, K, V) logits (2 x takes rows with guidance: conditioned first) -> (takes, K) tokens."""
    takes = len(generators)
    if logits.shape[0] == 2 * takes:
        cond, uncond = logits[:takes], logits[takes:]
        logits = uncond + (cond - uncond) * sampling.guidance_scale
    logits = logits / max(sampling.temperature, 1e-5)
    vocab = logits.shape[-1]
    if sampling.top_k and sampling.top_k < vocab:
        kth = torch.topk(logits, sampling.top_k, dim=-1).values[..., -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if sampling.top_p and sampling.top_p < 1.0:
        ordered, order = torch.sort(logits, dim=-1)  # ascending, as transformers' TopP warper
        cumulative = ordered.softmax(dim=-1).cumsum(dim=-1)
        drop = cumulative <= 1 - sampling.top_p
        drop[..., -1] = False  # keep at least the most likely token
        logits = logits.masked_fill(drop.scatter(-1, order, drop), float("-inf"))
    probs = logits.softmax(dim=-1)
    out = torch.empty(probs.shape[:2], dtype=torch.long, device=probs.device)
    for i, generator in enumerate(generators):
        out[i] = torch.multinomial(probs[i], 1, generator=generator)[:, 0]
    return out


def plan_windows(context: int, frames: int, window: int, codebooks: int, stride: int) -> list[tuple[int, int]]:
    """(context frames, new frames) of each window: the first takes the prompt's ``context``
    frames and fills the window, each later one keeps ``span - stride`` frames of context and
    makes up to ``stride`` (span = window - codebooks + 1 frames fit in ``window`` positions)."""
    span = window - codebooks + 1
    if span < 2:
        raise ValueError(f"a window of {window} positions holds no frames for {codebooks} codebooks")
    context = min(context, span - 1)
    plan = [(context, min(frames, span - context))]
    made = plan[0][1]
    while made < frames:
        new = min(frames - made, stride)
        plan.append((span - stride, new))
        made += new
    return plan


def effective_stride(stride_frames: int, window: int, codebooks: int) -> int:
    """The stride clipped to the window: at least a frame, at most 3/4 of it (a window with less
    context than a quarter of itself would forget the music it continues)."""
    span = window - codebooks + 1
    return max(1, min(int(stride_frames), (3 * span) // 4))


class _Chunker:
    """Decodes finished frames of every take into chunks as they arrive.

    With ``background`` the EnCodec decode runs on a thread of its own while the token loop goes
    on (the second core of a 2-core machine: the loop's token steps run on one thread), and the
    chunks are handed out from the loop's thread, in order, as their decodes finish (a worker's
    pipe must be written from one thread). ``should_stop`` is asked again before each chunk goes
    out: when the decode thread lags (a loaded machine), several chunks finish between two token
    steps, and a stream cancelled after the first of them must not play the rest."""

    def __init__(self, loaded: Any, codes: list[torch.Tensor], prompt_frames: int, total: int,
                 settings: LoopSettings, on_chunk: Callable[[int, int, np.ndarray], None] | None,
                 timings: Timings, t0: float, background: bool,
                 should_stop: Callable[[], bool] | None = None) -> None:
        self.loaded = loaded
        self.codes = codes
        self.p = prompt_frames
        self.total = total
        self.settings = settings
        self.on_chunk = on_chunk
        self.should_stop = should_stop
        self.timings = timings
        self.t0 = t0
        self.emitted = 0
        self.index = 0
        self.hop = int(math.prod(loaded.model.config.audio_encoder.upsampling_ratios))
        self.chunks: list[list[np.ndarray]] = [[] for _ in codes]
        self.pending: deque[Future[np.ndarray]] = deque()
        #: The most positions the LM held in this pass's windows.
        self.max_positions = 0
        self.pool = ThreadPoolExecutor(1, thread_name_prefix="encodec") if background else None

    def advance(self, done: int) -> None:
        """``done`` new frames of every take are final."""
        ready = done - LOOKAHEAD_FRAMES if done < self.total else done
        size = self.settings.first_chunk_frames if self.index == 0 else self.settings.chunk_frames
        if ready >= self.total or ready - self.emitted >= size:
            self.emit(min(ready, self.total))
        self.deliver(block=False)

    def emit(self, end: int) -> None:
        if end <= self.emitted:
            return
        s, e = self.p + self.emitted, self.p + end
        w0 = max(0, s - CONTEXT_FRAMES)
        stretch = torch.stack([c[:, w0: e + LOOKAHEAD_FRAMES] for c in self.codes])  # (takes, K, T): a copy
        lo, hi = (s - w0) * self.hop, (e - w0) * self.hop
        if self.pool is None:
            self.pending.append(_done(self._decode(stretch, lo, hi)))
        else:
            self.pending.append(self.pool.submit(self._decode, stretch, lo, hi))
        self.emitted = end
        self.index += 1

    def _decode(self, stretch: torch.Tensor, lo: int, hi: int) -> np.ndarray:
        t = time.perf_counter()
        with torch.no_grad():
            audio = self.loaded.model.audio_encoder.decode(stretch[None], [None])[0]
        out = audio[:, :, lo:hi].float().cpu().numpy()
        self.timings.decode += time.perf_counter() - t
        return out

    def deliver(self, block: bool) -> None:
        """Hand out the decoded chunks in order: those done (all of them when ``block``)."""
        while self.pending and (block or self.pending[0].done()):
            if self.should_stop is not None and self.should_stop():
                raise GenerationCancelled()
            audio = self.pending.popleft().result()
            if self.timings.first_chunk is None:
                self.timings.first_chunk = time.perf_counter() - self.t0
            index = len(self.chunks[0])
            for take in range(len(self.codes)):
                chunk = audio[take].copy()
                self.chunks[take].append(chunk)
                if self.on_chunk is not None:
                    self.on_chunk(take, index, chunk)

    def close(self) -> None:
        if self.pool is not None:
            self.pool.shutdown(wait=True, cancel_futures=True)


def _done(value: np.ndarray) -> Future[np.ndarray]:
    future: Future[np.ndarray] = Future()
    future.set_result(value)
    return future


def run_loop(lm: MusicgenLM, loaded: Any, prompt_codes: torch.Tensor | None, settings: LoopSettings, *,
             memory: torch.Tensor | None = None, memory_mask: torch.Tensor | None = None,
             on_chunk: Callable[[int, int, np.ndarray], None] | None = None,
             on_progress: Callable[[float], None] | None = None,
             should_stop: Callable[[], bool] | None = None, t0: float | None = None) -> LoopResult:
    """Make ``settings.frames`` new frames for each seed (take) after ``prompt_codes`` (K, P; None
    for a fresh piece). ``memory`` (1, T, hidden) is the projected description (None: no text).
    ``on_chunk(take, index, audio)``; ``on_progress(fraction)``; ``should_stop()`` between steps."""
    t0 = time.perf_counter() if t0 is None else t0
    takes = len(settings.seeds)
    k = lm.codebooks
    timings = Timings()
    guided = (memory is not None or settings.guidance_without_text) and settings.sampling.guidance_scale > 1
    rows_per_take = 2 if guided else 1
    stride = effective_stride(settings.stride_frames, lm.window, k)
    p = 0 if prompt_codes is None else int(prompt_codes.shape[1])
    plan = plan_windows(p, settings.frames, lm.window, k, stride)
    if plan[0][0] < p:
        log.info("the prompt's %d frames are more than the window allows: its last %d are used", p, plan[0][0])
        prompt_codes = prompt_codes[:, p - plan[0][0]:] if prompt_codes is not None else None
        p = plan[0][0]
    positions = max(c + g + k - 1 for c, g in plan)
    per_pass = max(1, min(takes, settings.cache_budget_bytes // max(1, lm.cache_bytes(rows_per_take, positions))))
    device = lm.device
    codes = [torch.full((k, p + settings.frames), -1, dtype=torch.long, device=device) for _ in range(takes)]
    if prompt_codes is not None:
        for c in codes:
            c[:, :p] = prompt_codes.to(device)
    threads = torch.get_num_threads()
    try:
        return _passes(lm, loaded, codes, p, plan, positions, per_pass, rows_per_take, settings, memory, memory_mask,
                       timings, stride, threads, on_chunk, on_progress, should_stop, t0)
    finally:
        torch.set_num_threads(threads)
        lm.release()  # the cache is as large as the request made it: give it back between requests


def _passes(lm: MusicgenLM, loaded: Any, codes: list[torch.Tensor], p: int, plan: list[tuple[int, int]],
            positions: int, per_pass: int, rows_per_take: int, settings: LoopSettings, memory: torch.Tensor | None,
            memory_mask: torch.Tensor | None, timings: Timings, stride: int, threads: int,
            on_chunk: Callable[[int, int, np.ndarray], None] | None, on_progress: Callable[[float], None] | None,
            should_stop: Callable[[], bool] | None, t0: float) -> LoopResult:
    """The token steps of every pass (the takes one KV cache holds; each pass streams its own
    chunks) and window."""
    takes, device = len(settings.seeds), lm.device
    audio: list[np.ndarray] = [np.zeros((loaded.channels, 0), np.float32)] * takes
    windows: list[dict[str, float]] = []
    max_positions = 0
    bos = int(loaded.model.generation_config.decoder_start_token_id or lm.vocab)
    fr = float(loaded.frame_rate)
    passes = [list(range(i, min(takes, i + per_pass))) for i in range(0, takes, per_pass)]
    for pass_index, members in enumerate(passes):
        generators = [torch.Generator(device=device).manual_seed(int(settings.seeds[i])) for i in members]
        rows = rows_per_take * len(members)
        text_rows = len(members) if memory is not None else 0
        lm.start(rows, positions, None if memory is None else memory.expand(text_rows, -1, -1),
                 None if memory_mask is None else memory_mask.expand(text_rows, -1))
        chunker = _Chunker(loaded, [codes[i] for i in members], p, settings.frames, settings,
                           None if on_chunk is None else (lambda j, index, c, m=members: on_chunk(m[j], index, c)),
                           timings, t0, settings.background_decode and device.type == "cpu", should_stop)
        try:
            made = _windows(lm, codes, p, plan, members, generators, rows_per_take, settings, chunker, timings,
                            threads, windows if pass_index == 0 else None, bos, fr, pass_index, len(passes),
                            on_progress, should_stop)
            chunker.emit(settings.frames)
            chunker.deliver(block=True)
        finally:
            chunker.close()
        assert made == settings.frames
        for j, i in enumerate(members):
            audio[i] = np.concatenate(chunker.chunks[j], axis=1)
        max_positions = max(max_positions, chunker.max_positions)
    if on_progress is not None:
        on_progress(1.0)
    return LoopResult(audio, codes, windows, lm.window, max_positions, stride, len(passes), timings)


def _windows(lm: MusicgenLM, codes: list[torch.Tensor], p: int, plan: list[tuple[int, int]], members: list[int],
             generators: list[torch.Generator], rows_per_take: int, settings: LoopSettings, chunker: _Chunker,
             timings: Timings, threads: int, windows: list[dict[str, float]] | None, bos: int, fr: float,
             pass_index: int, passes: int, on_progress: Callable[[float], None] | None,
             should_stop: Callable[[], bool] | None) -> int:
    """One pass's windows, step by step; returns the new frames made (all of them)."""
    k, device = lm.codebooks, lm.device
    last_progress = -1.0
    made = 0  # new frames of this pass
    for w, (context, new) in enumerate(plan):
        lm.restart()
        start = p + made - context
        ctx = torch.stack([codes[i][:, start: start + context] for i in members])  # (n, K, C)
        if windows is not None:
            windows.append({"start_s": round(start / fr, 4), "context_s": round(context / fr, 4),
                            "new_s": round(new / fr, 4), "positions": context + new + k - 1})
        # prefill positions 0..C: every token there is known
        prefill = torch.full((len(members), k, context + 1), bos, dtype=torch.long, device=device)
        for cb in range(k):
            if context - cb > 0:
                prefill[:, cb, 1 + cb:] = ctx[:, cb, : context - cb]
        window_codes = torch.cat([ctx, torch.zeros(len(members), k, new, dtype=torch.long, device=device)], 2)
        tokens = prefill.repeat(rows_per_take, 1, 1)
        last = context  # the last fed position
        chunker.deliver(block=False)  # what is decoded goes out before a long prefill
        torch.set_num_threads(threads)  # a prefill is a matrix product worth the threads
        prefilled = False
        written = 0  # this window's new frames copied into the takes' codes
        while True:
            if should_stop is not None and should_stop():
                raise GenerationCancelled()
            t = time.perf_counter()
            with torch.no_grad():
                logits = lm.step(tokens)
            t1 = time.perf_counter()
            timings.lm += t1 - t
            if not prefilled:  # every window's first step is its prefill; the rest are token steps
                torch.set_num_threads(max(1, settings.step_threads) if device.type == "cpu" else threads)
                prefilled = True
            timings.steps += 1
            # the tokens at position last + 1: codebook cb's frame last - cb
            sampled = sample(logits, settings.sampling, generators)
            nxt = torch.full((len(members), k), bos, dtype=torch.long, device=device)
            for cb in range(k):
                f = last - cb
                if f < 0:
                    continue
                if f < context:
                    nxt[:, cb] = window_codes[:, cb, f]
                elif f < context + new:
                    window_codes[:, cb, f] = sampled[:, cb]
                    nxt[:, cb] = sampled[:, cb]
            timings.sampling += time.perf_counter() - t1
            complete = min(new, max(0, last - k + 2 - context))
            if complete > written:  # at most one frame a step: copy only what is new
                for j, i in enumerate(members):
                    codes[i][:, p + made + written: p + made + complete] = \
                        window_codes[j, :, context + written: context + complete]
                written = complete
            chunker.advance(made + complete)
            frac = (pass_index * settings.frames + made + complete) / (passes * settings.frames)
            if on_progress is not None and frac - last_progress >= 0.01:
                last_progress = frac
                on_progress(min(1.0, frac))
            if complete >= new:
                break
            last += 1
            tokens = nxt[:, :, None].repeat(rows_per_take, 1, 1)
        chunker.max_positions = max(chunker.max_positions, lm.max_length)
        made += new
    return made
