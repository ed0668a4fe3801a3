"""Run the exported denoiser with onnxruntime behind the same generator interface as torch.

The sampling loop, the noise (torch's generator, so on one device a seed gives the same clip on
either runtime) and the finishing stay the same; only the U-Net step changes (``precision`` and
``compile`` do not apply: the exported graph runs as exported, in fp32). Sessions are built with
an explicit thread count and spinning off: spinning threads on two shared cores slow everything
else down (docs/ARCHITECTURE.md, "Measured reasons").
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from models.diffusion import DiffusionGenerator, ModelInfo, ModelLoadError, UNetArch, amplitude_power
from models.output_filter import parse_lowpass


class OrtStep(torch.nn.Module):
    """Looks like the U-Net to the sampling loop; runs an onnxruntime session."""

    def __init__(self, onnx_file: Path, threads: int, device: torch.device | None = None,
                 gpu_memory_limit_mb: float = 0.0) -> None:
        super().__init__()
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        self.device = device or torch.device("cpu")
        self.providers = providers_for(self.device, ort.get_available_providers(), gpu_memory_limit_mb)
        try:
            self.session = ort.InferenceSession(str(onnx_file), options, providers=self.providers)
        except Exception as exc:  # onnxruntime's own classes (InvalidProtobuf, Fail...) derive from Exception only
            raise ModelLoadError(f"cannot load the ONNX model {onnx_file}: {exc} (delete it and "
                                 f"{onnx_file.name}.json to export it again)") from None

    def forward(self, x: torch.Tensor, sigma: torch.Tensor, labels: torch.Tensor | None = None,
                velocity: torch.Tensor | None = None) -> torch.Tensor:
        feeds = {"x": x.detach().float().contiguous().cpu().numpy(),
                 "sigma": sigma.reshape(-1).float().contiguous().cpu().numpy()}
        if labels is not None:
            feeds["label"] = labels.reshape(-1).contiguous().cpu().numpy()
        if velocity is not None:
            feeds["velocity"] = velocity.reshape(-1).float().contiguous().cpu().numpy()
        return torch.from_numpy(self.session.run(None, feeds)[0]).to(self.device)


def providers_for(device: torch.device, available: list[str], gpu_memory_limit_mb: float = 0.0) -> list[str]:
    """onnxruntime's execution providers for a device: the CUDA provider first on a GPU (a clear
    error when this onnxruntime has none: the CPU build cannot use it), the CPU provider always.
    ``gpu_memory_limit_mb`` caps the CUDA provider's own arena (torch's cap does not reach it)."""
    if device.type != "cuda":
        return ["CPUExecutionProvider"]
    if "CUDAExecutionProvider" not in available:
        raise ModelLoadError(f"device {device} asked for, but this onnxruntime has no CUDA provider (it has "
                             f"{', '.join(available)}); install onnxruntime-gpu, or use family = 'diffusion'")
    options: dict[str, Any] = {"device_id": device.index or 0}
    if gpu_memory_limit_mb > 0:
        options["gpu_mem_limit"] = int(gpu_memory_limit_mb * 2**20)
    return [("CUDAExecutionProvider", options), "CPUExecutionProvider"]  # type: ignore[list-item]


def load_onnx_generator(onnx_file: Path, *, name: str, threads: int, device: str = "cpu",
                        gpu_memory_limit_mb: float = 0.0) -> DiffusionGenerator:
    """The exported denoiser behind :class:`DiffusionGenerator`: noise, sampling and filters in torch
    on ``device`` ("auto": a GPU when torch sees one), the network step in onnxruntime."""
    import onnxruntime as ort

    from models.devices import resolve

    if device == "auto" and "CUDAExecutionProvider" not in ort.get_available_providers():
        device = "cpu"  # the stock (CPU) onnxruntime: "auto" must not ask it for a GPU it cannot use
    where = resolve(device)
    meta_file = Path(str(onnx_file) + ".json")
    try:
        meta: dict[str, Any] = json.loads(meta_file.read_text())
        arch = UNetArch(sample_rate=int(meta["sample_rate"]), length=int(meta["length"]),
                        in_channels=int(meta["channels"]), channels=(), factors=(), items=(), attentions=())
    except (OSError, ValueError, TypeError, KeyError) as exc:
        reason = f"no {exc.args[0]!r} key" if isinstance(exc, KeyError) else str(exc)
        raise ModelLoadError(f"cannot read the ONNX export's metadata {meta_file}: {reason}") from None
    info = ModelInfo(name=name, source=str(meta.get("source", onnx_file)), kind="onnx", weights=meta.get("weights", ""),
                     trained=bool(meta.get("trained", True)), parameters=int(meta.get("parameters", 0)),
                     sample_rate=arch.sample_rate, channels=arch.in_channels, length=arch.length,
                     default_steps=int(meta.get("default_steps", 25)), sdpa_layers=0, precision="fp32",
                     default_sampler=str(meta.get("default_sampler", "ddim")), classes=meta.get("classes") or None,
                     data_scale=float(meta.get("data_scale", 1.0)),
                     amplitude_power=amplitude_power(meta, str(meta_file)),
                     output_lowpass_hz=parse_lowpass(meta.get("output_lowpass_hz"), sample_rate=arch.sample_rate,
                                                     classes=meta.get("classes") or None),
                     velocity=bool(meta.get("velocity", False)))
    info.device = str(where)
    return DiffusionGenerator(OrtStep(onnx_file, threads, where, gpu_memory_limit_mb), arch, info, where)
