"""The audio device: a sounddevice stream whose callback runs the mixer and fills a capture ring.

Why here and not in a worker: the pad hit must sound within one buffer, and clips are already
in memory in this process. The callback only mixes (see ``bridge.mixer``) and copies input
into a preallocated ring buffer; resampling happens once, when a clip enters a pool
(``prepare``, on the writer thread), with soxr.

A device that disappears (JACK restarted, USB interface unplugged) is noticed by a supervisor
task and reopened when it returns; the daemon keeps serving OSC and the shared folder meanwhile.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from typing import Any

import numpy as np

from bridge.clip import Clip
from bridge.config import AudioConfig, InstrumentConfig
from bridge.mixer import ASAP, Mixer, Trigger, balance_gains

log = logging.getLogger(__name__)


class AudioUnavailable(RuntimeError):
    """No usable device (none configured, no sound card, PortAudio missing); the reason is the message."""


def _sd() -> Any:
    try:
        import sounddevice as sd
    except OSError as exc:  # the PortAudio library itself is missing
        raise AudioUnavailable(f"PortAudio is not available ({exc}); install libportaudio2") from exc
    return sd


def _reinitialize(sd: Any) -> None:
    """Make PortAudio rescan its host APIs (a JACK server started or restarted since)."""
    try:
        sd._terminate()
    except Exception:
        pass
    sd._initialize()


def find_device(sd: Any, wanted: str, kind: str = "output") -> int:
    """Device index by index, exact name, or case-insensitive substring; 'default' for the default."""
    key = "max_output_channels" if kind == "output" else "max_input_channels"
    devices = sd.query_devices()
    candidates = [i for i, d in enumerate(devices) if d[key] > 0]
    if not candidates:
        raise AudioUnavailable(f"no {kind} audio device (no sound card, and no JACK server running)")
    if wanted == "default":
        default = sd.default.device[0 if kind == "input" else 1]
        return default if default in candidates else candidates[0]
    if wanted.isdigit():
        index = int(wanted)
        if index in candidates:
            return index
        raise AudioUnavailable(f"audio device {index} does not exist or has no {kind} channels")
    for i in candidates:
        if devices[i]["name"] == wanted:
            return i
    matches = [i for i in candidates if wanted.lower() in devices[i]["name"].lower()]
    if matches:
        return matches[0]
    names = ", ".join(repr(devices[i]["name"]) for i in candidates)
    raise AudioUnavailable(f"no {kind} device matches {wanted!r} (devices: {names})")


class AudioOutput:
    """Owns the stream, the mixer and the capture ring; survives the device going away."""

    def __init__(self, config: AudioConfig, instruments: dict[str, InstrumentConfig]) -> None:
        self.config = config
        self.instruments = instruments
        self.state = "closed"  # running, lost, unavailable, closed
        self.reason = ""
        self.device_name = ""
        self.sample_rate = 0
        self.channels = 2
        self.in_channels = 0
        self.mixer: Mixer | None = None
        self.stream: Any = None
        self.underflows = 0
        self.overflows = 0
        self.load = 0.0
        self.reopened = 0
        self._ring: np.ndarray | None = None
        self._ring_pos = 0  # total frames written
        self._lock = threading.Lock()  # open/close only; never taken by the callback
        self._last_callbacks = -1
        self._stalled_since = 0.0
        self._clock_offset = float("inf")  # monotonic - stream time, on-time callbacks (the minimum)
        #: Stream-internal delay between rendering a block and its frames leaving the stream's
        #: ports (PortAudio's buffer adaptation): what the callback reports as output latency
        #: minus the device latency downstream of the ports.
        self.pipeline_s = 0.0

    # ------------------------------------------------------------------ opening

    def open(self) -> None:
        """Open the configured device; raises AudioUnavailable with the reason."""
        with self._lock:
            sd = _sd()
            _reinitialize(sd)
            index = find_device(sd, self.config.device)
            info = sd.query_devices(index)
            rate = self.config.sample_rate or int(info["default_samplerate"])
            channels = min(2, int(info["max_output_channels"]))
            in_channels = min(self.config.input_channels, int(info["max_input_channels"]))
            if self.mixer is None or self.mixer.sample_rate != rate or self.mixer.channels != channels:
                self.mixer = Mixer(rate, channels, max_voices=self.config.max_voices, fade_ms=self.config.fade_ms,
                                   limiter_threshold=10 ** (self.config.limiter_threshold_db / 20),
                                   master_gain=10 ** (self.config.master_gain_db / 20))
            if in_channels and (self._ring is None or self._ring.shape[1] != in_channels or self.sample_rate != rate):
                self._ring = np.zeros((int(rate * self.config.capture_seconds), in_channels), np.float32)
                self._ring_pos = 0
            common = dict(samplerate=rate, blocksize=self.config.block_size, dtype="float32",
                          latency=self.config.latency if self.config.latency else "low")
            if in_channels:
                stream = sd.Stream(device=(index, index), channels=(in_channels, channels),
                                   callback=self._duplex_callback, **common)
            else:
                stream = sd.OutputStream(device=index, channels=channels, callback=self._output_callback, **common)
            out_latency = stream.latency[1] if isinstance(stream.latency, tuple) else stream.latency
            self._device_latency = float(out_latency)
            self._clock_offset = float("inf")
            stream.start()
            self.stream, self.sample_rate, self.channels, self.in_channels = stream, rate, channels, in_channels
            self.device_name = str(info["name"])
            self.state, self.reason = "running", ""
            self._last_callbacks, self._stalled_since = -1, 0.0
        log.info("audio out: %s, %d Hz, %d ch, block %d%s", self.device_name, rate, channels,
                 self.config.block_size, f", capturing {in_channels} ch" if in_channels else "")

    def close(self) -> None:
        with self._lock:
            stream, self.stream = self.stream, None
            if stream is not None:
                try:
                    stream.abort(ignore_errors=True)
                    stream.close(ignore_errors=True)
                except Exception as exc:
                    log.debug("closing the audio stream: %s", exc)
            if self.state == "running":
                self.state = "closed"

    # ------------------------------------------------------------------ callbacks (audio thread)

    def _block_time(self, time_info: Any) -> float:
        """When this block leaves the stream, on the monotonic clock, free of wake-up jitter.

        The stream clock is smooth but has its own origin; the callback's wake-up time on the
        monotonic clock is late by a varying amount, never early. The smallest difference seen
        is the true offset (it relaxes slowly so clock drift is followed).
        """
        now = time.monotonic()
        current = time_info.currentTime
        offset = now - current
        self._clock_offset = min(offset, self._clock_offset + 1e-6)
        self.pipeline_s = max(0.0, time_info.outputBufferDacTime - current - self._device_latency)
        return current + self._clock_offset + self.pipeline_s

    def _output_callback(self, outdata: np.ndarray, frames: int, time_info: Any, status: Any) -> None:
        t0 = time.perf_counter()
        if status.output_underflow:
            self.underflows += 1
        self.mixer.process(outdata, self._block_time(time_info))  # type: ignore[union-attr]
        self.load = 0.95 * self.load + 0.05 * (time.perf_counter() - t0) * self.sample_rate / frames

    def _duplex_callback(self, indata: np.ndarray, outdata: np.ndarray, frames: int, time_info: Any,
                         status: Any) -> None:
        t0 = time.perf_counter()
        if status.output_underflow:
            self.underflows += 1
        if status.input_overflow:
            self.overflows += 1
        self.mixer.process(outdata, self._block_time(time_info))  # type: ignore[union-attr]
        ring = self._ring
        if ring is not None:
            size = ring.shape[0]
            start = self._ring_pos % size
            first = min(frames, size - start)
            ring[start : start + first] = indata[:first]
            if first < frames:
                ring[: frames - first] = indata[first:]
            self._ring_pos += frames
        self.load = 0.95 * self.load + 0.05 * (time.perf_counter() - t0) * self.sample_rate / frames

    # ------------------------------------------------------------------ other threads

    def prepare(self, clip: Clip) -> None:
        """Resample to the device rate and lay out as (frames, channels), once, off the audio thread."""
        rate = self.sample_rate
        if not rate:
            return
        if clip.playable is not None and clip.playable_rate == rate:
            return
        import soxr

        audio = clip.audio.T  # (frames, channels)
        if clip.sample_rate != rate:
            audio = soxr.resample(np.ascontiguousarray(audio), clip.sample_rate, rate, quality="HQ")
        if audio.ndim == 1:
            audio = audio[:, None]
        if audio.shape[1] == 1 and self.channels == 2:
            audio = np.repeat(audio, 2, axis=1)
        elif audio.shape[1] > self.channels:
            audio = audio[:, : self.channels]
        clip.playable = np.ascontiguousarray(audio, dtype=np.float32)
        clip.playable_rate = rate

    def velocity_gain(self, velocity: float) -> float:
        return float(max(0.0, min(1.0, velocity)) ** self.config.velocity_exponent)

    def play(self, clip: Clip, instrument: str, velocity: float, at: float | None = None) -> bool:
        """Queue a clip on the mixer at monotonic time ``at`` (None: the next buffer)."""
        mixer = self.mixer
        if self.state != "running" or mixer is None:
            return False
        self.prepare(clip)  # no-op for pooled clips; a fallback after a rate change
        inst = self.instruments.get(instrument)
        gain = self.velocity_gain(velocity) * (10 ** (inst.gain_db / 20) if inst else 1.0)
        gains = balance_gains(self.channels, gain, inst.pan if inst else 0.0)
        start = mixer.frame_at(at) if at is not None else ASAP
        mixer.trigger(Trigger(clip.playable, gains, start, inst.choke_group if inst else 0))  # type: ignore[arg-type]
        return True

    def capture(self, seconds: float) -> np.ndarray:
        """The last ``seconds`` of input as (channels, frames) float32."""
        ring = self._ring
        if ring is None or self.in_channels == 0:
            raise AudioUnavailable("input capture is off (no input channels on the device, or audio.input_channels = 0)")
        size = ring.shape[0]
        end = self._ring_pos
        n = min(int(seconds * self.sample_rate), size, end)
        if n <= 0:
            raise AudioUnavailable("nothing captured yet")
        start = (end - n) % size
        if start + n <= size:
            out = ring[start : start + n].copy()
        else:
            out = np.concatenate([ring[start:], ring[: n - (size - start)]])
        return np.ascontiguousarray(out.T)

    # ------------------------------------------------------------------ supervision

    def healthy(self) -> bool:
        stream, mixer = self.stream, self.mixer
        if stream is None or mixer is None or not stream.active:
            return False
        callbacks = mixer.stats.callbacks
        now = time.monotonic()
        if callbacks != self._last_callbacks:
            self._last_callbacks, self._stalled_since = callbacks, now
            return True
        return now - self._stalled_since < 1.0  # no callback for a second: the server is gone

    async def supervise(self, interval: float = 0.25) -> None:
        """Reopen the device when it disappears; runs for the daemon's lifetime."""
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(interval)
            if self.state == "running" and not self.healthy():
                self.state, self.reason = "lost", "the audio device stopped (server gone or device unplugged)"
                log.warning("audio out lost: %s; reopening when it returns", self.reason)
                await loop.run_in_executor(None, self.close)
                self.state = "lost"
            if self.state == "lost":
                try:
                    await loop.run_in_executor(None, self.open)
                    self.reopened += 1
                    log.info("audio out is back (%d reopen%s)", self.reopened, "s" * (self.reopened != 1))
                except Exception as exc:
                    self.reason = str(exc)
                    await asyncio.sleep(max(0.0, 1.0 - interval))

    def status(self) -> dict[str, Any]:
        mixer = self.mixer
        return {
            "state": self.state,
            "reason": self.reason or None,
            "device": self.device_name or None,
            "sample_rate": self.sample_rate or None,
            "block_size": self.config.block_size,
            "underflows": self.underflows,
            "overflows": self.overflows,
            "callback_load": round(self.load, 4),
            "active_voices": mixer.active_voices() if mixer else 0,
            "voices_started": mixer.stats.voices_started if mixer else 0,
            "limited_blocks": mixer.stats.limited_blocks if mixer else 0,
            "capture_channels": self.in_channels,
            "reopened": self.reopened,
        }
