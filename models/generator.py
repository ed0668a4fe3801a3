"""The generator seam: one interface every model family implements, and the family registry.

Why this module exists: the daemon serves several kinds of model - waveform diffusion on torch,
the same network on onnxruntime, MusicGen continuation, and whatever comes next (a text-to-music
model, a remote worker). The worker process body, the engine and the sidecar writer must not
grow a branch per kind. So each family says here, in one shape, what it makes (rate, channels,
length, instruments), what it can do (seeded one-shots, batches, variations, continuation,
text), where it runs (its device), and renders a list of requests in one call with parameters
only it understands and checks, reporting steps, progress and chunks, and stopping between
steps when asked. See docs/ARCHITECTURE.md, "The generator seam".

A new family is one module with a :class:`Family` subclass plus one line in :data:`FAMILIES`;
a family outside the tree is named by its import path (``"package.module:ClassName"``), which
is how the tests plug in a fake one without touching the engine or the worker body.

This module imports no torch: the daemon's I/O process uses :meth:`Family.check_params` to
refuse bad requests before they are queued, and must never load torch.
"""

from __future__ import annotations

import importlib
from abc import ABC, abstractmethod
from dataclasses import asdict, dataclass, field
from typing import Any, Callable, Mapping

import numpy as np


class GeneratorError(ValueError):
    """A request (or a load) a family cannot serve; the message is meant for the musician."""


class Cancelled(Exception):
    """Raised from inside rendering when the progress callback asks to stop."""


@dataclass(frozen=True)
class Capabilities:
    """What a generator can be asked for: the engine refuses variations to a generator without
    them and batches refills only for one with ``batches``; the rest describe it in status."""

    #: The same seed gives the same clip (one-shots for pools rely on it for nothing, but
    #: ``drum/generate ... seed`` promises it).
    seeded: bool = True
    #: Several requests in one call share the network's passes (pool refills).
    batches: bool = False
    #: Re-render an existing clip at a strength (``drum/vary``).
    variations: bool = False
    #: Continue an audio prompt (``continue``).
    continuation: bool = False
    #: A text description conditions the output.
    text: bool = False
    #: Outputs are one-shots that go through drum finishing (normalise, trim the tail).
    one_shots: bool = True
    #: How hard the hit is played (a request's ``velocity``, 0-1) changes the sound, not only
    #: its level: the engine then keeps an instrument's fresh clips per velocity band. Without
    #: it a request's velocity is ignored (the mixer's gain is all a velocity does).
    velocity: bool = False


@dataclass
class GeneratorInfo:
    """What a loaded generator makes, can do and runs on; the ``ready`` message carries it."""

    family: str
    name: str
    sample_rate: int
    channels: int
    #: Frames of every clip; 0 when the length is asked for per request (continuations).
    length: int
    capabilities: Capabilities
    #: Where it runs: "cpu", "cuda:0"...; and that device's name ("NVIDIA H100 80GB HBM3").
    device: str = "cpu"
    device_name: str = ""
    precision: str = "fp32"
    #: Instruments a class-conditioned model makes (None: whatever it is asked for).
    classes: list[str] | None = None
    #: Seconds one request may ask for (0: fixed length).
    max_seconds: float = 0.0
    parameters: int = 0
    #: Family-specific facts (source, weights, sampler, steps...), copied into status and sidecars.
    details: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["capabilities"] = asdict(self.capabilities)
        return data


@dataclass
class RenderRequest:
    """One clip to make: its task id (how replies find their way back), seed, instrument and the
    velocity (0-1) it is played at - None: the generator's own default; a generator without
    ``Capabilities.velocity`` ignores it."""

    task: int
    seed: int
    instrument: str | None = None
    velocity: float | None = None


@dataclass
class Rendered:
    """One made clip: float32 (channels, frames) at the generator's rate, plus facts for its sidecar."""

    audio: np.ndarray
    facts: dict[str, Any] = field(default_factory=dict)


@dataclass
class Progress:
    """How a render reports back; every callback may be left out.

    ``step(done, total)`` after each network step, returning False to cancel (the family then
    raises :class:`Cancelled` before its next step); ``fraction(f)`` for long jobs whose steps
    are not all alike (one fraction for every request of the call: they advance together);
    ``chunk(index, audio, take)`` hands out audio before the whole render is done: ``take`` is
    the index into the call's requests (``index`` counts per take, from 0), and a family that
    renders one request may leave it out (``chunk(index, audio)``: take 0).
    """

    step: Callable[[int, int], bool] | None = None
    fraction: Callable[[float], None] | None = None
    chunk: Callable[..., None] | None = None

    def stepped(self, done: int, total: int) -> bool:
        """Report a step (``total`` 0: one of a count not known ahead, such as a token step);
        False means the job was cancelled and the family must stop."""
        return True if self.step is None else self.step(done, total) is not False


class Generator(ABC):
    """A loaded model, warm on its device."""

    info: GeneratorInfo

    @abstractmethod
    def render(self, requests: list[RenderRequest], params: Mapping[str, Any],
               progress: Progress | None = None) -> list[Rendered]:
        """Make one clip per request with the family's ``params`` (already checked).

        Raises :class:`GeneratorError` for what the musician asked wrong, :class:`Cancelled` when
        ``progress.step`` said stop; anything else is a failure of the model.
        """

    def memory(self) -> dict[str, Any]:
        """Memory the generator holds on its device (a GPU reports allocated and reserved MB)."""
        return {}

    def close(self) -> None:
        """Give back what the generator holds (cached GPU memory); the worker calls it before exiting."""


@dataclass
class LoadSpec:
    """Everything a family needs to load one model: where, on what, with which options."""

    name: str
    path: str
    #: "auto", "cpu", "cuda" or "cuda:N"; the family resolves "auto".
    device: str = "auto"
    threads: int = 1
    #: Family-specific options from the config (precision, sdpa, runtime, quantize...).
    options: dict[str, Any] = field(default_factory=dict)
    #: Called at each milestone of a long load (a shape compiled, an export written): whoever
    #: watches the worker for hangs then sees a load that moves, not one that is stuck.
    milestone: Callable[[], None] = field(default=lambda: None, compare=False, repr=False)


class Family(ABC):
    """A kind of model: how to load it and which request parameters it takes."""

    #: The name in ``[models.NAME] family`` and in every sidecar.
    name: str = ""

    @abstractmethod
    def load(self, spec: LoadSpec) -> Generator:
        """Load the model onto its device; raise GeneratorError (or ModelLoadError) naming the file."""

    def check_params(self, params: Mapping[str, Any], info: Mapping[str, Any] | None) -> dict[str, Any]:
        """Validate and normalise request parameters, torch-free (the I/O process calls it).

        ``info`` is the loaded generator's :meth:`GeneratorInfo.to_json` when the worker is
        ready, else None. Raise :class:`GeneratorError` with a message for the musician.
        """
        return dict(params)

    def signature(self, path: str) -> str:
        """A fingerprint of the model's files (pool clips of another model are not adopted); a
        source that is no file (a model id in a local cache) is its own fingerprint."""
        from pathlib import Path

        from models.signature import source_signature

        return source_signature(path) if Path(path).expanduser().exists() else f"id:{path}"


#: name -> "module:Class". Importing a family is lazy: the daemon's I/O process only checks
#: parameters and never pays for torch, onnxruntime or transformers.
FAMILIES: dict[str, str] = {
    "diffusion": "models.diffusion_family:DiffusionFamily",
    "diffusion-onnx": "models.diffusion_family:OnnxDiffusionFamily",
    "musicgen": "models.musicgen_family:MusicgenFamily",
}

_loaded: dict[str, Family] = {}


def is_family_name(name: str) -> bool:
    """A registered family, or an import path to one (``package.module:Class``)."""
    return name in FAMILIES or (":" in name and all(part for part in name.split(":", 1)))


def get_family(name: str) -> Family:
    """The family registered as ``name``, or imported from ``module:Class``."""
    if name in _loaded:
        return _loaded[name]
    target = FAMILIES.get(name, name if ":" in name else "")
    if not target:
        raise GeneratorError(f"unknown model family {name!r} (known: {', '.join(FAMILIES)}, "
                             "or an import path module:Class)")
    module_name, _, attr = target.partition(":")
    try:
        cls = getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError) as exc:
        raise GeneratorError(f"cannot import model family {name!r} from {target}: {exc}") from exc
    family = cls()
    if not isinstance(family, Family):
        raise GeneratorError(f"{target} is not a models.generator.Family")
    family.name = family.name or name
    _loaded[name] = family
    return family
