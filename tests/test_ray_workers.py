"""Model workers on Ray (``[engine] backend = "ray"``) against a real local cluster
(``ray start --head``, stopped at the end): plays and generates served by actors, an actor killed
mid-refill and restarted, the cluster stopped and started again, two daemons sharing one actor."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time
from pathlib import Path
from typing import Any, Iterator

import pytest
from conftest import TINY_LENGTH, TINY_RATE, pools_full, write_config
from helpers import Daemon, OscClient, assert_valid_clip
from ray_peer import RAY, RayCluster

#: One test at a time on this machine, whichever test process runs it (tests/conftest.py):
#: `ray stop --force` stops every Ray process of the machine, and two head nodes would share Ray's
#: fixed ports.
pytestmark = pytest.mark.machine_wide("ray")


@pytest.fixture
def cluster() -> Iterator[RayCluster]:
    assert shutil.which(RAY), "ray is not installed (make test installs genbridge[ray])"
    subprocess.run([RAY, "stop", "--force"], capture_output=True, timeout=120)  # nothing left from before
    cluster = RayCluster()
    yield cluster
    cluster.stop()


def _config(tmp_path: Path, model: Path, cluster: RayCluster, *, pool: int = 2, extra_model: str = "",
            instruments: tuple[str, ...] = ("kick", "snare")) -> Path:
    return write_config(tmp_path / "c.toml", model, pool=pool, instruments=instruments,
                        engine=f'backend = "ray"\nray_address = "{cluster.address}"', model=extra_model)


def _model(status: dict[str, Any]) -> dict[str, Any]:
    return status["models"]["m"]


def test_plays_and_generates_are_served_by_ray_actors(tmp_path: Path, tiny_model: Path, cluster: RayCluster,
                                                      start_daemon) -> None:
    daemon, client = start_daemon(_config(tmp_path, tiny_model, cluster))
    status = client.wait_until(pools_full(), timeout=180, what="pools filled by the Ray actor")
    model = _model(status)
    assert model["remote"]["state"] == "connected" and model["info"]["backend"] == "ray"
    actor = model["remote"]["actors"][0]
    assert actor["name"].startswith("genbridge/m/") and actor["pid"] != model["pid"]  # not the proxy
    played = client.request("/genbridge/drum/play", "kick", 100, 1, reply="/genbridge/drum/played")
    assert played.args[3] == 1
    assert_valid_clip(played.args[2], sample_rate=TINY_RATE, frames=TINY_LENGTH, channels=1)
    client.send("/genbridge/drum/generate", "snare", 2, 11)
    client.expect("/genbridge/job/started")
    paths = [client.expect("/genbridge/drum/ready", timeout=120).args[2] for _ in range(2)]
    client.expect("/genbridge/job/done")
    seeds = [assert_valid_clip(p, sample_rate=TINY_RATE, frames=TINY_LENGTH, channels=1)["seed"] for p in paths]
    assert seeds == [11, 12]
    started = time.monotonic()
    assert daemon.stop() == 0
    assert time.monotonic() - started < 5, "the proxy leaves its actors and exits promptly"


def test_an_actor_killed_mid_job_is_restarted_and_pools_refill(tmp_path: Path, tiny_model: Path,
                                                               cluster: RayCluster, start_daemon) -> None:
    from conftest import SLOW

    config = write_config(tmp_path / "c.toml", tiny_model, pool=3, instruments=("kick",), extra=SLOW,
                          engine=f'backend = "ray"\nray_address = "{cluster.address}"')
    daemon, client = start_daemon(config)
    client.wait_until(pools_full(), timeout=180, what="pools to fill")
    first = _model(client.status())["remote"]["actors"][0]["pid"]
    client.send("/genbridge/drum/generate", "slow", 1, 5, 0, "long")
    assert client.expect("/genbridge/job/started").args[0] == "long"
    for _ in range(3):  # the kick pool emptied: refills wait behind the long job
        client.request("/genbridge/drum/play", "kick", reply="/genbridge/drum/played")
    os.kill(first, signal.SIGKILL)
    error = client.expect("/genbridge/error", timeout=60)
    assert error.args[0] == "long" and "died" in error.args[2], error
    status = client.wait_until(lambda s: pools_full()(s) and _model(s)["state"] == "ready"
                               and _model(s).get("remote", {}).get("actors", [{}])[0].get("pid") not in (None, first),
                               timeout=180, what="the restarted actor to refill the pool")
    assert status["models"]["m"]["remote"]["actors"][0]["restarts"] >= 1
    played = client.request("/genbridge/drum/play", "kick", reply="/genbridge/drum/played")
    assert played.args[3] == 1


def test_a_lost_cluster_is_unreachable_then_back(tmp_path: Path, tiny_model: Path, cluster: RayCluster,
                                                 start_daemon) -> None:
    daemon, client = start_daemon(_config(tmp_path, tiny_model, cluster, pool=1, instruments=("kick",)))
    client.wait_until(pools_full(), timeout=180, what="pools to fill")
    cluster.stop()
    client.wait_until(lambda s: _model(s)["state"] == "unreachable", timeout=120, what="status to say unreachable")
    # the daemon keeps serving: the pool's one clip, then that clip again (fresh 0) - nothing can refill it
    plays = [client.request("/genbridge/drum/play", "kick", reply="/genbridge/drum/played", timeout=30)
             for _ in range(2)]
    assert [p.args[3] for p in plays] == [1, 0] and plays[1].args[2] == plays[0].args[2]
    assert Path(plays[1].args[2]).is_file()
    assert "unreachable" in _model(client.status())["error"]
    client.send("/genbridge/drum/generate", "kick", 1, 3)
    refused = client.expect("/genbridge/error")
    assert "unreachable" in refused.args[2], refused  # told at once, not queued behind the network
    cluster.start()
    client.wait_until(lambda s: _model(s)["state"] == "ready" and pools_full()(s), timeout=180,
                      what="the daemon to reconnect by itself and refill")
    assert client.request("/genbridge/drum/play", "kick", reply="/genbridge/drum/played").args[3] == 1


def test_two_daemons_share_one_actor(tmp_path: Path, tiny_model: Path, cluster: RayCluster) -> None:
    config = _config(tmp_path, tiny_model, cluster, pool=1, instruments=("kick",))
    daemons = [Daemon(tmp_path / f"out{k}", config) for k in range(2)]
    clients: list[OscClient] = []
    try:
        for daemon in daemons:
            daemon.wait_for_ping(timeout=120)
            clients.append(OscClient(daemon.port))
        statuses = [c.wait_until(lambda s: pools_full()(s) and len(_model(s).get("remote", {}).get("shared_by", []))
                                 == 2, timeout=180, what="both daemons on the actor") for c in clients]
        actors = [_model(s)["remote"]["actors"][0] for s in statuses]
        assert actors[0]["name"] == actors[1]["name"] and actors[0]["pid"] == actors[1]["pid"]
        for client in clients:
            assert client.request("/genbridge/drum/play", "kick", reply="/genbridge/drum/played").args[3] == 1
    finally:
        for client in clients:
            client.close()
        for daemon in daemons:
            daemon.stop()


def test_replicas_split_a_refill_batch(tmp_path: Path, tiny_model: Path, cluster: RayCluster, start_daemon) -> None:
    daemon, client = start_daemon(_config(tmp_path, tiny_model, cluster, pool=8, instruments=("kick",),
                                          extra_model="replicas = 2"))

    def both_ready(s: dict[str, Any]) -> bool:
        actors = _model(s).get("remote", {}).get("actors", [])
        return (pools_full()(s) and len(actors) == 2 and all(a.get("ready") for a in actors)
                and "clips_asked" in actors[0])

    before = [a["clips_asked"] for a in _model(client.wait_until(both_ready, timeout=180, what="both replicas"))
              ["remote"]["actors"]]
    for _ in range(8):  # empty the pool: its refill batches are split between the two
        client.request("/genbridge/drum/play", "kick", reply="/genbridge/drum/played")
    status = client.wait_until(lambda s: both_ready(s) and all(
        a["clips_asked"] > b for a, b in zip(_model(s)["remote"]["actors"], before)), timeout=120,
        what="both replicas to make refills")
    actors = _model(status)["remote"]["actors"]
    assert actors[0]["pid"] != actors[1]["pid"]


def test_the_actor_maps_clients_takes_turns_and_cancels_queued_renders(monkeypatch: pytest.MonkeyPatch) -> None:
    """ModelActor without a cluster: a fake worker body echoes each render's tasks as clips."""
    import threading

    import bridge.model_worker
    from bridge import ray_actor

    served: list[int] = []
    gate = threading.Event()

    def fake_body(conn: Any, spec: dict[str, Any], log_level: int) -> None:
        conn.send({"op": "ready", "info": {"name": spec["model_name"]}, "memory": {}})
        while True:
            msg = conn.recv()
            if msg["op"] != "render":
                continue
            gate.wait(10)
            for t in msg["tasks"]:
                served.append(t["seed"])
                conn.send({"op": "clip", "task": t["task"], "audio": [0.0], "sample_rate": 1, "meta": {}})

    monkeypatch.setattr(bridge.model_worker, "worker_main", fake_body)
    actor = ray_actor.ModelActor({"model_name": "m"})
    for client in ("a", "b"):
        actor.join(client)
        assert actor.pull(client)["messages"][0]["op"] == "ready"
    for k in range(3):  # a asks for three renders, then b for one: b's comes second, not fourth
        actor.push("a", {"op": "render", "tasks": [{"task": 1 + k, "seed": 100 + k}], "params": {}})
    actor.push("b", {"op": "render", "tasks": [{"task": 1, "seed": 200}], "params": {}})
    actor.push("a", {"op": "cancel", "task": 3})  # still queued: cancelled without being made
    gate.set()
    got: dict[str, list[dict[str, Any]]] = {"a": [], "b": []}
    while len(got["a"]) < 3 or len(got["b"]) < 1:
        for client in got:
            got[client] += actor.pull(client, timeout=0.2)["messages"]
    assert sorted(served[:2]) == [100, 200] and 102 not in served  # one of each first: b does not wait behind a
    assert sorted((m["op"], m["task"]) for m in got["a"]) == [("cancelled", 3), ("clip", 1), ("clip", 2)]
    assert [(m["op"], m["task"]) for m in got["b"]] == [("clip", 1)]  # b's own task id, not the actor's
    actor.leave("b")
    assert actor.sharing()["clients"] == ["a"] and actor.pull("b")["joined"] is False
