"""Done-when 4: bad input gets an error reply with the id and changes nothing else."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
from conftest import pools_full, write_config
from helpers import osc_message

ERROR = "/genbridge/error"

CASES = [
    # (address, args, expected id, expected address in the reply, words in the message)
    ("/genbridge/nope", [5], 5, "/genbridge/nope", "unknown address"),
    ("/other/thing", [], 0, "/other/thing", "unknown address"),
    ("/genbridge/drum/play", [3], 0, "/genbridge/drum/play", "instrument must be"),
    ("/genbridge/drum/play", ["tuba", 100, "x1"], "x1", "/genbridge/drum/play", "unknown instrument"),
    ("/genbridge/drum/play", ["kick", 300, 12], 12, "/genbridge/drum/play", "velocity"),
    ("/genbridge/drum/play", ["kick", -0.5, 13], 13, "/genbridge/drum/play", "velocity"),
    ("/genbridge/drum/play", ["kick", math.nan, 14], 14, "/genbridge/drum/play", "velocity"),
    ("/genbridge/drum/play", ["kick", 1, 2, 3, 4], 4, "/genbridge/drum/play", "too many arguments"),
    ("/genbridge/drum/play", [], 0, "/genbridge/drum/play", "missing arguments"),
    ("/genbridge/drum/generate", ["kick", 100000, 1, 0, 9], 9, "/genbridge/drum/generate", "count must be"),
    ("/genbridge/drum/generate", ["kick", 0, 1, 0, 10], 10, "/genbridge/drum/generate", "count must be"),
    ("/genbridge/drum/generate", ["kick", 2.5, 1, 0, 11], 11, "/genbridge/drum/generate", "count must be an integer"),
    ("/genbridge/drum/generate", ["kick", 2, -4, 0, 15], 15, "/genbridge/drum/generate", "seed must be"),
    ("/genbridge/drum/generate", ["kick", 1, "seven", 0, 16], 16, "/genbridge/drum/generate",
     "seed must be an integer"),
    ("/genbridge/drum/generate", ["kick", 1, 1, 5000, 17], 17, "/genbridge/drum/generate", "steps must be"),
    ("/genbridge/job/cancel", [999, 7], 7, "/genbridge/job/cancel", "no running generate job"),
    ("/genbridge/client/reply_port", [70000, 8], 8, "/genbridge/client/reply_port", "port must be"),
    ("/genbridge/ping", [1.5], 0, "/genbridge/ping", "request id must be"),
]

RAW = [
    (b"hello world", "malformed"),
    (osc_message("/genbridge/ping", 1)[:-3], "malformed"),  # truncated argument
    (b"#bundle\x00" + b"\x00" * 8 + b"\x00\x00\x01\x00junk", "malformed"),  # bundle element overruns
    (b"/genbridge/ping\x00,i\x00\x00", "malformed"),  # tag says int, no data
]


@pytest.fixture
def served(tmp_path: Path, tiny_model: Path, start_daemon):
    daemon, client = start_daemon(write_config(tmp_path / "c.toml", tiny_model, pool=1))
    client.wait_until(pools_full(), what="pools to fill")
    return daemon, client


def test_each_bad_request_gets_an_error_with_its_id(served) -> None:
    daemon, client = served
    before = sorted(p.name for p in daemon.session_dir().iterdir())
    status_before = client.status()
    for address, args, rid, reply_address, words in CASES:
        client.send(address, *args)
        reply = client.expect(ERROR)
        assert reply.args[0] == rid, (address, args, reply.args)
        assert reply.args[1] == reply_address
        assert words in reply.args[2], (address, args, reply.args)
        # and the daemon keeps serving
        assert client.request("/genbridge/ping", 1, reply="/genbridge/pong").args[0] == 1
    # nothing else changed: no files, no jobs, pools untouched
    assert sorted(p.name for p in daemon.session_dir().iterdir()) == before
    status = client.status()
    assert status["jobs"]["active"] == 0
    for name, inst in status["instruments"].items():
        assert inst["served_fresh"] == status_before["instruments"][name]["served_fresh"] == 0
    assert status["models"]["m"]["restarts"] == 0


def test_malformed_packets_get_an_error_and_the_daemon_keeps_serving(served) -> None:
    daemon, client = served
    for data, words in RAW:
        client.send_raw(data)
        reply = client.expect(ERROR)
        assert reply.args[0] == 0 and words in reply.args[2], (data, reply.args)
        assert client.request("/genbridge/ping", reply="/genbridge/pong").args[0] == 0
    assert daemon.proc.poll() is None
