"""Does a drummer get fresh clips? A timed pattern replayed through OSC against the daemon.

Starts ``genbridge serve`` with the shipped default model (or --config), waits until the pools
are full, then plays a pattern - kick, hat, snare, hat, ... - at --rate hits per second for
--seconds, each hit a ``/genbridge/drum/play`` at its scheduled time (the sender sleeps until
then: it is a load generator, not a test), and counts how many replies said fresh. Prints the
fresh ratio per instrument, the lowest pool level seen, and how many clips the workers made
per second during the run.

Usage: python bench/fresh_ratio.py [--seconds 60] [--rate 3] [--runtime torch|onnx]
       [--precision fp32|bf16] [--refill-batch 4] [--steps N] [--threads 1] [--config FILE]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import threading
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE.parent / "tests"))
sys.path.insert(0, str(HERE))

from _common import save, table  # noqa: E402
from helpers import Daemon, OscClient  # noqa: E402

PATTERN = ("kick", "hat", "snare", "hat")


def _config(path: Path, args: argparse.Namespace) -> Path:
    lines = ["[audio]", 'device = "none"', "", "[engine]", f"refill_batch = {args.refill_batch}",
             f"threads = {args.threads}", "",
             "[models.default]", 'path = "builtin:default"', f'runtime = "{args.runtime}"',
             f'precision = "{args.precision}"', f"steps = {args.steps}", ""]
    for inst in sorted(set(PATTERN)):
        lines += [f"[instruments.{inst}]", 'model = "default"', f"pool = {args.pool}", ""]
    path.write_text("\n".join(lines))
    return path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=60.0)
    ap.add_argument("--rate", type=float, default=3.0, help="hits per second")
    ap.add_argument("--runtime", default="onnx", choices=["torch", "onnx"])
    ap.add_argument("--precision", default="fp32", choices=["fp32", "bf16"])
    ap.add_argument("--refill-batch", type=int, default=4)
    ap.add_argument("--pool", type=int, default=4)
    ap.add_argument("--threads", type=int, default=1, help="engine.threads: the model worker's torch/ORT threads")
    ap.add_argument("--steps", type=int, default=0, help="0: the model's default")
    ap.add_argument("--config", help="use this config instead of the one built from the options")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        tmp_path = Path(tmp)
        config = Path(args.config) if args.config else _config(tmp_path / "c.toml", args)
        daemon = Daemon(tmp_path / "out", config)
        try:
            daemon.wait_for_ping(timeout=300)
            client = OscClient(daemon.port)
            t0 = time.monotonic()
            status = client.wait_until(lambda s: all(i["ready"] >= i["target"] for i in s["instruments"].values()),
                                       timeout=900, what="full pools")
            info = status["models"][next(iter(status["models"]))]["info"]
            print(f"pools full in {time.monotonic() - t0:.1f} s; model: {info.get('parameters', 0) / 1e6:.1f} M, "
                  f"runtime {info.get('runtime')}, {info.get('default_steps')} steps; playing {args.rate:g} hits/s "
                  f"for {args.seconds:g} s", flush=True)
            replies: list[tuple[str, int]] = []
            lowest = {inst: status["instruments"][inst]["ready"] for inst in set(PATTERN)}
            done = threading.Event()
            watcher = OscClient(daemon.port)

            def watch() -> None:  # pool levels, twice a second, on its own socket
                while not done.is_set():
                    s = watcher.status()
                    for inst in lowest:
                        lowest[inst] = min(lowest[inst], s["instruments"][inst]["ready"])
                    done.wait(0.5)

            thread = threading.Thread(target=watch, daemon=True)
            thread.start()
            hits = int(args.seconds * args.rate)
            start = time.monotonic() + 0.5
            for k in range(hits):
                delay = start + k / args.rate - time.monotonic()
                if delay > 0:
                    time.sleep(delay)
                inst = PATTERN[k % len(PATTERN)]
                reply = client.request("/genbridge/drum/play", inst, 100, k + 1, reply="/genbridge/drum/played")
                replies.append((inst, int(reply.args[3])))
            elapsed = time.monotonic() - start
            done.set()
            thread.join()
            end_status = client.status()
            client.close()
            watcher.close()
        finally:
            daemon.stop()
    rows, per = [], {}
    for inst in sorted(set(PATTERN)):
        got = [f for i, f in replies if i == inst]
        per[inst] = {"hits": len(got), "fresh": sum(got), "ratio": sum(got) / len(got), "lowest_pool": lowest[inst]}
        rows.append([inst, len(got), sum(got), f"{sum(got) / len(got):.1%}", lowest[inst]])
    total_fresh = sum(f for _, f in replies)
    rows.append(["all", len(replies), total_fresh, f"{total_fresh / len(replies):.1%}", min(lowest.values())])
    print()
    print(table(["instrument", "hits", "fresh", "fresh ratio", "lowest pool"], rows))
    print(f"{len(replies)} hits in {elapsed:.1f} s ({len(replies) / elapsed:.2f} hits/s)")
    path = save("fresh_ratio", {"seconds": args.seconds, "rate": args.rate, "runtime": args.runtime,
                                "precision": args.precision, "refill_batch": args.refill_batch, "pool": args.pool,
                                "threads": args.threads,
                                "model_info": info, "instruments": per, "fresh_ratio": total_fresh / len(replies),
                                "end_status_counters": end_status.get("counters")})
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
