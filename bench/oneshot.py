"""One-shot generation time for the public tiny-audio-diffusion architecture (random weights).

Variants, measured side by side in one run (A B C A B C ...), so machine drift hits all alike:
  shipped  audio-diffusion-pytorch as is (einsum + softmax attention), fp32
  sdpa     the same weights with F.scaled_dot_product_attention, fp32
  bf16     sdpa under CPU bf16 autocast

Prints per-step and per-one-shot medians, ratios against "shipped", and each variant's max abs
difference from "shipped" on the same noise. Usage: python bench/oneshot.py [--steps 10]
[--rounds 3] [--threads 2] [--default-steps 25]
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

import torch  # noqa: E402
from _common import median, save, table  # noqa: E402

from models.diffusion import DiffusionGenerator, ModelInfo, UNetArch, build_network, swap_attention_to_sdpa  # noqa: E402

#: The public kick/snare/hat/percussion checkpoints' architecture (the tiny-audio-diffusion checkpoints' config.yaml).
PUBLIC = {
    "in_channels": 2,
    "channels": [32, 32, 64, 64, 128, 128, 256, 256],
    "factors": [1, 2, 2, 2, 2, 2, 2, 2],
    "items": [2, 2, 2, 2, 2, 2, 4, 4],
    "attentions": [0, 0, 0, 0, 0, 1, 1, 1],
    "attention_heads": 8,
    "attention_features": 64,
}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=10, help="sampling steps timed per one-shot")
    ap.add_argument("--default-steps", type=int, default=25, help="steps for the projected one-shot column")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    arch = UNetArch.from_mapping(PUBLIC, sample_rate=44100, length=32768)
    shipped_net = build_network(arch, init_seed=0).eval()
    sdpa_net = build_network(arch, init_seed=0).eval()
    swapped = swap_attention_to_sdpa(sdpa_net, arch.attention_heads)
    params = sum(p.numel() for p in shipped_net.parameters())

    def gen(net: torch.nn.Module, precision: str) -> DiffusionGenerator:
        info = ModelInfo("public", "random", "tiny-audio-diffusion", "random", False, params, 44100, 2, 32768,
                         args.steps, swapped, precision)
        return DiffusionGenerator(net, arch, info)

    variants = {"shipped": gen(shipped_net, "fp32"), "sdpa": gen(sdpa_net, "fp32"), "bf16": gen(sdpa_net, "bf16")}
    noise = variants["shipped"].noise(1234)
    outputs: dict[str, torch.Tensor] = {}
    for name, g in variants.items():  # warm-up, and the outputs compared below
        outputs[name] = g.sample(noise, 2)
    times: dict[str, list[float]] = {name: [] for name in variants}
    print(f"public tiny-audio-diffusion architecture: {params / 1e6:.1f} M parameters, 32768 samples "
          f"stereo @ 44.1 kHz (0.74 s), {args.steps} steps, {args.rounds} rounds, {args.threads} threads, "
          f"{swapped} attention layers swapped", flush=True)
    for r in range(args.rounds):
        for name, g in variants.items():
            t0 = time.perf_counter()
            g.sample(noise, args.steps)
            times[name].append(time.perf_counter() - t0)
        print(f"  round {r + 1}: " + ", ".join(f"{n} {times[n][-1]:.2f} s" for n in variants), flush=True)

    base = median(times["shipped"]) / args.steps
    rows, results = [], {}
    for name in variants:
        per_step = median(times[name]) / args.steps
        diff = float((outputs[name] - outputs["shipped"]).abs().max())
        results[name] = {"per_step_s": per_step, "oneshot_s": per_step * args.default_steps,
                         "speedup": base / per_step, "max_abs_diff": diff, "runs_s": times[name]}
        rows.append([name, per_step, per_step * args.default_steps, base / per_step, diff])
    print()
    print(table(["variant", "s/step (median)", f"s/one-shot @{args.default_steps}", "x vs shipped",
                 "max |diff|"], rows))
    path = save("oneshot", {"steps": args.steps, "rounds": args.rounds, "threads": args.threads,
                            "parameters": params, "variants": results})
    print(f"\nwrote {path}")


if __name__ == "__main__":
    main()
