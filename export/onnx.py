"""Export the diffusion denoiser (one U-Net step: x, sigma -> v) to ONNX and check it.

Why: onnxruntime runs the same step as torch on CPU without torch's per-op overhead and with
spin-free threads, which matters on two shared cores (docs/ARCHITECTURE.md, "Measured reasons"). The export has
a dynamic batch axis, so batched refills use the same file. Every export is checked against
torch on random inputs before it is used, and a JSON file beside it records where it came from
(so a stale export - the model changed since - is noticed and redone).
"""

from __future__ import annotations

import json
import logging
import time
import warnings
from pathlib import Path
from typing import Any, Callable

from models.signature import source_signature

log = logging.getLogger(__name__)

OPSET = 17


def meta_path(onnx_file: Path) -> Path:
    return onnx_file.with_name(onnx_file.name + ".json")


def default_onnx_path(model: Path) -> Path:
    model = Path(model).expanduser()
    return model / "denoiser.onnx" if model.is_dir() else model.with_suffix(".onnx")


def is_fresh(onnx_file: Path, model: Path) -> bool:
    meta = meta_path(onnx_file)
    if not onnx_file.is_file() or not meta.is_file():
        return False
    try:
        return json.loads(meta.read_text()).get("source_signature") == source_signature(model)
    except (OSError, json.JSONDecodeError):
        return False


def export_denoiser(model: str | Path, out: str | Path, *, name: str = "model", opset: int = OPSET,
                    check_batches: tuple[int, ...] = (1, 2), tolerance: float = 1e-4,
                    progress: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Export, check parity against torch, write the metadata; returns the metadata.

    Raises RuntimeError when onnxruntime's output differs from torch's by more than
    ``tolerance`` (the file is then removed: a wrong model must not be served).
    """
    import numpy as np
    import onnxruntime as ort
    import torch

    from models.diffusion import load_generator

    say = progress or (lambda msg: log.info("%s", msg))
    model, out = Path(model).expanduser(), Path(out).expanduser()
    out.parent.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    say(f"loading {model}")
    gen = load_generator(model, name=name, sdpa=True)
    arch = gen.arch

    classes = gen.classes or []
    velocity = bool(classes) and gen.info.velocity

    class Step(torch.nn.Module):
        """The step with positional inputs only; a class-conditioned model takes ``label``, a
        velocity-conditioned one ``label`` and ``velocity`` (0-1)."""

        def __init__(self, net: torch.nn.Module) -> None:
            super().__init__()
            self.net = net

        def forward(self, x: torch.Tensor, sigma: torch.Tensor, *label: torch.Tensor) -> torch.Tensor:
            return self.net(x, sigma, *label)

    x = torch.randn(1, arch.in_channels, arch.length)
    sigma = torch.tensor([0.5])
    inputs: tuple[torch.Tensor, ...] = ((x, sigma) + ((torch.tensor([0]),) if classes else ())
                                        + ((torch.tensor([0.8]),) if velocity else ()))
    names = ["x", "sigma"] + (["label"] if classes else []) + (["velocity"] if velocity else [])
    say(f"exporting the denoiser step ({gen.info.parameters / 1e6:.1f} M parameters, opset {opset})")
    tmp = out.with_name(f".{out.name}.tmp")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(Step(gen.net), inputs, str(tmp), input_names=names, output_names=["v"],
                          dynamic_axes={n: {0: "batch"} for n in names + ["v"]},
                          opset_version=opset, dynamo=False)
    say("checking parity with torch")
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    session = ort.InferenceSession(str(tmp), options, providers=["CPUExecutionProvider"])
    rng = torch.Generator().manual_seed(0)
    max_abs = max_rel = 0.0
    for batch in check_batches:
        xb = torch.randn(batch, arch.in_channels, arch.length, generator=rng)
        sb = torch.rand(batch, generator=rng)
        extra = (torch.randint(len(classes), (batch,), generator=rng),) if classes else ()
        extra += (torch.rand(batch, generator=rng),) if velocity else ()
        with torch.inference_mode():
            ref = gen.net(xb, sb, *extra).numpy()
        feeds = {"x": xb.numpy(), "sigma": sb.numpy()} | dict(zip(names[2:], (e.numpy() for e in extra)))
        got = session.run(None, feeds)[0]
        diff = np.abs(got - ref)
        max_abs = max(max_abs, float(diff.max()))
        max_rel = max(max_rel, float((diff / (np.abs(ref) + 1e-3)).max()))
    if max_abs > tolerance:
        tmp.unlink(missing_ok=True)
        raise RuntimeError(f"ONNX export differs from torch by {max_abs:.2e} (> {tolerance:g}); not used")
    tmp.replace(out)
    meta = {
        "source": str(model.resolve()),
        "source_signature": source_signature(model),
        "sample_rate": arch.sample_rate,
        "length": arch.length,
        "channels": arch.in_channels,
        "default_steps": gen.info.default_steps,
        "default_sampler": gen.info.default_sampler,
        "classes": gen.classes,
        "velocity": velocity,
        "data_scale": gen.info.data_scale,
        "amplitude_power": gen.info.amplitude_power,
        "output_lowpass_hz": gen.info.output_lowpass_hz,
        "parameters": gen.info.parameters,
        "trained": gen.info.trained,
        "weights": gen.info.weights,
        "opset": opset,
        "torch": torch.__version__,
        "onnxruntime": ort.__version__,
        "parity": {"max_abs": max_abs, "max_rel": max_rel, "batches": list(check_batches)},
        "export_s": round(time.perf_counter() - t0, 2),
    }
    meta_path(out).write_text(json.dumps(meta, indent=2) + "\n")
    say(f"wrote {out} (max abs error {max_abs:.2e}, max rel {max_rel:.2e})")
    return meta
