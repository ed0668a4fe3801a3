"""The mixer that runs inside the audio callback: voices, choke groups, voice stealing, limiter.

Why it looks like this: the callback runs on the audio thread every 1-6 ms and must never be
late. So it only adds ready arrays (clips resampled to the device rate before they got here)
into a preallocated buffer with in-place numpy operations; it takes no lock (triggers arrive
through a deque, whose append/popleft are atomic), allocates no arrays, and never logs.
Everything slow (resampling, files, models) happens elsewhere.

Timing: a trigger carries an absolute start frame, or a start time on the monotonic clock (or
"as soon as possible"). A time becomes a frame only in the block it falls in, from that block's
own time (``BlockClock``), never once at arrival: a hit asked for a bar (2 s) ahead would
otherwise inherit whatever the device's frame clock and the monotonic clock drift apart over its
lead, and the one block's wake-up jitter it was converted in (measured on jackd -d dummy under
load: a whole take of hits 2.1 ms early). The voice then starts at that exact frame of the
block, which is what makes OSC bundle timetags sample-accurate.
"""

from __future__ import annotations

import time
from collections import deque
from dataclasses import dataclass

import numpy as np

ASAP = -1
#: A chain whose first voice is waiting for its time (Trigger.chain).
CHAIN_WAITING = -2


@dataclass(frozen=True)
class Trigger:
    audio: np.ndarray  # (frames, channels) float32, C-contiguous, at the device rate
    gains: np.ndarray  # (channels,) float32: velocity x instrument gain x pan
    start_frame: int = ASAP
    choke_group: int = 0  # 0: none; a voice in the same group is faded out when this starts
    #: When to start on the monotonic clock instead of at ``start_frame`` (None: by frame).
    start_time: float | None = None
    #: A stream (continuation chunks played as they arrive): a trigger of the chain with neither
    #: a frame nor a time starts on the sample where the chain's previous voice ends, so the
    #: pieces join without a gap or an overlap of even one sample (times converted block by
    #: block are exact to about one sample, not to zero); one that comes after that sample
    #: starts at once. 0: no chain.
    chain: int = 0


@dataclass
class MixerStats:
    callbacks: int = 0
    voices_started: int = 0
    voices_stolen: int = 0
    voices_choked: int = 0
    limited_blocks: int = 0
    #: Voices with a time or frame that arrived after it (they start at once, late).
    late_starts: int = 0
    peak: float = 0.0


def velocity_gain(velocity: float, exponent: float) -> float:
    """A hit's playback gain for a velocity 0-1: velocity ** exponent (audio.velocity_exponent;
    2, the default, puts MIDI 40 19 dB under MIDI 120, as the soundfont kits play them)."""
    return float(max(0.0, min(1.0, velocity)) ** exponent)


def balance_gains(channels: int, gain: float, pan: float) -> np.ndarray:
    """Per-channel gains for a pan of -1 (left) .. 1 (right): unity at centre, no boost."""
    gains = np.full(channels, gain, dtype=np.float32)
    if channels >= 2:
        gains[0] *= min(1.0, 1.0 - pan)
        gains[1] *= min(1.0, 1.0 + pan)
    return gains


class BlockClock:
    """When each block is heard, on the monotonic clock, from the callback's own wake-up times.

    A callback wakes late by a varying amount, never early: on jackd -d dummy the PortAudio
    callback starts 0.03 ms into its JACK cycle when the machine is idle and up to 2 ms into it
    under load (and PortAudio's ``currentTime`` is ``jack_frame_time()`` read at that moment, so
    it carries the same jitter). So the time of frame ``f`` is ``f / rate`` plus the lower
    envelope of (wake time - block frame / rate) over the last ``window`` callbacks. That
    envelope is a line, not a constant: its slope is the rate error of the device's frame clock
    against the monotonic clock (measured -4 ppm for the dummy driver, tens of ppm for a sound
    card's crystal; a plain minimum over a 0.34 s window is biased by rate error x 0.34 s,
    3.4 ms at 1 %). The slope is the envelope's own change over ``baseline`` callbacks (5.5 s),
    so the wake-up jitter in it is divided by seconds.

    Audio-thread safe: preallocated arrays, in-place operations, no lock.
    """

    MIN_BASELINE_S = 2.0  # the least span the slope is measured over (30 us of jitter: 15 ppm)

    def __init__(self, sample_rate: int, window: int = 64, baseline: int = 1024) -> None:
        self.rate = float(sample_rate)
        self._x = np.zeros(window)  # block start frame / rate, s
        self._y = np.full(window, np.inf)  # wake time - x
        self._tmp = np.zeros(window)
        self._i = 0
        self._hist_x = np.zeros(baseline)  # (x, envelope) of past callbacks, for the slope
        self._hist_c = np.zeros(baseline)
        self._n = 0  # envelope values in the history
        self._seen = 0  # callbacks since the last reset: the envelope is settled after a window
        #: d(monotonic - frame / rate) / d(frame / rate): how much faster the monotonic clock runs.
        self.drift = 0.0

    def reset(self) -> None:
        """Forget the envelope (not the drift): after an xrun the frame clock may have slipped
        against the monotonic clock, and a minimum would hold the time from before the slip."""
        self._y.fill(np.inf)
        self._n = self._seen = 0

    def update(self, frame: int, wake: float) -> float:
        """The monotonic time of ``frame``, a block's first frame, given when its callback woke."""
        x = frame / self.rate
        i = self._i
        self._x[i] = x
        self._y[i] = wake - x
        self._i = (i + 1) % self._x.shape[0]
        tmp = self._tmp
        np.subtract(self._x, x, out=tmp)
        tmp *= -self.drift
        tmp += self._y  # each sample carried along the slope to x; the unfilled ones stay inf
        c = float(tmp.min())
        self._seen += 1
        if self._seen < self._x.shape[0]:  # a young envelope is as late as its few wake-ups:
            return x + c  # no slope from it (it would echo for a whole baseline)
        size = self._hist_x.shape[0]
        oldest = self._n % size if self._n >= size else 0
        if self._n:
            span = x - self._hist_x[oldest]
            if span >= self.MIN_BASELINE_S:
                self.drift = (c - float(self._hist_c[oldest])) / span
        j = self._n % size
        self._hist_x[j] = x
        self._hist_c[j] = c
        self._n += 1
        return x + c


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
        #: chain -> the frame after its latest voice's last (Trigger.chain).
        self._chain_end: dict[int, int] = {}
        self._audio: list[np.ndarray | None] = [None] * self.capacity
        self._pos = np.zeros(self.capacity, np.int64)
        self._start = np.zeros(self.capacity, np.int64)
        self._gain = np.zeros((self.capacity, channels), np.float32)
        self._group = np.zeros(self.capacity, np.int64)
        self._chain_of = np.zeros(self.capacity, np.int64)  # each voice's Trigger.chain
        #: Chains to silence (stop_chain), taken by the callback like triggers.
        self.stops: deque[int] = deque()
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

    def stop_chain(self, chain: int) -> None:
        """Silence a stream (its job was cancelled): its voices fade out over ``fade_ms`` from the
        next block, and its pieces not yet started are dropped. Any thread."""
        self.stops.append(chain)

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

    def _start_voice(self, trig: Trigger, start: int) -> None:
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
        self._chain_of[free] = trig.chain
        self._age[free] = self._serial
        self._fading[free] = False
        self.stats.voices_started += 1
        if trig.chain:
            self._chain_end.pop(trig.chain, None)  # re-inserted last: the dict's order is recency
            self._chain_end[trig.chain] = start + trig.audio.shape[0]
            if len(self._chain_end) > 64:  # streams long over
                del self._chain_end[next(iter(self._chain_end))]

    def process(self, out: np.ndarray, block_time: float | None = None) -> None:
        """Fill ``out`` (frames, channels) with the next block. Called from the audio callback.

        ``block_time``: the monotonic time this block's first frame is heard (default: now).
        """
        n = out.shape[0]
        block_start = self.frame
        if block_time is None:
            block_time = time.monotonic()
        self.clock = (block_start, block_time)
        self.stats.callbacks += 1
        while self.stops:  # silenced streams first, so none of their pieces starts below
            chain = self.stops.popleft()
            for v in range(self.capacity):
                if self._audio[v] is not None and self._chain_of[v] == chain:
                    self._fade_out(v, block_start)
            for _ in range(len(self.pending)):  # drop its waiting pieces, keep the rest in order
                trig = self.pending.popleft()
                if trig.chain != chain:
                    self.pending.append(trig)
            self._chain_end.pop(chain, None)
        # Every trigger waiting now, each once (one appended meanwhile by another thread comes
        # after them): a later one goes back to the end. No list: nothing allocated per block.
        for _ in range(len(self.pending)):
            trig = self.pending.popleft()
            if trig.start_time is not None:  # a time: its frame by this block's own time
                start = block_start + int(round((trig.start_time - block_time) * self.sample_rate))
            elif trig.chain and trig.start_frame == ASAP:
                end = self._chain_end.get(trig.chain, ASAP)
                if end == CHAIN_WAITING:
                    self.pending.append(trig)  # the chain's first voice waits for its time
                    continue
                start = end  # ASAP when the chain is unknown (a new mixer after a restart)
            else:
                start = trig.start_frame
            if start >= block_start + n:
                if trig.chain and self._chain_end.get(trig.chain) is None:
                    self._chain_end[trig.chain] = CHAIN_WAITING  # its followers wait behind it
                self.pending.append(trig)
            else:  # due in this block, or as soon as possible, or late: now
                if block_start > start != ASAP:
                    self.stats.late_starts += 1
                self._start_voice(trig, max(start, block_start))
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
