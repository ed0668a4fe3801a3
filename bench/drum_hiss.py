"""Is there hiss under a generated kick's body? Models side by side, against held-out real kicks.

Why this is its own benchmark: the hiss the default model's second training stage exists for
(README, "No high-cut") is a share of each frame's energy above 4 kHz that stays put over the
kick's body, where a real kick's high band falls away after the beater's click. A spectral
centroid or a tail floor hides it under the body's energy, so bench/drum_quality.py cannot show
it. Per model (raw clips: not finished, the model's scale divided out): the median over seeds of
the kick's high-band share in each 46 ms frame of its first 280 ms
(``models.drum_eval.hiss_profile``), the kick's median centroid, and the median raw tail floor
of kicks, snares and hats (what finishing's tail trim has to take off). The held-out kits' real
kicks' profile is printed beside them when the data is there (`make data`): a reference for how
far down a real kick's high band sits, so copies of training recordings are not dropped here.

Usage: python bench/drum_hiss.py [--model builtin:default[,PATH...]] [--seeds 16] [--velocity 100]
       [--data DIR,DIR] [--hold-out KIT,KIT] [--threads 2]
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import numpy as np  # noqa: E402
import torch  # noqa: E402
from _common import existing_sources, save, table  # noqa: E402

from bridge.config import ModelConfig  # noqa: E402
from models.diffusion import load_generator  # noqa: E402
from models.drum_data import DEFAULT_HELD_OUT, DEFAULT_SOURCES, find_samples, load_drum_set, split_held_out  # noqa: E402
from models.drum_eval import drum_features, hiss_profile  # noqa: E402

TAILS = ("kick", "snare", "hat")


def _profile_cell(profiles: list[list[float]]) -> tuple[list[float], str]:
    """Per frame, the median over the clips still sounding there; and the cell that shows its range."""
    frames = min(len(p) for p in profiles)
    median = []
    for i in range(frames):
        values = [p[i] for p in profiles if not np.isnan(p[i])]
        median.append(float(np.median(values)) if values else float("nan"))
    known = [v for v in median if not np.isnan(v)]
    return median, f"{min(known):.1f}..{max(known):.1f} dB" if known else "-"


def measure_model(spec: str, seeds: int, velocity: float) -> dict:
    """Raw kicks, snares and hats of one model: the kick's hiss profile and centroid, and tails."""
    gen = load_generator(ModelConfig(path=spec).resolved_path(), name="model")
    rate = gen.sample_rate
    out: dict = {"tail_dbfs": {}}
    for inst in TAILS:
        if gen.classes and inst not in gen.classes:
            continue
        clips: list[np.ndarray] = []
        for start in range(0, seeds, 8):
            batch = list(range(start, min(seeds, start + 8)))
            clips += gen.generate_batch(batch, instruments=[inst] * len(batch) if gen.classes else None,
                                        velocities=[velocity] * len(batch) if gen.info.velocity else None)
        features = [drum_features(c, rate) for c in clips]
        out["tail_dbfs"][inst] = float(np.median([f.tail_floor_dbfs for f in features]))
        if inst == "kick":
            out["kick_profile_db"], out["kick_cell"] = _profile_cell([hiss_profile(c, rate) for c in clips])
            out["kick_centroid_hz"] = float(np.median([f.centroid_hz for f in features]))
    out["rate"], out["length"] = rate, gen.arch.length
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="builtin:default", help="comma-separated models, measured side by side")
    p.add_argument("--seeds", type=int, default=16)
    p.add_argument("--velocity", type=int, default=100, help="MIDI velocity of every hit")
    p.add_argument("--data", default=",".join(DEFAULT_SOURCES), help="comma-separated data sources")
    p.add_argument("--hold-out", default=",".join(DEFAULT_HELD_OUT))
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--name", default="drum_hiss", help="results file name under bench/results/")
    args = p.parse_args(argv)
    if args.seeds < 1 or not 1 <= args.velocity <= 127:
        p.error("--seeds must be at least 1 and --velocity 1-127")
    torch.set_num_threads(args.threads)
    models = {spec: measure_model(spec, args.seeds, args.velocity / 127) for spec in args.model.split(",") if spec}
    rows = [[spec, m.get("kick_cell", "-"), f"{m['kick_centroid_hz']:.0f}" if "kick_centroid_hz" in m else "-",
             *(f"{m['tail_dbfs'][i]:.1f}" if i in m["tail_dbfs"] else "-" for i in TAILS)]
            for spec, m in models.items()]
    real: dict = {}
    sources = existing_sources(args.data)
    if sources:
        _, held = split_held_out(find_samples(sources), [k for k in args.hold_out.split(",") if k])
        first = next(iter(models.values()))
        kicks = load_drum_set([s for s in held if s.instrument == "kick"], sample_rate=first["rate"], channels=1,
                              length=first["length"], classes=["kick"]) if held else None
        if kicks is not None and len(kicks.labels):
            real["kick_profile_db"], cell = _profile_cell([hiss_profile(c, first["rate"]) for c in kicks.audio])
            real["clips"] = len(kicks.labels)
            print("held-out real kicks: frames " + ", ".join(f"{v:.1f}" for v in real["kick_profile_db"]))
            rows.append([f"held-out real kicks ({real['clips']})", cell, "-", "-", "-", "-"])
    print(f"{args.seeds} seeds at velocity {args.velocity}, raw clips; kick's energy above 4 kHz, per 46 ms frame "
          "of its first 280 ms (median over the clips still sounding, per frame: lowest..highest frame), "
          "and median tail floors:")
    print(table(["model", "kick above 4 kHz", "kick centroid Hz", *(f"{i} tail dBFS" for i in TAILS)], rows))
    for spec, m in models.items():
        if "kick_profile_db" in m:
            print(f"{spec}: kick frames " + ", ".join(f"{v:.1f}" for v in m["kick_profile_db"]))
    path = save(args.name, {"seeds": args.seeds, "velocity": args.velocity,
                            "models": {s: {k: v for k, v in m.items() if k != "kick_cell"} for s, m in models.items()},
                            "held_out_real": real})
    print(f"results: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
