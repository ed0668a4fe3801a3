"""The weight formats MusicGen's LM runs in: one matrix-vector product per Linear, per format.

Why this module exists: decoding a frame reads every LM weight once, so on a CPU the bytes per
weight decide the speed (bench/continuation.py measures it against this machine's memory
bandwidth). Each format here is a maintained torch kernel, not a hand-written one:

========  ===================================================  =====  ==========
format    kernel                                               bytes  activations
========  ===================================================  =====  ==========
fp32      ``F.linear``                                         4      fp32
bf16      ``F.linear`` on bf16 weights                         2      bf16
fp16      ``F.linear`` on fp16 weights (for a GPU)             2      fp16
int8      fbgemm dynamic quantisation (``torch.ops.quantized``  1      fp32
          ``.linear_dynamic``, per-channel weights, VNNI)
int8w     ``torch._weight_int8pack_mm`` (weight-only, per-     1      bf16
          channel scales; what torchao's int8 weight-only
          config runs on a CPU)
int4      ``torch._weight_int4pack_mm_for_cpu`` (weight-only,  0.5    bf16
          groups of 32 with scale and zero; torchao's int4
          weight-only CPU layout)
========  ===================================================  =====  ==========

torchao itself (0.18) is not used: in eager mode its tensor subclasses cost 4-30x the kernels'
time per call on this CPU (measured: 63 ms vs 15 ms for the musicgen-small LM's matmuls of one
frame), and it would be one more dependency for what torch's own ops already do.
"""

from __future__ import annotations

import warnings
from typing import Callable

import torch

FORMATS = ("fp32", "bf16", "fp16", "int8", "int8w", "int4")
INT4_GROUP = 32

Linear = Callable[[torch.Tensor], torch.Tensor]


class FormatError(ValueError):
    """A weight format this build of torch cannot run (or one that does not exist)."""


def activation_dtype(fmt: str) -> torch.dtype:
    """The dtype the LM's activations (and its KV cache) use with weights in ``fmt``."""
    return {"fp32": torch.float32, "int8": torch.float32, "fp16": torch.float16}.get(fmt, torch.bfloat16)


def weight_bytes(weight: torch.Tensor, fmt: str) -> int:
    """Bytes a (out, in) weight occupies in ``fmt`` (what one frame reads from memory)."""
    per = {"fp32": 4.0, "bf16": 2.0, "fp16": 2.0, "int8": 1.0, "int8w": 1.0, "int4": 0.5}[fmt]
    extra = weight.shape[0] * 4 if fmt in ("int8", "int8w") else 0  # per-channel scales
    if fmt == "int4":
        extra = weight.shape[0] * (weight.shape[1] // INT4_GROUP) * 4  # bf16 scale + zero per group
    return int(weight.numel() * per) + extra


def make_linear(weight: torch.Tensor, fmt: str, bias: torch.Tensor | None = None) -> Linear:
    """``x -> x @ weight.T + bias`` with ``weight`` (out, in) stored in ``fmt``; x is (rows, in) in
    :func:`activation_dtype`."""
    weight = weight.detach().float().contiguous()
    if fmt == "fp32":
        b = None if bias is None else bias.detach().float()
        return lambda x: torch.nn.functional.linear(x, weight, b)
    if fmt in ("bf16", "fp16"):  # fp16: for a GPU (a CPU's half matmuls are slow)
        w16 = weight.to(activation_dtype(fmt))
        b16 = None if bias is None else bias.detach().to(w16.dtype)
        return lambda x: torch.nn.functional.linear(x, w16, b16)
    if fmt == "int8":
        return _int8_dynamic(weight, bias)
    if fmt == "int8w":
        scales = (weight.abs().amax(dim=1) / 127).clamp(min=1e-12)
        q = torch.round(weight / scales[:, None]).clamp(-127, 127).to(torch.int8).contiguous()
        s16 = scales.to(torch.bfloat16)
        b16 = None if bias is None else bias.detach().to(torch.bfloat16)
        if b16 is None:
            return lambda x: torch._weight_int8pack_mm(x, q, s16)
        return lambda x: torch._weight_int8pack_mm(x, q, s16) + b16
    if fmt == "int4":
        return _int4(weight, bias)
    raise FormatError(f"unknown weight format {fmt!r} (known: {', '.join(FORMATS)})")


def _int8_dynamic(weight: torch.Tensor, bias: torch.Tensor | None) -> Linear:
    """fbgemm's dynamically quantised Linear: activations quantised per call (per tensor, 8-bit),
    weights per output channel; the int8 x int8 product runs on AVX-512 VNNI."""
    if "fbgemm" not in torch.backends.quantized.supported_engines:
        raise FormatError("int8 needs torch's fbgemm engine (an x86 CPU build of torch)")
    with warnings.catch_warnings():  # torch.ao's eager quantisation API warns it is deprecated
        warnings.simplefilter("ignore")
        scales = (weight.abs().amax(dim=1) / 127).clamp(min=1e-12).double()
        zeros = torch.zeros(weight.shape[0], dtype=torch.long)
        q = torch.quantize_per_channel(weight, scales, zeros, 0, torch.qint8)
        packed = torch.ops.quantized.linear_prepack(q, None if bias is None else bias.detach().float())
    op = torch.ops.quantized.linear_dynamic
    return lambda x: op(x, packed, True)


def _int4(weight: torch.Tensor, bias: torch.Tensor | None) -> Linear:
    """Asymmetric 4-bit groups of :data:`INT4_GROUP` input weights: w = (q - 8) * scale + zero."""
    out_f, in_f = weight.shape
    if in_f % INT4_GROUP:
        raise FormatError(f"int4 needs the input width ({in_f}) to be a multiple of {INT4_GROUP}")
    groups = weight.reshape(out_f, in_f // INT4_GROUP, INT4_GROUP)
    lo, hi = groups.amin(dim=2), groups.amax(dim=2)
    scales = ((hi - lo) / 15).clamp(min=1e-6)
    zeros = lo + scales * 8
    q = torch.round((groups - lo[..., None]) / scales[..., None]).clamp(0, 15).to(torch.int32).reshape(out_f, in_f)
    packed = torch._convert_weight_to_int4pack_for_cpu(q, 1)
    scales_zeros = torch.stack([scales, zeros], dim=2).transpose(0, 1).contiguous().to(torch.bfloat16)
    b16 = None if bias is None else bias.detach().to(torch.bfloat16)
    op = torch._weight_int4pack_mm_for_cpu
    if b16 is None:
        return lambda x: op(x, packed, INT4_GROUP, scales_zeros)
    return lambda x: op(x, packed, INT4_GROUP, scales_zeros) + b16
