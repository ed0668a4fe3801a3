"""The tempo over OSC with the fixed source: typed replies, tempo/set, a listener on every downbeat,
and quantize refused when it is not a grid (while the frozen positional form stays what it was)."""

from __future__ import annotations

import socket
import time
from pathlib import Path

import pytest
from conftest import pools_full, write_config

TEMPO = '\n[tempo]\nsource = "fixed"\nbpm = 240.0\nquantum = 1\n'  # a bar every 0.25 s


def test_tempo_replies_set_and_listen_on_every_bar(tmp_path: Path, tiny_model: Path, start_daemon) -> None:
    daemon, client = start_daemon(write_config(tmp_path / "c.toml", tiny_model, instruments=("kick",), extra=TEMPO))
    reply = client.request("/genbridge/tempo", "a", reply="/genbridge/tempo/reply")
    rid, bpm, beat, phase, quantum, peers, playing, source = reply.args
    assert (rid, bpm, quantum, peers, playing, source) == ("a", 240.0, 1.0, 0, 0, "fixed")
    assert beat > 0 and 0 <= phase < 1

    client.send("/genbridge/tempo/listen", 3, "L")
    assert client.expect("/genbridge/tempo/reply").args[0] == "L"
    bars = [client.expect("/genbridge/tempo/bar", timeout=2.0) for _ in range(3)]
    arrived = time.monotonic()
    beats = [b.args[2] for b in bars]
    assert all(b.args[0] == "L" for b in bars)
    assert beats == [beats[0], beats[0] + 1, beats[0] + 2] and all(b.args[3] == 0 for b in bars), beats
    with pytest.raises(socket.timeout):  # three were asked for
        client.recv(timeout=0.6)
    assert time.monotonic() - arrived >= 0.6

    # listening until told to stop, from the same socket
    client.send("/genbridge/tempo/listen", 1000, "M")
    client.expect("/genbridge/tempo/reply")
    client.expect("/genbridge/tempo/bar", timeout=2.0)
    client.send("/genbridge/tempo/listen", 0, "stop")
    while (r := client.recv(timeout=2.0)).address == "/genbridge/tempo/bar":
        pass  # a downbeat sent before the stop arrived
    assert r.address == "/genbridge/tempo/reply" and r.args[0] == "stop"
    with pytest.raises(socket.timeout):
        client.recv(timeout=0.6)
    assert client.status()["tempo"]["listeners"] == 0

    # a new tempo for everyone; the beat goes on from where it was
    before = client.status()["tempo"]["beat"]
    reply = client.request("/genbridge/tempo/set", 150, "s", reply="/genbridge/tempo/reply")
    assert reply.args[:2] == ["s", 150.0] and reply.args[2] >= before
    assert client.status()["tempo"]["bpm"] == 150.0
    error = client.request("/genbridge/tempo/set", 1000, "bad", reply="/genbridge/error")
    assert error.args[0] == "bad" and "bpm" in error.args[2]
    assert client.status()["tempo"]["bpm"] == 150.0


def test_quantize_is_a_keyword_grid_and_the_positional_play_is_unchanged(tmp_path: Path, tiny_model: Path,
                                                                          start_daemon) -> None:
    daemon, client = start_daemon(write_config(tmp_path / "c.toml", tiny_model, instruments=("kick",), extra=TEMPO))
    client.wait_until(pools_full(), what="pools")
    error = client.request("/genbridge/kw/drum/play", "kick", "quantize", "1/5", "id", "q", reply="/genbridge/error")
    assert error.args[0] == "q" and "quantize must be one of" in error.args[2], error.args
    played = client.request("/genbridge/kw/drum/play", "kick", "quantize", "bar", "id", "ok",
                            reply="/genbridge/drum/played")
    assert played.args[0] == "ok" and played.args[1] == "kick"
    # v1's grammar: a third argument of drum/play is the request id, whatever it says
    played = client.request("/genbridge/drum/play", "kick", 100, "bar", reply="/genbridge/drum/played")
    assert played.args[0] == "bar"
