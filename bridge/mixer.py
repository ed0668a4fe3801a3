"""The mixer that runs inside the audio callback: voices, choke groups, voice stealing, limiter.

Why it looks like this: the callback runs on the audio thread every 1-6 ms and must never be
late. So it only adds ready arrays (clips resampled to the device rate before they got here)
into a preallocated buffer with in-place numpy operations; it takes no lock (triggers arrive
through a deque, whose append/popleft are atomic), allocates no arrays, and never logs.
Everything slow (resampling, files, models) happens elsewhere.

Timing: a trigger carries an absolute start frame (or "as soon as possible"); the callback
starts the voice at that exact frame of the block it falls in, which is what makes OSC bundle
timetags sample-accurate.
"""

from __future__ import annotations

import time
from collections import deque
from dataclasses import dataclass

import numpy as np

ASAP = -1


@dataclass(frozen=True)
class Trigger:
    audio: np.ndarray  # (frames, channels) float32, C-contiguous, at the device rate
    gains: np.ndarray  # (channels,) float32: velocity x instrument gain x pan
    start_frame: int = ASAP
    choke_group: int = 0  # 0: none; a voice in the same group is faded out when this starts


@dataclass
class MixerStats:
    callbacks: int = 0
    voices_started: int = 0
    voices_stolen: int = 0
    voices_choked: int = 0
    limited_blocks: int = 0
    peak: float = 0.0


def balance_gains(channels: int, gain: float, pan: float) -> np.ndarray:
    """Per-channel gains for a pan of -1 (left) .. 1 (right): unity at centre, no boost."""
    gains = np.full(channels, gain, dtype=np.float32)
    if channels >= 2:
        gains[0] *= min(1.0, 1.0 - pan)
        gains[1] *= min(1.0, 1.0 + pan)
    return gains


class Mixer:
    CEILING = np.float32(0.999)  # -0.009 dBFS: the most the limiter ever lets out

    def __init__(self, sample_rate: int, channels: int = 2, max_voices: int = 32, max_block: int = 8192,
                 fade_ms: float = 5.0, limiter_threshold: float = 0.7, master_gain: float = 1.0) -> None:
        self.sample_rate = sample_rate
        self.channels = channels
        self.max_voices = max_voices
        self.capacity = max_voices * 2  # room for voices that are fading out after a steal or choke
        self.fade_len = max(1, int(sample_rate * fade_ms / 1000))
        self.threshold = float(limiter_threshold)
        self.master_gain = np.float32(master_gain)
        self.pending: deque[Trigger] = deque()
        self.frame = 0  # absolute frame at the start of the next block
        #: (frame, monotonic time) of the latest block start, published by the callback in one
        #: assignment, so other threads map wall-clock times to frames without a lock.
        self.clock: tuple[int, float] = (0, time.monotonic())
        self.stats = MixerStats()
        self._audio: list[np.ndarray | None] = [None] * self.capacity
        self._pos = np.zeros(self.capacity, np.int64)
        self._start = np.zeros(self.capacity, np.int64)
        self._gain = np.zeros((self.capacity, channels), np.float32)
        self._group = np.zeros(self.capacity, np.int64)
        self._age = np.zeros(self.capacity, np.int64)
        self._fading = np.zeros(self.capacity, bool)
        self._fade_at = np.zeros(self.capacity, np.int64)  # absolute frame where the fade starts
        self._serial = 0
        self._ramp = (0.5 * (1 + np.cos(np.linspace(0, np.pi, self.fade_len)))).astype(np.float32)
        self._mix = np.zeros((max_block, channels), np.float32)
        self._tmp = np.zeros((max_block, channels), np.float32)
        self._env = np.zeros(max_block, np.float32)
        self._abs = np.zeros((max_block, channels), np.float32)
        self._sign = np.zeros((max_block, channels), np.float32)

    # ---------------------------------------------------------------- any thread

    def trigger(self, trig: Trigger) -> None:
        self.pending.append(trig)

    def frame_at(self, monotonic_time: float) -> int:
        """The absolute frame that plays at ``monotonic_time`` (by the latest block's clock)."""
        frame, t = self.clock
        return frame + int(round((monotonic_time - t) * self.sample_rate))

    def active_voices(self) -> int:
        return sum(a is not None for a in self._audio)

    # ---------------------------------------------------------------- audio thread

    def _fade_out(self, v: int, at_frame: int) -> None:
        if not self._fading[v]:
            self._fading[v] = True
            self._fade_at[v] = at_frame

    def _start_voice(self, trig: Trigger, block_start: int) -> None:
        start = block_start if trig.start_frame == ASAP or trig.start_frame < block_start else trig.start_frame
        if trig.choke_group:
            for v in range(self.capacity):
                if self._audio[v] is not None and self._group[v] == trig.choke_group:
                    self._fade_out(v, start)
                    self.stats.voices_choked += 1
        sounding = [v for v in range(self.capacity) if self._audio[v] is not None and not self._fading[v]]
        if len(sounding) >= self.max_voices:
            oldest = min(sounding, key=lambda v: self._age[v])
            self._fade_out(oldest, start)
            self.stats.voices_stolen += 1
        free = next((v for v in range(self.capacity) if self._audio[v] is None), None)
        if free is None:  # every slot is busy fading: drop the oldest outright
            free = int(min(range(self.capacity), key=lambda v: self._age[v]))
        self._serial += 1
        self._audio[free] = trig.audio
        self._pos[free] = 0
        self._start[free] = start
        self._gain[free] = trig.gains
        self._group[free] = trig.choke_group
        self._age[free] = self._serial
        self._fading[free] = False
        self.stats.voices_started += 1

    def process(self, out: np.ndarray, block_time: float | None = None) -> None:
        """Fill ``out`` (frames, channels) with the next block. Called from the audio callback.

        ``block_time``: the monotonic time this block's first frame is heard (default: now).
        """
        n = out.shape[0]
        block_start = self.frame
        self.clock = (block_start, time.monotonic() if block_time is None else block_time)
        self.stats.callbacks += 1
        later: list[Trigger] = []
        while self.pending:
            trig = self.pending.popleft()
            if trig.start_frame != ASAP and trig.start_frame >= block_start + n:
                later.append(trig)
            else:
                self._start_voice(trig, block_start)
        for trig in later:
            self.pending.append(trig)
        mix = self._mix[:n]
        mix.fill(0.0)
        for v in range(self.capacity):
            audio = self._audio[v]
            if audio is None:
                continue
            s = int(max(0, self._start[v] - block_start))
            if s >= n:
                continue
            pos = int(self._pos[v])
            count = min(n - s, audio.shape[0] - pos)
            tmp = self._tmp[:count]
            np.multiply(audio[pos : pos + count], self._gain[v], out=tmp)
            finished = pos + count >= audio.shape[0]
            if self._fading[v]:
                finished |= self._apply_fade(v, tmp, block_start + s, count)
            mix[s : s + count] += tmp
            self._pos[v] = pos + count
            if finished:
                self._audio[v] = None
                self._fading[v] = False
        if self.master_gain != 1.0:
            mix *= self.master_gain
        self._limit(mix)
        out[:] = mix
        self.frame = block_start + n

    def _apply_fade(self, v: int, tmp: np.ndarray, first_frame: int, count: int) -> bool:
        """Multiply ``tmp`` by the voice's fade-out envelope; True when the fade is over."""
        env = self._env[:count]
        k = int(self._fade_at[v] - first_frame)  # where the fade starts in this segment
        env.fill(1.0)
        if k < count:
            begin = max(0, k)
            ramp_from = begin - k
            m = max(0, min(count - begin, self.fade_len - ramp_from))
            env[begin : begin + m] = self._ramp[ramp_from : ramp_from + m]
            env[begin + m :] = 0.0
        np.multiply(tmp, env[:, None], out=tmp)
        return first_frame + count >= self._fade_at[v] + self.fade_len

    def _limit(self, mix: np.ndarray) -> None:
        """Soft limiter: untouched below the threshold, a tanh knee above, never above CEILING."""
        n = mix.shape[0]
        a = self._abs[:n]
        np.abs(mix, out=a)
        peak = float(a.max()) if n else 0.0
        self.stats.peak = max(self.stats.peak * 0.999, peak)
        if peak <= self.threshold:
            return
        self.stats.limited_blocks += 1
        t = self.threshold
        sign = self._sign[:n]
        np.sign(mix, out=sign)
        excess = self._tmp[:n]
        np.subtract(a, t, out=excess)
        np.maximum(excess, 0.0, out=excess)
        excess *= 1.0 / (1.0 - t)
        np.tanh(excess, out=excess)
        excess *= 1.0 - t
        np.minimum(a, t, out=a)
        a += excess
        np.minimum(a, self.CEILING, out=a)  # tanh reaches 1.0 in float32 for large excess
        np.multiply(a, sign, out=mix)
