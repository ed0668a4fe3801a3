"""The audio device, in a process of its own: the stream, its callback, the mixer, the capture ring.

Why a process and not a thread of the daemon (a change from the agreed design, measured):
PortAudio's JACK backend (Debian libportaudio2 19.6) cannot survive its server: once jackd
dies, ``Pa_AbortStream`` hangs and ``CleanUpStream``/``Pa_Terminate`` assert, so a stream whose
server went away can be neither closed nor replaced in the process that opened it. Here, a lost
device ends this process (``os._exit``, skipping PortAudio's teardown) and the daemon starts a
new one, which waits for the device to return. A bonus: the callback no longer shares a GIL with
the OSC server and the file writer.

Messages over a Pipe (dicts):
    daemon -> audio:  {"op": "play", "audio", "gains", "at", "choke", "chain"}   (at: time.monotonic())
                      {"op": "stop_chain", "chain"}   (a cancelled stream: fade it out)
                      {"op": "capture", "id", "seconds"}   {"op": "stop"}
    audio -> daemon:  {"op": "opened", "device", "rate", "channels", "in_channels"}
                      {"op": "waiting", "reason"}   {"op": "unavailable", "reason"}
                      {"op": "lost", "reason"}      {"op": "status", "status"}
                      {"op": "captured", "id", "audio" | "error"}
"""

from __future__ import annotations

import logging
import os
import sys
import time
from multiprocessing.connection import Connection
from typing import Any

import numpy as np

from bridge import liveness
from bridge.mixer import BlockClock, Mixer, Trigger

log = logging.getLogger("genbridge.audio")

STATUS_INTERVAL_S = 0.25
CLOCK_WINDOW = 64  # callbacks (0.34 s at 256 frames / 48 kHz) in the block clock's lower envelope
RETRY_S = 1.0


class AudioUnavailable(RuntimeError):
    """No usable device; the message says why."""


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


class AudioDevice:
    """One open stream with its mixer and capture ring (lives in the audio process)."""

    def __init__(self, cfg: dict[str, Any]) -> None:
        self.cfg = cfg
        self.stream: Any = None
        self.mixer: Mixer | None = None
        self.rate = 0
        self.channels = 2
        self.in_channels = 0
        self.device_name = ""
        self.underflows = 0
        self.overflows = 0
        self.load = 0.0
        self._ring: np.ndarray | None = None
        self._ring_pos = 0
        self._clock: BlockClock | None = None
        self._device_latency = 0.0
        self.pipeline_s = 0.0
        self._last_callbacks = -1
        self._stalled_since = 0.0

    def open(self) -> None:
        try:
            import sounddevice as sd
        except OSError as exc:
            raise AudioUnavailable(f"PortAudio is not available ({exc}); install libportaudio2") from exc
        cfg = self.cfg
        index = find_device(sd, cfg["device"])
        info = sd.query_devices(index)
        rate = cfg["sample_rate"] or int(info["default_samplerate"])
        channels = min(2, int(info["max_output_channels"]))
        in_channels = min(cfg["input_channels"], int(info["max_input_channels"]))
        self.mixer = Mixer(rate, channels, max_voices=cfg["max_voices"], fade_ms=cfg["fade_ms"],
                           limiter_threshold=10 ** (cfg["limiter_threshold_db"] / 20),
                           master_gain=10 ** (cfg["master_gain_db"] / 20))
        self._clock = BlockClock(rate, CLOCK_WINDOW)
        if in_channels:
            self._ring = np.zeros((int(rate * cfg["capture_seconds"]), in_channels), np.float32)
        common = dict(samplerate=rate, blocksize=cfg["block_size"], dtype="float32",
                      latency=cfg["latency"] or "low")
        if in_channels:
            stream = sd.Stream(device=(index, index), channels=(in_channels, channels),
                               callback=self._duplex_callback, **common)
        else:
            stream = sd.OutputStream(device=index, channels=channels, callback=self._output_callback, **common)
        out_latency = stream.latency[1] if isinstance(stream.latency, tuple) else stream.latency
        self._device_latency = float(out_latency)
        stream.start()
        self.stream, self.rate, self.channels, self.in_channels = stream, rate, channels, in_channels
        self.device_name = str(info["name"])

    # ------------------------------------------------------------------ audio thread

    def _block_time(self, wake: float, time_info: Any) -> float:
        """When this block leaves the stream, on the monotonic clock, free of wake-up jitter.

        From the mixer's own frame count and the callback's wake-up times (``BlockClock``: their
        lower envelope, a line that follows the frame clock's rate), not from PortAudio's
        ``currentTime``. On JACK that is ``jack_frame_time()`` read as the callback starts: JACK's
        DLL estimate, which carries the callback's lateness within its cycle (0.03 ms idle, 2 ms
        under load), and which after an xrun is off by up to 20 ms and takes seconds to settle
        (the old minimum of monotonic - currentTime put the first take after a 0.1 s server
        stall 14-28 ms late, and a take under load 2.1 ms early). The wake-ups step once at an
        xrun, and an underflow resets the envelope. PortAudio's own buffering (the output latency
        it reports minus the device latency after its ports: one 256-frame block on JACK,
        5.333 ms) is added.
        """
        self.pipeline_s = max(0.0, time_info.outputBufferDacTime - time_info.currentTime - self._device_latency)
        return self._clock.update(self.mixer.frame, wake) + self.pipeline_s  # type: ignore[union-attr]

    def _output_callback(self, outdata: np.ndarray, frames: int, time_info: Any, status: Any) -> None:
        self._duplex_callback(None, outdata, frames, time_info, status)

    def _duplex_callback(self, indata: np.ndarray | None, outdata: np.ndarray, frames: int, time_info: Any,
                         status: Any) -> None:
        wake = time.monotonic()
        t0 = time.perf_counter()
        if status.output_underflow:
            self.underflows += 1
            self._clock.reset()  # type: ignore[union-attr]  # the frame clock may have slipped
        if status.input_overflow:
            self.overflows += 1
        self.mixer.process(outdata, self._block_time(wake, time_info))  # type: ignore[union-attr]
        ring = self._ring if indata is not None else None
        if ring is not None:
            size = ring.shape[0]
            start = self._ring_pos % size
            first = min(frames, size - start)
            ring[start : start + first] = indata[:first]
            if first < frames:
                ring[: frames - first] = indata[first:]
            self._ring_pos += frames
        self.load = 0.95 * self.load + 0.05 * (time.perf_counter() - t0) * self.rate / frames

    # ------------------------------------------------------------------ process main thread

    def play(self, msg: dict[str, Any]) -> None:
        mixer = self.mixer
        assert mixer is not None
        # the time itself, not a frame: the mixer turns it into one in the block it falls in
        mixer.trigger(Trigger(msg["audio"], msg["gains"], choke_group=int(msg.get("choke", 0)),
                              start_time=msg.get("at"), chain=int(msg.get("chain", 0))))

    def capture(self, seconds: float) -> np.ndarray:
        ring = self._ring
        if ring is None or self.in_channels == 0:
            raise AudioUnavailable("input capture is off (the device has no inputs, or audio.input_channels = 0)")
        size = ring.shape[0]
        end = self._ring_pos
        n = min(int(seconds * self.rate), size, end)
        if n <= 0:
            raise AudioUnavailable("nothing captured yet")
        start = (end - n) % size
        if start + n <= size:
            out = ring[start : start + n].copy()
        else:
            out = np.concatenate([ring[start:], ring[: n - (size - start)]])
        return np.ascontiguousarray(out.T)

    def healthy(self) -> bool:
        if self.stream is None or self.mixer is None or not self.stream.active:
            return False
        callbacks = self.mixer.stats.callbacks
        now = time.monotonic()
        if callbacks != self._last_callbacks:
            self._last_callbacks, self._stalled_since = callbacks, now
            return True
        return now - self._stalled_since < 1.0  # a second without a callback: the server is gone

    def status(self) -> dict[str, Any]:
        m = self.mixer
        return {
            "device": self.device_name,
            "sample_rate": self.rate,
            "underflows": self.underflows,
            "overflows": self.overflows,
            "callback_load": round(self.load, 4),
            "active_voices": m.active_voices() if m else 0,
            "voices_started": m.stats.voices_started if m else 0,
            "voices_stolen": m.stats.voices_stolen if m else 0,
            "voices_choked": m.stats.voices_choked if m else 0,
            "limited_blocks": m.stats.limited_blocks if m else 0,
            "late_starts": m.stats.late_starts if m else 0,
            "capture_channels": self.in_channels,
            "pipeline_ms": round(self.pipeline_s * 1000, 3),
            "clock_drift_ppm": round(self._clock.drift * 1e6, 2) if self._clock else 0.0,
            # when these counts were read (time.monotonic()): a caller that needs the underflows
            # up to some moment waits for a status from after it (one is sent every 0.25 s)
            "measured_at": round(time.monotonic(), 4),
        }


def audio_main(conn: Connection, cfg: dict[str, Any], log_level: int = logging.INFO) -> None:
    logging.basicConfig(level=log_level, format="%(asctime)s audio %(levelname)s %(message)s")
    # The callback thread needs the GIL every block; with the default 5 ms switch interval a
    # message being unpickled on this process's main thread can hold it for a whole 256-frame
    # block (5.3 ms). Hand it over ten times sooner.
    sys.setswitchinterval(0.0005)
    device = AudioDevice(cfg)
    retry = cfg["device"] != "default"
    while True:  # open, or wait for the device to appear
        liveness.set_state(liveness.LOADING)  # an open may block on a server that is going away
        try:
            device.open()
            break
        except AudioUnavailable as exc:
            if not retry:
                conn.send({"op": "unavailable", "reason": str(exc)})
                os._exit(0)
            conn.send({"op": "waiting", "reason": str(exc)})
        except Exception as exc:  # PortAudio errors opening a device that is going away
            conn.send({"op": "waiting", "reason": f"{type(exc).__name__}: {exc}"})
        liveness.set_state(liveness.BUSY)
        if conn.poll(RETRY_S) and conn.recv().get("op") == "stop":
            os._exit(0)
    conn.send({"op": "opened", "device": device.device_name, "rate": device.rate,
               "channels": device.channels, "in_channels": device.in_channels})
    next_status = 0.0
    liveness.set_state(liveness.BUSY)
    while True:
        liveness.mark()  # a turn of this loop; a PortAudio call that never returns stops it
        if conn.poll(STATUS_INTERVAL_S / 2):
            try:
                msg = conn.recv()
            except (EOFError, OSError):
                os._exit(0)  # the daemon is gone
            op = msg.get("op")
            if op == "play":
                device.play(msg)
            elif op == "stop_chain":
                device.mixer.stop_chain(int(msg["chain"]))  # type: ignore[union-attr]
            elif op == "capture":
                try:
                    conn.send({"op": "captured", "id": msg["id"], "audio": device.capture(msg["seconds"])})
                except AudioUnavailable as exc:
                    conn.send({"op": "captured", "id": msg["id"], "error": str(exc)})
            elif op == "stop":
                device.stream.stop()
                device.stream.close()
                os._exit(0)
        now = time.monotonic()
        if now >= next_status:
            next_status = now + STATUS_INTERVAL_S
            if not device.healthy():
                conn.send({"op": "lost", "reason": "the audio device stopped (JACK server gone or device unplugged)"})
                os._exit(3)  # PortAudio would hang closing this stream: the daemon starts a new process
            conn.send({"op": "status", "status": device.status()})
