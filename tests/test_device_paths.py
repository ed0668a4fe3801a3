"""The GPU-side decisions, exercised on a CPU: what each device gets, and the clear refusals."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from models.devices import DeviceError, cpu_flags, is_device_name, native_bf16, resolve, resolve_precision
from models.diffusion import ModelLoadError
from models.diffusion_family import DiffusionFamily
from models.generator import GeneratorError, LoadSpec
from models.onnx_runtime import providers_for


def test_device_names_and_precisions() -> None:
    assert all(is_device_name(n) for n in ("auto", "cpu", "cuda", "cuda:3"))
    assert not any(is_device_name(n) for n in ("gpu", "cuda:", "cuda:x", "mps", ""))
    gpu, cpu = torch.device("cuda:0"), torch.device("cpu")
    assert resolve_precision("auto", gpu) == "bf16" and resolve_precision("auto", cpu) == "fp32"
    assert resolve_precision("fp16", gpu) == "fp16"
    with pytest.raises(DeviceError, match="needs a CUDA device"):
        resolve_precision("fp16", cpu)
    if not torch.cuda.is_available():
        assert resolve("auto") == cpu
        with pytest.raises(DeviceError, match="sees no CUDA GPU"):
            resolve("cuda")


def test_onnxruntime_providers_follow_the_device() -> None:
    assert providers_for(torch.device("cpu"), ["CUDAExecutionProvider", "CPUExecutionProvider"]) == [
        "CPUExecutionProvider"]
    on_gpu = providers_for(torch.device("cuda:1"), ["CUDAExecutionProvider", "CPUExecutionProvider"])
    assert on_gpu[0] == ("CUDAExecutionProvider", {"device_id": 1}) and on_gpu[-1] == "CPUExecutionProvider"
    with pytest.raises(ModelLoadError, match="onnxruntime-gpu"):
        providers_for(torch.device("cuda:0"), ["CPUExecutionProvider"])
    # a worker's GPU memory ceiling reaches onnxruntime's own arena (torch's cap does not)
    capped = providers_for(torch.device("cuda:0"), ["CUDAExecutionProvider", "CPUExecutionProvider"], 2048)
    assert capped[0] == ("CUDAExecutionProvider", {"device_id": 0, "gpu_mem_limit": 2048 * 2**20})


def test_cuda_graphs_on_a_cpu_are_refused_at_load(tiny_model: Path) -> None:
    with pytest.raises(GeneratorError, match="needs a CUDA device"):
        DiffusionFamily().load(LoadSpec("t", str(tiny_model), "cpu", 1, {"compile": "graphs"}))


def test_params_are_checked_by_the_family_without_torch_work() -> None:
    family = DiffusionFamily()
    assert family.check_params({"steps": 0, "sampler": ""}, None) == {"steps": 0, "sampler": ""}
    for bad, message in (({"steps": -1}, "steps must be"), ({"sampler": "euler"}, "unknown sampler"),
                         ({"strength": 1.5}, "strength must be"), ({"cfg": 3}, "no parameter 'cfg'")):
        with pytest.raises(GeneratorError, match=message):
            family.check_params(bad, None)


def test_a_gpu_memory_ceiling_is_a_share_of_the_card_and_nothing_on_a_cpu() -> None:
    from models.devices import cap_gpu_memory, gpu_memory_fraction

    assert gpu_memory_fraction(0, 80_000) is None  # no ceiling configured
    assert gpu_memory_fraction(20_000, 80_000) == 0.25
    assert gpu_memory_fraction(200_000, 80_000) == 1.0  # a ceiling above the card: the card
    assert cap_gpu_memory(torch.device("cpu"), 1000) is None  # a CPU worker is held by its RSS ceiling instead


def test_a_plain_weights_file_goes_to_the_device_asked_for(tiny_model: Path) -> None:
    """A model named by its weights file (not its folder) is placed like a folder: on a machine
    without CUDA, asking for it is the clear refusal (it used to load on the CPU regardless)."""
    from models.diffusion import load_generator

    weights = tiny_model / "model.safetensors"
    assert load_generator(weights, name="t", device="cpu").device.type == "cpu"
    if not torch.cuda.is_available():
        with pytest.raises(ModelLoadError, match="sees no CUDA GPU"):
            load_generator(weights, name="t", device="cuda")


def test_bf16_training_is_kept_only_where_the_hardware_has_native_bf16() -> None:
    """Emulated bf16 trained the default's shape 10x slower than fp32 on an AVX2-only CPU."""
    cpu = torch.device("cpu")
    assert native_bf16(cpu, frozenset({"avx2", "avx512f", "avx512_bf16"}))
    assert native_bf16(cpu, frozenset({"amx_bf16"}))
    assert not native_bf16(cpu, frozenset({"avx2", "avx512f", "avx512_vnni"}))
    assert native_bf16(torch.device("cuda", 0), frozenset())
    assert native_bf16(cpu) == bool({"avx512_bf16", "amx_bf16"} & cpu_flags()), "this machine's own flags"
