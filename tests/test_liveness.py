"""Hung and bloated children: noticed, killed, restarted, and said so; the pools keep serving.

The decision (bridge.liveness.verdict) is checked with numbers; the supervisor with real child
processes that stop themselves, stall their main thread, or grow; the daemon with a worker
stopped by SIGSTOP mid-job and a model family that leaks until it crosses its memory ceiling.
"""

from __future__ import annotations

import asyncio
import os
import signal
import time
from pathlib import Path
from typing import Any

import pytest
from conftest import SLOW, TINY_LENGTH, TINY_RATE, write_config
from helpers import assert_valid_clip

from bridge import liveness
from bridge.liveness import BUSY, IDLE, LOADING, LivenessPolicy, verdict
from bridge.supervisor import RestartPolicy, SupervisedChild

FAMILIES = Path(__file__).resolve().parent / "fixtures" / "families"
POLICY = LivenessPolicy(beat_s=0.1, silent_after_s=10, stalled_after_s=60, loading_after_s=300, memory_limit_mb=500)


@pytest.mark.parametrize("ages, rss, kind", [
    ((0.2, 0.2, IDLE), 100, None),
    ((0.2, 3600, IDLE), 100, None),  # idle: waiting for work makes no marks, and that is fine
    ((11, 0.2, IDLE), 100, "hung"),  # stopped: no heartbeat at all
    ((0.2, 61, BUSY), 100, "hung"),  # beating, but the main thread makes no progress
    ((0.2, 59, BUSY), 100, None),
    ((0.2, 0.2, BUSY), 501, "memory"),
    ((50, 50, LOADING), 100, None),  # a load may hold the GIL (imports, compiling): only its own limit
    ((0.2, 301, LOADING), 100, "hung"),
])
def test_the_verdict(ages: tuple[float, float, float], rss: float, kind: str | None) -> None:
    found = verdict(ages, rss, POLICY)
    assert (found[0] if found else None) == kind
    if found:
        assert found[1]  # a reason a musician can read


def test_zero_turns_each_limit_off() -> None:
    off = LivenessPolicy(silent_after_s=0, stalled_after_s=0, loading_after_s=0, memory_limit_mb=0)
    assert verdict((1e6, 1e6, BUSY), 1e9, off) is None and verdict((1e6, 1e6, LOADING), 1e9, off) is None


# ---------------------------------------------------------------------- supervised children


def stop_myself(conn: Any) -> None:
    """Say hello, get to work, then freeze the whole process, heartbeat thread included."""
    liveness.set_state(IDLE)
    conn.send({"op": "hello", "pid": os.getpid()})
    liveness.set_state(BUSY)
    os.kill(os.getpid(), signal.SIGSTOP)


def stall_main_thread(conn: Any) -> None:
    """Busy, heartbeat still beating, main thread stuck (a deadlock)."""
    liveness.set_state(IDLE)
    conn.send({"op": "hello", "pid": os.getpid()})
    liveness.set_state(BUSY)
    conn.recv()  # nothing ever comes: the main thread makes no progress


def grow(conn: Any) -> None:
    """A worker that leaks while it works."""
    liveness.set_state(IDLE)
    conn.send({"op": "hello", "pid": os.getpid()})
    liveness.set_state(BUSY)
    held = []
    while True:
        block = bytearray(20 * 2**20)
        block[::4096] = b"\x01" * len(range(0, len(block), 4096))
        held.append(block)
        liveness.mark()
        time.sleep(0.02)


def big_from_the_start(conn: Any) -> None:
    """A model that needs more than its ceiling before it does any work."""
    block = bytearray(200 * 2**20)
    block[::4096] = b"\x01" * len(range(0, len(block), 4096))
    liveness.set_state(IDLE)
    conn.send({"op": "hello", "pid": os.getpid()})
    conn.recv()


def supervise(target: Any, policy: LivenessPolicy, restarts: int = 1) -> tuple[list[int], list[str | None], float]:
    """Run ``target`` under a supervisor until it was restarted ``restarts`` times; returns the
    pids that said hello, the supervisor's reasons, and the seconds from first hello to first exit."""

    async def run() -> tuple[list[int], list[str | None], float]:
        loop = asyncio.get_running_loop()
        pids: list[int] = []
        reasons: list[str | None] = []
        times: dict[str, float] = {}
        done = asyncio.Event()
        child: SupervisedChild

        def on_message(msg: dict[str, Any]) -> None:
            times.setdefault("hello", time.monotonic())
            pids.append(msg["pid"])
            if len(pids) > restarts:
                done.set()

        def on_exit(code: int | None, restart_in: float | None) -> None:
            times.setdefault("exit", time.monotonic())
            reasons.append(child.health()["last_exit"])

        child = SupervisedChild("test", target, (), loop, on_message=on_message, on_exit=on_exit,
                                policy=RestartPolicy(first_delay_s=0.05), liveness=policy)
        child.start()
        try:
            await asyncio.wait_for(done.wait(), 60)
        finally:
            child.stop()
        return pids, reasons, times["exit"] - times["hello"]

    return asyncio.run(run())


def test_a_stopped_child_is_killed_and_restarted() -> None:
    policy = LivenessPolicy(beat_s=0.1, silent_after_s=1.0, check_every_s=0.1)
    pids, reasons, took = supervise(stop_myself, policy)
    assert len(set(pids)) == 2, "a new process said hello"
    assert reasons[0] is not None and "no heartbeat" in reasons[0]
    assert 1.0 <= took < 3.0


def test_a_child_stuck_while_busy_is_killed_though_it_still_beats() -> None:
    policy = LivenessPolicy(beat_s=0.1, silent_after_s=5.0, stalled_after_s=1.0, check_every_s=0.1)
    pids, reasons, took = supervise(stall_main_thread, policy)
    assert len(set(pids)) == 2
    assert reasons[0] is not None and "no progress" in reasons[0]
    assert 1.0 <= took < 3.0


def test_a_growing_child_is_stopped_at_its_memory_ceiling() -> None:
    policy = LivenessPolicy(beat_s=0.1, memory_limit_mb=300, check_every_s=0.1)
    pids, reasons, _ = supervise(grow, policy)
    assert len(set(pids)) == 2
    # the watch says how big it got; if it grew faster than the watch, the kernel's cgroup stopped it
    assert reasons[0] is not None and "memory ceiling" in reasons[0], reasons


def test_a_child_over_its_ceiling_before_any_work_is_not_restarted_in_a_loop() -> None:
    async def run() -> tuple[list, SupervisedChild]:
        loop = asyncio.get_running_loop()
        exits: list[tuple[int | None, float | None]] = []
        done = asyncio.Event()

        def on_exit(code: int | None, restart_in: float | None) -> None:
            exits.append((code, restart_in))
            done.set()

        child = SupervisedChild("big", big_from_the_start, (), loop, on_message=lambda msg: None, on_exit=on_exit,
                                policy=RestartPolicy(first_delay_s=0.05),
                                liveness=LivenessPolicy(beat_s=0.1, memory_limit_mb=120, check_every_s=0.1))
        child.start()
        await asyncio.wait_for(done.wait(), 60)
        child.stop()
        return exits, child

    exits, child = asyncio.run(run())
    assert exits[0][1] is None, "not restarted: it would be over its ceiling again"
    assert "before any work" in child.last_exit and "memory_limit_mb" in child.last_exit, child.last_exit
    assert child.restarts == 0


# ---------------------------------------------------------------------- in the daemon


def test_a_sigstopped_worker_is_replaced_in_time_and_its_instruments_play_fresh_again(
        tmp_path: Path, tiny_model: Path, start_daemon) -> None:
    timeout = 3.0
    config = write_config(tmp_path / "c.toml", tiny_model, pool=2, instruments=("kick",), extra=SLOW,
                          engine=f"heartbeat_timeout_s = {timeout}")
    daemon, client = start_daemon(config)
    client.wait_until(lambda s: s["instruments"]["kick"]["ready"] == 2, what="the kick pool to fill")
    client.send("/genbridge/drum/generate", "slow", 1, 5, 0, "in-flight")
    client.expect("/genbridge/job/started")
    status = client.wait_until(lambda s: s["models"]["m"]["busy"], what="the slow job to start")
    pid = status["models"]["m"]["pid"]
    assert status["models"]["m"]["health"]["heartbeat_age_s"] < timeout

    os.kill(pid, signal.SIGSTOP)
    stopped_at = time.monotonic()
    try:
        # the pool keeps serving while the worker is frozen: its clips were made before
        _, _, path, fresh = client.request("/genbridge/drum/play", "kick", reply="/genbridge/drum/played").args
        assert fresh == 1
        assert_valid_clip(path, sample_rate=TINY_RATE, frames=TINY_LENGTH, channels=1)
        error = client.expect("/genbridge/error", timeout=30)
        noticed = time.monotonic() - stopped_at
    finally:
        try:
            os.kill(pid, signal.SIGCONT)  # only matters if the test failed before the kill
        except ProcessLookupError:
            pass
    assert error.args[0] == "in-flight" and "hung" in error.args[2] and "no heartbeat" in error.args[2]
    assert noticed < timeout + 2.0, f"noticed after {noticed:.1f} s (heartbeat_timeout_s = {timeout})"

    status = client.wait_until(lambda s: s["models"]["m"]["state"] == "ready" and s["models"]["m"]["restarts"] == 1,
                               what="the worker to be restarted")
    model = status["models"]["m"]
    assert model["pid"] != pid
    assert "no heartbeat" in model["health"]["last_exit"] and model["health"]["last_exit_kind"] == "hung"
    assert status["counters"]["worker_hangs"] == 1 and status["counters"]["worker_crashes"] == 0
    # the new worker refills the pool: plays are fresh again, clips made after the restart
    client.wait_until(lambda s: s["instruments"]["kick"]["ready"] == 2, what="the pool to refill")
    for _ in range(2):
        _, _, path, fresh = client.request("/genbridge/drum/play", "kick", reply="/genbridge/drum/played").args
        assert fresh == 1
        assert os.path.getmtime(path) > stopped_at
    assert daemon.proc.poll() is None


def test_a_worker_over_its_memory_ceiling_is_restarted_with_an_error_reply(
        tmp_path: Path, tiny_model: Path, start_daemon) -> None:
    config = write_config(tmp_path / "c.toml", tiny_model, pool=1, instruments=("kick",),
                          model='family = "leaky_family:LeakyFamily"\nmemory_limit_mb = 900')
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(FAMILIES), os.environ.get("PYTHONPATH", "")]),
               GENBRIDGE_TEST_LEAK_MB="60")
    daemon, client = start_daemon(config, env=env)
    status = client.wait_until(lambda s: s["instruments"]["kick"]["ready"] == 1, what="the kick pool to fill")
    first_pid = status["models"]["m"]["pid"]
    assert status["models"]["m"]["health"]["memory_limit_mb"] == 900
    # every clip costs the leaky worker 60 MB more: a long job crosses the ceiling on its way
    client.send("/genbridge/drum/generate", "kick", 30, 1, 0, "big-job")
    client.expect("/genbridge/job/started")
    made = 0
    while (reply := client.recv(timeout=120)).address == "/genbridge/drum/ready":
        made += 1  # the clips made before the ceiling are delivered
    assert reply.address == "/genbridge/error", reply
    assert reply.args[0] == "big-job" and "memory ceiling" in reply.args[2], reply.args
    assert made < 30
    status = client.wait_until(lambda s: s["models"]["m"]["state"] == "ready" and s["models"]["m"]["restarts"] >= 1,
                               what="the worker to be restarted")
    assert status["models"]["m"]["pid"] != first_pid
    assert status["models"]["m"]["health"]["last_exit_kind"] == "memory"
    assert status["counters"]["worker_memory_restarts"] >= 1
    # the restarted worker (small again) makes new clips
    client.send("/genbridge/drum/generate", "kick", 1, 3, 0, "after")
    client.expect("/genbridge/job/started")
    ready = client.expect("/genbridge/drum/ready")
    assert ready.args[0] == "after"
    assert_valid_clip(ready.args[2], sample_rate=TINY_RATE, frames=TINY_LENGTH, channels=1)
    assert daemon.proc.poll() is None
