"""Does a drummer get fresh clips? A timed pattern replayed through OSC against the daemon.

Starts ``genbridge serve`` with the shipped default model and the default config's instruments
(or --config), waits until the pools are full (printing when every velocity band of every
instrument first had a clip, and when all were full: the start-up), then plays a pattern - kick,
hat, snare, hat, ... - at --rate hits per second for --seconds, each hit a ``/genbridge/drum/play``
at its scheduled time (the sender sleeps until then: it is a load generator, not a test) with the
velocities of --velocities in turn (3 velocities over a 4-hit pattern: every instrument meets each),
and counts how many replies said fresh and how many fresh clips came from the hit's own velocity
band (their sidecar's velocity; a dry band lends the nearest band's). Prints both per instrument,
the lowest pool level seen (of the instrument, and of its lowest band), and how many clips the
workers made per second during the run.

Usage: python bench/fresh_ratio.py [--seconds 60] [--rate 3] [--runtime torch|onnx]
       [--precision fp32|bf16] [--refill-batch 4] [--steps N] [--threads 1] [--pool 4]
       [--bands 40,80,120] [--velocities 40,80,120] [--config FILE]
"""

from __future__ import annotations

import argparse
import json
import os
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

from bridge.config import DEFAULT_INSTRUMENTS, DEFAULT_VELOCITY_BANDS, load_config  # noqa: E402

PATTERN = ("kick", "hat", "snare", "hat")


def _ints(text: str) -> list[int]:
    return [int(v) for v in text.split(",") if v.strip()]


def _config(path: Path, args: argparse.Namespace) -> Path:
    """The default config's instruments (their choke groups too) on the shipped model, at --pool."""
    defaults = load_config(None).instruments
    lines = ["[audio]", 'device = "none"', "", "[engine]", f"refill_batch = {args.refill_batch}",
             f"threads = {args.threads}", f"velocity_bands = [{', '.join(str(v) for v in _ints(args.bands))}]", "",
             "[models.default]", 'path = "builtin:default"', f'runtime = "{args.runtime}"',
             f'precision = "{args.precision}"', f"steps = {args.steps}", ""]
    for inst in DEFAULT_INSTRUMENTS:
        lines += [f"[instruments.{inst}]", 'model = "default"', f"pool = {args.pool}",
                  f"choke_group = {defaults[inst].choke_group}", ""]
    path.write_text("\n".join(lines))
    return path


def _own_band(velocity: int, bands: list[int | None]) -> int | None:
    """The band a hit at ``velocity`` belongs to, as the engine picks it (nearest; a tie: the harder)."""
    if len(bands) < 2:
        return bands[0] if bands else None
    return min(bands, key=lambda b: (abs((b or 0) - velocity), -(b or 0)))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=60.0)
    ap.add_argument("--rate", type=float, default=3.0, help="hits per second")
    ap.add_argument("--runtime", default="onnx", choices=["torch", "onnx"])
    ap.add_argument("--precision", default="fp32", choices=["fp32", "bf16"])
    ap.add_argument("--refill-batch", type=int, default=4)
    ap.add_argument("--pool", type=int, default=4, help="instruments.NAME.pool: clips per velocity band")
    ap.add_argument("--bands", default=",".join(str(v) for v in DEFAULT_VELOCITY_BANDS),
                    help="engine.velocity_bands (MIDI velocities, comma-separated; '' for one pool)")
    ap.add_argument("--velocities", default="40,80,120", help="the hits' MIDI velocities, in turn")
    ap.add_argument("--threads", type=int, default=1, help="engine.threads: the model worker's torch/ORT threads")
    ap.add_argument("--steps", type=int, default=0, help="0: the model's default")
    ap.add_argument("--config", help="use this config instead of the one built from the options")
    args = ap.parse_args()
    velocities = _ints(args.velocities) or [100]
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory() as tmp:
        tmp_path = Path(tmp)
        config = Path(args.config) if args.config else _config(tmp_path / "c.toml", args)
        daemon = Daemon(tmp_path / "out", config)
        try:
            daemon.wait_for_ping(timeout=300)
            client = OscClient(daemon.port)
            t0 = time.monotonic()
            covered_s = None

            def full(s: dict) -> bool:  # and note when every band of every instrument first had a clip
                nonlocal covered_s
                bands = [b for i in s["instruments"].values() for b in i.get("bands", [i])]
                if covered_s is None and all(m["state"] == "ready" for m in s["models"].values()) and all(
                        b["ready"] for b in bands):
                    covered_s = time.monotonic() - t0
                return all(i["ready"] >= i["target"] for i in s["instruments"].values())

            status = client.wait_until(full, timeout=900, what="full pools")
            full_s = time.monotonic() - t0
            info = status["models"][next(iter(status["models"]))]["info"]
            bands = {inst: [b["velocity"] for b in status["instruments"][inst].get("bands", [])] or [None]
                     for inst in set(PATTERN)}
            clips = sum(i["target"] for i in status["instruments"].values())
            print(f"every band had a clip in {covered_s or full_s:.1f} s, all {clips} pool places full in "
                  f"{full_s:.1f} s; model: {info.get('parameters', 0) / 1e6:.1f} M, runtime {info.get('runtime')}, "
                  f"{info.get('default_steps')} steps, velocity bands {bands['kick']}; playing {args.rate:g} "
                  f"hits/s at velocities {velocities} for {args.seconds:g} s", flush=True)
            replies: list[tuple[str, int, int, str]] = []
            lowest = {inst: status["instruments"][inst]["ready"] for inst in set(PATTERN)}
            lowest_band = {inst: min(b["ready"] for b in status["instruments"][inst].get("bands", [{"ready": 0}]))
                           for inst in set(PATTERN)}
            done = threading.Event()
            watcher = OscClient(daemon.port)

            def watch() -> None:  # pool levels, twice a second, on its own socket
                while not done.is_set():
                    s = watcher.status()
                    for inst in lowest:
                        lowest[inst] = min(lowest[inst], s["instruments"][inst]["ready"])
                        for b in s["instruments"][inst].get("bands", []):
                            lowest_band[inst] = min(lowest_band[inst], b["ready"])
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
                velocity = velocities[k % len(velocities)]
                reply = client.request("/genbridge/drum/play", inst, velocity, k + 1, reply="/genbridge/drum/played")
                replies.append((inst, int(reply.args[3]), velocity, str(reply.args[2])))
            elapsed = time.monotonic() - start
            done.set()
            thread.join()
            end_status = client.status()
            own: dict[str, int] = {inst: 0 for inst in set(PATTERN)}
            for inst, fresh, velocity, path in replies:  # the clip's band, from its sidecar
                made_at = json.loads(Path(path).with_suffix(".json").read_text()).get("velocity")
                band = None if made_at is None else round(made_at * 127)
                own[inst] += bool(fresh) and band == _own_band(velocity, bands[inst])
            client.close()
            watcher.close()
        finally:
            daemon.stop()
    rows, per = [], {}
    for inst in sorted(set(PATTERN)):
        got = [f for i, f, _, _ in replies if i == inst]
        target = end_status["instruments"][inst]["target"]
        per[inst] = {"hits": len(got), "fresh": sum(got), "ratio": sum(got) / len(got), "own_band": own[inst],
                     "lowest_pool": lowest[inst], "lowest_band": lowest_band[inst], "target": target}
        rows.append([inst, len(got), sum(got), f"{sum(got) / len(got):.1%}", own[inst], f"{lowest[inst]} of {target}",
                     lowest_band[inst]])
    total_fresh = sum(f for _, f, _, _ in replies)
    rows.append(["all", len(replies), total_fresh, f"{total_fresh / len(replies):.1%}", sum(own.values()),
                 min(lowest.values()), min(lowest_band.values())])
    print()
    print(table(["instrument", "hits", "fresh", "fresh ratio", "own band", "lowest pool", "lowest band"], rows))
    made = sum(m["made"] for m in end_status["models"].values()) - sum(m["made"] for m in status["models"].values())
    print(f"{len(replies)} hits in {elapsed:.1f} s ({len(replies) / elapsed:.2f} hits/s); the workers made "
          f"{made / elapsed:.2f} clips/s meanwhile; load average before the start {load_before[0]:.2f}")
    path = save("fresh_ratio", {"seconds": args.seconds, "rate": args.rate, "runtime": args.runtime,
                                "precision": args.precision, "refill_batch": args.refill_batch, "pool": args.pool,
                                "threads": args.threads, "velocity_bands": _ints(args.bands),
                                "velocities": velocities, "startup_every_band_s": covered_s, "startup_full_s": full_s,
                                "pool_places": clips, "clips_per_s_during_run": made / elapsed,
                                "loadavg_before": load_before,
                                "model_info": info, "instruments": per, "fresh_ratio": total_fresh / len(replies),
                                "own_band_ratio": sum(own.values()) / len(replies),
                                "end_status_counters": end_status.get("counters")})
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
