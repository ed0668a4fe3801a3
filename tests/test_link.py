"""Ableton Link: the daemon joins a session another process runs, follows it and leads it."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from conftest import write_config

#: One test at a time on this machine, whichever test process runs it (tests/conftest.py):
#: Link peers on one machine join one session, so another test's peer would change the peer count
#: and the tempo.
pytestmark = pytest.mark.machine_wide("link")

pytest.importorskip("aalink")

PEER = Path(__file__).resolve().parent / "link_peer.py"
TEMPO_REPLY = "/genbridge/tempo/reply"


class LinkPeer:
    """tests/link_peer.py in a subprocess: a Link app the test drives."""

    def __init__(self, bpm: float, quantum: float = 4.0) -> None:
        self.proc = subprocess.Popen([sys.executable, str(PEER), str(bpm), str(quantum)], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, text=True)
        assert self._line() == "ready"

    def _line(self) -> str:
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        assert line, "the Link peer ended"
        return line.strip()

    def command(self, text: str) -> str:
        assert self.proc.stdin is not None
        self.proc.stdin.write(text + "\n")
        self.proc.stdin.flush()
        return self._line()

    def read(self) -> dict[str, Any]:
        return json.loads(self.command("read"))

    def wait_until(self, predicate: Any, timeout: float, what: str) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while True:
            state = self.read()
            if predicate(state):
                return state
            if time.monotonic() > deadline:
                raise AssertionError(f"the peer never saw {what}: {state}")
            time.sleep(0.02)  # pacing between reads

    def close(self) -> None:
        if self.proc.poll() is None:
            try:
                self.command("quit")
            except (AssertionError, BrokenPipeError):
                pass
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()


@pytest.fixture
def peer():
    p = LinkPeer(101.0)
    yield p
    p.close()


def test_daemon_follows_and_leads_a_link_session(tmp_path: Path, tiny_model: Path, start_daemon, peer) -> None:
    config = write_config(tmp_path / "c.toml", tiny_model, instruments=("kick",),
                          extra='\n[tempo]\nsource = "link"\nbpm = 120.0\nquantum = 4\n')
    daemon, client = start_daemon(config)
    joined = time.monotonic()

    # 1. it adopts the running session's tempo (not its own start tempo) and sees the peer
    status = client.wait_until(lambda s: abs(s["tempo"]["bpm"] - 101) <= 0.1 and s["tempo"]["peers"] == 1,
                               timeout=5.0, what="tempo 101 and one Link peer")
    assert time.monotonic() - joined <= 5.0
    assert status["tempo"]["source"] == "link" and status["tempo"]["quantum"] == 4
    # the same bar phase as the peer, read a moment apart
    reply = client.request("/genbridge/tempo", 7, reply=TEMPO_REPLY)
    theirs = peer.read()
    rid, bpm, beat, phase, quantum, peers, playing, source = reply.args
    assert (rid, quantum, peers, source) == (7, 4.0, 1, "link")
    drift = (theirs["phase"] - phase) % quantum
    assert min(drift, quantum - drift) < 0.05, (phase, theirs["phase"])

    # 2. the peer changes tempo: status follows within 2 s
    assert peer.command("tempo 133") == "ok"
    changed = time.monotonic()
    client.wait_until(lambda s: abs(s["tempo"]["bpm"] - 133) <= 0.1, timeout=2.0, what="tempo 133")
    assert time.monotonic() - changed <= 2.0

    # 3. the daemon changes the session's tempo: the peer follows
    reply = client.request("/genbridge/tempo/set", 90, 8, reply=TEMPO_REPLY)
    assert reply.args[0] == 8 and reply.args[1] == pytest.approx(90.0)
    peer.wait_until(lambda s: abs(s["tempo"] - 90) <= 0.1, timeout=2.0, what="tempo 90")

    # a tempo Link cannot have is an error, and nothing changes
    error = client.request("/genbridge/tempo/set", 5000.0, 9, reply="/genbridge/error")
    assert error.args[0] == 9 and "bpm" in error.args[2]
    assert abs(peer.read()["tempo"] - 90) <= 0.1
