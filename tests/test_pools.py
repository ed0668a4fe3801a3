"""Done-when 3: fresh clips are never handed out twice; the fresh flag; background refills."""

from __future__ import annotations

import json
from pathlib import Path

from conftest import TINY_LENGTH, TINY_RATE, pools_full, write_config
from helpers import assert_valid_clip, osc_bundle, osc_message

PLAYED = "/genbridge/drum/played"


def _burst(client, n: int, instrument: str = "kick"):
    """n plays in one OSC bundle: they reach the engine back to back, faster than any refill."""
    client.send_raw(osc_bundle(*(osc_message("/genbridge/drum/play", instrument, 100, k + 1) for k in range(n))))
    replies = [client.expect(PLAYED, timeout=60) for _ in range(n)]
    return sorted(replies, key=lambda r: r.args[0])


def test_consecutive_triggers_never_repeat_a_fresh_clip(tmp_path: Path, tiny_model: Path, start_daemon) -> None:
    daemon, client = start_daemon(write_config(tmp_path / "c.toml", tiny_model, pool=3))
    client.wait_until(pools_full(), what="pools to fill")
    seen: set[str] = set()
    seeds: set[int] = set()
    last = None
    for k in range(15):
        _, instrument, path, fresh = client.request("/genbridge/drum/play", "kick", reply=PLAYED).args
        if fresh:
            assert path not in seen, f"trigger {k} got an already played clip"
            meta = assert_valid_clip(path, sample_rate=TINY_RATE, frames=TINY_LENGTH, channels=1)
            assert meta["seed"] not in seeds
            seen.add(path)
            seeds.add(meta["seed"])
        else:
            assert path == last, "a replay must be the last played clip"
        last = path
    assert len(seen) >= 3


def test_fresh_flag_when_the_pool_runs_dry_and_refill(tmp_path: Path, tiny_model: Path, start_daemon) -> None:
    daemon, client = start_daemon(write_config(tmp_path / "c.toml", tiny_model, pool=3, instruments=("kick",)))
    client.wait_until(pools_full(), what="pool to fill")
    replies = _burst(client, 4)
    fresh = [r.args[3] for r in replies]
    paths = [r.args[2] for r in replies]
    assert fresh == [1, 1, 1, 0]
    assert len(set(paths[:3])) == 3
    assert paths[3] == paths[2], "dry pool with policy 'replay' replays the last played clip"
    status = client.wait_until(pools_full(), what="pool to refill in the background")
    kick = status["instruments"]["kick"]
    assert kick["served_fresh"] == 3 and kick["served_replay"] == 1
    assert kick["refilled"] >= 6
    assert kick["ready"] == kick["target"] == 3, "a pool never grows past its target"
    # the refilled clips are new ones
    again = _burst(client, 3)
    assert [r.args[3] for r in again] == [1, 1, 1]
    assert not set(paths) & {r.args[2] for r in again}


def test_wait_policy_delivers_a_fresh_clip_when_dry(tmp_path: Path, tiny_model: Path, start_daemon) -> None:
    config = write_config(tmp_path / "c.toml", tiny_model, pool=2, dry_policy="wait", instruments=("kick",))
    daemon, client = start_daemon(config)
    client.wait_until(pools_full(), what="pool to fill")
    replies = _burst(client, 4)
    assert [r.args[3] for r in replies] == [1, 1, 1, 1]
    assert len({r.args[2] for r in replies}) == 4
    for r in replies:
        assert_valid_clip(r.args[2], sample_rate=TINY_RATE, frames=TINY_LENGTH, channels=1)
    status = client.status()
    assert status["instruments"]["kick"]["served_waited"] == 2


def test_cold_start_waits_for_the_first_clip(tmp_path: Path, tiny_model: Path, start_daemon) -> None:
    """With nothing played yet, even the replay policy has nothing to replay: it waits."""
    daemon, client = start_daemon(write_config(tmp_path / "c.toml", tiny_model, pool=0, instruments=("kick",)))
    _, _, path, fresh = client.request("/genbridge/drum/play", "kick", reply=PLAYED).args
    assert fresh == 1
    assert_valid_clip(path, sample_rate=TINY_RATE, frames=TINY_LENGTH, channels=1)
    assert json.loads(client.request("/genbridge/status", reply="/genbridge/status/reply").args[1])[
        "instruments"]["kick"]["served_waited"] == 1


def test_a_restarted_daemon_serves_the_fresh_clips_it_had(tmp_path: Path, tiny_model: Path) -> None:
    """Nothing generated is lost: never-played clips survive a restart and stay fresh; clips of
    a model that changed meanwhile are dropped."""
    from conftest import build_tiny_model
    from helpers import Daemon, OscClient

    model = build_tiny_model(tmp_path / "model", seed=8)
    config = write_config(tmp_path / "c.toml", model, pool=3, instruments=("kick",))
    out = tmp_path / "out"

    def run(check):
        daemon = Daemon(out, config)
        try:
            daemon.wait_for_ping()
            client = OscClient(daemon.port)
            try:
                return check(client)
            finally:
                client.close()
        finally:
            daemon.stop()

    def first(client):
        client.wait_until(pools_full(), what="pool to fill")
        return sorted(json.loads(p.read_text())["seed"] for p in (out / ".pool" / "kick").glob("*.json"))

    first_seeds = run(first)
    assert len(first_seeds) == 3

    def second(client):
        status = client.wait_until(lambda s: s["instruments"]["kick"]["restored"] == 3, what="restore")
        assert status["instruments"]["kick"]["ready"] == 3
        seeds = []
        for _ in range(3):
            _, _, path, fresh = client.request("/genbridge/drum/play", "kick", reply=PLAYED).args
            assert fresh == 1
            seeds.append(json.loads(Path(path).with_suffix(".json").read_text())["seed"])
        return sorted(seeds)

    assert run(second) == first_seeds, "the first three triggers after a restart play the kept clips"

    build_tiny_model(tmp_path / "model", seed=9)  # the model changes: its old clips must go

    def third(client):
        status = client.wait_until(pools_full(), what="pool to refill")
        return status["instruments"]["kick"]["restored"]

    assert run(third) == 0
