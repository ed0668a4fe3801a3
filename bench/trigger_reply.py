"""OSC request -> reply latency of the running daemon, with warm pools.

Starts ``genbridge serve`` (as the README does) with a small real model whose pool holds more
clips than the run triggers, waits until the pool is full, then sends N ``/genbridge/drum/play``
requests one after another (each waits for its reply) and N ``/genbridge/ping`` requests,
interleaved, and prints p50/p99/max. The play path does no audio work (a pooled clip's WAV is
renamed into the session folder), so the model's size does not enter this figure; refills
writing next door do. Usage: python bench/trigger_reply.py [--triggers 500]
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


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--triggers", type=int, default=500)
    args = ap.parse_args()
    n = args.triggers
    with tempfile.TemporaryDirectory() as tmp:
        tmp_path = Path(tmp)
        model = build_tiny_model(tmp_path / "model")
        config = write_config(tmp_path / "c.toml", model, pool=n + 20, instruments=("kick",))
        daemon = Daemon(tmp_path / "out", config)
        try:
            daemon.wait_for_ping()
            client = OscClient(daemon.port)
            t0 = time.monotonic()
            client.wait_until(lambda s: s["instruments"]["kick"]["ready"] >= n + 20, timeout=600, what="pool")
            print(f"pool of {n + 20} kick clips filled in {time.monotonic() - t0:.1f} s; sending {n} triggers",
                  flush=True)
            play, ping, fresh = [], [], 0
            for k in range(n):
                t = time.perf_counter()
                reply = client.request("/genbridge/drum/play", "kick", 100, k + 1, reply="/genbridge/drum/played")
                play.append(time.perf_counter() - t)
                fresh += reply.args[3]
                t = time.perf_counter()
                client.request("/genbridge/ping", k + 1, reply="/genbridge/pong")
                ping.append(time.perf_counter() - t)
            client.close()
        finally:
            daemon.stop()
    rows = []
    results = {}
    for name, values in (("drum/play", play), ("ping", ping)):
        ms = [v * 1000 for v in values]
        stats = {"p50_ms": percentile(ms, 50), "p99_ms": percentile(ms, 99), "max_ms": max(ms), "n": len(ms)}
        results[name] = stats
        rows.append([name, len(ms), stats["p50_ms"], stats["p99_ms"], stats["max_ms"]])
    print()
    print(table(["request", "n", "p50 ms", "p99 ms", "max ms"], rows))
    print(f"fresh clips: {fresh}/{n}; play p50 / ping p50 = "
          f"{results['drum/play']['p50_ms'] / results['ping']['p50_ms']:.2f}x")
    path = save("trigger_reply", {"triggers": n, "fresh": fresh, "latency": results})
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
