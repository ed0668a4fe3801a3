"""The daemon's side of the audio device: prepares clips, sends triggers, restarts the device process.

The stream, its callback and the mixer live in ``bridge.audio_process`` (see there for why a
process). Here: resampling each clip to the device rate once, when it enters a pool (soxr, on
the writer thread), velocity/gain/pan, and supervision: a device process that ends because its
device went away is started again and waits for the device to return, while the daemon keeps
serving OSC and the shared folder.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import multiprocessing as mp
from dataclasses import asdict
from typing import Any

import numpy as np

from bridge.audio_process import AudioUnavailable, audio_main
from bridge.child_process import read_child, spawn_child, stop_child
from bridge.clip import Clip
from bridge.config import AudioConfig, InstrumentConfig
from bridge.mixer import balance_gains

log = logging.getLogger(__name__)

__all__ = ["AudioOutput", "AudioUnavailable"]


class AudioOutput:
    """Handle on the audio process; every method runs on the event loop thread."""

    def __init__(self, config: AudioConfig, instruments: dict[str, InstrumentConfig]) -> None:
        self.config = config
        self.instruments = instruments
        self.state = "closed"  # starting, waiting, running, lost, unavailable, closed
        self.reason = ""
        self.device_name = ""
        self.sample_rate = 0
        self.channels = 2
        self.in_channels = 0
        self.reopened = 0
        self.restarts = 0
        self.device_status: dict[str, Any] = {}
        self._process: mp.process.BaseProcess | None = None
        self._conn: Any = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._generation = 0
        self._stopping = False
        self._opened_before = False
        self._captures: dict[int, asyncio.Future[np.ndarray]] = {}
        self._capture_ids = itertools.count(1)
        self._settled: asyncio.Event | None = None

    # ------------------------------------------------------------------ lifecycle

    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._settled = asyncio.Event()
        self._spawn()

    async def wait_settled(self, timeout: float = 10.0) -> None:
        """Until the device is open, or known to be missing (first start only)."""
        assert self._settled is not None
        try:
            await asyncio.wait_for(self._settled.wait(), timeout)
        except asyncio.TimeoutError:
            pass

    def _spawn(self) -> None:
        if self._stopping:
            return
        assert self._loop is not None
        proc, conn = spawn_child(audio_main, (asdict(self.config), logging.getLogger().getEffectiveLevel()),
                                 name="genbridge-audio")
        self._generation += 1
        generation = self._generation
        self._process, self._conn = proc, conn
        self.state = "starting"
        read_child(conn, proc, self._loop, on_message=lambda msg: self._on_message(generation, msg),
                   on_exit=lambda code: self._on_exit(generation, code), name="audio process")

    def _on_message(self, generation: int, msg: dict[str, Any]) -> None:
        if generation != self._generation:
            return
        op = msg.get("op")
        if op == "opened":
            self.state, self.reason = "running", ""
            self.device_name, self.sample_rate = msg["device"], int(msg["rate"])
            self.channels, self.in_channels = int(msg["channels"]), int(msg["in_channels"])
            if self._opened_before:
                self.reopened += 1
                log.info("audio out is back: %s (reopened %d time%s)", self.device_name, self.reopened,
                         "s" * (self.reopened != 1))
            else:
                log.info("audio out: %s, %d Hz, %d ch, block %d%s", self.device_name, self.sample_rate,
                         self.channels, self.config.block_size,
                         f", capturing {self.in_channels} ch" if self.in_channels else "")
            self._opened_before = True
            self._settle()
        elif op == "waiting":
            if self.state != "waiting" or self.reason != msg["reason"]:
                log.warning("audio device %r not available (%s); waiting for it", self.config.device, msg["reason"])
            self.state, self.reason = "waiting", msg["reason"]
            self._settle()
        elif op == "unavailable":
            self.state, self.reason = "unavailable", msg["reason"]
            log.warning("no audio output: %s; serving the shared folder only", self.reason)
            self._settle()
        elif op == "lost":
            self.state, self.reason = "lost", msg["reason"]
            log.error("audio out lost: %s; OSC and the shared folder keep working, the device is reopened "
                      "when it returns", self.reason)
        elif op == "status":
            self.device_status = msg["status"]
        elif op == "captured":
            fut = self._captures.pop(msg["id"], None)
            if fut is not None and not fut.done():
                if "error" in msg:
                    fut.set_exception(AudioUnavailable(msg["error"]))
                else:
                    fut.set_result(msg["audio"])

    def _settle(self) -> None:
        if self._settled is not None:
            self._settled.set()

    def _on_exit(self, generation: int, exitcode: int | None) -> None:
        if generation != self._generation or self._stopping:
            return
        self._process, self._conn = None, None
        for fut in self._captures.values():
            if not fut.done():
                fut.set_exception(AudioUnavailable("the audio device went away"))
        self._captures.clear()
        if self.state == "unavailable":
            return  # no device at all, and none was named: folder only
        if self.state != "lost":
            self.state, self.reason = "lost", f"the audio process exited (code {exitcode})"
            log.error("audio process exited (code %s); restarting it", exitcode)
        self.restarts += 1
        assert self._loop is not None
        self._loop.call_later(0.5, self._spawn)

    def close(self) -> None:
        self._stopping = True
        self._generation += 1
        stop_child(self._process, self._conn)
        self._process, self._conn = None, None
        if self.state == "running":
            self.state = "closed"

    # ------------------------------------------------------------------ clips and triggers

    def prepare(self, clip: Clip) -> None:
        """Resample to the device rate and lay out as (frames, channels), once, off the loop."""
        rate, channels = self.sample_rate, self.channels
        if not rate or (clip.playable is not None and clip.playable_rate == rate):
            return
        import soxr

        audio = clip.audio.T  # (frames, channels)
        if clip.sample_rate != rate:
            audio = soxr.resample(np.ascontiguousarray(audio), clip.sample_rate, rate, quality="HQ")
        if audio.ndim == 1:
            audio = audio[:, None]
        if audio.shape[1] == 1 and channels == 2:
            audio = np.repeat(audio, 2, axis=1)
        elif audio.shape[1] > channels:
            audio = audio[:, :channels]
        clip.playable = np.ascontiguousarray(audio, dtype=np.float32)
        clip.playable_rate = rate

    def velocity_gain(self, velocity: float) -> float:
        return float(max(0.0, min(1.0, velocity)) ** self.config.velocity_exponent)

    def play(self, clip: Clip, instrument: str, velocity: float, at: float | None = None) -> bool:
        """Play a clip at monotonic time ``at`` (None: the next buffer); False without a device."""
        if self.state != "running" or self._conn is None:
            return False
        self.prepare(clip)  # a no-op for pooled clips; a fallback after the device rate changed
        inst = self.instruments.get(instrument)
        gain = self.velocity_gain(velocity) * (10 ** (inst.gain_db / 20) if inst else 1.0)
        gains = balance_gains(self.channels, gain, inst.pan if inst else 0.0)
        try:
            self._conn.send({"op": "play", "audio": clip.playable, "gains": gains, "at": at,
                             "choke": inst.choke_group if inst else 0})
        except (OSError, ValueError):
            return False
        return True

    async def capture(self, seconds: float, timeout: float = 5.0) -> np.ndarray:
        """The last ``seconds`` of input as (channels, frames) float32."""
        if self.state != "running" or self._conn is None:
            raise AudioUnavailable(f"no audio input: the device is {self.state}"
                                   + (f" ({self.reason})" if self.reason else ""))
        assert self._loop is not None
        request_id = next(self._capture_ids)
        fut: asyncio.Future[np.ndarray] = self._loop.create_future()
        self._captures[request_id] = fut
        self._conn.send({"op": "capture", "id": request_id, "seconds": seconds})
        try:
            return await asyncio.wait_for(fut, timeout)
        finally:
            self._captures.pop(request_id, None)

    def status(self) -> dict[str, Any]:
        running = self.state == "running"
        return {
            "state": self.state,
            "reason": self.reason or None,
            "device": self.device_name or None,
            "sample_rate": self.sample_rate or None,
            "block_size": self.config.block_size,
            "pid": self._process.pid if self._process is not None else None,
            "reopened": self.reopened,
            "process_restarts": self.restarts,
            **({"underflows": 0, "overflows": 0, "callback_load": 0.0, "active_voices": 0, "voices_started": 0,
                "limited_blocks": 0} | (self.device_status if running else {})),
        }
