"""Does a drum model make the drums it is asked for? Generated clips against held-out real ones.

1. A classifier (log band energies over time, random forest) is trained on the real
   training kits; it must name each generated clip as the instrument asked for. Its accuracy on
   the held-out real kits is printed too: a classifier that cannot tell real drums apart
   proves nothing about generated ones. Noise bursts are classified as a baseline.
2. Per instrument, feature medians [q1..q3] side by side for held-out real clips, generated
   clips and the noise-burst baseline: spectral centroid, attack time, decay time (to -40 dB),
   tail noise floor (RMS of the last 10%, dBFS). Every clip goes through the daemon's finishing.

The gate (issue 4): >= 80% of generated kicks, snares and hats classified as asked, and the
median tail noise floor after finishing below -50 dBFS for each.

Usage: python bench/drum_quality.py [--model builtin:default] [--n 20] [--steps N]
       [--sampler ddim|dpmpp2m] [--no-output-filter] [--data DIR] [--hold-out KIT,KIT]
       [--instruments kick,snare,hat] [--sheet PNG]
Needs Debian's hydrogen-drumkits (make data) unless --data names other samples.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import numpy as np  # noqa: E402
import torch  # noqa: E402
from _common import save, table  # noqa: E402

from bridge.config import ModelConfig  # noqa: E402
from bridge.finishing import FinishingSettings, finish_clip  # noqa: E402
from models.diffusion import load_generator  # noqa: E402
from models.drum_data import DEFAULT_HELD_OUT, HYDROGEN_KITS, find_samples, load_drum_set, split_held_out  # noqa: E402
from models.drum_eval import DrumClassifier, drum_features, noise_bursts, summarise  # noqa: E402
from models.output_filter import describe_lowpass  # noqa: E402

GATE_ACCURACY = 0.8
GATE_TAIL_DBFS = -50.0


def _fmt(s: dict) -> str:
    return f"{s['median']:.0f} [{s['q1']:.0f}..{s['q3']:.0f}]"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="builtin:default")
    p.add_argument("--n", type=int, default=20, help="generated clips per instrument")
    p.add_argument("--steps", type=int, default=0, help="sampling steps (default: the model's)")
    p.add_argument("--sampler", default="", help="default: the model's")
    p.add_argument("--data", default=str(HYDROGEN_KITS))
    p.add_argument("--hold-out", default=",".join(DEFAULT_HELD_OUT))
    p.add_argument("--instruments", default="kick,snare,hat")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--no-output-filter", action="store_true",
                   help="leave out the high-cut the model folder names (the raw network's clips)")
    p.add_argument("--sheet", help="also write a PNG sheet of generated clips here")
    p.add_argument("--name", default="drum_quality", help="results file name under bench/results/")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)

    gen = load_generator(ModelConfig(path=args.model).resolved_path(), name="model")
    rate, length, channels = gen.sample_rate, gen.arch.length, gen.arch.in_channels
    wanted = [i.strip() for i in args.instruments.split(",") if i.strip()]
    if gen.classes:
        missing = [i for i in wanted if i not in gen.classes]
        if missing:
            p.error(f"the model generates {', '.join(gen.classes)}; not {', '.join(missing)}")
    elif len(wanted) != 1:
        p.error("an unconditional model generates one instrument: pass --instruments NAME")
    if args.no_output_filter:
        gen.info.output_lowpass_hz = {}
    steps = args.steps or gen.info.default_steps
    sampler = args.sampler or gen.info.default_sampler
    print(f"model {args.model}: {gen.info.parameters / 1e6:.1f} M parameters, trained={gen.info.trained}, "
          f"{rate} Hz, {length} frames; {steps} steps {sampler}; output high-cut "
          f"{describe_lowpass(gen.info.output_lowpass_hz) or 'none'}")

    samples = find_samples([args.data])
    train_s, held_s = split_held_out(samples, [k for k in args.hold_out.split(",") if k])
    classes = gen.classes or None
    train_set = load_drum_set(train_s, sample_rate=rate, channels=channels, length=length, classes=classes)
    held_set = load_drum_set(held_s or train_s, sample_rate=rate, channels=channels, length=length,
                             classes=train_set.classes)
    clf = DrumClassifier(train_set.classes).fit(train_set.audio, train_set.labels, rate)
    finishing = FinishingSettings()

    def finished(clips: np.ndarray) -> list[np.ndarray]:
        return [finish_clip(c, rate, finishing)[0] for c in clips]

    generated: dict[str, list[np.ndarray]] = {}
    raw_floor: dict[str, list[float]] = {}
    gen_s = 0.0
    for inst in wanted:
        outs, floors = [], []
        for start in range(0, args.n, args.batch):
            seeds = list(range(1000 + start, 1000 + min(args.n, start + args.batch)))
            t0 = time.perf_counter()
            # The daemon's own path: the model's scale divided out, its output high-cut applied.
            audio = gen.generate_batch(seeds, steps, sampler=sampler, instruments=[inst] * len(seeds))
            gen_s += time.perf_counter() - t0
            for clip in audio:
                done, report = finish_clip(clip, rate, finishing)
                outs.append(done)
                floors.append(report.get("noise_floor_db") or float("nan"))
        generated[inst] = outs
        raw_floor[inst] = floors
    baseline = finished(noise_bursts(args.n, length, rate, channels))

    rows, results = [], {}
    base_pred = clf.predict(baseline, rate)
    for inst in wanted:
        k = train_set.classes.index(inst)
        real = finished(held_set.audio[held_set.labels == k])
        real_pred = clf.predict(real, rate) if real else []
        pred = clf.predict(generated[inst], rate)
        acc = sum(x == inst for x in pred) / len(pred)
        real_acc = sum(x == inst for x in real_pred) / len(real_pred) if real_pred else float("nan")
        stats = {name: summarise([drum_features(c, rate) for c in clips])
                 for name, clips in (("real", real), ("generated", generated[inst]), ("noise", baseline))}
        tails = [drum_features(c, rate).tail_floor_dbfs for c in generated[inst]]
        results[inst] = {
            "generated_accuracy": acc, "held_out_real_accuracy": real_acc, "held_out_real_clips": len(real),
            "predicted": {c: pred.count(c) for c in sorted(set(pred))},
            "features": stats, "raw_noise_floor_db_median": float(np.nanmedian(raw_floor[inst])),
            "tail_floor_worst_dbfs": float(max(tails)),
            "pass": acc >= GATE_ACCURACY and stats["generated"]["tail_floor_dbfs"]["median"] < GATE_TAIL_DBFS,
        }
        for feat, unit in (("centroid_hz", "Hz"), ("attack_ms", "ms"), ("decay_ms", "ms"), ("tail_floor_dbfs", "dBFS")):
            rows.append([inst, f"{feat}", _fmt(stats["real"][feat]), _fmt(stats["generated"][feat]),
                         _fmt(stats["noise"][feat])])
    print()
    print(table(["instrument", "feature (median [q1..q3])", "held-out real", "generated", "noise burst"], rows))
    print()
    print(table(["instrument", "generated classified as asked", "held-out real classified", "predictions",
                 "raw floor dB", "worst tail dBFS", "gate"],
                [[i, f"{r['generated_accuracy']:.0%} of {args.n}", f"{r['held_out_real_accuracy']:.0%} of "
                  f"{r['held_out_real_clips']}", r["predicted"], f"{r['raw_noise_floor_db_median']:.0f}",
                  f"{r['tail_floor_worst_dbfs']:.0f}", "PASS" if r["pass"] else "FAIL"] for i, r in results.items()]))
    base_counts = {c: base_pred.count(c) for c in sorted(set(base_pred))}
    print(f"\nnoise bursts classified as: {base_counts}")
    print(f"generation: {gen_s:.1f} s for {args.n * len(wanted)} clips "
          f"({gen_s / (args.n * len(wanted)):.3f} s per clip, batch {args.batch}, {args.threads} threads)")
    if args.sheet:
        from bridge.clip_sheet import SheetClip, render_sheet

        clips = [SheetClip(inst, c, rate, f"seed {1000 + i}") for inst in wanted
                 for i, c in enumerate(generated[inst][:4])]
        print(f"sheet: {render_sheet(clips, args.sheet, title=f'{args.model}: {steps} steps {sampler}')}")
    path = save(args.name, {"model": args.model, "steps": steps, "sampler": sampler, "n": args.n,
                            "info": gen.info.to_json(), "instruments": results, "noise_classified": base_counts,
                            "generation_s_per_clip": gen_s / (args.n * len(wanted))})
    print(f"results: {path}")
    return 0 if all(r["pass"] for r in results.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
