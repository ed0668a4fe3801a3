"""Are this CPU's bf16 convolution kernels right for the model that training and sampling run?

torch 2.13's oneDNN chooses bf16 kernels per CPU (AVX-512 BF16, AMX), and some are wrong for
some shapes on some CPUs: a convolution then returns noise under bf16 autocast. Training and
sampling both try each convolution and run a wrong one in fp32 (models/bf16_guard.py). This
prints, for the model's network at the shapes training feeds it, each convolution's distance
from fp32 in its forward output, input gradient and weight gradient (honest bf16 rounding
measures about -50 dB; past -30 dB is a wrong kernel), then one whole training step's
prediction and gradients against fp32, as the network stands and after the guard. Run it on each
kind of machine that trains: the figures say whether a run there would have trained through a
wrong layer.

Usage: python bench/bf16_kernels.py [--model models/default] [--batch 8] [--threads 2]
About a minute on 2 cores for the default model.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch  # noqa: E402
from _common import save, table  # noqa: E402

from models.bf16_guard import (  # noqa: E402
    BF16_CONV_TOLERANCE_DB,
    bf16_training_errors,
    convolution_inputs,
    guard_training_convolutions,
)
from models.devices import cpu_flags, cpu_name  # noqa: E402
from models.diffusion import load_generator  # noqa: E402
from models.training import example_forward  # noqa: E402


def _db(ref: torch.Tensor, low: torch.Tensor) -> float:
    return 10 * math.log10(float((ref - low).square().mean() / (ref.square().mean() + 1e-30)) + 1e-30)


def whole_step(model: torch.nn.Module, forward) -> tuple[float, float]:
    """dB from fp32 of one bf16 step's prediction and of all its parameter gradients."""
    results = []
    for bf16 in (False, True):
        model.zero_grad(set_to_none=True)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            pred = forward().float()
        pred.square().mean().backward()
        grads = torch.cat([p.grad.flatten() for p in model.parameters() if p.grad is not None])
        results.append((pred.detach(), grads))
    model.zero_grad(set_to_none=True)
    (p32, g32), (p16, g16) = results
    return _db(p32, p16), _db(g32, g16)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="models/default")
    ap.add_argument("--batch", type=int, default=8, help="the training batch (make train-default: 8)")
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    gen = load_generator(args.model, name="bench", sdpa=True)
    model = gen.net
    forward = example_forward(model, gen.arch, args.batch, gen.classes)
    flags = sorted(cpu_flags() & {"avx512_bf16", "amx_bf16", "amx_tile", "avx512f", "avx2"})
    print(f"{cpu_name()} ({' '.join(flags)}), torch {torch.__version__}, {args.threads} threads, "
          f"batch {args.batch}, {args.model}")
    t0 = time.perf_counter()
    rows, layers = [], []
    for name, conv, shape in convolution_inputs(model, forward):
        fwd, dgrad, wgrad = bf16_training_errors(conv, shape)
        wrong = max(fwd, dgrad, wgrad) > BF16_CONV_TOLERANCE_DB
        layers.append({"name": name, "in": conv.in_channels, "out": conv.out_channels, "kernel": conv.kernel_size[0],
                       "stride": conv.stride[0], "input": list(shape), "forward_db": fwd, "dgrad_db": dgrad,
                       "wgrad_db": wgrad, "wrong": wrong})
        rows.append([f"{conv.in_channels}->{conv.out_channels}", f"k{conv.kernel_size[0]} s{conv.stride[0]}",
                     "x".join(map(str, shape)), round(fwd, 1), round(dgrad, 1), round(wgrad, 1),
                     "WRONG" if wrong else ""])
    print(table(["channels", "kernel", "input", "forward dB", "input grad dB", "weight grad dB", ""], rows))
    wrong = [entry["name"] for entry in layers if entry["wrong"]]
    print(f"{len(layers)} convolutions tried in {time.perf_counter() - t0:.0f} s; worst forward "
          f"{max(e['forward_db'] for e in layers):.1f} dB, input gradient {max(e['dgrad_db'] for e in layers):.1f} dB, "
          f"weight gradient {max(e['wgrad_db'] for e in layers):.1f} dB; wrong: {len(wrong)}")
    as_is = whole_step(model, forward)
    guarded = guard_training_convolutions(model, forward)
    after = whole_step(model, forward) if guarded else as_is
    print(table(["one bf16 training step vs fp32", "prediction dB", "gradients dB"],
                [["as the network stands", round(as_is[0], 1), round(as_is[1], 1)],
                 [f"after the guard ({len(guarded)} in fp32)", round(after[0], 1), round(after[1], 1)]]))
    path = save("bf16_kernels", {"cpu": cpu_name(), "flags": flags, "torch": torch.__version__, "model": args.model,
                                 "batch": args.batch, "layers": layers, "wrong": wrong,
                                 "step_db": {"as_is": as_is, "guarded": after}})
    print(f"results: {path}")


if __name__ == "__main__":
    main()
