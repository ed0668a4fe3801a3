"""What model workers on Ray cost and give, against local workers, side by side in one run.

For each of: local worker processes, Ray with 1 replica, Ray with 2 replicas (a fresh local
cluster, ``ray start --head --num-cpus 2``, for each Ray row), one daemon with a small real model
(the tests' U-Net at ``--steps`` sampling steps, one torch thread per worker):

- **refill rate**: one-shots/s while an empty pool of ``--pool`` clips fills (refill batches of
  ``engine.refill_batch``, split between the replicas);
- **per-clip latency**: ``--clips`` single ``drum/generate`` requests one after another (an
  instrument with no pool, so no refill competes), request to ``drum/ready``, p50/p99; the row
  beside local says what Ray adds (the proxy's pipe, the actor call, the object store).

Usage: python bench/remote.py [--pool 48] [--clips 40] [--steps 40]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE.parent / "tests"))
sys.path.insert(0, str(HERE))

from _common import percentile, save, table  # noqa: E402
from conftest import build_tiny_model, write_config  # noqa: E402
from helpers import Daemon, OscClient  # noqa: E402
from ray_peer import RayCluster  # noqa: E402


def _measure(name: str, model: Path, folder: Path, pool: int, clips: int, steps: int,
             replicas: int = 0) -> dict[str, float]:
    cluster = RayCluster() if replicas else None
    engine = f'backend = "ray"\nray_address = "{cluster.address}"' if cluster else ""
    extra = f"""
[instruments.single]
model = "m"
pool = 0
steps = {steps}
"""
    config = write_config(folder / f"{name}.toml", model, pool=pool, steps=steps, instruments=("kick",),
                          engine=engine, model=f"replicas = {replicas}" if replicas else "", extra=extra)
    daemon = Daemon(folder / f"out-{name}", config)
    try:
        daemon.wait_for_ping(timeout=120)
        client = OscClient(daemon.port)
        client.wait_until(lambda s: s["models"]["m"]["state"] == "ready", timeout=300, what="the model")
        t0 = time.monotonic()
        client.wait_until(lambda s: s["instruments"]["kick"]["ready"] >= pool, timeout=900, what="the pool")
        fill_s = time.monotonic() - t0
        latencies = []
        for k in range(clips):
            t = time.perf_counter()
            client.send("/genbridge/drum/generate", "single", 1, k + 1, steps, k + 1)
            client.expect("/genbridge/job/started")
            client.expect("/genbridge/drum/ready", timeout=120)
            latencies.append((time.perf_counter() - t) * 1000)
            client.expect("/genbridge/job/done")
        client.close()
    finally:
        daemon.stop()
        if cluster is not None:
            cluster.stop()
    return {"refill_per_s": pool / fill_s, "fill_s": fill_s, "p50_ms": percentile(latencies, 50),
            "p99_ms": percentile(latencies, 99), "max_ms": max(latencies)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--pool", type=int, default=48)
    ap.add_argument("--clips", type=int, default=40)
    ap.add_argument("--steps", type=int, default=40)
    args = ap.parse_args()
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        model = build_tiny_model(folder / "model")
        for name, replicas in (("local", 0), ("ray x1", 1), ("ray x2", 2)):
            print(f"{name}: filling a pool of {args.pool}, then {args.clips} single clips", flush=True)
            results[name] = _measure(name.replace(" ", ""), model, folder, args.pool, args.clips, args.steps, replicas)
    local = results["local"]
    rows = [[name, r["refill_per_s"], r["refill_per_s"] / local["refill_per_s"], r["p50_ms"], r["p99_ms"],
             r["p50_ms"] - local["p50_ms"], r["p99_ms"] - local["p99_ms"]] for name, r in results.items()]
    print()
    print(table(["workers", "refill one-shots/s", "x local", "clip p50 ms", "clip p99 ms", "added p50 ms",
                 "added p99 ms"], rows))
    scaling = results["ray x2"]["refill_per_s"] / results["ray x1"]["refill_per_s"]
    print(f"2 replicas / 1 replica refill rate = {scaling:.2f}x")
    path = save("remote", {"pool": args.pool, "clips": args.clips, "steps": args.steps, "results": results})
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
