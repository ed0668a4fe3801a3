"""Test peers: a real daemon process, a UDP OSC client, and liblo-tools (oscsend/oscdump)."""

from __future__ import annotations

import json
import os
import queue
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pythonosc.osc_bundle_builder import IMMEDIATELY, OscBundleBuilder
from pythonosc.osc_message import OscMessage
from pythonosc.osc_message_builder import OscMessageBuilder

REPO = Path(__file__).resolve().parent.parent
GENBRIDGE = [sys.executable, "-m", "bridge"]
#: What the daemon logs once it has started (bridge/daemon.py).
STARTED_LINE = "listening for OSC on udp://"


def free_udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def free_tcp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def osc_message(address: str, *args: Any) -> bytes:
    b = OscMessageBuilder(address=address)
    for a in args:
        b.add_arg(a)
    return b.build().dgram


def osc_bundle(*messages: bytes) -> bytes:
    b = OscBundleBuilder(IMMEDIATELY)
    for m in messages:
        b.add_content(OscMessage(m))
    return b.build().dgram


@dataclass
class Reply:
    address: str
    args: list[Any]


class OscClient:
    """A UDP socket that sends to the daemon and receives its replies on its own port."""

    def __init__(self, port: int, host: str = "127.0.0.1") -> None:
        self.target = (host, port)
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]

    def close(self) -> None:
        self.sock.close()

    def send(self, address: str, *args: Any) -> None:
        self.sock.sendto(osc_message(address, *args), self.target)

    def send_raw(self, data: bytes) -> None:
        self.sock.sendto(data, self.target)

    def recv(self, timeout: float = 30.0) -> Reply:
        self.sock.settimeout(timeout)
        data, _ = self.sock.recvfrom(65536)
        msg = OscMessage(data)
        return Reply(msg.address, list(msg.params))

    def expect(self, address: str, timeout: float = 30.0) -> Reply:
        """Next reply with this address; anything else in between fails the test."""
        reply = self.recv(timeout)
        assert reply.address == address, f"expected {address}, got {reply.address} {reply.args}"
        return reply

    def request(self, address: str, *args: Any, reply: str, timeout: float = 30.0) -> Reply:
        self.send(address, *args)
        return self.expect(reply, timeout)

    def status(self) -> dict[str, Any]:
        return json.loads(self.request("/genbridge/status", reply="/genbridge/status/reply").args[1])

    def wait_until(self, predicate: Any, timeout: float = 120.0, what: str = "condition") -> dict[str, Any]:
        """Ask for status until ``predicate(status)`` holds: each round trip is the event awaited."""
        deadline = time.monotonic() + timeout
        while True:
            status = self.status()
            if predicate(status):
                return status
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out waiting for {what}; last status: {json.dumps(status)[:2000]}")
            time.sleep(0.05)  # pacing between status requests, not synchronisation


class Daemon:
    """``genbridge serve`` in a subprocess, as the README starts it."""

    def __init__(self, out: Path, config: Path | None = None, port: int | None = None,
                 extra: list[str] | None = None, env: dict[str, str] | None = None, own_web_port: bool = True) -> None:
        self.port = port or free_udp_port()
        self.out = out
        cmd = [*GENBRIDGE, "serve", "--osc-port", str(self.port), "--out", str(out)]
        if config is not None:
            cmd += ["--config", str(config)]
        extra = extra or []
        #: The web console's port: a free one of its own (tests run daemons side by side), unless
        #: ``extra`` names one or ``own_web_port`` is False (the config's, 9080 by default).
        if "--web-port" in extra:
            self.web_port = int(extra[extra.index("--web-port") + 1])
        elif own_web_port:
            self.web_port = free_tcp_port()
            cmd += ["--web-port", str(self.web_port)]
        else:
            self.web_port = 9080
        cmd += extra
        self.log_path = out.parent / f"daemon-{self.port}.log"
        self._log = open(self.log_path, "w")
        env = dict(env or os.environ, PYTHONUNBUFFERED="1")
        self.proc = subprocess.Popen(cmd, cwd=REPO, stdout=self._log, stderr=subprocess.STDOUT, env=env)

    def log(self) -> str:
        return self.log_path.read_text()

    def wait_for_ping(self, timeout: float = 60.0) -> None:
        """Until the daemon has started: it answers ping, and it has logged that it listens (said
        once its folder is open, its pools restored and the web console up; a ping is answered
        from the moment the OSC port is bound, before that)."""
        client = OscClient(self.port)
        deadline = time.monotonic() + timeout
        try:
            while time.monotonic() < deadline:
                if self.proc.poll() is not None:
                    raise AssertionError(f"daemon exited with {self.proc.returncode}:\n{self.log()}")
                client.send("/genbridge/ping")
                try:
                    client.expect("/genbridge/pong", timeout=0.5)
                except socket.timeout:
                    continue
                if STARTED_LINE in self.log():
                    return
                time.sleep(0.05)  # pacing between pings while the start finishes
            raise AssertionError(f"daemon did not answer ping:\n{self.log()}")
        finally:
            client.close()

    def session_dir(self) -> Path:
        dirs = [d for d in self.out.iterdir() if d.is_dir() and not d.name.startswith(".")]
        assert len(dirs) == 1, dirs
        return dirs[0]

    def stop(self, timeout: float = 10.0) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._log.close()
        return self.proc.returncode


class OscDump:
    """``oscdump -L PORT`` in the background; its lines parsed into replies."""

    def __init__(self) -> None:
        assert shutil.which("oscdump"), "liblo-tools is not installed (make test installs it)"
        self.port = free_udp_port()
        self.proc = subprocess.Popen(["oscdump", "-L", str(self.port)], stdout=subprocess.PIPE,
                                     stderr=subprocess.STDOUT, text=True, bufsize=1)
        self.lines: queue.Queue[str] = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()
        self._wait_bound()

    def _wait_bound(self, timeout: float = 10.0) -> None:
        """Return once oscdump holds its UDP port: a reply sent before that is lost (seen on a
        loaded CI machine). The port is taken when binding it here fails."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
                try:
                    probe.bind(("127.0.0.1", self.port))
                except OSError:
                    return
            if self.proc.poll() is not None:
                break
            time.sleep(0.01)  # polling the port's state; oscdump gives no ready signal
        raise AssertionError(f"oscdump did not bind port {self.port}")

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.put(line.rstrip("\n"))

    def next(self, timeout: float = 30.0) -> Reply:
        line = self.lines.get(timeout=timeout)
        # "<timetag> <address> <typetags> <arg> ...", strings double-quoted
        parts = shlex.split(line)
        address, types, raw = parts[1], parts[2], parts[3:]
        args: list[Any] = []
        for t, value in zip(types, raw):
            args.append(int(value) if t in "ih" else float(value) if t in "fd" else value)
        return Reply(address, args)

    def expect(self, address: str, timeout: float = 30.0) -> Reply:
        reply = self.next(timeout)
        assert reply.address == address, f"expected {address}, got {reply}"
        return reply

    def close(self) -> None:
        self.proc.terminate()
        self.proc.wait(5)


def oscsend(port: int, address: str, types: str = "", *args: Any) -> None:
    cmd = ["oscsend", "127.0.0.1", str(port), address]
    if types:
        cmd += [types, *map(str, args)]
    subprocess.run(cmd, check=True, timeout=10)


def assert_valid_clip(path: str | Path, *, sample_rate: int, frames: int, channels: int) -> dict[str, Any]:
    """A real WAV of the right shape with audible content, plus its sidecar; returns the sidecar."""
    import numpy as np
    import soundfile as sf

    path = Path(path)
    assert path.is_file(), f"{path} missing"
    info = sf.info(str(path))
    assert info.format == "WAV"
    assert (info.samplerate, info.frames, info.channels) == (sample_rate, frames, channels), info
    audio, _ = sf.read(str(path), always_2d=True)
    peak = float(np.max(np.abs(audio)))
    rms = float(np.sqrt(np.mean(audio**2)))
    assert peak > 0.5, f"{path.name}: peak {peak} - finishing should normalise to -1 dBFS"
    assert rms > 1e-3, f"{path.name}: silent (rms {rms})"
    sidecar = path.with_suffix(".json")
    assert sidecar.is_file(), f"no sidecar for {path.name}"
    meta = json.loads(sidecar.read_text())
    for key in ("model", "checkpoint", "instrument", "seed", "steps", "sample_rate", "finishing",
                "generation_s"):
        assert key in meta, f"sidecar lacks {key}: {meta}"
    assert meta["sample_rate"] == sample_rate
    return meta
