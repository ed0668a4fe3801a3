"""CPU bf16 convolutions that torch's oneDNN gets wrong, found by trying them, run in fp32.

Why this module exists: torch 2.13 bundles oneDNN 3.12, which picks its bf16 convolution kernels
by CPU (AVX-512 BF16 on an AMD Zen 4, AMX on an Intel Sapphire Rapids), and some of them are
wrong for some shapes on some CPUs: on one of this project's VMs, 16 -> 32 channels with kernel 4
and stride 4 returned noise (0 dB from fp32) where honest bf16 rounding measures -50 dB. Sampling
and training both run the same U-Net under bf16 autocast, so both need the same cure, kept here:
try each convolution once, fp32 beside bf16, and run only the broken ones in fp32.

The faults known in public depend on the shape too (oneDNN 3.12: brgemm convolutions with a
stride longer than the kernel, uxlfoundation/oneDNN#5494, fixed in 3.13; an output one sample wide
with a stride over 1, pytorch/pytorch#169688), so each convolution is tried at the shape the
network gives it, not at one fixed probe.

Training must try more than sampling does. Its backward pass has kernels of its own (the input
gradient and the weight gradient), and oneDNN's blocking, and so a blocking bug, depends on the
shape, so a network being trained is tried at the shapes it trains at. Without this, a run on a
CPU with such a kernel trains through a layer that returns noise; that is the likeliest reason the
same recipe gave another model on another VM (models/default/MODEL_CARD.md, the rebuild of
2026-12-03).

A guarded convolution keeps its parameters and their names (its class is swapped for an fp32
subclass, not wrapped), so checkpoints, EMA copies and model folders are unchanged by it.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import Callable

import torch
from torch import nn

log = logging.getLogger(__name__)

#: A bf16 convolution further than this from fp32 (relative error power) is a broken kernel, not
#: rounding: honest bf16 rounding of the default model's layers measures -50 dB, forward and back.
BF16_CONV_TOLERANCE_DB = -30.0

#: Convolutions this narrow run in fp32 when a model samples in bf16 (see guard_bf16_convolutions).
BF16_FP32_CHANNELS = 8


_FP32_CLASS: dict[type, type] = {}


def _fp32_class(cls: type) -> type:
    """The fp32 twin of a convolution class (made on first use and kept): the class's own
    forward, run with CPU autocast off on fp32 input."""
    if cls not in _FP32_CLASS:
        def forward(self: nn.Module, x: torch.Tensor, *args: object, **kwargs: object) -> torch.Tensor:
            with torch.autocast("cpu", enabled=False):
                return cls.forward(self, x.float(), *args, **kwargs)
        _FP32_CLASS[cls] = type(f"Fp32{cls.__name__}", (cls,), {"forward": forward, "__module__": __name__})
    return _FP32_CLASS[cls]


def _in_fp32(conv: nn.Module) -> bool:
    return type(conv) in _FP32_CLASS.values()


def run_in_fp32(conv: nn.Module) -> None:
    """Make ``conv`` (a 1-d convolution) run in fp32 under bf16 autocast, in place."""
    if not isinstance(conv, (nn.Conv1d, nn.ConvTranspose1d)):
        raise TypeError(f"run_in_fp32 takes a 1-d convolution, not {type(conv).__name__}")
    if not _in_fp32(conv):
        conv.__class__ = _fp32_class(type(conv))


def _convolutions(net: nn.Module) -> list[tuple[str, nn.Module]]:
    return [(name, m) for name, m in net.named_modules() if isinstance(m, (nn.Conv1d, nn.ConvTranspose1d))]


def error_db(ref: torch.Tensor, low: torch.Tensor) -> float:
    """How far ``low`` is from ``ref``: dB of relative error power."""
    err = float(((ref.float() - low.float()) ** 2).mean() / ((ref.float() ** 2).mean() + 1e-30))
    return 10 * math.log10(err + 1e-30)


def guard_bf16_convolutions(net: nn.Module, length: int, forward: Callable[[], object] | None = None) -> list[str]:
    """For sampling in bf16: put every convolution whose CPU bf16 kernel is wrong back in fp32,
    and the narrow ones too; returns their names.

    Each convolution is tried once on random input at load; only the broken ones pay for fp32
    (the default model had one, which made its whole bf16 output -13 dB from fp32 on one network
    evaluation). Convolutions with at most :data:`BF16_FP32_CHANNELS` channels in or out (a
    full-rate first level, the output layer) stay fp32 as well: bf16's 8-bit mantissa on those few
    channels was the largest error of the default model's whole bf16 step (-24 dB from fp32 at
    t = 0.9; -34 dB with them in fp32), and at 8 channels they cost little.

    ``forward`` runs the network once on one clip; each convolution is then tried at the input
    shape it saw there (batch 1), because oneDNN's blocking, and with it a blocking bug, depends on
    the length (see the module's docstring).
    A convolution ``forward`` does not reach, or every one when it is None or fails, is tried at
    (1, channels, min(``length``, 2048)).
    """
    shapes: dict[str, tuple[int, ...]] = {}
    if forward is not None:
        try:
            shapes = {name: (1, *shape[1:]) for name, _, shape in convolution_inputs(net, forward)}
        except Exception as exc:  # a network this forward cannot drive: the fixed probe for all
            log.info("bf16: convolutions tried at a fixed length, the network's own shapes are not known (%s)", exc)
    guarded: list[str] = []
    gen = torch.Generator().manual_seed(0)
    for name, conv in _convolutions(net):
        if min(conv.in_channels, conv.out_channels) > BF16_FP32_CHANNELS:
            shape = shapes.get(name, (1, conv.in_channels, max(64, min(length, 2048))))
            probe = torch.randn(shape, generator=gen)
            with torch.inference_mode():
                ref = conv(probe)
                with torch.autocast("cpu", dtype=torch.bfloat16):
                    low = conv(probe)
            if error_db(ref, low) <= BF16_CONV_TOLERANCE_DB:
                continue
        run_in_fp32(conv)
        guarded.append(name)
    if guarded:
        log.info("bf16: %d convolution(s) run in fp32 (narrow, or this CPU's bf16 kernel is wrong for them): %s",
                 len(guarded), ", ".join(guarded))
    return guarded


def bf16_training_errors(conv: nn.Module, shape: tuple[int, ...], seed: int = 0) -> tuple[float, float, float]:
    """How far ``conv``'s bf16 autocast output, input gradient and weight gradient are from fp32
    (dB of relative error power) on random input of ``shape``; the module is left as it was."""
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(shape, generator=gen)
    results = []
    for bf16 in (False, True):
        conv.zero_grad(set_to_none=True)
        xi = x.clone().requires_grad_(True)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            out = conv(xi)
        upstream = torch.randn(out.shape, generator=torch.Generator().manual_seed(seed + 1))
        (out.float() * upstream).sum().backward()
        results.append((out.detach(), xi.grad.detach(), conv.weight.grad.detach()))
    conv.zero_grad(set_to_none=True)
    fwd, dgrad, wgrad = (error_db(a, b) for a, b in zip(*results))
    return fwd, dgrad, wgrad


def convolution_inputs(net: nn.Module, forward: Callable[[], object]) -> list[tuple[str, nn.Module, tuple[int, ...]]]:
    """Each convolution of ``net`` with the input shape it sees when ``forward`` runs the network
    once (in fp32, without gradients), in the order of ``net.named_modules()``."""
    shapes: dict[str, tuple[int, ...]] = {}

    def recorder(name: str) -> Callable[..., None]:
        def hook(module: nn.Module, args: tuple, output: object) -> None:
            shapes.setdefault(name, tuple(args[0].shape))
        return hook

    convs = _convolutions(net)
    hooks = [conv.register_forward_hook(recorder(name)) for name, conv in convs]
    try:
        with torch.no_grad(), torch.autocast("cpu", enabled=False):
            forward()
    finally:
        for h in hooks:
            h.remove()
    return [(name, conv, shapes[name]) for name, conv in convs if name in shapes]


@dataclass
class ConvolutionTry:
    """One convolution tried in bf16 at its training shape (:func:`try_training_convolutions`)."""

    name: str
    conv: nn.Module
    shape: tuple[int, ...]
    forward_db: float
    dgrad_db: float
    wgrad_db: float

    @property
    def wrong(self) -> bool:
        return max(self.forward_db, self.dgrad_db, self.wgrad_db) > BF16_CONV_TOLERANCE_DB


def try_training_convolutions(net: nn.Module, forward: Callable[[], object]) -> list[ConvolutionTry]:
    """Every convolution of ``net`` not already in fp32, tried at the input shape ``forward``
    gives it (:func:`convolution_inputs`): forward, input gradient and weight gradient in bf16
    against fp32 (:func:`bf16_training_errors`)."""
    return [ConvolutionTry(name, conv, shape, *bf16_training_errors(conv, shape))
            for name, conv, shape in convolution_inputs(net, forward) if not _in_fp32(conv)]


def guard_training_convolutions(net: nn.Module, forward: Callable[[], object]) -> list[str]:
    """For training in bf16 on a CPU: run every convolution whose bf16 forward, input gradient or
    weight gradient is wrong on this CPU in fp32; returns their names.

    ``forward`` runs the network once on a batch of the shape training feeds it; each convolution
    is tried at the input shape it saw there (:func:`try_training_convolutions`). Narrow
    convolutions are not moved to fp32 here: trained with honest bf16 rounding they learn as the
    shipped default did; only a wrong kernel is taken out. Random draws come from private
    generators, so a run's own random state, and so its result, does not depend on the guard.
    """
    wrong = [t for t in try_training_convolutions(net, forward) if t.wrong]
    for t in wrong:
        log.warning("bf16: %s (%d -> %d channels, kernel %d, stride %d, input %s) is wrong on this CPU "
                    "(forward %.0f dB, input gradient %.0f dB, weight gradient %.0f dB from fp32): "
                    "it trains in fp32", t.name, t.conv.in_channels, t.conv.out_channels, t.conv.kernel_size[0],
                    t.conv.stride[0], t.shape, t.forward_db, t.dgrad_db, t.wgrad_db)
        run_in_fp32(t.conv)
    return [t.name for t in wrong]
