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
A few seconds on 2 cores for the default model (62 convolutions tried in 3 s).
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
from _common import save, table  # noqa: E402

from models.bf16_guard import error_db, run_in_fp32, try_training_convolutions  # noqa: E402
from models.devices import cpu_flags, cpu_name  # noqa: E402
from models.diffusion import load_generator  # noqa: E402
from models.training import example_forward  # noqa: E402


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
    return error_db(p32, p16), error_db(g32, g16)


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
    tries = try_training_convolutions(model, forward)
    layers = [{"name": t.name, "in": t.conv.in_channels, "out": t.conv.out_channels, "kernel": t.conv.kernel_size[0],
               "stride": t.conv.stride[0], "input": list(t.shape), "forward_db": t.forward_db,
               "dgrad_db": t.dgrad_db, "wgrad_db": t.wgrad_db, "wrong": t.wrong} for t in tries]
    rows = [[f"{t.conv.in_channels}->{t.conv.out_channels}", f"k{t.conv.kernel_size[0]} s{t.conv.stride[0]}",
             "x".join(map(str, t.shape)), round(t.forward_db, 1), round(t.dgrad_db, 1), round(t.wgrad_db, 1),
             "WRONG" if t.wrong else ""] for t in tries]
    print(table(["channels", "kernel", "input", "forward dB", "input grad dB", "weight grad dB", ""], rows))
    wrong = [t.name for t in tries if t.wrong]
    print(f"{len(tries)} convolutions tried in {time.perf_counter() - t0:.0f} s; worst forward "
          f"{max(t.forward_db for t in tries):.1f} dB, input gradient {max(t.dgrad_db for t in tries):.1f} dB, "
          f"weight gradient {max(t.wgrad_db for t in tries):.1f} dB; wrong: {len(wrong)}")
    as_is = whole_step(model, forward)
    for t in tries:  # what guard_training_convolutions does with the same tries, without trying again
        if t.wrong:
            run_in_fp32(t.conv)
    after = whole_step(model, forward) if wrong else as_is
    print(table(["one bf16 training step vs fp32", "prediction dB", "gradients dB"],
                [["as the network stands", round(as_is[0], 1), round(as_is[1], 1)],
                 [f"after the guard ({len(wrong)} in fp32)", round(after[0], 1), round(after[1], 1)]]))
    path = save("bf16_kernels", {"cpu": cpu_name(), "flags": flags, "torch": torch.__version__, "model": args.model,
                                 "batch": args.batch, "layers": layers, "wrong": wrong,
                                 "step_db": {"as_is": as_is, "guarded": after}})
    print(f"results: {path}")


if __name__ == "__main__":
    main()
