"""A real, paced audio sink for the tests: ``jackd -d dummy`` plus JACK-Client recorder/player.

Each test gets its own named JACK server (JACK_DEFAULT_SERVER tells the daemon's PortAudio
which one), so tests never hear each other.
"""

from __future__ import annotations

import functools
import os
import shutil
import signal
import subprocess
import sys
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

    def stall(self, seconds: float) -> None:
        """Freeze the server for ``seconds`` (SIGSTOP, SIGCONT): its driver wakes that late, an
        xrun, as on a starved machine (the dummy driver then restarts its schedule from the late
        wake-up, so its frame clock slips against the monotonic clock)."""
        assert self.proc is not None
        self.proc.send_signal(signal.SIGSTOP)
        try:
            time.sleep(seconds)  # the length of the stall, not a wait for anything
        finally:
            self.proc.send_signal(signal.SIGCONT)

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
    block_frames: np.ndarray  # JACK frame time of each block's first frame
    block_times: np.ndarray  # monotonic time the recorder's callback woke for each block
    block: int
    rate: int = RATE
    WINDOW = 64  # blocks either side in the lower envelope (+-0.34 s)
    CHUNK = 16  # blocks per point of the drift fit

    def time_of(self, index: int) -> float:
        """Monotonic time of recorded sample ``index``: when its JACK cycle began.

        Each callback wakes late by a varying amount, never early (measured: 0.03 ms after the
        cycle starts when idle, milliseconds under load), so a block's time is the lower
        envelope of (wake - frame / rate) over the neighbouring blocks, carried along the
        recording's drift (the frame clock's rate against the monotonic clock: -4 ppm measured
        for the dummy driver; a plain minimum over +-0.1 s would be off by rate error x 0.1 s).

        Not JACK's own ``jack_frame_time()``/``jack_frames_to_time()``: those come from its DLL,
        which agrees with this to 0.07 ms while all is well, but after a burst of xruns was 20 ms
        off, overshot to +7 ms, and was still 1-5 ms off (moving 2 ms/s) 4-6 s later, while the
        wake-ups showed one clean step. That made a clean take read 1.3-5.7 ms late. (A take
        with an xrun in it is discarded by the tests anyway.)
        """
        b = index // self.block
        x = self.block_frames / self.rate
        lo, hi = max(0, b - self.WINDOW), min(len(x), b + self.WINDOW + 1)
        carried = self.block_times[lo:hi] - x[lo:hi] - self.drift * (x[lo:hi] - x[b])
        return float(x[b] + (index % self.block) / self.rate + carried.min())

    @functools.cached_property
    def drift(self) -> float:
        """d(wake - frame / rate) / d(frame / rate) over the whole recording: the Theil-Sen slope
        (median of pairwise slopes, robust to a chunk whose wake-ups were all late) through the
        minimum of every CHUNK blocks, from pairs at least a second apart; 0 if it is shorter."""
        x = self.block_frames / self.rate
        y = self.block_times - x
        n = len(x) // self.CHUNK
        if n < 2:
            return 0.0
        cy = y[: n * self.CHUNK].reshape(n, self.CHUNK)
        pick = np.argmin(cy, axis=1) + np.arange(n) * self.CHUNK
        px, py = x[pick], y[pick]
        i, j = np.triu_indices(n, 1)
        far = px[j] - px[i] >= 1.0
        if not far.any():
            return 0.0
        return float(np.median((py[j] - py[i])[far] / (px[j] - px[i])[far]))


@dataclass
class Recorder:
    """Records everything the daemon's output ports play, with a JACK frame and a wake time per block."""

    server: JackServer
    sources: list[str]
    seconds: float = 30.0
    _buf: np.ndarray = field(init=False)
    _times: list[float] = field(default_factory=list, init=False)
    _frames: list[int] = field(default_factory=list, init=False)
    _n: int = field(default=0, init=False)

    def __post_init__(self) -> None:
        # The callback needs the GIL every 5.3 ms block; with Python's default 5 ms switch
        # interval a test thread parsing a status or resampling a clip holds it for a whole
        # block, the recorder misses its deadline, and JACK counts an xrun for every client
        # (the daemon's underflow counter included). The audio process does the same.
        sys.setswitchinterval(min(sys.getswitchinterval(), 0.0005))
        self.client = self.server.client(f"rec{uuid.uuid4().hex[:4]}")
        self.block = self.client.blocksize
        self.rate = self.client.samplerate
        self._buf = np.zeros((int(self.seconds * self.client.samplerate), len(self.sources)), np.float32)
        self.inputs = [self.client.inports.register(f"in_{i}") for i in range(len(self.sources))]
        self._lock = threading.Lock()
        self._target = 0  # wait_frames: the frame count to signal ``_reached`` at
        self._reached = threading.Event()
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
        if self._n >= self._target:
            self._reached.set()

    def mark(self) -> int:
        return self._n

    def since(self, start: int) -> Recording:
        end = self._n
        first_block = start // self.block
        start = first_block * self.block
        blocks = slice(first_block, end // self.block)
        return Recording(self._buf[start:end].copy(), np.array(self._frames[blocks], dtype=np.float64),
                         np.array(self._times[blocks]), self.block, self.rate)

    def wait_frames(self, n: int, timeout: float = 10.0) -> None:
        """Block until ``n`` more frames are recorded: on an event the process callback sets, not
        by polling, whose wake-ups (200 a second) took the GIL the callback needs every block."""
        deadline = time.monotonic() + timeout
        target = self._target = self._n + n
        while self._n < target:  # (a set left over from an earlier wait only means: look again)
            if not self._reached.wait(max(0.0, deadline - time.monotonic())):
                raise AssertionError("the JACK recorder stopped receiving")
            self._reached.clear()

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
