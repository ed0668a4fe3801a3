"""Waveform-diffusion one-shot generator (audio-diffusion-pytorch UNetV0 + v-diffusion).

Why this module exists: the engine needs "give me a clip for this seed" and nothing else,
while the models it must serve come in several layouts (tiny-audio-diffusion Lightning
checkpoints, the project's own model folders, an untrained placeholder). This module hides
those differences behind :class:`DiffusionGenerator`, which always samples with the same
v-DDIM schedule as the library's ``VSampler`` but one step at a time, so a job can report
progress and be cancelled between steps.
"""

from __future__ import annotations

import inspect
import json
import logging
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from models.adp import import_adp
from models.bf16_guard import guard_bf16_convolutions
from models.devices import autocast_dtype, resolve, resolve_precision
from models.drum_data import DEFAULT_VELOCITY
from models.generator import Cancelled
from models.output_filter import OutputFilterError, apply_lowpass, cutoff_for, parse_lowpass

log = logging.getLogger(__name__)

#: Keys of a UNetV0 config that describe the network; everything else in a
#: tiny-audio-diffusion ``model:`` block (``_target_``, ``net_t``...) is Hydra plumbing.
_NON_NET_KEYS = {"_target_", "net_t", "diffusion_t", "sampler_t", "dim"}
EMA_PREFIX = "model_ema.ema_model.net."
ONLINE_PREFIX = "model.net."
GENBRIDGE_FORMAT = "genbridge-diffusion"
CLASS_EMBEDDING_KEY = "genbridge.class_embedding"
#: (knots, features): the velocity embedding of a velocity-conditioned model (see ConditionedUNet).
VELOCITY_EMBEDDING_KEY = "genbridge.velocity_embedding"


class ModelLoadError(RuntimeError):
    """A model file or folder cannot be turned into a working generator."""


@dataclass(frozen=True)
class UNetArch:
    """Everything needed to rebuild the network and interpret its output."""

    sample_rate: int
    length: int
    in_channels: int
    channels: tuple[int, ...]
    factors: tuple[int, ...]
    items: tuple[int, ...]
    attentions: tuple[int, ...]
    attention_heads: int = 8
    attention_features: int = 64
    extra: Mapping[str, Any] = field(default_factory=dict)

    def unet_kwargs(self) -> dict[str, Any]:
        return {
            "in_channels": self.in_channels,
            "channels": list(self.channels),
            "factors": list(self.factors),
            "items": list(self.items),
            "attentions": list(self.attentions),
            "attention_heads": self.attention_heads,
            "attention_features": self.attention_features,
            **dict(self.extra),
        }

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["extra"] = dict(self.extra)
        for key in ("channels", "factors", "items", "attentions"):
            data[key] = list(data[key])
        return data

    @classmethod
    def from_mapping(cls, data: Mapping[str, Any], *, sample_rate: int, length: int) -> "UNetArch":
        net = {k: v for k, v in data.items() if k not in _NON_NET_KEYS}
        try:
            arch = cls(
                sample_rate=int(sample_rate),
                length=int(length),
                in_channels=int(net.pop("in_channels")),
                channels=tuple(int(c) for c in net.pop("channels")),
                factors=tuple(int(c) for c in net.pop("factors")),
                items=tuple(int(c) for c in net.pop("items")),
                attentions=tuple(int(c) for c in net.pop("attentions")),
                attention_heads=int(net.pop("attention_heads", 8)),
                attention_features=int(net.pop("attention_features", 64)),
                extra=net,
            )
        except KeyError as exc:
            raise ModelLoadError(f"model config lacks U-Net key {exc.args[0]!r}") from exc
        lengths = {len(arch.channels), len(arch.factors), len(arch.items), len(arch.attentions)}
        if len(lengths) != 1:
            raise ModelLoadError("channels, factors, items and attentions must have equal lengths")
        if arch.length % math.prod(arch.factors) != 0:
            raise ModelLoadError(
                f"length {arch.length} is not a multiple of the U-Net's total downsampling "
                f"{math.prod(arch.factors)}"
            )
        return arch


# --------------------------------------------------------------------------- attention swap


class SDPAAttention(nn.Module):
    """Drop-in for a_unet's ``AttentionBase`` that calls ``F.scaled_dot_product_attention``.

    Why: the einsum + softmax in a_unet is half of a U-Net step on CPU; SDPA computes the
    same thing 1.5x faster. It keeps the original ``blocks`` list (holding ``to_out``), so the
    state-dict keys and weights are unchanged and checkpoints load either way.
    """

    def __init__(self, to_out: nn.Linear, num_heads: int) -> None:
        super().__init__()
        self.blocks = nn.ModuleList([to_out])
        self.num_heads = num_heads

    def forward(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: Any = None) -> torch.Tensor:
        b, n, inner = q.shape
        h = self.num_heads
        q, k, v = (t.reshape(b, t.shape[1], h, inner // h).transpose(1, 2) for t in (q, k, v))
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        out = out.transpose(1, 2).reshape(b, n, inner)
        return self.blocks[0](out)


def _closure_value(fn: Callable[..., Any], name: str) -> Any:
    return inspect.getclosurevars(fn).nonlocals.get(name)


def swap_attention_to_sdpa(net: nn.Module, default_heads: int) -> int:
    """Replace every a_unet softmax attention in ``net`` by :class:`SDPAAttention`.

    Returns how many were swapped. The head count is read from the original closure (a_unet
    keeps it there), falling back to the architecture's ``attention_heads``.
    """
    from a_unet.blocks import Attention

    swapped = 0
    for module in net.modules():
        if not isinstance(module, Attention) or isinstance(module.attention, SDPAAttention):
            continue
        base = module.attention
        forward_fn = _closure_value(type(base).forward, "forward_fn")
        # Only a_unet's softmax AttentionBase; LinearAttentionBase computes something else.
        if forward_fn is None or not forward_fn.__qualname__.startswith("AttentionBase."):
            continue
        heads = _closure_value(forward_fn, "num_heads") or default_heads
        module.attention = SDPAAttention(base.blocks[0], int(heads))
        swapped += 1
    return swapped


# --------------------------------------------------------------------------- building


def build_network(arch: UNetArch, *, init_seed: int | None = None) -> nn.Module:
    """Build the U-Net the way tiny-audio-diffusion does (DiffusionModel(...).net)."""
    adp = import_adp()
    if init_seed is not None:
        torch.manual_seed(init_seed)
    try:
        model = adp.DiffusionModel(
            net_t=adp.UNetV0,
            diffusion_t=adp.VDiffusion,
            sampler_t=adp.VSampler,
            **arch.unet_kwargs(),
        )
    except (TypeError, ValueError, AssertionError, RuntimeError) as exc:
        raise ModelLoadError(f"cannot build a UNetV0 from this config: {exc}") from exc
    return model.net


#: UNetV0's default modulation width: the size of a class embedding added to the time features.
MODULATION_FEATURES = 1024


class ConditionedUNet(nn.Module):
    """A U-Net plus an optional class embedding added to its time modulation, and optionally a
    velocity embedding added beside it.

    Why this shape: a_unet's time-conditioning plugin already sums an optional ``features``
    vector into the time features, so one embedding row per instrument conditions every
    level of the network for 6 K parameters per instrument. Keeping the embedding inside the
    module means the ONNX export takes an integer label and the sampling loop stays the same.

    The rows start at N(0, 1) (nn.Embedding's own init), not small: the time features they are
    added to have norms of 30-80 (measured on the first default model), and rows started at
    std 0.02 (norm 0.6) grew only to norm ~1 in 4500 steps - the classes stayed nearly
    indistinguishable to the network and kicks came out as toms.

    Velocity (0-1, how hard the hit is played) goes in the same way: ``velocity_knots`` rows
    at velocities evenly spaced over 0-1, linearly interpolated between the two nearest (a
    piecewise-linear curve through feature space, so soft, medium and hard can differ in more
    than one direction). A soft hit is then a different sound, not only a quieter one.
    """

    def __init__(self, net: nn.Module, num_classes: int = 0, features: int = MODULATION_FEATURES,
                 velocity_knots: int = 0) -> None:
        super().__init__()
        self.net = net
        self.class_embedding = nn.Embedding(num_classes, features) if num_classes else None
        self.velocity_embedding = (nn.Parameter(torch.zeros(velocity_knots, features))
                                   if num_classes and velocity_knots else None)

    def velocity_features(self, velocity: torch.Tensor) -> torch.Tensor:
        """(batch,) velocities 0-1 -> (batch, features): hat-function weights over the knots."""
        knots = self.velocity_embedding.shape[0]
        pos = velocity.float().clamp(0.0, 1.0)[:, None] * (knots - 1)
        weights = (1.0 - (pos - torch.arange(knots, device=pos.device, dtype=pos.dtype)).abs()).clamp(min=0.0)
        return weights.to(self.velocity_embedding.dtype) @ self.velocity_embedding

    def forward(self, x: torch.Tensor, sigma: torch.Tensor, labels: torch.Tensor | None = None,
                velocity: torch.Tensor | None = None) -> torch.Tensor:
        if self.class_embedding is None:
            return self.net(x, sigma)
        features = self.class_embedding(labels)
        if self.velocity_embedding is not None:
            if velocity is None:
                velocity = torch.full((x.shape[0],), DEFAULT_VELOCITY, device=x.device)
            features = features + self.velocity_features(velocity)
        return self.net(x, sigma, features=features)


def compress(x: torch.Tensor, power: float) -> torch.Tensor:
    """Audio -> the network's companded space: sign(x) * |x| ** power (identity at 1)."""
    return x if power == 1.0 else torch.sign(x) * x.abs().pow(power)


def expand(x: torch.Tensor, power: float) -> torch.Tensor:
    """The inverse of :func:`compress`."""
    return x if power == 1.0 else torch.sign(x) * x.abs().pow(1.0 / power)


def amplitude_power(config: Mapping[str, Any], source: str) -> float:
    """A model folder's ``amplitude_power`` (absent: 1), checked: 0 < power <= 1."""
    try:
        power = float(config.get("amplitude_power", 1.0))
    except (TypeError, ValueError):
        raise ModelLoadError(f"{source}: amplitude_power must be a number, got "
                             f"{config.get('amplitude_power')!r}") from None
    if not 0.0 < power <= 1.0:
        raise ModelLoadError(f"{source}: amplitude_power must be within (0, 1], got {power}")
    return power


def alpha_beta(sigma: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    angle = sigma * math.pi / 2
    return torch.cos(angle), torch.sin(angle)


SAMPLERS = ("ddim", "dpmpp2m", "dpmpp2m_logsnr")


def _lambda(t: torch.Tensor) -> float:
    """log(alpha / sigma) at diffusion time t: -inf at t = 1 (pure noise), +inf at t = 0."""
    tf = float(t)
    if tf >= 1.0:
        return -math.inf
    if tf <= 0.0:
        return math.inf
    angle = tf * math.pi / 2
    return math.log(math.cos(angle) / math.sin(angle))


#: DPM-Solver++ steps are spaced evenly in log-SNR between -LAMBDA_EDGE and +LAMBDA_EDGE (then
#: a last step to clean audio). Measured on the first default model (3 seeds x kick/snare/hat,
#: distance to a 200-step reference; DDIM-25: 0.394): at 8 steps an edge of 2.5 gives 0.515,
#: 3: 0.406, 4: 0.380, 5: 0.534, 6: 0.735, and the even-in-time grid 0.845 (it needs 20 steps).
LAMBDA_EDGE = 4.0


def time_grid(steps: int, start: float, sampler: str) -> torch.Tensor:
    """The ``steps + 1`` diffusion times a sampler visits, from ``start`` down to 0.

    "ddim" and "dpmpp2m" step evenly in time (audio-diffusion-pytorch's VSampler grid);
    "dpmpp2m_logsnr" steps evenly in log-SNR, clipped to +-:data:`LAMBDA_EDGE`. Which is better
    depends on the network: on the first trained default model log-SNR steps came as close to a
    200-step reference in 8 steps as even-time steps in 20 (the shipped one: within 5% of DDIM-25
    at 8, better at 10), but on the public tiny-audio-diffusion architecture with random weights
    they do worse (8 steps: 0.90 against 0.06), so a model folder names its own.
    """
    if sampler != "dpmpp2m_logsnr" or steps < 2:
        return torch.linspace(float(start), 0.0, steps + 1)
    # Beyond 25 steps the edge widens slowly (x ln(steps) / ln(25)), so that the grid still
    # converges to the ODE's solution as steps grow; the last step's error shrinks with the edge.
    edge = LAMBDA_EDGE * max(1.0, math.log(steps) / math.log(25))
    low = max(_lambda(torch.tensor(float(start))), -edge)
    if low >= edge:  # a variation so light it starts beyond the edge
        return torch.linspace(float(start), 0.0, steps + 1)
    lambdas = torch.linspace(low, edge, steps, dtype=torch.float64)
    ts = torch.atan(torch.exp(-lambdas)) * 2 / math.pi
    ts[0] = float(start)
    return torch.cat([ts, torch.zeros(1, dtype=torch.float64)]).float()


@dataclass
class ModelInfo:
    """What the engine and the sidecar need to know about a loaded model."""

    name: str
    source: str
    kind: str
    weights: str
    trained: bool
    parameters: int
    sample_rate: int
    channels: int
    length: int
    default_steps: int
    sdpa_layers: int
    precision: str
    default_sampler: str = "ddim"
    classes: list[str] | None = None
    #: The model works on audio x data_scale (training scaled its data so its std was ~0.5:
    #: drum one-shots are mostly quiet tails, std ~0.05, which noise drowns at almost every
    #: diffusion time). Outputs are divided by it, sources of variations multiplied.
    data_scale: float = 1.0
    #: The model works on companded audio, sign(x) * |x| ** amplitude_power (1: plain audio). A
    #: power of 0.5 makes a tail at -60 dBFS a -30 dB signal to the network, so the network's
    #: own error, about as large everywhere, comes out squared - 30 dB lower - where the hit has
    #: decayed, instead of as a hiss that finishing has to cut (docs/ARCHITECTURE.md).
    amplitude_power: float = 1.0
    #: The model's own high-cut per instrument ("*": every clip), from its folder's
    #: ``output_lowpass_hz``; see models/output_filter.py for why a model needs one.
    output_lowpass_hz: dict[str, float] = field(default_factory=dict)
    #: Where it runs ("cpu", "cuda:0").
    device: str = "cpu"
    #: The model is conditioned on velocity (a soft hit is a soft sound); otherwise velocity
    #: is only the mixer's gain.
    velocity: bool = False

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


class DiffusionGenerator:
    """A loaded U-Net that turns seeds into one-shots.

    Sampling is audio-diffusion-pytorch's v-DDIM step (``VSampler``) or DPM-Solver++(2M), on the
    times :func:`time_grid` gives; the same seed, step count and sampler give the same clip.
    """

    def __init__(self, net: nn.Module, arch: UNetArch, info: ModelInfo, device: torch.device | str = "cpu") -> None:
        #: Called as net(x, sigma) or, for a class-conditioned model, net(x, sigma, labels).
        self.net = net.eval()
        self.arch = arch
        self.info = info
        #: Where the weights, the noise and the labels live; autocast follows it.
        self.device = torch.device(device)
        #: Autocast's dtype for the precision (None: fp32), looked up once, not at every step.
        self.autocast_dtype = autocast_dtype(info.precision)

    @property
    def classes(self) -> list[str] | None:
        return self.info.classes

    def labels_for(self, instruments: list[str | None]) -> torch.Tensor | None:
        """Class labels for a batch of instruments (None for an unconditional model)."""
        if not self.classes:
            return None
        rows = []
        for inst in instruments:
            if inst not in self.classes:
                raise ValueError(f"model {self.info.name!r} generates {', '.join(self.classes)}; "
                                 f"{inst!r} is none of them")
            rows.append(self.classes.index(inst))
        return torch.tensor(rows, dtype=torch.int64, device=self.device)

    def velocities_for(self, velocities: list[float | None] | None, batch: int) -> torch.Tensor | None:
        """Velocities (0-1) for a batch, None for a model not conditioned on velocity. A None
        velocity is :data:`DEFAULT_VELOCITY` (a firm hit, what unlayered samples are)."""
        if not self.info.velocity:
            return None
        values = list(velocities) if velocities else [None] * batch
        for v in values:
            if v is not None and not 0.0 <= float(v) <= 1.0:
                raise ValueError(f"velocity must be 0-1, got {v}")
        return torch.tensor([DEFAULT_VELOCITY if v is None else float(v) for v in values],
                            dtype=torch.float32, device=self.device)

    def to_audio(self, x: torch.Tensor, instruments: list[str | None]) -> list[np.ndarray]:
        """Sampled clips (batch, channels, frames) as the model's audio: the training scale
        divided out, each clip through its instrument's output low-pass (if the folder names one)."""
        x = expand(x.float() / self.info.data_scale, self.info.amplitude_power).cpu()
        return [self.output_filter(clip.numpy().astype(np.float32, copy=False), inst)
                for clip, inst in zip(x, instruments, strict=True)]

    def output_filter(self, audio: np.ndarray, instrument: str | None) -> np.ndarray:
        """``audio`` (channels, frames) through the high-cut the model folder names for
        ``instrument``; unchanged where it names none."""
        return apply_lowpass(audio, cutoff_for(self.info.output_lowpass_hz, instrument), self.sample_rate)

    @property
    def sample_rate(self) -> int:
        return self.arch.sample_rate

    def noise(self, seed: int) -> torch.Tensor:
        """A seed's starting noise, drawn on the generator's device from a generator of its own:
        the same seed gives the same noise whatever else is in the batch (on a CPU the same
        numbers as every earlier release; a GPU's generator draws other numbers for a seed)."""
        gen = torch.Generator(device=self.device).manual_seed(int(seed))
        return torch.randn((1, self.arch.in_channels, self.arch.length), generator=gen, device=self.device)

    def _v(self, x: torch.Tensor, t: torch.Tensor, labels: torch.Tensor | None = None,
           velocity: torch.Tensor | None = None) -> torch.Tensor:
        dtype = self.autocast_dtype
        sigma = t.to(self.device, torch.float32).repeat(x.shape[0])
        with torch.autocast(self.device.type, dtype=dtype or torch.bfloat16, enabled=dtype is not None):
            if labels is None:
                return self.net(x, sigma).float()
            if velocity is None:
                return self.net(x, sigma, labels).float()
            return self.net(x, sigma, labels, velocity).float()

    @torch.inference_mode()
    def sample(
        self,
        noise: torch.Tensor,
        steps: int,
        on_step: Callable[[int, int], bool] | None = None,
        sampler: str = "ddim",
        labels: torch.Tensor | None = None,
        start: float = 1.0,
        velocity: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Denoise ``noise`` (batch, channels, length) in ``steps`` steps from ``start`` to 0
        (on :func:`time_grid`).

        ``start`` < 1: ``noise`` is a partly noised clip at diffusion time ``start`` (a variation).

        ``sampler``: "ddim", the library's VSampler step; or "dpmpp2m" / "dpmpp2m_logsnr"
        (see :func:`time_grid`), DPM-Solver++(2M) in
        data-prediction form for the v-objective (second order from the previous step's
        prediction, first order on the first and last step), which gets closer to the ODE's
        solution in the same number of network calls.
        ``on_step(done, total)`` is called after each step; returning False cancels.
        """
        if steps < 1:
            raise ValueError("steps must be at least 1")
        if sampler not in SAMPLERS:
            raise ValueError(f"unknown sampler {sampler!r} (known: {', '.join(SAMPLERS)})")
        x = noise
        ts = time_grid(steps, start, sampler)
        previous: tuple[torch.Tensor, float] | None = None  # (x0 prediction, h) of the last step
        for i in range(steps):
            v_pred = self._v(x, ts[i], labels, velocity)
            alpha, beta = alpha_beta(ts[i])
            alpha_next, beta_next = alpha_beta(ts[i + 1])
            x0 = alpha * x - beta * v_pred
            if sampler == "ddim":
                noise_pred = beta * x + alpha * v_pred
                x = alpha_next * x0 + beta_next * noise_pred
            else:
                h = _lambda(ts[i + 1]) - _lambda(ts[i])
                d = x0
                if previous is not None and i < steps - 1 and math.isfinite(h) and math.isfinite(previous[1]):
                    r = previous[1] / h
                    d = (1 + 1 / (2 * r)) * x0 - (1 / (2 * r)) * previous[0]
                decay = 0.0 if not math.isfinite(h) else math.exp(-h)
                ratio = float(beta_next / beta) if float(beta) > 0 else 0.0
                x = ratio * x + float(alpha_next) * (1 - decay) * d
                previous = (x0, h)
            if on_step is not None and on_step(i + 1, steps) is False:
                raise Cancelled()
        return x

    def generate_batch(
        self,
        seeds: list[int],
        steps: int | None = None,
        on_step: Callable[[int, int], bool] | None = None,
        sampler: str | None = None,
        instruments: list[str | None] | None = None,
        velocities: list[float | None] | None = None,
    ) -> list[np.ndarray]:
        """Several clips in one pass of the network per step (each from its own seed's noise):
        on CPU a batch of small convolutions costs much less than the same calls one by one."""
        steps = int(steps or self.info.default_steps)
        instruments = instruments or [None] * len(seeds)
        labels = self.labels_for(instruments)
        velocity = self.velocities_for(velocities, len(seeds))
        noise = torch.cat([self.noise(s) for s in seeds])
        audio = self.sample(noise, steps, on_step, sampler or self.info.default_sampler, labels, velocity=velocity)
        return self.to_audio(audio, instruments)

    def vary(
        self,
        source: np.ndarray,
        seed: int,
        strength: float,
        steps: int | None = None,
        on_step: Callable[[int, int], bool] | None = None,
        sampler: str | None = None,
        instrument: str | None = None,
        velocity: float | None = None,
    ) -> np.ndarray:
        """A variation of ``source`` (channels, frames at the model's rate and length): re-noise it
        to diffusion time ``strength`` (cos*source + sin*noise) and denoise from there, with the
        share of the step count that the schedule has left. Strength 0 returns the source; 1 is a
        new clip that ignores it. The same seed, source and strength give the same result."""
        if not 0.0 <= strength <= 1.0:
            raise ValueError(f"strength must be 0-1, got {strength}")
        x0 = torch.from_numpy(np.ascontiguousarray(source, dtype=np.float32))[None].to(self.device)
        x0 = compress(x0, self.info.amplitude_power) * self.info.data_scale
        if tuple(x0.shape[1:]) != (self.arch.in_channels, self.arch.length):
            raise ValueError(f"source must be {self.arch.in_channels} ch x {self.arch.length} frames, "
                             f"got {tuple(x0.shape[1:])}")
        if strength == 0.0:
            return expand(x0[0] / self.info.data_scale, self.info.amplitude_power).cpu().numpy().astype(np.float32)
        steps = max(1, round(int(steps or self.info.default_steps) * strength))
        alpha, beta = alpha_beta(torch.tensor(float(strength)))
        x = alpha * x0 + beta * self.noise(seed)
        audio = self.sample(x, steps, on_step, sampler or self.info.default_sampler,
                            self.labels_for([instrument]), start=strength,
                            velocity=self.velocities_for([velocity], 1))
        return self.to_audio(audio, [instrument])[0]

    def generate(
        self,
        seed: int,
        steps: int | None = None,
        on_step: Callable[[int, int], bool] | None = None,
        sampler: str | None = None,
        instrument: str | None = None,
        velocity: float | None = None,
    ) -> np.ndarray:
        """One clip as float32 (channels, frames), unfinished (no normalisation)."""
        steps = int(steps or self.info.default_steps)
        labels = self.labels_for([instrument])
        audio = self.sample(self.noise(seed), steps, on_step, sampler or self.info.default_sampler, labels,
                            velocity=self.velocities_for([velocity], 1))
        return self.to_audio(audio, [instrument])[0]


# --------------------------------------------------------------------------- loading


def _count_parameters(net: nn.Module) -> int:
    return sum(p.numel() for p in net.parameters())


def _find_unet_block(tree: Any) -> Mapping[str, Any] | None:
    """Find the mapping that holds the U-Net keys anywhere in a Hydra config tree."""
    if isinstance(tree, Mapping):
        if {"channels", "factors", "items"} <= set(tree) and isinstance(tree.get("channels"), list):
            return tree
        for value in tree.values():
            found = _find_unet_block(value)
            if found is not None:
                return found
    return None


def read_tiny_config(path: Path) -> tuple[UNetArch, dict[str, Any]]:
    """Read a tiny-audio-diffusion ``config.yaml`` (the Hydra experiment config)."""
    import yaml

    try:
        tree = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as exc:
        raise ModelLoadError(f"cannot read {path}: {exc}") from exc
    block = _find_unet_block(tree)
    if block is None:
        raise ModelLoadError(f"{path} has no U-Net block (channels/factors/items)")
    sample_rate = _find_key(tree, ("sampling_rate", "sample_rate"))
    length = _find_key(tree, ("length",))
    if not isinstance(sample_rate, int) or not isinstance(length, int):
        raise ModelLoadError(f"{path} must give integer sampling_rate and length")
    steps = _find_key(tree, ("sampling_steps",))
    extra: dict[str, Any] = {}
    if isinstance(steps, list) and steps and isinstance(steps[0], int):
        extra["default_steps"] = steps[0]
    try:
        return UNetArch.from_mapping(block, sample_rate=sample_rate, length=length), extra
    except ModelLoadError as exc:
        raise ModelLoadError(f"{path}: {exc}") from None


def _find_key(tree: Any, names: tuple[str, ...]) -> Any:
    if isinstance(tree, Mapping):
        for name in names:
            if name in tree and not isinstance(tree[name], Mapping):
                return tree[name]
        for value in tree.values():
            found = _find_key(value, names)
            if found is not None:
                return found
    return None


def _torch_load(path: Path) -> Any:
    """Load a checkpoint on CPU, memory-mapped where the file allows it, so optimizer state
    (hundreds of MB in a real Lightning file) is never read into RAM.

    weights_only first; a file that pickles Python objects (Lightning hyper-parameters,
    callbacks) is loaded with weights_only=False and a warning. Files older than torch's zip
    format cannot be memory-mapped and are read whole.
    """
    if not path.is_file():
        raise ModelLoadError(f"checkpoint not found: {path}")
    last: Exception | None = None
    for weights_only in (True, False):
        for mmap in (True, False):
            try:
                obj = torch.load(path, map_location="cpu", mmap=mmap, weights_only=weights_only)
            except Exception as exc:
                last = exc
                continue
            if not weights_only:
                log.warning("%s holds pickled Python objects; loaded with weights_only=False. "
                            "Only load checkpoints you trust.", path)
            return obj
    first = str(last).strip().splitlines()[0] if str(last).strip() else type(last).__name__
    raise ModelLoadError(f"cannot read checkpoint {path}: {first[:300]} (truncated, or not a torch checkpoint?)")


def extract_lightning_net(state: Mapping[str, Any], prefer: str = "ema") -> tuple[dict[str, torch.Tensor], str]:
    """Pick the U-Net weights out of a tiny-audio-diffusion Lightning ``state_dict``.

    The EMA copy (``model_ema.ema_model.net.*``) is what the authors sample from; the online
    weights (``model.net.*``) are used only if a checkpoint has no EMA copy.
    """
    order = [EMA_PREFIX, ONLINE_PREFIX] if prefer == "ema" else [ONLINE_PREFIX, EMA_PREFIX]
    for prefix in order:
        net = {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
        if net:
            which = "ema" if prefix == EMA_PREFIX else "online"
            if which != prefer:
                log.warning("checkpoint has no %s weights; using the %s weights", prefer, which)
            return net, which
    raise ModelLoadError(
        f"checkpoint state_dict has neither {EMA_PREFIX}* nor {ONLINE_PREFIX}* keys"
    )


def _load_strict(net: nn.Module, weights: Mapping[str, torch.Tensor], source: str,
                 config: Path | None = None) -> None:
    """Load ``weights`` into ``net`` only when every key and shape is the one the config built;
    a mismatch names the weights file and (``config``) the config that disagrees with it."""
    expected = net.state_dict()
    missing = sorted(set(expected) - set(weights))
    unexpected = sorted(set(weights) - set(expected))
    what = f"the U-Net of {config}" if config is not None else "the configured U-Net"
    if missing or unexpected:
        raise ModelLoadError(
            f"{source}: weights do not match {what} "
            f"({len(missing)} missing, e.g. {missing[:2]}; {len(unexpected)} unexpected, e.g. {unexpected[:2]})"
        )
    for key, tensor in weights.items():
        if tuple(tensor.shape) != tuple(expected[key].shape):
            raise ModelLoadError(
                f"{source}: {key} has shape {tuple(tensor.shape)}, {config or 'the config'} expects "
                f"{tuple(expected[key].shape)}"
            )
    net.load_state_dict({k: v.to(expected[k].dtype) for k, v in weights.items()}, strict=True)


def _one_clip_forward(net: nn.Module, arch: UNetArch) -> Callable[[], object]:
    """One evaluation of ``net`` on one clip of noise (no conditioning: the features are an
    optional sum, so every convolution sees its sampling shape without them), drawn from a
    private generator so loading a model leaves torch's random stream alone."""
    gen = torch.Generator().manual_seed(0)
    x = torch.randn((1, arch.in_channels, arch.length), generator=gen)
    return lambda: net(x, torch.full((1,), 0.5))


def _finish(net: nn.Module, arch: UNetArch, *, name: str, source: str, kind: str, weights: str,
            trained: bool, default_steps: int, sdpa: bool, precision: str,
            config: Mapping[str, Any] | None = None,
            extras: Mapping[str, torch.Tensor] | None = None, device: str = "cpu") -> DiffusionGenerator:
    from models.devices import DeviceError

    try:
        where = resolve(device)
        precision = resolve_precision(precision, where)
    except DeviceError as exc:
        raise ModelLoadError(f"{source}: {exc}") from None
    swapped = swap_attention_to_sdpa(net, arch.attention_heads) if sdpa else 0
    if precision == "bf16" and where.type == "cpu":  # the broken kernels are oneDNN's (CPU) ones
        guard_bf16_convolutions(net, arch.length, _one_clip_forward(net, arch))
    config = config or {}
    classes = list(config["classes"]) if config.get("classes") else None
    embedding = (extras or {}).get(CLASS_EMBEDDING_KEY)
    velocity_embedding = (extras or {}).get(VELOCITY_EMBEDDING_KEY) if classes else None
    if classes and (embedding is None or embedding.shape[0] != len(classes)):
        raise ModelLoadError(f"{source}: config names {len(classes)} classes but the weights hold "
                             f"{'no' if embedding is None else embedding.shape[0]} class embeddings")
    sampler = str(config.get("sampler", "ddim"))
    if sampler not in SAMPLERS:
        raise ModelLoadError(f"{source}: unknown sampler {sampler!r} (known: {', '.join(SAMPLERS)})")
    try:
        lowpass = parse_lowpass(config.get("output_lowpass_hz"), sample_rate=arch.sample_rate, classes=classes)
    except OutputFilterError as exc:
        raise ModelLoadError(f"{source}: {exc}") from None
    info = ModelInfo(
        name=name, source=source, kind=kind, weights=weights, trained=trained,
        parameters=_count_parameters(net) + (embedding.numel() if classes else 0), sample_rate=arch.sample_rate,
        channels=arch.in_channels, length=arch.length, default_steps=default_steps,
        sdpa_layers=swapped, precision=precision, default_sampler=sampler, classes=classes,
        data_scale=float(config.get("data_scale", 1.0)), output_lowpass_hz=lowpass,
        amplitude_power=amplitude_power(config, source),
        velocity=velocity_embedding is not None,
    )
    if velocity_embedding is not None:
        info.parameters += velocity_embedding.numel()
    if classes:
        knots = int(velocity_embedding.shape[0]) if velocity_embedding is not None else 0
        conditioned = ConditionedUNet(net, len(classes), int(embedding.shape[1]), velocity_knots=knots)
        conditioned.class_embedding.weight.data.copy_(embedding.float())
        if knots:
            conditioned.velocity_embedding.data.copy_(velocity_embedding.float())
        net = conditioned
    info.device = str(where)
    return DiffusionGenerator(net.to(where), arch, info, where)


def split_extras(weights: Mapping[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """(U-Net state dict, genbridge extras such as the class embedding)."""
    net = {k: v for k, v in weights.items() if not k.startswith("genbridge.")}
    extras = {k: v for k, v in weights.items() if k.startswith("genbridge.")}
    return net, extras


def load_lightning_checkpoint(path: Path, *, name: str, config: Path | None = None,
                              sdpa: bool = True, precision: str = "fp32",
                              prefer: str = "ema", device: str = "cpu") -> DiffusionGenerator:
    """Load a tiny-audio-diffusion ``.ckpt`` with the ``config.yaml`` that sits beside it."""
    candidates = [config] if config else [path.with_suffix(".yaml"), path.parent / "config.yaml"]
    cfg = next((c for c in candidates if c is not None and c.is_file()), None)
    if cfg is None:
        raise ModelLoadError(f"no config.yaml beside {path} (looked for {', '.join(map(str, candidates))})")
    arch, extra = read_tiny_config(cfg)
    checkpoint = _torch_load(path)
    state = checkpoint.get("state_dict", checkpoint) if isinstance(checkpoint, Mapping) else None
    if not isinstance(state, Mapping):
        raise ModelLoadError(f"{path} is not a Lightning checkpoint (no state_dict)")
    try:
        weights, which = extract_lightning_net(state, prefer)
    except ModelLoadError as exc:
        raise ModelLoadError(f"{path}: {exc}") from None
    net = _network_for(arch, cfg)
    _load_strict(net, weights, str(path), cfg)
    del checkpoint, state, weights  # drop optimizer state and the other weight copies
    return _finish(net, arch, name=name, source=str(path), kind="tiny-audio-diffusion",
                   weights=which, trained=True, default_steps=int(extra.get("default_steps", 50)),
                   sdpa=sdpa, precision=precision, device=device)


def read_genbridge_config(folder: Path) -> dict[str, Any]:
    path = folder / "config.json"
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise ModelLoadError(f"cannot read {path}: {exc}") from exc
    if data.get("format") != GENBRIDGE_FORMAT:
        raise ModelLoadError(f"{path} is not a genbridge model config (format={data.get('format')!r})")
    return data


def _genbridge_arch(data: Mapping[str, Any], config: Path) -> UNetArch:
    """The U-Net a genbridge ``config.json`` describes; anything wrong in it is an error naming it."""
    try:
        return UNetArch.from_mapping(data["unet"], sample_rate=data["sample_rate"], length=data["length"])
    except KeyError as exc:
        raise ModelLoadError(f"{config} lacks the key {exc.args[0]!r}") from None
    except (TypeError, ValueError, AttributeError) as exc:
        raise ModelLoadError(f"{config}: malformed U-Net description: {exc}") from None
    except ModelLoadError as exc:
        raise ModelLoadError(f"{config}: {exc}") from None


def _network_for(arch: UNetArch, config: Path, init_seed: int | None = None) -> nn.Module:
    """:func:`build_network`, its refusal naming the config that described the network."""
    try:
        return build_network(arch, init_seed=init_seed)
    except ModelLoadError as exc:
        raise ModelLoadError(f"{config}: {exc}") from None


def load_model_folder(folder: Path, *, name: str, sdpa: bool = True, precision: str = "fp32",
                      device: str = "cpu") -> DiffusionGenerator:
    """Load a genbridge model folder: ``config.json`` + ``model.safetensors`` (plain net state dict).

    A folder whose config names no weights file is an untrained placeholder: the network is
    initialised from ``init_seed`` so every machine gets the same (noise-like) model, and the
    log says so loudly.
    """
    data = read_genbridge_config(folder)
    config = folder / "config.json"
    arch = _genbridge_arch(data, config)
    weights_name = data.get("weights")
    default_steps = int(data.get("default_steps", 25))
    if not weights_name:
        seed = int(data.get("init_seed", 0))
        net = _network_for(arch, config, init_seed=seed)
        log.warning(
            "model %r (%s) has no trained weights: using a randomly initialised network "
            "(init_seed=%d). Its output is noise-like; see README, 'The default model'.",
            name, folder, seed,
        )
        return _finish(net, arch, name=name, source=str(folder), kind="genbridge", weights="random",
                       trained=False, default_steps=default_steps, sdpa=sdpa, precision=precision, device=device,
                       config={k: v for k, v in data.items() if k != "classes"})
    weights_path = folder / weights_name
    weights, extras = split_extras(load_state_dict_file(weights_path))
    net = _network_for(arch, config)
    _load_strict(net, weights, str(weights_path), config)
    return _finish(net, arch, name=name, source=str(folder), kind="genbridge", weights=weights_name,
                   trained=True, default_steps=default_steps, sdpa=sdpa, precision=precision, device=device,
                   config=data, extras=extras)


def load_state_dict_file(path: Path) -> dict[str, torch.Tensor]:
    """Read a plain U-Net state dict from ``.safetensors`` or a torch ``.pt``/``.pth`` file."""
    if not path.is_file():
        raise ModelLoadError(f"weights file not found: {path}")
    if path.suffix == ".safetensors":
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            return load_file(str(path), device="cpu")
        except (SafetensorError, OSError, ValueError, RuntimeError) as exc:  # truncated, or not safetensors at all
            raise ModelLoadError(f"cannot read the weights file {path}: {exc} (truncated, or not a "
                                 "safetensors file?)") from None
    state = _torch_load(path)
    if isinstance(state, Mapping) and "state_dict" in state:
        state = state["state_dict"]
    if not isinstance(state, Mapping):
        raise ModelLoadError(f"{path} does not hold a state dict")
    return dict(state)


def save_model_folder(folder: Path, net: nn.Module, arch: UNetArch, *, default_steps: int = 25,
                      fp16: bool = False, card: Mapping[str, Any] | None = None,
                      extra_config: Mapping[str, Any] | None = None,
                      extra_tensors: Mapping[str, torch.Tensor] | None = None) -> Path:
    """Write a genbridge model folder that :func:`load_model_folder` reads back as is.

    ``extra_tensors`` (keys starting ``genbridge.``, e.g. the class embedding) are stored in
    the same safetensors file beside the plain U-Net state dict.
    """
    from safetensors.torch import save_file

    folder.mkdir(parents=True, exist_ok=True)
    tensors = dict(net.state_dict()) | dict(extra_tensors or {})
    state = {k: (v.half() if fp16 and v.is_floating_point() else v).detach().contiguous().clone()
             for k, v in tensors.items()}
    save_file(state, str(folder / "model.safetensors"))
    config = {
        "format": GENBRIDGE_FORMAT,
        "version": 1,
        "sample_rate": arch.sample_rate,
        "length": arch.length,
        "default_steps": default_steps,
        "weights": "model.safetensors",
        "unet": {k: v for k, v in arch.to_json().items() if k not in ("sample_rate", "length", "extra")}
        | dict(arch.extra),
        **dict(extra_config or {}),
        **({"card": dict(card)} if card else {}),
    }
    (folder / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    return folder


def load_generator(path: str | Path, *, name: str, sdpa: bool = True, precision: str = "fp32",
                      device: str = "cpu") -> DiffusionGenerator:
    """Load whatever ``path`` names: a model folder, a ``.ckpt``, or a plain weights file."""
    p = Path(path).expanduser()
    if p.is_dir():
        if (p / "config.json").is_file():
            return load_model_folder(p, name=name, sdpa=sdpa, precision=precision, device=device)
        ckpts = sorted(p.glob("*.ckpt"))
        if len(ckpts) == 1:
            return load_lightning_checkpoint(ckpts[0], name=name, sdpa=sdpa, precision=precision, device=device)
        raise ModelLoadError(
            f"{p} holds neither config.json nor exactly one .ckpt (found {len(ckpts)})"
        )
    if not p.exists():
        raise ModelLoadError(f"model not found: {p}")
    if p.suffix == ".ckpt":
        return load_lightning_checkpoint(p, name=name, sdpa=sdpa, precision=precision, device=device)
    if p.suffix in (".safetensors", ".pt", ".pth", ".bin"):
        data = read_genbridge_config(p.parent)
        config = p.parent / "config.json"
        arch = _genbridge_arch(data, config)
        net = _network_for(arch, config)
        weights, extras = split_extras(load_state_dict_file(p))
        _load_strict(net, weights, str(p), config)
        return _finish(net, arch, name=name, source=str(p), kind="genbridge", weights=p.name,
                       trained=True, default_steps=int(data.get("default_steps", 25)),
                       sdpa=sdpa, precision=precision, config=data, extras=extras, device=device)
    raise ModelLoadError(f"unknown model file type: {p} (expected a folder, .ckpt, .safetensors or .pt)")


def tiny_arch_from(unet: Mapping[str, Any], sample_rate: int, length: int) -> UNetArch:
    """Shorthand for tests and benchmarks: an architecture from a plain UNetV0 kwargs dict."""
    return UNetArch.from_mapping(unet, sample_rate=sample_rate, length=length)
