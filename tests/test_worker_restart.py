"""A model worker killed mid-generation: its request gets an error, the worker comes back."""

from __future__ import annotations

import os
import signal
from pathlib import Path

from conftest import SLOW, TINY_LENGTH, TINY_RATE, write_config
from helpers import assert_valid_clip


def test_killed_worker_fails_its_job_and_restarts(tmp_path: Path, tiny_model: Path, start_daemon) -> None:
    config = write_config(tmp_path / "c.toml", tiny_model, pool=1, instruments=("kick",), extra=SLOW)
    daemon, client = start_daemon(config)
    client.wait_until(lambda s: s["instruments"]["kick"]["ready"] == 1, what="the kick pool to fill")
    client.send("/genbridge/drum/generate", "slow", 1, 5, 0, "long-one")
    job_id = client.expect("/genbridge/job/started").args[1]
    status = client.wait_until(lambda s: s["models"]["m"]["busy"], what="the slow job to start")
    pid = status["models"]["m"]["pid"]
    os.kill(pid, signal.SIGKILL)
    error = client.expect("/genbridge/error", timeout=30)
    assert error.args[0] == "long-one"
    assert error.args[1] == "/genbridge/drum/generate"
    assert f"job {job_id}" in error.args[2] and "died" in error.args[2]
    status = client.wait_until(lambda s: s["models"]["m"]["state"] == "ready" and s["models"]["m"]["restarts"] == 1,
                               what="the worker to restart")
    assert status["models"]["m"]["pid"] != pid
    assert status["counters"]["worker_crashes"] == 1
    # the pool kept serving, and the restarted worker makes new clips
    for _ in range(3):
        _, _, path, _ = client.request("/genbridge/drum/play", "kick", reply="/genbridge/drum/played", timeout=60).args
        assert_valid_clip(path, sample_rate=TINY_RATE, frames=TINY_LENGTH, channels=1)
    client.send("/genbridge/drum/generate", "kick", 1, 3, 0, "after")
    client.expect("/genbridge/job/started")
    assert client.expect("/genbridge/drum/ready").args[0] == "after"
    assert daemon.proc.poll() is None
