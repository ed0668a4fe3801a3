"""Fresh one-shots per second: runtimes and samplers side by side, with the quality they keep.

For the public tiny-audio-diffusion architecture (random weights, 31.6 M parameters, stereo
44.1 kHz, 32768 frames) and for the shipped default model:

  shipped  audio-diffusion-pytorch as is (einsum attention), fp32, v-DDIM at 25 steps
  sdpa     scaled-dot-product attention, fp32      } DPM-Solver++(2M) at the matched step count:
  bf16     sdpa under CPU bf16 autocast            } the fewest steps whose distance to a
  ort      onnxruntime fp32 (the daemon's export)  } 200-step reference is <= DDIM-25's

DPM-Solver++ runs on the grid the model folder names (the default model: dpmpp2m_logsnr), or
on even-in-time steps (dpmpp2m) for a folder that names DDIM (the public architecture).

Quality: multi-resolution spectral distance of each variant's clips to a 200-step DDIM
reference from the same noise (lower is closer), and, for the default model when the
hydrogen-drumkits data is installed, how many of its kicks/snares/hats the drum classifier of
bench/drum_quality.py names as asked. Speed: seconds per network step timed in interleaved
rounds (A B C D A B C D ...) at batch 1 and at the refill batch; one-shots/s = batch / (steps x
s/step); ratios against "shipped".

Usage: python bench/oneshot_throughput.py [--models public,default] [--rounds 3] [--threads 2]
       [--batch 4] [--quality-seeds 3] [--timing-steps 3]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import numpy as np  # noqa: E402
import torch  # noqa: E402
from _common import median, save, table  # noqa: E402
from oneshot import PUBLIC  # noqa: E402

from bridge.config import ModelConfig  # noqa: E402
from bridge.finishing import FinishingSettings, finish_clip  # noqa: E402
from models.diffusion import (  # noqa: E402
    DiffusionGenerator,
    UNetArch,
    build_network,
    load_generator,
    save_model_folder,
)
from models.drum_eval import multires_spectral_distance  # noqa: E402

BASE_STEPS = 25
REFERENCE_STEPS = 200
CANDIDATES = (6, 8, 10, 12, 16, 20, 25)


def _variants(path: Path, threads: int, workdir: Path) -> dict[str, DiffusionGenerator]:
    from export.onnx import export_denoiser
    from models.onnx_runtime import load_onnx_generator

    shipped = load_generator(path, name="shipped", sdpa=False)
    sdpa = load_generator(path, name="sdpa", sdpa=True)
    bf16 = load_generator(path, name="bf16", sdpa=True, precision="bf16")
    onnx_file = workdir / f"{path.name}.onnx"
    export_denoiser(path, onnx_file, name="ort")
    ort = load_onnx_generator(onnx_file, name="ort", threads=threads)
    return {"shipped": shipped, "sdpa": sdpa, "bf16": bf16, "ort": ort}


def _run(gen: DiffusionGenerator, seeds: list[int], instruments: list[str | None], steps: int,
         sampler: str) -> np.ndarray:
    noise = torch.cat([gen.noise(s) for s in seeds])
    return gen.sample(noise, steps, sampler=sampler, labels=gen.labels_for(instruments)).numpy()


def bench_model(label: str, path: Path, args: argparse.Namespace, workdir: Path) -> dict:
    variants = _variants(path, args.threads, workdir)
    ref_gen = variants["sdpa"]
    classes = ref_gen.classes
    instruments: list[str | None] = ([c for c in ("kick", "snare", "hat") if c in classes] if classes else [None])
    seeds = [100 + i for i in range(args.quality_seeds * len(instruments))]
    insts = [instruments[i % len(instruments)] for i in range(len(seeds))]
    print(f"\n== {label}: {ref_gen.info.parameters / 1e6:.1f} M parameters, {ref_gen.arch.in_channels} ch, "
          f"{ref_gen.sample_rate} Hz, {ref_gen.arch.length} frames; quality on {len(seeds)} seeds", flush=True)

    t0 = time.perf_counter()
    reference = _run(ref_gen, seeds, insts, REFERENCE_STEPS, "ddim")
    print(f"  reference: {REFERENCE_STEPS} DDIM steps in {time.perf_counter() - t0:.0f} s", flush=True)

    def distance(audio: np.ndarray) -> float:
        return float(np.mean([multires_spectral_distance(a, r) for a, r in zip(audio, reference)]))

    outputs: dict[tuple[str, int, str], np.ndarray] = {}
    outputs[("sdpa", BASE_STEPS, "ddim")] = _run(ref_gen, seeds, insts, BASE_STEPS, "ddim")
    base_distance = distance(outputs[("sdpa", BASE_STEPS, "ddim")])
    # The model folder's own DPM++ grid (the default model names dpmpp2m_logsnr, which wins
    # there and loses on random weights); plain even-time dpmpp2m where it names none.
    own = ref_gen.info.default_sampler
    fast = own if own.startswith("dpmpp2m") else "dpmpp2m"
    curve = {}
    matched = BASE_STEPS
    for steps in CANDIDATES:
        out = _run(ref_gen, seeds, insts, steps, fast)
        outputs[("sdpa", steps, fast)] = out
        curve[steps] = distance(out)
        print(f"  {fast} {steps:2d} steps: distance {curve[steps]:.4f} (ddim {BASE_STEPS}: {base_distance:.4f})",
              flush=True)
        if curve[steps] <= base_distance:
            matched = steps
            break
    plan = {"shipped": (BASE_STEPS, "ddim"), "sdpa": (matched, fast), "bf16": (matched, fast), "ort": (matched, fast)}
    quality = {}
    for name, gen in variants.items():
        steps, sampler = plan[name]
        out = outputs.get((name, steps, sampler))
        if out is None:
            out = _run(gen, seeds, insts, steps, sampler)
            outputs[(name, steps, sampler)] = out
        quality[name] = distance(out)

    accuracy = _classify(label, ref_gen, outputs, plan, insts, args) if classes else {}

    times: dict[tuple[str, int], list[float]] = {}
    for batch in (1, args.batch):
        noise = torch.cat([ref_gen.noise(s) for s in range(batch)])
        labels = {n: g.labels_for([insts[i % len(insts)] for i in range(batch)]) for n, g in variants.items()}
        for name, gen in variants.items():  # warm-up
            gen.sample(noise, 1, labels=labels[name])
        for _ in range(args.rounds):
            for name, gen in variants.items():
                t0 = time.perf_counter()
                gen.sample(noise, args.timing_steps, sampler=plan[name][1], labels=labels[name])
                times.setdefault((name, batch), []).append((time.perf_counter() - t0) / args.timing_steps)
        print(f"  timed batch {batch}: " + ", ".join(f"{n} {median(times[(n, batch)]):.3f} s/step" for n in variants),
              flush=True)

    rows, results = [], {}
    for batch in (1, args.batch):
        base_rate = batch / (plan["shipped"][0] * median(times[("shipped", batch)]))
        for name in variants:
            steps, sampler = plan[name]
            per_step = median(times[(name, batch)])
            rate = batch / (steps * per_step)
            results[f"{name}@{batch}"] = {"batch": batch, "steps": steps, "sampler": sampler, "s_per_step": per_step,
                                          "oneshots_per_s": rate, "x_vs_shipped": rate / base_rate,
                                          "distance_to_200": quality[name], "classified": accuracy.get(name),
                                          "runs": times[(name, batch)]}
            rows.append([label, name, batch, f"{sampler} {steps}", per_step, rate, f"{rate / base_rate:.2f}x",
                         quality[name], accuracy.get(name, "-")])
    print()
    print(table(["model", "variant", "batch", "sampler", "s/step", "one-shots/s", "vs shipped",
                 "dist to 200", "classified"], rows), flush=True)
    return {"matched_steps": matched, "ddim25_distance": base_distance, "fast_sampler": fast, "fast_curve": curve,
            "parameters": ref_gen.info.parameters, "variants": results}


def _classify(label: str, gen: DiffusionGenerator, outputs: dict, plan: dict, insts: list, args) -> dict:
    """Share of generated kicks/snares/hats the drum classifier names as asked, per variant."""
    from models.drum_data import DEFAULT_HELD_OUT, HYDROGEN_KITS, find_samples, load_drum_set, split_held_out
    from models.drum_eval import DrumClassifier

    if not HYDROGEN_KITS.is_dir():
        print("  (hydrogen-drumkits not installed: no classifier column; make data installs it)")
        return {}
    train, _ = split_held_out(find_samples([HYDROGEN_KITS]), DEFAULT_HELD_OUT)
    data = load_drum_set(train, sample_rate=gen.sample_rate, channels=gen.arch.in_channels, length=gen.arch.length,
                         classes=gen.classes)
    clf = DrumClassifier(data.classes).fit(data.audio, data.labels, gen.sample_rate)
    settings = FinishingSettings()
    out = {}
    for name, (steps, sampler) in plan.items():
        audio = outputs[(name, steps, sampler)] if (name, steps, sampler) in outputs else None
        if audio is None:
            continue
        clips = [finish_clip(gen.output_filter(a, i), gen.sample_rate, settings)[0] for a, i in zip(audio, insts)]
        pred = clf.predict(clips, gen.sample_rate)
        out[name] = f"{sum(p == i for p, i in zip(pred, insts))}/{len(insts)}"
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default="public,default")
    ap.add_argument("--default-model", default="builtin:default")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--batch", type=int, default=4, help="the refill batch (engine.refill_batch)")
    ap.add_argument("--quality-seeds", type=int, default=2, help="per instrument")
    ap.add_argument("--timing-steps", type=int, default=3)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        for label in args.models.split(","):
            if label == "public":
                arch = UNetArch.from_mapping(PUBLIC, sample_rate=44100, length=32768)
                path = save_model_folder(work / "public", build_network(arch, init_seed=0), arch,
                                         default_steps=BASE_STEPS)
            else:
                path = ModelConfig(path=args.default_model).resolved_path()
            results[label] = bench_model(label, path, args, work)
    out = save("oneshot_throughput", {"threads": args.threads, "rounds": args.rounds, "batch": args.batch,
                                      "models": results})
    print(f"\nwrote {out}")


if __name__ == "__main__":
    main()
