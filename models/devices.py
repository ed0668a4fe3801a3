"""Compute devices: what ``device = "auto" | "cpu" | "cuda" | "cuda:N"`` means on this machine.

Why this module exists: a model's weights, its noise, its prompts and its autocast must all be
on the same device, and a config that asks for a GPU the machine does not have must fail when
the daemon starts (exit 2, naming the key), not at the first pad hit. Every family resolves its
device here, so they agree on what "auto" picks and on how a device is described in status.

The daemon's I/O process never imports torch: :func:`cuda_device_count` asks a short-lived
child Python instead (once, and only when a config names CUDA explicitly).
"""

from __future__ import annotations

import functools
import json
import subprocess
import sys
from typing import Any

DEVICE_HINT = "'auto', 'cpu', 'cuda' or 'cuda:N'"


class DeviceError(ValueError):
    """A device name this machine cannot serve; the message says what it has."""


def is_device_name(name: str) -> bool:
    """Syntax only: auto, cpu, cuda, cuda:N."""
    if name in ("auto", "cpu", "cuda"):
        return True
    head, _, index = name.partition(":")
    return head == "cuda" and index.isdigit()


@functools.lru_cache(maxsize=1)
def cuda_probe() -> dict[str, Any]:
    """{"count": N, "torch": version} from a child interpreter (keeps torch out of this process)."""
    code = ("import json, torch; print(json.dumps({'count': torch.cuda.device_count() "
            "if torch.cuda.is_available() else 0, 'torch': torch.__version__}))")
    try:
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                             check=True).stdout
        return dict(json.loads(out.strip().splitlines()[-1]))
    except (OSError, subprocess.SubprocessError, ValueError, IndexError) as exc:
        return {"count": 0, "torch": f"unknown ({exc})"}


def check_available(name: str) -> None:
    """Raise DeviceError if ``name`` asks for a CUDA GPU this machine lacks ("auto" always works)."""
    if not is_device_name(name):
        raise DeviceError(f"expected {DEVICE_HINT}, got {name!r}")
    if not name.startswith("cuda"):
        return
    probe = cuda_probe()
    count = int(probe["count"])
    if count == 0:
        raise DeviceError(f"{name!r} asked for, but this torch ({probe['torch']}) sees no CUDA GPU; "
                          "use 'auto' or 'cpu', or install a CUDA build of torch")
    index = int(name.partition(":")[2] or 0)
    if index >= count:
        raise DeviceError(f"{name!r} asked for, but this machine has {count} CUDA GPU(s) (cuda:0..cuda:{count - 1})")


def resolve(name: str) -> Any:
    """The torch.device for a device name: "auto" is the first CUDA GPU when torch sees one."""
    import torch

    if not is_device_name(name):
        raise DeviceError(f"expected {DEVICE_HINT}, got {name!r}")
    if name == "auto":
        return torch.device("cuda:0" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda"):
        if not torch.cuda.is_available():
            raise DeviceError(f"{name!r} asked for, but this torch ({torch.__version__}) sees no CUDA GPU")
        index = int(name.partition(":")[2] or 0)
        if index >= torch.cuda.device_count():
            raise DeviceError(f"{name!r} asked for, but torch sees {torch.cuda.device_count()} CUDA GPU(s)")
        return torch.device(f"cuda:{index}")
    return torch.device("cpu")


def describe(device: Any) -> str:
    """A device's name for status and sidecars: the GPU's marketing name, or the CPU model."""
    import torch

    if device.type == "cuda":
        return str(torch.cuda.get_device_name(device))
    return cpu_name()


@functools.lru_cache(maxsize=1)
def cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    import platform

    return platform.processor() or "CPU"


@functools.lru_cache(maxsize=1)
def cpu_flags() -> frozenset[str]:
    """The CPU's feature flags (/proc/cpuinfo; empty where there is none)."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    return frozenset(line.split(":", 1)[1].split())
    except OSError:
        pass
    return frozenset()


#: CPU flags of native bf16 arithmetic (Intel Cooper Lake / Sapphire Rapids and later, AMD Zen 4).
NATIVE_BF16_FLAGS = frozenset({"avx512_bf16", "amx_bf16"})


def native_bf16(device: Any, flags: frozenset[str] | None = None) -> bool:
    """Whether bf16 autocast is fast here: on a GPU, and on a CPU with native bf16 instructions.
    Why: without them torch emulates bf16, and training the default's shape ran 10x slower than
    fp32 (0.1 against 1 step/s at batch 8 on a 2-core AMD EPYC with AVX2 only)."""
    if device.type == "cuda":
        return True
    return bool(NATIVE_BF16_FLAGS & (cpu_flags() if flags is None else flags))


def resolve_precision(precision: str, device: Any) -> str:
    """"auto" is fp32 on a CPU (bf16 moved the default model's clips, see docs/ARCHITECTURE.md)
    and bf16 on a GPU (not yet measured against fp16 on one: bench/gpu.py prints both).
    fp16 runs only on a GPU: CPU autocast has no fast fp16 kernels."""
    if precision == "auto":
        return "bf16" if device.type == "cuda" else "fp32"
    if precision == "fp16" and device.type != "cuda":
        raise DeviceError("precision 'fp16' needs a CUDA device (on a CPU use 'fp32' or 'bf16')")
    return precision


def autocast_dtype(precision: str) -> Any:
    import torch

    return {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision)


def memory(device: Any) -> dict[str, Any]:
    """What this process holds on ``device``: allocated/reserved MB on a GPU, resident MB on a CPU."""
    import torch

    if device.type == "cuda":
        return {"allocated_mb": round(torch.cuda.memory_allocated(device) / 2**20, 1),
                "reserved_mb": round(torch.cuda.memory_reserved(device) / 2**20, 1),
                "peak_mb": round(torch.cuda.max_memory_allocated(device) / 2**20, 1)}
    return {"rss_mb": round(rss_bytes() / 2**20, 1)}


def rss_bytes(pid: int | str = "self") -> int:
    """Resident memory of a process (this one by default); 0 when it cannot be read (gone)."""
    try:
        with open(f"/proc/{pid}/statm") as f:
            import os

            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return 0


def is_out_of_memory(exc: BaseException) -> bool:
    import torch

    return isinstance(exc, torch.OutOfMemoryError) or "out of memory" in str(exc).lower()


def release_cached(device: Any) -> None:
    """After a CUDA out-of-memory: free the allocator's cache so the next request can fit."""
    import torch

    if device.type == "cuda":
        torch.cuda.empty_cache()


def gpu_memory_fraction(limit_mb: float, total_mb: float) -> float | None:
    """The share of a GPU's memory ``limit_mb`` is (torch's per-process cap), None for no cap."""
    if limit_mb <= 0 or total_mb <= 0:
        return None
    return min(1.0, limit_mb / total_mb)


def cap_gpu_memory(device: Any, limit_mb: float) -> float | None:
    """Cap what this process may allocate on a CUDA ``device`` (a worker's GPU memory ceiling):
    past it torch raises out-of-memory, which the worker answers as an error for that request
    (and frees its cache) while the other models on the GPU keep theirs. None on a CPU."""
    if getattr(device, "type", "cpu") != "cuda" or limit_mb <= 0:
        return None
    import torch

    total_mb = torch.cuda.get_device_properties(device).total_memory / 2**20
    fraction = gpu_memory_fraction(limit_mb, total_mb)
    if fraction is not None:
        torch.cuda.set_per_process_memory_fraction(fraction, device)
    return fraction


def compute_report() -> str:
    """`genbridge devices`' compute section: torch, CUDA GPUs with memory, the CPU, onnxruntime."""
    lines = ["compute devices:"]
    try:
        import torch
    except ImportError as exc:
        return f"compute devices: torch is not installed ({exc})"
    lines.append(f"  cpu: {cpu_name()} ({torch.get_num_threads()} torch threads available)")
    if torch.cuda.is_available():
        for i in range(torch.cuda.device_count()):
            props = torch.cuda.get_device_properties(i)
            lines.append(f"  cuda:{i}: {props.name}, {props.total_memory / 2**30:.1f} GiB")
    else:
        lines.append(f"  cuda: none (torch {torch.__version__} sees no CUDA GPU; device = \"auto\" uses the cpu)")
    try:
        import onnxruntime as ort

        lines.append(f"  onnxruntime {ort.__version__} providers: {', '.join(ort.get_available_providers())}")
    except ImportError:
        lines.append("  onnxruntime: not installed")
    return "\n".join(lines)
