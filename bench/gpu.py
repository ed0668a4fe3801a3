"""Generation speed and memory per device, through the generator seam, on the machine it runs on.

One run, side by side (each variant takes its turn per round, medians reported):

- one-shots/s for the shipped default model and the public tiny-audio-diffusion architecture
  (random weights) at batch 1 and at the refill batch, rendered the way the daemon's workers
  render them (models.diffusion_family, the model's own sampler: the default's 8 DPM++ log-SNR
  steps, 8 DPM++ steps for the public one): CPU fp32 eager beside, where a CUDA GPU is seen, GPU
  fp32 / fp16 / bf16 eager and bf16 under torch.compile and under CUDA graphs;
- MusicGen continuation on the musicgen-small architecture (random weights): real-time factor
  and time to the first chunk of genbridge's token loop, guidance off and on (CPU fp32 / int8; GPU fp32 / bf16);
- device memory after 10 and after N generations of the default model at the refill batch (GPU:
  allocated bytes; CPU: the process's resident memory), and the growth between them.

Without a GPU it says so and prints the CPU rows: the same code paths the GPU rows use run on the
CPU in CI. Targets on one H100-class GPU (issue 15): default >= 200 one-shots/s, public >= 50/s,
MusicGen-small continuation RTF >= 4 with the first chunk <= 0.5 s, memory growth < 1 %.

Usage: python bench/gpu.py [--rounds 3] [--threads 2] [--batch 4] [--gpu-batches 1,4,32]
       [--musicgen-seconds 4] [--no-musicgen] [--memory-generations N] [--no-compile]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE))

import numpy as np  # noqa: E402
import torch  # noqa: E402
from _common import median, save, table  # noqa: E402
from oneshot import PUBLIC  # noqa: E402

from models.diffusion_family import DiffusionFamily  # noqa: E402
from models.generator import LoadSpec, RenderRequest  # noqa: E402

DEFAULT = HERE.parent / "models" / "default"


def public_model(folder: Path) -> Path:
    """The public architecture with random weights, as a model folder (8 DPM++ steps: matched to
    DDIM-25 in bench/oneshot_throughput.py)."""
    from models.diffusion import UNetArch, build_network, save_model_folder

    arch = UNetArch.from_mapping(PUBLIC, sample_rate=44100, length=32768)
    return save_model_folder(folder, build_network(arch, init_seed=0), arch, default_steps=8,
                             extra_config={"sampler": "dpmpp2m"})


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def diffusion_variants(cuda: bool, compile_too: bool) -> list[tuple[str, str, str, str]]:
    """(label, device, precision, compile)."""
    rows = [("cpu fp32", "cpu", "fp32", "off")]
    if cuda:
        rows += [("gpu fp32", "cuda", "fp32", "off"), ("gpu fp16", "cuda", "fp16", "off"),
                 ("gpu bf16", "cuda", "bf16", "off")]
        if compile_too:
            rows += [("gpu bf16 compile", "cuda", "bf16", "compile"), ("gpu bf16 graphs", "cuda", "bf16", "graphs")]
    return rows


def bench_diffusion(label: str, path: Path, args: argparse.Namespace, cuda: bool) -> tuple[list, dict]:
    family = DiffusionFamily()
    batches = sorted({1, args.batch})
    gpu_batches = sorted({int(b) for b in args.gpu_batches.split(",") if b})
    loaded: dict[str, Any] = {}
    for name, device, precision, mode in diffusion_variants(cuda, not args.no_compile):
        sizes = batches if device == "cpu" else gpu_batches
        t0 = time.perf_counter()
        try:
            loaded[name] = (family.load(LoadSpec(label, str(path), device, args.threads,
                                                 {"precision": precision, "compile": mode, "warm_batches": sizes})),
                            sizes, device)
        except Exception as exc:  # a variant this machine cannot run is reported, not fatal
            print(f"  {label} {name}: cannot load ({type(exc).__name__}: {exc})", flush=True)
            continue
        print(f"  {label} {name}: loaded in {time.perf_counter() - t0:.1f} s", flush=True)
    times: dict[tuple[str, int], list[float]] = {}
    for r in range(args.rounds + 1):  # round 0 warms up (kernels, allocator) and is not counted
        for name, (gen, sizes, device) in loaded.items():
            classes = gen.info.classes or [None]
            for batch in sizes:
                requests = [RenderRequest(i, 1000 + i, classes[i % len(classes)]) for i in range(batch)]
                sync(device)
                t = time.perf_counter()
                gen.render(requests, {})
                sync(device)
                if r:
                    times.setdefault((name, batch), []).append(time.perf_counter() - t)
    rows, results = [], {}
    cpu_rate = {b: b / median(times[("cpu fp32", b)]) for b in batches if ("cpu fp32", b) in times}
    for (name, batch), values in times.items():
        s = median(values)
        gen = loaded[name][0]
        per_s = batch / s
        # against the CPU at the same batch, or at the refill batch for GPU-only batch sizes
        ratio = per_s / cpu_rate.get(batch, cpu_rate.get(args.batch, float("nan")))
        steps = gen.info.details["default_steps"]
        results[f"{name} b{batch}"] = {"s_per_render": s, "one_shots_per_s": per_s, "steps": steps,
                                       "vs_cpu_fp32": ratio, "runs": values}
        rows.append([label, name, batch, steps, f"{1000 * s / steps:.2f}", f"{per_s:.2f}", f"{ratio:.2f}x"])
    return rows, results


def bench_memory(path: Path, args: argparse.Namespace, device: str) -> dict:
    """Memory in use after 10 and after N renders at the refill batch (a leak shows as growth)."""
    gen = DiffusionFamily().load(LoadSpec("default", str(path), device, args.threads, {"precision": "auto"}))
    classes = gen.info.classes or [None]
    n = args.memory_generations or (1000 if device.startswith("cuda") else 100)
    requests = [RenderRequest(i, i, classes[i % len(classes)]) for i in range(args.batch)]
    marks: dict[int, dict] = {}
    made = 0
    t0 = time.perf_counter()
    while made < n:
        gen.render([RenderRequest(r.task, made + r.seed, r.instrument) for r in requests], {})
        made += len(requests)
        if made >= 10 and 10 not in marks:
            sync(device)
            marks[10] = gen.memory()
    sync(device)
    marks[made] = gen.memory()
    key = "allocated_mb" if device.startswith("cuda") else "rss_mb"
    early, late = marks[10][key], marks[made][key]
    return {"device": device, "generations": made, "after_10": marks[10], "after_n": marks[made],
            "growth_pct": 100 * (late - early) / max(early, 1e-9), "key": key, "s": time.perf_counter() - t0}


def bench_musicgen(args: argparse.Namespace, cuda: bool) -> tuple[list, dict]:
    """genbridge's MusicGen token loop on the CPU (fp32, int8) and the GPU (fp32, bf16): RTF and
    the first chunk's wait, with and without guidance (what a description costs)."""
    from continuation import musicgen_small

    from models.continuation import ContinuationSettings, generate
    from models.musicgen import LoadedMusicgen

    variants = [("cpu fp32", "cpu", "fp32"), ("cpu int8", "cpu", "int8")]
    if cuda:
        variants += [("gpu fp32", "cuda", "fp32"), ("gpu bf16", "cuda", "bf16")]
    rate = 32000
    t = np.arange(int(rate * args.musicgen_prompt)) / rate
    prompt = (0.3 * np.sin(2 * np.pi * 110 * t) * (np.sin(2 * np.pi * 2 * t) > 0)).astype(np.float32)[None]
    t0 = time.perf_counter()
    model = musicgen_small()
    print(f"  musicgen-small architecture built in {time.perf_counter() - t0:.0f} s", flush=True)
    runs: dict[tuple[str, str], list[tuple[float, float]]] = {}
    loaded = LoadedMusicgen(model, "random musicgen-small", "transformers", True)
    for r in range(max(1, args.musicgen_rounds)):
        for name, device, fmt in variants:
            model.to(device)
            for guidance in ("off", "on"):
                settings = ContinuationSettings(seconds=args.musicgen_seconds, prompt_seconds=args.musicgen_prompt,
                                                seed=r, top_k=250, weights=fmt, guidance_without_text=guidance == "on")
                sync(device)
                start = time.perf_counter()
                result = generate(loaded, settings, audio=prompt, rate=rate)
                sync(device)
                total = time.perf_counter() - start
                first = result.timings.first_chunk or total
                runs.setdefault((name, guidance), []).append((total, first))
                print(f"  round {r + 1} musicgen {name} guidance {guidance}: {total:.1f} s, first chunk "
                      f"{first:.2f} s", flush=True)
            model.to("cpu")
    rows, results = [], {}
    for (name, guidance), values in runs.items():
        total, first = median([v[0] for v in values]), median([v[1] for v in values])
        rtf = args.musicgen_seconds / total
        results[f"{name} guidance {guidance}"] = {"total_s": total, "first_chunk_s": first, "rtf": rtf,
                                                  "runs": values}
        rows.append([name, guidance, f"{total:.2f}", f"{first:.2f}", f"{rtf:.3f}"])
    return rows, results


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--batch", type=int, default=4, help="the refill batch (engine.refill_batch)")
    ap.add_argument("--gpu-batches", default="1,4,32", help="batch sizes timed on a GPU")
    ap.add_argument("--musicgen-seconds", type=float, default=4.0)
    ap.add_argument("--musicgen-prompt", type=float, default=3.0)
    ap.add_argument("--musicgen-rounds", type=int, default=1)
    ap.add_argument("--no-musicgen", action="store_true")
    ap.add_argument("--no-compile", action="store_true", help="leave out torch.compile and CUDA graphs")
    ap.add_argument("--memory-generations", type=int, default=0, help="default: 1000 on a GPU, 100 on a CPU")
    ap.add_argument("--models", default="default,public")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    cuda = torch.cuda.is_available()
    where = (f"GPU: {torch.cuda.get_device_name(0)}" if cuda else
             f"no CUDA GPU here (torch {torch.__version__}): CPU rows only; the GPU rows need a CUDA machine")
    print(f"bench/gpu.py: {where}; {args.threads} CPU threads", flush=True)
    rows, results = [], {"cuda": cuda, "device_name": torch.cuda.get_device_name(0) if cuda else None}
    with tempfile.TemporaryDirectory() as tmp:
        models = {"default": DEFAULT, "public": None}
        for label in [m for m in args.models.split(",") if m]:
            path = models[label] or public_model(Path(tmp) / "public")
            r, res = bench_diffusion(label, path, args, cuda)
            rows += r
            results[label] = res
        print()
        print(table(["model", "variant", "batch", "steps", "ms/step", "one-shots/s", "vs cpu fp32"], rows))
        memory = [bench_memory(DEFAULT, args, "cpu")] + ([bench_memory(DEFAULT, args, "cuda")] if cuda else [])
        results["memory"] = memory
        print()
        print(table(["device", "generations", "after 10", "after N", "growth"],
                    [[m["device"], m["generations"], f"{m['after_10'][m['key']]:.1f} MB",
                      f"{m['after_n'][m['key']]:.1f} MB", f"{m['growth_pct']:.2f} %"]
                     for m in memory]))
    if not args.no_musicgen:
        mrows, mres = bench_musicgen(args, cuda)
        results["musicgen"] = mres
        print()
        print(f"MusicGen-small architecture, {args.musicgen_prompt:g} s prompt, +{args.musicgen_seconds:g} s:")
        print(table(["variant", "guidance", "total s", "first chunk s", "RTF"], mrows))
    print(f"wrote {save('gpu', results)}")


if __name__ == "__main__":
    main()
