"""Jobs: cancel, bounded queues, and a model that fails to load while others keep serving."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest
from conftest import SLOW, TINY_LENGTH, TINY_RATE, pools_full, write_config
from helpers import assert_valid_clip


def test_cancel_stops_a_running_job(tmp_path: Path, tiny_model: Path, start_daemon) -> None:
    config = write_config(tmp_path / "c.toml", tiny_model, pool=1, instruments=("kick",), extra=SLOW)
    daemon, client = start_daemon(config)
    client.wait_until(pools_full(), what="kick pool")
    client.send("/genbridge/drum/generate", "slow", 3, 1, 0, "job-a")
    job_id = client.expect("/genbridge/job/started").args[1]
    client.wait_until(lambda s: s["models"]["m"]["busy"], what="the job to run")
    reply = client.request("/genbridge/job/cancel", job_id, "c1", reply="/genbridge/job/cancelled")
    assert reply.args == ["c1", job_id]
    status = client.wait_until(lambda s: s["counters"]["tasks_cancelled"] == 1 and not s["models"]["m"]["busy"],
                               what="the worker to abort the clip between steps")
    assert status["jobs"]["active"] == 0
    # cancelling again is an error; the job made no clips, and the daemon serves on
    client.send("/genbridge/job/cancel", job_id, "c2")
    assert client.expect("/genbridge/error").args[0] == "c2"
    assert not list(daemon.session_dir().glob("*slow*"))
    _, _, path, _ = client.request("/genbridge/drum/play", "kick", reply="/genbridge/drum/played").args
    assert_valid_clip(path, sample_rate=TINY_RATE, frames=TINY_LENGTH, channels=1)
    with pytest.raises(socket.timeout):
        client.recv(timeout=0.5)  # no late drum/ready or job/done from the cancelled job


def test_queue_is_bounded(tmp_path: Path, tiny_model: Path, start_daemon) -> None:
    config = write_config(tmp_path / "c.toml", tiny_model, pool=0, instruments=("kick",), extra=SLOW)
    config.write_text(config.read_text().replace("[engine]\n", "[engine]\nqueue_limit = 2\n"))
    daemon, client = start_daemon(config)
    client.wait_until(lambda s: s["models"]["m"]["state"] == "ready", what="the model")
    started = []  # the first runs at once, the next two wait in the queue
    for k in range(3):
        client.send("/genbridge/drum/generate", "slow", 1, k, 0, k + 1)
        started.append(client.expect("/genbridge/job/started").args[1])
    client.send("/genbridge/drum/generate", "slow", 1, 9, 0, 99)
    error = client.expect("/genbridge/error")
    assert error.args[0] == 99 and "busy" in error.args[2]
    assert client.status()["counters"]["refused_busy"] == 1
    for job_id in started:
        client.request("/genbridge/job/cancel", job_id, reply="/genbridge/job/cancelled")


def test_a_model_that_fails_to_load_gets_error_replies(tmp_path: Path, tiny_model: Path, start_daemon) -> None:
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "kick.ckpt").write_bytes(b"this is not a checkpoint")
    (broken / "config.yaml").write_text("sampling_rate: 22050\nlength: 4096\nmodel:\n  in_channels: 1\n"
                                        "  channels: [8]\n  factors: [1]\n  items: [1]\n  attentions: [0]\n")
    config = write_config(tmp_path / "c.toml", tiny_model, pool=1, instruments=("snare",), extra=f"""
[models.bad]
path = "{broken / 'kick.ckpt'}"
[instruments.kick]
model = "bad"
""")
    daemon, client = start_daemon(config)
    status = client.wait_until(lambda s: s["models"]["bad"]["state"] == "failed", what="the bad model to fail")
    assert "cannot read checkpoint" in status["models"]["bad"]["error"]
    client.send("/genbridge/drum/play", "kick", 100, "k")
    error = client.expect("/genbridge/error")
    assert error.args[0] == "k" and "failed to load" in error.args[2]
    _, _, path, fresh = client.request("/genbridge/drum/play", "snare", reply="/genbridge/drum/played").args
    assert_valid_clip(path, sample_rate=TINY_RATE, frames=TINY_LENGTH, channels=1)


def test_instrument_sampler_reaches_the_clip(tmp_path: Path, tiny_model: Path, start_daemon) -> None:
    extra = '\n[instruments.dpm]\nmodel = "m"\npool = 0\nsampler = "dpmpp2m"\n'
    config = write_config(tmp_path / "c.toml", tiny_model, pool=0, instruments=("kick",), extra=extra)
    daemon, client = start_daemon(config)
    metas = []
    for instrument in ("kick", "dpm"):
        client.send("/genbridge/drum/generate", instrument, 1, 3, 0, instrument)
        client.expect("/genbridge/job/started")
        path = client.expect("/genbridge/drum/ready").args[2]
        client.expect("/genbridge/job/done")
        metas.append(assert_valid_clip(path, sample_rate=TINY_RATE, frames=TINY_LENGTH, channels=1))
    assert [m["sampler"] for m in metas] == ["ddim", "dpmpp2m"]
