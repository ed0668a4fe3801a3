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
from dataclasses import asdict
from typing import Any

import numpy as np

from bridge.audio_process import AudioUnavailable, audio_main
from bridge.clip import Clip
from bridge.config import AudioConfig, InstrumentConfig
from bridge.liveness import LivenessPolicy
from bridge.mixer import balance_gains, velocity_gain
from bridge.supervisor import RestartPolicy, SupervisedChild

log = logging.getLogger(__name__)

__all__ = ["AudioOutput", "AudioUnavailable"]

#: A lost device ends the audio process (see bridge/audio_process.py); the next one waits for the
#: device, so restarts are quick, and back off only when the process itself keeps dying.
RESTART_POLICY = RestartPolicy(first_delay_s=0.5, factor=2.0, max_delay_s=5.0, stable_after_s=10.0)
#: The audio process's main loop turns every 1/8 s: 5 s without a heartbeat or a turn is a hang
#: (PortAudio stuck on a vanished server, a stopped process); opening a device may take longer.
#: No memory ceiling: it holds a few seconds of audio. The kernel should spare it (score -500).
AUDIO_LIVENESS = LivenessPolicy(silent_after_s=5.0, stalled_after_s=5.0, loading_after_s=30.0)
AUDIO_OOM_SCORE_ADJ = -500


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
        self.device_status: dict[str, Any] = {}
        self._child: SupervisedChild | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stopping = False
        self._opened_before = False
        self._captures: dict[int, asyncio.Future[np.ndarray]] = {}
        self._capture_ids = itertools.count(1)
        self._settled: asyncio.Event | None = None

    # ------------------------------------------------------------------ lifecycle

    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._settled = asyncio.Event()
        self._child = SupervisedChild("audio", audio_main,
                                      (asdict(self.config), logging.getLogger().getEffectiveLevel()), loop,
                                      on_message=self._on_message, on_exit=self._on_exit, policy=RESTART_POLICY,
                                      before_spawn=lambda: setattr(self, "state", "starting"),
                                      liveness=AUDIO_LIVENESS, oom_score_adj=AUDIO_OOM_SCORE_ADJ)
        self._child.start()

    @property
    def restarts(self) -> int:
        return self._child.restarts if self._child is not None else 0

    async def wait_settled(self, timeout: float = 10.0) -> None:
        """Until the device is open, or known to be missing (first start only)."""
        assert self._settled is not None
        try:
            await asyncio.wait_for(self._settled.wait(), timeout)
        except asyncio.TimeoutError:
            pass

    def _on_message(self, msg: dict[str, Any]) -> None:
        op = msg.get("op")
        if op == "opened":
            assert self._child is not None
            self._child.healthy()
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
            assert self._child is not None
            self._child.give_up()  # no device at all, and none was named: folder only
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

    def _on_exit(self, exitcode: int | None, restart_in: float | None) -> None:
        if self._stopping:
            return
        for fut in self._captures.values():
            if not fut.done():
                fut.set_exception(AudioUnavailable("the audio device went away"))
        self._captures.clear()
        if restart_in is None:
            return
        if self.state != "lost":
            why = (self._child.last_exit if self._child is not None else None) or f"exit code {exitcode}"
            self.state, self.reason = "lost", f"the audio process ended ({why})"
            log.error("audio process ended (%s); restarting it in %.1f s", why, restart_in)

    def close(self) -> None:
        self._stopping = True
        if self._child is not None:
            self._child.stop()
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
        return velocity_gain(velocity, self.config.velocity_exponent)

    def play(self, clip: Clip, instrument: str, velocity: float, at: float | None = None, chain: int = 0) -> bool:
        """Play a clip at monotonic time ``at`` (None: the next buffer); False without a device.
        ``chain``: a stream's id; its clips without a time play one after another, gap-free."""
        if self.state != "running" or self._child is None or not self._child.alive:
            return False
        self.prepare(clip)  # a no-op for pooled clips; a fallback after the device rate changed
        inst = self.instruments.get(instrument)
        gain = self.velocity_gain(velocity) * (10 ** (inst.gain_db / 20) if inst else 1.0)
        gains = balance_gains(self.channels, gain, inst.pan if inst else 0.0)
        return self._child.send({"op": "play", "audio": clip.playable, "gains": gains, "at": at,
                                 "choke": inst.choke_group if inst else 0, "chain": chain})

    def stop_chain(self, chain: int) -> None:
        """Fade out what is playing of a stream (play's ``chain``) and drop its pieces not yet started."""
        if self.state == "running" and self._child is not None and self._child.alive:
            self._child.send({"op": "stop_chain", "chain": chain})

    def lead_s(self) -> float:
        """How far ahead a start time must be for the device to still make it: the block the
        callback is filling now and the next (a message arrives between callbacks), PortAudio's
        pipeline after them, and 2 ms for the pipe to the audio process."""
        rate = self.sample_rate or 48000
        pipeline = float(self.device_status.get("pipeline_ms", 0.0)) / 1000
        return 2 * self.config.block_size / rate + pipeline + 0.002

    async def capture(self, seconds: float, timeout: float = 5.0) -> np.ndarray:
        """The last ``seconds`` of input as (channels, frames) float32."""
        if self.state != "running" or self._child is None or not self._child.alive:
            raise AudioUnavailable(f"no audio input: the device is {self.state}"
                                   + (f" ({self.reason})" if self.reason else ""))
        assert self._loop is not None
        request_id = next(self._capture_ids)
        fut: asyncio.Future[np.ndarray] = self._loop.create_future()
        self._captures[request_id] = fut
        self._child.send({"op": "capture", "id": request_id, "seconds": seconds})
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
            "pid": self._child.pid if self._child is not None else None,
            "reopened": self.reopened,
            "process_restarts": self.restarts,
            "health": self._child.health() if self._child is not None else {},
            **({"underflows": 0, "overflows": 0, "callback_load": 0.0, "active_voices": 0, "voices_started": 0,
                "limited_blocks": 0} | (self.device_status if running else {})),
        }
