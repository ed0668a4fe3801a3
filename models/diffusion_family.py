"""Waveform diffusion behind the generator seam: on torch ("diffusion") or onnxruntime ("diffusion-onnx").

Why this module exists: :mod:`models.diffusion` samples a U-Net; this turns it into a
:class:`~models.generator.Generator` - one render call for a single clip, a batch of pool
refills or a variation of a source clip - so the worker body and the engine never see steps,
samplers or strengths. Both runtimes share the sampling loop, the noise and the output filter;
only the network step differs (see models/onnx_runtime.py).

Request parameters (checked here, in the I/O process, before a request is queued):
``steps`` (0 = the model's), ``sampler`` ("" = the model's), and for a variation ``source``
(float32 array at the model's shape), ``source_name`` and ``strength`` (0..1). Velocity is per
request (:attr:`~models.generator.RenderRequest.velocity`), not a parameter: one refill batch
mixes soft and hard hits of several instruments in one pass. A velocity-conditioned model
(``Capabilities.velocity``) records each clip's velocity in its sidecar; any other ignores it.
"""

from __future__ import annotations

import logging
from typing import Any, Mapping

import numpy as np

from models.generator import (
    Capabilities,
    Family,
    Generator,
    GeneratorError,
    GeneratorInfo,
    LoadSpec,
    Progress,
    Rendered,
    RenderRequest,
)

log = logging.getLogger(__name__)

#: The samplers :meth:`models.diffusion.DiffusionGenerator.sample` runs ("" = the model's own).
SAMPLERS = ("ddim", "dpmpp2m", "dpmpp2m_logsnr")
MAX_STEPS = 1000


class DiffusionRenderer(Generator):
    """A loaded :class:`~models.diffusion.DiffusionGenerator` behind the seam."""

    def __init__(self, generator: Any, family: str, runtime: str, compiled: str = "off") -> None:
        from models.drum_data import DEFAULT_VELOCITY

        self.generator = generator
        self.runtime = runtime
        gi = generator.info
        #: What a request without a velocity is made at (None: the model is not conditioned on it).
        self.default_velocity: float | None = DEFAULT_VELOCITY if gi.velocity else None
        velocity = self.default_velocity is not None
        self.info = GeneratorInfo(
            family=family, name=gi.name, sample_rate=gi.sample_rate, channels=gi.channels, length=gi.length,
            capabilities=Capabilities(seeded=True, batches=True, variations=True, one_shots=True, velocity=velocity),
            device=str(generator.device), device_name=_device_name(generator.device), precision=gi.precision,
            classes=gi.classes, parameters=gi.parameters,
            details={"source": gi.source, "kind": gi.kind, "weights": gi.weights, "trained": gi.trained,
                     "default_steps": gi.default_steps, "default_sampler": gi.default_sampler,
                     "sdpa_layers": gi.sdpa_layers, "runtime": runtime, "compile": compiled,
                     "output_lowpass_hz": gi.output_lowpass_hz, "data_scale": gi.data_scale,
                     "velocity": velocity,
                     **({"default_velocity": self.default_velocity} if velocity else {})},
        )

    def render(self, requests: list[RenderRequest], params: Mapping[str, Any],
               progress: Progress | None = None) -> list[Rendered]:
        from models.output_filter import cutoff_for

        gen = self.generator
        progress = progress or Progress()
        steps = int(params.get("steps") or gen.info.default_steps)
        sampler = str(params.get("sampler") or gen.info.default_sampler)
        source = params.get("source")
        strength = float(params.get("strength", 1.0))
        try:
            if source is not None:
                if len(requests) != 1:
                    raise GeneratorError("a variation renders one clip at a time")
                r = requests[0]
                audio = [gen.vary(np.asarray(source, dtype=np.float32), r.seed, strength, steps, progress.stepped,
                                  sampler, instrument=r.instrument, velocity=r.velocity)]
            elif len(requests) > 1:
                audio = gen.generate_batch([r.seed for r in requests], steps, progress.stepped, sampler,
                                           instruments=[r.instrument for r in requests],
                                           velocities=[r.velocity for r in requests])
            else:
                audio = [gen.generate(requests[0].seed, steps, progress.stepped, sampler,
                                      instrument=requests[0].instrument, velocity=requests[0].velocity)]
        except ValueError as exc:  # an instrument the model does not make, a source of the wrong shape
            raise GeneratorError(str(exc)) from None
        except RuntimeError as exc:
            _raise_if_out_of_memory(exc, gen.device, len(requests))
            raise
        out = []
        for r, clip in zip(requests, audio, strict=True):
            facts: dict[str, Any] = {"steps": steps, "sampler": sampler,
                                     "output_lowpass_hz": cutoff_for(gen.info.output_lowpass_hz, r.instrument)}
            if self.default_velocity is not None:  # what it was made at: how hard it sounds played
                facts["velocity"] = round(self.default_velocity if r.velocity is None else float(r.velocity), 4)
            if source is not None:
                facts["variation"] = {"source": params.get("source_name", ""), "strength": strength}
                facts["steps"] = max(1, round(steps * strength)) if strength > 0 else 0  # the steps run
            out.append(Rendered(clip, facts))
        return out

    def memory(self) -> dict[str, Any]:
        from models.devices import memory

        return memory(self.generator.device)

    def close(self) -> None:
        from models.devices import release_cached

        release_cached(self.generator.device)


def _device_name(device: Any) -> str:
    from models.devices import describe

    return describe(device)


def _raise_if_out_of_memory(exc: BaseException, device: Any, batch: int) -> None:
    """A CUDA out-of-memory becomes a clear error for this request; the cache is freed so the
    worker keeps serving smaller ones (the engine does not restart it)."""
    from models.devices import is_out_of_memory, release_cached

    if is_out_of_memory(exc):
        release_cached(device)
        raise GeneratorError(f"out of memory on {device} rendering {batch} clip(s): {str(exc).splitlines()[0]}; "
                             "lower engine.refill_batch, or give this model its own GPU") from None


class DiffusionFamily(Family):
    """UNetV0 one-shots on torch (model folders, tiny-audio-diffusion .ckpt files, weights files)."""

    name = "diffusion"
    runtime = "torch"

    def check_params(self, params: Mapping[str, Any], info: Mapping[str, Any] | None) -> dict[str, Any]:
        out = dict(params)
        steps = out.get("steps", 0)
        if not isinstance(steps, int) or isinstance(steps, bool) or not 0 <= steps <= MAX_STEPS:
            raise GeneratorError(f"steps must be 0-{MAX_STEPS} (0 = the model's own), got {steps!r}")
        sampler = out.get("sampler", "")
        if sampler and sampler not in SAMPLERS:
            raise GeneratorError(f"unknown sampler {sampler!r} (known: {', '.join(SAMPLERS)})")
        if "strength" in out:
            strength = out["strength"]
            if not isinstance(strength, (int, float)) or not 0.0 <= float(strength) <= 1.0:
                raise GeneratorError(f"strength must be 0-1, got {strength!r}")
            out["strength"] = float(strength)
        unknown = sorted(set(out) - {"steps", "sampler", "source", "source_name", "strength"})
        if unknown:
            raise GeneratorError(f"the diffusion family takes no parameter {unknown[0]!r}")
        return out

    def load(self, spec: LoadSpec) -> Generator:
        from models.diffusion import load_generator
        from models.runtime_env import configure_torch_threads

        configure_torch_threads(spec.threads)
        opts = spec.options
        gen = load_generator(spec.path, name=spec.name, sdpa=bool(opts.get("sdpa", True)),
                             precision=str(opts.get("precision", "auto")), device=spec.device)
        if opts.get("steps"):  # [models.NAME] steps: the model's default from now on
            gen.info.default_steps = int(opts["steps"])
        compiled = compile_network(gen, opts.get("compile", "off"), opts.get("warm_batches", (1,)), spec.milestone)
        return DiffusionRenderer(gen, self.name, self.runtime, compiled)


class OnnxDiffusionFamily(DiffusionFamily):
    """The same model with its denoiser exported to ONNX (once, checked against torch) and run by
    onnxruntime, on the CPU provider or, on a GPU, the CUDA provider where it is installed."""

    name = "diffusion-onnx"
    runtime = "onnx"

    def load(self, spec: LoadSpec) -> Generator:
        from pathlib import Path

        from export.onnx import default_onnx_path, export_denoiser, is_fresh
        from models.onnx_runtime import load_onnx_generator
        from models.runtime_env import configure_torch_threads

        configure_torch_threads(spec.threads)
        onnx_path = str(spec.options.get("onnx_path") or "")
        onnx_file = Path(onnx_path).expanduser() if onnx_path else default_onnx_path(Path(spec.path))
        if not is_fresh(onnx_file, Path(spec.path)):
            log.info("exporting %s to ONNX at %s (missing or stale)", spec.path, onnx_file)
            export_denoiser(spec.path, onnx_file, name=spec.name)
            spec.milestone()
        gen = load_onnx_generator(onnx_file, name=spec.name, threads=spec.threads, device=spec.device,
                                  gpu_memory_limit_mb=float(spec.options.get("gpu_memory_limit_mb") or 0))
        if spec.options.get("steps"):
            gen.info.default_steps = int(spec.options["steps"])
        return DiffusionRenderer(gen, self.name, self.runtime)


COMPILE_MODES = ("off", "compile", "graphs")


def compile_network(gen: Any, mode: str, warm_batches: Any, milestone: Any = None) -> str:
    """``compile = "compile"``: torch.compile the network for fixed shapes; ``"graphs"``: the same
    with CUDA graphs (mode "reduce-overhead"; only on a GPU). Every batch size in
    ``warm_batches`` (the daemon passes 1 .. engine.refill_batch: a refill deals any size up to
    it) is compiled here, so no trigger waits for a compile; torch recompiles at most 8 shapes
    before it falls back to eager, so a refill batch above 8 leaves the larger sizes eager.
    ``milestone()`` after each shape (minutes each on a CPU: the load is moving, not hung).
    Returns the mode that is in effect."""
    import torch

    if mode == "off":
        return "off"
    if mode not in COMPILE_MODES:
        raise GeneratorError(f"compile must be one of {', '.join(COMPILE_MODES)}, got {mode!r}")
    if mode == "graphs" and gen.device.type != "cuda":
        raise GeneratorError("compile = 'graphs' needs a CUDA device (CUDA graphs); use 'compile' on a CPU")
    gen.net = torch.compile(gen.net, mode="reduce-overhead" if mode == "graphs" else "default", dynamic=False)
    first = (gen.classes or [None])[0]
    for batch in sorted({int(b) for b in warm_batches}):
        for _ in range(3 if mode == "graphs" else 1):  # CUDA graphs record on the third call
            gen.generate_batch(list(range(batch)), 1, instruments=[first] * batch)
        if milestone is not None:
            milestone()
    return mode
