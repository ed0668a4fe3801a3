"""Lengths in bars: cut generated audio on the bar, or make it loop.

Why exact frames: a sampler or a DAW clip set to 2 bars at 120 BPM expects 4.000 s; a file one
50 Hz MusicGen frame (20 ms) long or short drifts off the grid on every repeat. So the model is
asked for a little more than the bars (:func:`frames_to_generate`) and the result is cut to
``round(bars x seconds per bar x rate)`` frames.

The loop: a file whose last sample steps into its first no further than its own neighbouring
samples step (no click on the wrap). The audio is generated ``overlap`` longer; the overlap - what
the model made *after* the bar line - is crossfaded into the start, so that the first sample of
the loop *is* the sample that followed the last one in the generated audio (the wrap is a step
the model itself made), and by the end of the overlap the loop is its own start again. The fade
is equal-power (the two signals are unrelated music, not copies); the start is moved (within a
few ms) to where the overlap and the start are most alike, so the crossfade does not comb.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

#: End fade of a cut (not looped) result: long enough to avoid a click, short enough to keep the
#: last hit on the bar.
CUT_FADE_S = 0.005
#: What a loop crossfades over, and how far its start may move to find a good match.
LOOP_OVERLAP_S = 0.05
LOOP_SEARCH_S = 0.01


@dataclass(frozen=True)
class BarShape:
    """What a length in bars asked for, recorded in the sidecar."""

    bars: float
    bpm: float
    quantum: float
    loop: bool

    @property
    def seconds(self) -> float:
        return self.bars * self.quantum * 60.0 / self.bpm

    def frames(self, rate: int) -> int:
        return int(round(self.seconds * rate))

    def seconds_to_generate(self) -> float:
        """What the model must make: the bars, the loop's overlap and search room, and one
        MusicGen frame (20 ms) of rounding."""
        extra = LOOP_OVERLAP_S + LOOP_SEARCH_S if self.loop else 0.0
        return self.seconds + extra + 0.04

    def meta(self) -> dict[str, Any]:
        return {"bars": self.bars, "tempo_bpm": round(self.bpm, 4), "beats_per_bar": self.quantum,
                "loop": self.loop, "length_s": round(self.seconds, 6)}


class ShapeError(ValueError):
    """The audio is too short for the bars asked for."""


def cut(audio: np.ndarray, frames: int, rate: int, fade_s: float = CUT_FADE_S) -> np.ndarray:
    """``audio`` (channels, n) cut to ``frames`` with a raised-cosine fade over its last ``fade_s``."""
    if audio.shape[1] < frames:
        raise ShapeError(f"{audio.shape[1]} frames made, {frames} needed")
    out = np.array(audio[:, :frames], dtype=np.float32)
    n = min(frames, max(1, int(round(fade_s * rate))))
    ramp = 0.5 * (1 + np.cos(np.linspace(0, np.pi, n)))
    out[:, frames - n:] *= ramp.astype(np.float32)
    return out


def best_start(audio: np.ndarray, frames: int, overlap: int, search: int) -> int:
    """The start (0..search) where the audio after the loop's end is most like the loop's start."""
    mono = audio.mean(axis=0).astype(np.float64)
    best, best_score = 0, -np.inf
    for k in range(search + 1):
        head = mono[k : k + overlap]
        tail = mono[k + frames : k + frames + overlap]
        if len(tail) < overlap:
            break
        denom = np.sqrt(np.dot(head, head) * np.dot(tail, tail)) or 1.0
        score = float(np.dot(head, tail) / denom)
        if score > best_score:
            best, best_score = k, score
    return best


def loop(audio: np.ndarray, frames: int, rate: int, overlap_s: float = LOOP_OVERLAP_S,
         search_s: float = LOOP_SEARCH_S) -> np.ndarray:
    """``frames`` of ``audio`` (channels, n) that loop: its end runs on into its start."""
    # a loop shorter than a few crossfades (a quarter bar at a very fast tempo) fades over less
    overlap = max(1, min(int(round(overlap_s * rate)), frames // 4))
    search = int(round(search_s * rate))
    if audio.shape[1] < frames + overlap:
        raise ShapeError(f"{audio.shape[1]} frames made, {frames + overlap} needed for a loop")
    search = min(search, audio.shape[1] - frames - overlap)
    k = best_start(audio, frames, overlap, search)
    body = np.array(audio[:, k : k + frames], dtype=np.float64)
    after = audio[:, k + frames : k + frames + overlap].astype(np.float64)
    # equal power, and exactly 0/1 at the ends: sample 0 of the loop is the one after its last
    t = np.arange(overlap) / overlap
    fade_in, fade_out = np.sin(0.5 * np.pi * t), np.cos(0.5 * np.pi * t)
    body[:, :overlap] = body[:, :overlap] * fade_in + after * fade_out
    return body.astype(np.float32)


def shape(audio: np.ndarray, rate: int, spec: BarShape) -> np.ndarray:
    """The result a bars request asked for: cut on the bar, or looped."""
    frames = spec.frames(rate)
    return loop(audio, frames, rate) if spec.loop else cut(audio, frames, rate)
