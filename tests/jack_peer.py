"""A real, paced audio sink for the tests: ``jackd -d dummy`` plus JACK-Client recorder/player.

Each test gets its own named JACK server (JACK_DEFAULT_SERVER tells the daemon's PortAudio
which one), so tests never hear each other.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import threading
import time
import uuid
from collections import deque
from dataclasses import dataclass, field

import numpy as np

RATE = 48000


class JackServer:
    def __init__(self, period: int = 256, rate: int = RATE, name: str | None = None) -> None:
        assert shutil.which("jackd"), "jackd is not installed (make test installs jackd2)"
        self.name = name or f"gb{uuid.uuid4().hex[:8]}"
        self.period, self.rate = period, rate
        self.proc: subprocess.Popen[bytes] | None = None
        self.start()

    def env(self) -> dict[str, str]:
        return dict(os.environ, JACK_DEFAULT_SERVER=self.name, JACK_NO_AUDIO_RESERVATION="1")

    def start(self) -> None:
        self.proc = subprocess.Popen(["jackd", "-n", self.name, "-d", "dummy", "-r", str(self.rate),
                                      "-p", str(self.period)], stdout=subprocess.DEVNULL,
                                     stderr=subprocess.DEVNULL, env=self.env())
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:  # jack_lsp succeeds once the server accepts clients
            if subprocess.run(["jack_lsp", "-s", self.name], capture_output=True, env=self.env()).returncode == 0:
                return
            time.sleep(0.02)
        raise RuntimeError("jackd did not start")

    def kill(self) -> None:
        """Stop the server the way it cleans up after itself (SIGKILL leaves its entry in
        JACK's shared-memory registry, and after eight of those no server starts)."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self.proc = None

    def client(self, name: str):  # -> jack.Client
        import jack

        return jack.Client(name, servername=self.name, no_start_server=True)

    def wait_for_port(self, prefix: str, timeout: float = 20.0, is_input: bool = False) -> list[str]:
        client = self.client(f"probe{uuid.uuid4().hex[:4]}")
        try:
            deadline = time.monotonic() + timeout
            while time.monotonic() < deadline:
                ports = [p.name for p in client.get_ports(is_audio=True, is_input=is_input, is_output=not is_input)
                         if p.name.startswith(prefix)]
                if ports:
                    return sorted(ports)
                time.sleep(0.02)
        finally:
            client.close()
        raise AssertionError(f"no JACK port starting with {prefix!r}")


@dataclass
class Recording:
    audio: np.ndarray  # (frames, channels)
    block_times: np.ndarray  # monotonic time the recorder's callback ran for each block
    block: int
    rate: int = RATE
    block_frames: np.ndarray | None = None  # JACK frame time of each block's first frame

    def time_of(self, index: int) -> float:
        """Monotonic time of recorded sample ``index``.

        A callback runs late by a varying amount (never early), most of all in a busy test
        process; so the frame clock is tied to the monotonic clock by the smallest offset over
        the neighbouring blocks (+-20 blocks: short enough that the dummy driver's ~1 % drift
        does not matter), not by this block's own wake-up time.
        """
        b = index // self.block
        if self.block_frames is None:
            return float(self.block_times[b]) + (index % self.block) / self.rate
        lo, hi = max(0, b - 20), min(len(self.block_times), b + 21)
        offsets = self.block_times[lo:hi] - self.block_frames[lo:hi] / self.rate
        return float(self.block_frames[b] + index % self.block) / self.rate + float(offsets.min())


@dataclass
class Recorder:
    """Records everything the daemon's output ports play, with a monotonic time per block."""

    server: JackServer
    sources: list[str]
    seconds: float = 30.0
    _buf: np.ndarray = field(init=False)
    _times: list[float] = field(default_factory=list, init=False)
    _frames: list[int] = field(default_factory=list, init=False)
    _n: int = field(default=0, init=False)

    def __post_init__(self) -> None:
        self.client = self.server.client(f"rec{uuid.uuid4().hex[:4]}")
        self.block = self.client.blocksize
        self._buf = np.zeros((int(self.seconds * self.client.samplerate), len(self.sources)), np.float32)
        self.inputs = [self.client.inports.register(f"in_{i}") for i in range(len(self.sources))]
        self._lock = threading.Lock()
        self.client.set_process_callback(self._process)
        self.client.activate()
        for src, port in zip(self.sources, self.inputs):
            self.client.connect(src, port)

    def _process(self, frames: int) -> None:
        t = time.monotonic()
        n = self._n
        if n + frames > len(self._buf):
            return
        for i, port in enumerate(self.inputs):
            self._buf[n : n + frames, i] = port.get_array()
        self._times.append(t)
        self._frames.append(self.client.last_frame_time)
        self._n = n + frames

    def mark(self) -> int:
        return self._n

    def since(self, start: int) -> Recording:
        end = self._n
        first_block = start // self.block
        start = first_block * self.block
        blocks = slice(first_block, end // self.block)
        return Recording(self._buf[start:end].copy(), np.array(self._times[blocks]), self.block,
                         block_frames=np.array(self._frames[blocks], dtype=np.float64))

    def wait_frames(self, n: int, timeout: float = 10.0) -> None:
        deadline = time.monotonic() + timeout
        target = self._n + n
        while self._n < target:
            if time.monotonic() > deadline:
                raise AssertionError("the JACK recorder stopped receiving")
            time.sleep(0.005)

    def close(self) -> None:
        self.client.deactivate()
        self.client.close()


class Player:
    """Plays a signal once into the given input ports (the daemon's capture)."""

    def __init__(self, server: JackServer, targets: list[str], signal: np.ndarray) -> None:
        self.client = server.client(f"play{uuid.uuid4().hex[:4]}")
        self.signal = signal.astype(np.float32)  # (frames, channels)
        self.pos = 0
        self.xruns = 0
        self.finished = threading.Event()  # set by the process callback once the last frame went out
        # Ports can only be connected once the client is active, and JACK runs the process
        # callback from activation on: the signal starts only after the connections exist,
        # else its first blocks go into an unconnected port and are lost.
        self._connected = False
        self.outputs = [self.client.outports.register(f"out_{i}") for i in range(len(targets))]
        self.client.set_process_callback(self._process)
        self.client.set_xrun_callback(self._xrun)
        self.client.activate()
        for port, dst in zip(self.outputs, targets):
            self.client.connect(port, dst)
        self._connected = True

    def _xrun(self, delayed_usecs: float) -> None:
        self.xruns += 1

    def _process(self, frames: int) -> None:
        if not self._connected:
            for port in self.outputs:
                port.get_array().fill(0.0)
            return
        chunk = self.signal[self.pos : self.pos + frames]
        for i, port in enumerate(self.outputs):
            buf = port.get_array()
            buf.fill(0.0)
            buf[: len(chunk)] = chunk[:, i]
        self.pos += frames
        if self.pos >= len(self.signal):
            self.finished.set()

    @property
    def done(self) -> bool:
        return self.pos >= len(self.signal)

    def close(self) -> None:
        self.client.deactivate()
        self.client.close()


class MidiSender:
    """A JACK MIDI output (JACK-Client) that sends raw messages at exact frames."""

    def __init__(self, server: JackServer, target: str) -> None:
        self.client = server.client(f"midi{uuid.uuid4().hex[:4]}")
        self.port = self.client.midi_outports.register("out")
        self.rate = self.client.samplerate
        self.events: deque[tuple[int, bytes]] = deque()
        self.timed: deque[tuple[float, bytes]] = deque()  # (monotonic time, message)
        self.sent_at: list[float] = []  # monotonic time of the cycle each event went out in
        self.client.set_process_callback(self._process)
        self.client.activate()
        self.client.connect(self.port, target)

    def _process(self, frames: int) -> None:
        t = time.monotonic()
        self.port.clear_buffer()
        base = self.client.last_frame_time
        while self.events and self.events[0][0] < base + frames:
            frame, data = self.events.popleft()
            self.port.write_midi_event(max(0, frame - base), data)
            self.sent_at.append(t + max(0, frame - base) / self.rate)
        end = t + frames / self.rate
        while self.timed and self.timed[0][0] < end:
            when, data = self.timed.popleft()
            offset = min(frames - 1, max(0, int((when - t) * self.rate)))
            self.port.write_midi_event(offset, data)

    def send(self, *data: int, frame: int | None = None) -> None:
        self.events.append((frame if frame is not None else 0, bytes(data)))

    def clock(self, bpm: float, seconds: float) -> None:
        """MIDI clock (24 per quarter note) on the wall clock, as a DAW sends it.

        Not by JACK frames: the dummy driver's frame clock runs about 1 % slow against the
        system clock (it sleeps per period), and tempo is a wall-clock quantity.
        """
        start = time.monotonic() + 0.05
        step = 60.0 / (bpm * 24)
        for k in range(int(seconds * bpm * 24 / 60)):
            self.timed.append((start + k * step, b"\xf8"))

    def idle(self) -> bool:
        return not self.events and not self.timed

    def close(self) -> None:
        self.client.deactivate()
        self.client.close()
