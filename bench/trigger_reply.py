"""Request -> reply latency of the running daemon, with warm pools, over OSC and the web console.

Starts ``genbridge serve`` (as the README does) with a small real model whose pool holds more
clips than the run triggers, waits until the pool is full, then sends N ``/genbridge/drum/play``
requests one after another (each waits for its reply) and N ``/genbridge/ping`` requests, over
OSC (UDP) and over the web console's WebSocket (JSON) in turn, interleaved, and prints p50/p99/max
side by side; for the WebSocket also the time until the played clip's ``clip`` event reaches the
page (what the console shows). The play path does no audio work (a pooled clip's WAV is renamed
into the session folder), so the model's size does not enter this figure; refills writing next
door do. Usage: python bench/trigger_reply.py [--triggers 500]
"""

from __future__ import annotations

import argparse
import asyncio
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
from web_client import WebPage  # noqa: E402


async def _over_both(daemon: Daemon, client: OscClient, n: int) -> tuple[dict[str, list[float]], int]:
    """N plays and N pings over OSC and over a WebSocket, interleaved; seconds per request."""
    times: dict[str, list[float]] = {k: [] for k in ("osc drum/play", "web drum/play", "web clip event",
                                                     "osc ping", "web ping")}
    fresh = 0
    async with WebPage(daemon.web_port) as page:
        for k in range(n):
            t = time.perf_counter()
            reply = client.request("/genbridge/drum/play", "kick", 100, k + 1, reply="/genbridge/drum/played")
            times["osc drum/play"].append(time.perf_counter() - t)
            fresh += reply.args[3]
            t = time.perf_counter()
            played = await page.request("drum.play", "drum/played", instrument="kick", velocity=100)
            times["web drum/play"].append(time.perf_counter() - t)
            fresh += played["args"][3]
            name = Path(played["args"][2]).name
            while not any(c["clip"]["name"] == name for c in page.clips[-4:]):
                await page.next_of("clip", timeout=10)
            event = next(c for c in page.clips[-4:] if c["clip"]["name"] == name)
            times["web clip event"].append(event["received_at"] - t)
            t = time.perf_counter()
            client.request("/genbridge/ping", k + 1, reply="/genbridge/pong")
            times["osc ping"].append(time.perf_counter() - t)
            t = time.perf_counter()
            await page.request("ping", "pong")
            times["web ping"].append(time.perf_counter() - t)
    return times, fresh


def _run(backend: str, n: int, tmp_path: Path) -> tuple[dict[str, list[float]], int]:
    """One daemon on ``backend`` (local worker processes, or Ray actors on a local cluster)."""
    model = build_tiny_model(tmp_path / "model")
    cluster = None
    engine = ""
    if backend == "ray":
        from ray_peer import RayCluster

        cluster = RayCluster()
        engine = f'backend = "ray"\nray_address = "{cluster.address}"'
    config = write_config(tmp_path / f"{backend}.toml", model, pool=2 * n + 20, instruments=("kick",), engine=engine)
    daemon = Daemon(tmp_path / f"out-{backend}", config)
    try:
        daemon.wait_for_ping()
        client = OscClient(daemon.port)
        t0 = time.monotonic()
        client.wait_until(lambda s: s["instruments"]["kick"]["ready"] >= 2 * n + 20, timeout=900, what="pool")
        print(f"{backend}: pool of {2 * n + 20} kick clips filled in {time.monotonic() - t0:.1f} s; sending {n} "
              "triggers over each transport", flush=True)
        times, fresh = asyncio.run(_over_both(daemon, client, n))
        client.close()
    finally:
        daemon.stop()
        if cluster is not None:
            cluster.stop()
    return times, fresh


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--triggers", type=int, default=500)
    ap.add_argument("--backends", default="local",
                    help="comma-separated: local, ray (a local Ray cluster is started for ray)")
    args = ap.parse_args()
    n = args.triggers
    backends = [b.strip() for b in args.backends.split(",") if b.strip()]
    runs = {}
    with tempfile.TemporaryDirectory() as tmp:
        for backend in backends:
            folder = Path(tmp) / backend
            folder.mkdir()
            runs[backend] = _run(backend, n, folder)
    rows = []
    results: dict[str, dict[str, dict[str, float]]] = {}
    for backend, (times, fresh) in runs.items():
        results[backend] = {}
        for name, values in times.items():
            ms = [v * 1000 for v in values]
            stats = {"p50_ms": percentile(ms, 50), "p99_ms": percentile(ms, 99), "max_ms": max(ms), "n": len(ms)}
            results[backend][name] = stats
            rows.append([backend, name, len(ms), stats["p50_ms"], stats["p99_ms"], stats["max_ms"]])
    print()
    print(table(["backend", "request", "n", "p50 ms", "p99 ms", "max ms"], rows))
    for backend, (_, fresh) in runs.items():
        r = results[backend]
        print(f"{backend}: fresh clips {fresh}/{2 * n}; play p50 / ping p50 = "
              f"{r['osc drum/play']['p50_ms'] / r['osc ping']['p50_ms']:.2f}x (OSC), "
              f"{r['web drum/play']['p50_ms'] / r['web ping']['p50_ms']:.2f}x (web); "
              f"web / OSC play p50 = {r['web drum/play']['p50_ms'] / r['osc drum/play']['p50_ms']:.2f}x")
    if "local" in results and "ray" in results:
        ratio = results["ray"]["osc drum/play"]["p50_ms"] / results["local"]["osc drum/play"]["p50_ms"]
        print(f"ray / local OSC play p50 = {ratio:.2f}x (warm pools: the worker's distance is hidden)")
    path = save("trigger_reply", {"triggers": n, "fresh": {b: f for b, (_, f) in runs.items()}, "latency": results})
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
