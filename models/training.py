"""Train or fine-tune a drum one-shot diffusion model: what ``genbridge train`` runs.

Why this module exists: the daemon ships a default model trained here, and musicians want to
train on their own sample folders on the same modest hardware. So training is a resumable
loop that runs on a CPU (or a CUDA GPU when there is one; the shipped default was trained on
one, where big batches cost little): v-objective diffusion exactly as audio-diffusion-pytorch's ``VDiffusion`` trains
it (sigma ~ U(0,1), x_t = cos*x + sin*noise, target v = cos*noise - sin*x), AdamW, EMA weights
for sampling, a checkpoint written atomically every few minutes that a later run resumes from,
and at the end a model folder the daemon loads as is (see :mod:`models.diffusion`).

One model for several instruments: the class label is embedded and added to the U-Net's time
modulation (a_unet's ``features`` input), so kicks, snares and hats share what a drum hit is and
one CPU budget trains them all; a checkpoint without classes (tiny-audio-diffusion's) is
fine-tuned unconditionally on one instrument.
"""

from __future__ import annotations

import copy
import json
import logging
import math
import os
import platform
import signal
import sys
import threading
import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from models.bf16_guard import guard_training_convolutions
from models.devices import NATIVE_BF16_FLAGS, cpu_flags, cpu_name, native_bf16
from models.diffusion import (
    CLASS_EMBEDDING_KEY,
    VELOCITY_EMBEDDING_KEY,
    ConditionedUNet,
    ModelInfo,
    UNetArch,
    alpha_beta,
    build_network,
    compress,
    load_generator,
    save_model_folder,
    swap_attention_to_sdpa,
)
from models.drum_data import DEFAULT_HELD_OUT, DrumSet, Sample, find_samples, load_drum_set, split_held_out
from models.output_filter import EVERY_INSTRUMENT, describe_lowpass, parse_lowpass
from models.terminal import unsized_terminal_bar

log = logging.getLogger(__name__)

#: The shipped default's shape: mono, 22.05 kHz, 16384 frames (0.74 s), 12.8 M parameters.
#: A first level of 8 channels at the full rate, then the earlier default's six levels below it.
#: Why: the earlier default's first level ran at half rate and came back by nearest-neighbour
#: upsampling and one convolution, so everything above 5.5 kHz was a mirror image of what lay
#: below it - the hiss its kicks carried up to Nyquist (docs/ARCHITECTURE.md, "Why the drums
#: hissed, and what fixed it"). 8 channels at the full rate cost 16% of the refill speed at
#: batch 4 (126 ms per network pass against 107, 2 threads), where the same six levels at full
#: rate cost twice.
DEFAULT_ARCH = {
    "in_channels": 1,
    "channels": [8, 16, 32, 64, 128, 128, 256],
    "factors": [1, 2, 4, 4, 2, 2, 2],
    "items": [1, 1, 2, 2, 2, 2, 2],
    "attentions": [0, 0, 0, 0, 0, 1, 1],
    "attention_heads": 8,
    "attention_features": 64,
}
#: Velocity knots of a new class-conditioned model (see ConditionedUNet): soft, two middles, hard.
VELOCITY_KNOTS = 4
#: The velocity embedding starts at zero (a transferred model starts out as its source) and
#: learns this many times faster than the rest: one shared curve, far fewer gradient samples
#: per parameter than the network's weights.
VELOCITY_LR_SCALE = 10.0
#: A new instrument's class row starts from the nearest instrument a transferred model had.
TRANSFER_FALLBACK = {"open_hat": "hat", "crash": "hat", "ride": "hat", "rim": "perc"}
DEFAULT_SAMPLE_RATE = 22050
DEFAULT_LENGTH = 16384


@dataclass
class TrainSettings:
    """Everything a run depends on; stored in the checkpoint and the model card."""

    data: list[str]
    out: str
    held_out: list[str] = field(default_factory=lambda: list(DEFAULT_HELD_OUT))
    classes: list[str] | None = None
    instrument: str | None = None
    init: str | None = None
    #: A model whose weights start a *new* network (:data:`DEFAULT_ARCH` or ``arch``) where they
    #: fit: the same levels, shifted down by the levels added above them; instruments by name
    #: (new ones from :data:`TRANSFER_FALLBACK`). What the shipped default grew from.
    transfer: str | None = None
    #: A genbridge config.json-style mapping ({"sample_rate", "length", "unet": {...}}) for a
    #: model trained from scratch; None is the shipped default's shape (DEFAULT_ARCH).
    arch: dict[str, Any] | None = None
    steps: int = 2000
    batch: int = 8
    lr: float = 2e-4
    warmup: int = 200
    ema_decay: float = 0.999
    seed: int = 0
    #: Training audio is multiplied by this (None: chosen from the data so its std is 0.5) and
    #: the model folder records it, so generation divides it out again.
    data_scale: float | None = None
    #: Train on companded audio, sign(x) * |x| ** amplitude_power (see ModelInfo.amplitude_power):
    #: 0.5 puts the network's noise floor 30 dB lower under a decayed hit; 1 is plain audio.
    amplitude_power: float = 1.0
    #: Weight of the error's first difference in the loss, a high-frequency emphasis: the error
    #: at frequency f counts 1 + 4 * emphasis * sin^2(pi f / rate) times (for 4 at 22.05 kHz: x14
    #: at 8 kHz, x3.3 at 2.7 kHz, x1.08 at 500 Hz). Plain MSE lets a kick keep hiss 25 dB over a
    #: real kick's above 8 kHz: that error is a thousandth of the kick's energy, so it hardly
    #: moves the gradient.
    emphasis: float = 0.0
    threads: int = 0
    #: "auto" (CUDA when torch sees a GPU, else CPU), "cpu" or "cuda[:N]": where the network
    #: runs. Batch indices, augmentation and sigma come from the CPU generator, so a run's data
    #: order does not depend on the device; on a GPU the noise is drawn there, seeded from it.
    device: str = "auto"
    #: How batches draw instruments: 0 = as often as the data holds them, 1 = every instrument
    #: equally often; in between, clip weights go as count ** -balance. The kits hold 47 kicks
    #: against 132 percussion clips: without it the rarest instruments are learned last.
    balance: float = 0.0
    #: bf16 autocast; train() falls back to fp32 on a CPU without native bf16 (devices.native_bf16).
    bf16: bool = True
    #: Filled in by :func:`train`: the machine the run trains on, for the card.
    machine: str = ""
    checkpoint_minutes: float = 5.0
    #: Write a model folder every this many steps to out/snapshots/step-NNNNNN (0: none): a
    #: long run can overshoot its best point (the hats of one run got worse after 2100 steps),
    #: and a loss curve does not show that, only listening or bench/drum_quality.py does.
    snapshot_every: int = 0
    fp16_weights: bool = True
    default_steps: int = 25
    sampler: str = "dpmpp2m_logsnr"
    #: The model folder's output high-cut per instrument ("*": every clip), e.g. {"kick": 8000};
    #: see models/output_filter.py. None: what the --init model had (none from scratch). It
    #: filters generated clips only, so a resumed run may change it.
    output_lowpass: dict[str, float] | None = None
    name: str = "drums"
    command: str = ""

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def v_loss(model: ConditionedUNet, x0: torch.Tensor, labels: torch.Tensor | None,
           generator: torch.Generator, bf16: bool, noise_generator: torch.Generator | None = None,
           velocity: torch.Tensor | None = None, emphasis: float = 0.0) -> torch.Tensor:
    """audio-diffusion-pytorch's VDiffusion loss for one batch, on the device ``x0`` is on;
    ``emphasis`` adds the mean square of the error's first difference (TrainSettings.emphasis).

    sigma comes from the CPU ``generator``, and on a CPU the noise too. On a GPU, drawing the
    noise on the CPU and copying it would cost more than the step, so it is drawn there by
    ``noise_generator``, re-seeded every step from ``generator``: a run still follows from its
    seed and resumes exactly."""
    device = x0.device
    b = x0.shape[0]
    sigma = torch.rand(b, generator=generator).to(device)
    if device.type == "cpu" or noise_generator is None:
        noise = torch.randn(x0.shape, generator=generator).to(device)
    else:
        noise_generator.manual_seed(int(torch.randint(0, 2**62, (1,), generator=generator)))
        noise = torch.randn(x0.shape, generator=noise_generator, device=device)
    alpha, beta = alpha_beta(sigma[:, None, None])
    x_t = alpha * x0 + beta * noise
    target = alpha * noise - beta * x0
    with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
        if velocity is not None and labels is not None:
            pred = model(x_t, sigma, labels.to(device), velocity.to(device))
        else:
            pred = model(x_t, sigma, labels.to(device) if labels is not None else None)
    return emphasised_mse(pred.float(), target, emphasis)


def emphasised_mse(pred: torch.Tensor, target: torch.Tensor, emphasis: float = 0.0) -> torch.Tensor:
    """Mean square error plus ``emphasis`` times the mean square of its first difference along
    time: error at frequency f counts 1 + 4 * emphasis * sin^2(pi f / rate) times as much as
    plain MSE counts it (TrainSettings.emphasis says why)."""
    if not emphasis:
        return F.mse_loss(pred, target)
    err = pred - target
    return err.square().mean() + emphasis * (err[..., 1:] - err[..., :-1]).square().mean()


def resolve_device(name: str) -> torch.device:
    """``auto`` is CUDA when torch sees a GPU, else the CPU; a named device must exist."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"--device {name}: this torch ({torch.__version__}) sees no CUDA GPU")
    if device.type not in ("cpu", "cuda"):
        raise ValueError(f"--device {name}: cpu, cuda or auto")
    return device


def clip_weights(labels: np.ndarray, balance: float) -> torch.Tensor:
    """Sampling weight per clip so that instrument i is drawn in proportion to count_i ** (1 - balance)."""
    if not 0.0 <= balance <= 1.0:
        raise ValueError(f"balance must be within 0..1, not {balance}")
    counts = np.bincount(labels).astype(np.float64)
    return torch.from_numpy(counts[labels] ** -balance)


def augment(batch: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Light augmentation a drum still sounds like itself under: gain (-4..+1 dB), pitch
    (+-1 semitone, by resampling, so the hit also gets shorter or longer) and polarity.

    The resampling is F.interpolate's linear one (align_corners=False: output frame j reads the
    input at (j + 0.5) * n / new_len - 0.5, clamped), written out for the whole batch at once so
    it runs as a few kernels on whatever device ``batch`` is on; the random draws stay on the CPU
    ``generator``."""
    b, c, n = batch.shape
    device = batch.device
    semis = torch.rand(b, generator=generator) * 2 - 1
    gains = 10 ** ((torch.rand(b, generator=generator) * 5 - 4) / 20)
    signs = torch.where(torch.rand(b, generator=generator) < 0.5, -1.0, 1.0)
    ratios = 2 ** (semis.double() / 12)  # > 1: higher and shorter
    new_len = torch.clamp(torch.round(n / ratios), min=8)
    frames = torch.arange(n, dtype=torch.float64)
    src = ((frames[None] + 0.5) * (n / new_len)[:, None] - 0.5).clamp(min=0.0)
    i0 = src.floor().long().clamp(max=n - 1)
    i1 = (i0 + 1).clamp(max=n - 1)
    w = (src - i0).float().to(device)[:, None]
    i0, i1 = i0.to(device)[:, None].expand(b, c, n), i1.to(device)[:, None].expand(b, c, n)
    out = batch.gather(2, i0) * (1 - w) + batch.gather(2, i1) * w
    inside = (frames[None] < new_len[:, None]).float().to(device)[:, None]  # a shortened hit ends in silence
    return out * inside * (gains * signs).to(device)[:, None, None]


def _ema_model(model: nn.Module, decay: float) -> torch.optim.swa_utils.AveragedModel:
    """EMA of the weights with a warm-up: the decay grows as (1 + n) / (10 + n) up to ``decay``,
    so a short run's EMA is not still mostly the random initial weights (0.999^3000 = 5%)."""

    @torch.no_grad()
    def ema_update(ema_params: list[torch.Tensor], params: list[torch.Tensor], num_averaged: torch.Tensor) -> None:
        n = float(num_averaged)
        d = min(decay, (1.0 + n) / (10.0 + n))
        torch._foreach_lerp_(ema_params, params, 1.0 - d)

    return torch.optim.swa_utils.AveragedModel(model, multi_avg_fn=ema_update, use_buffers=True)


def _save_atomic(obj: Any, path: Path) -> None:
    tmp = path.with_name(path.name + ".tmp")
    torch.save(obj, tmp)
    with open(tmp, "rb") as f:
        os.fsync(f.fileno())
    os.replace(tmp, path)


class TrainingStopped(KeyboardInterrupt):
    """Ctrl-C or SIGTERM stopped a run between two steps, after writing its checkpoint, so no
    step is lost (a run killed outright loses those since its last periodic checkpoint): the same
    command resumes exactly at the step it stopped."""

    def __init__(self, step: int, steps: int, checkpoint: Path, signum: int) -> None:
        super().__init__(f"stopped by {signal.Signals(signum).name} at step {step}/{steps}; "
                         f"{checkpoint} resumes the run")
        self.step = step
        self.checkpoint = checkpoint
        self.signal = signum


class _StopRequest:
    """Set by SIGINT or SIGTERM while a run trains. A signal stops the run at the next step
    boundary, where the model, optimiser and random state agree, so its checkpoint resumes
    exactly; the first signal puts the old handlers back, so a second one stops at once. A
    signal the process ignores (a job started with nohup or in the background) stays ignored."""

    def __init__(self) -> None:
        self.signal: int | None = None

    @contextmanager
    def installed(self) -> Iterator[_StopRequest]:
        if threading.current_thread() is not threading.main_thread():
            yield self  # Python delivers signals to the main thread only: a run off it is not stopped this way
            return
        old = {sig: handler for sig in (signal.SIGINT, signal.SIGTERM)
               if (handler := signal.getsignal(sig)) is not None and handler is not signal.SIG_IGN}

        def request(signum: int, frame: Any) -> None:
            self.signal = signum
            for sig, handler in old.items():
                signal.signal(sig, handler)

        for sig in old:
            signal.signal(sig, request)
        try:
            yield self
        finally:
            for sig, handler in old.items():
                signal.signal(sig, handler)


@dataclass
class TrainResult:
    model_dir: Path
    steps: int
    final_loss: float
    wall_s: float
    resumed_from: int


def _build(settings: TrainSettings, classes_found: Sequence[str]
           ) -> tuple[ConditionedUNet, UNetArch, list[str] | None, str, ModelInfo | None]:
    """The model to train: fresh from :data:`DEFAULT_ARCH`, or the network of ``init``; last, the
    info of ``init`` (a fine-tuned model keeps its data scale and output high-cut), None for a
    fresh model."""
    if settings.init:
        gen = load_generator(settings.init, name="init", sdpa=True)
        arch = gen.arch
        classes = gen.classes
        model = gen.net if isinstance(gen.net, ConditionedUNet) else ConditionedUNet(gen.net, 0)
        source = f"fine-tuned from {settings.init} ({gen.info.kind}, {gen.info.weights} weights)"
        if not classes and not settings.instrument:
            raise ValueError(f"{settings.init} has no instrument classes: an unconditional model "
                             "learns one instrument, pass --instrument (e.g. --instrument kick)")
        return model, arch, list(classes) if classes else None, source, gen.info
    spec = settings.arch or {"sample_rate": DEFAULT_SAMPLE_RATE, "length": DEFAULT_LENGTH, "unet": DEFAULT_ARCH}
    try:
        arch = UNetArch.from_mapping(spec["unet"], sample_rate=spec["sample_rate"], length=spec["length"])
    except KeyError as exc:
        raise ValueError(f"an architecture needs sample_rate, length and unet (missing {exc})") from exc
    net = build_network(arch, init_seed=settings.seed)
    swap_attention_to_sdpa(net, arch.attention_heads)
    if settings.instrument:
        return ConditionedUNet(net, 0), arch, None, "trained from scratch", None
    classes = list(settings.classes or classes_found)
    model = ConditionedUNet(net, len(classes), velocity_knots=VELOCITY_KNOTS)
    if settings.transfer:
        source = load_generator(settings.transfer, name="transfer", sdpa=True)
        report = transfer_weights(model, classes, source.net, source.classes or [])
        log.info("transferred %d of %d tensors from %s (%s)", report["copied"], report["tensors"],
                 settings.transfer, report["classes"])
        # Its info too: the new network works at the source's data scale, which its inner levels learned.
        return model, arch, classes, f"grown from {settings.transfer} ({report['summary']})", source.info
    return model, arch, classes, "trained from scratch", None


_LEVEL = ".blocks.3.block"  # how a_unet nests each next level of the U-Net inside the last
_TOP = "blocks.2.net.block"


def transfer_weights(target: ConditionedUNet, classes: Sequence[str], source: nn.Module,
                     source_classes: Sequence[str]) -> dict[str, Any]:
    """Copy ``source``'s weights into ``target`` where they fit; returns what was copied.

    ``target`` may have more levels on top (a full-rate first level above the same levels): a
    source tensor at level i goes to level i + shift, and is copied when the shapes agree (the
    time embedding, every inner level's convolutions and attention; not the convolutions where
    the new level meets the old). Class rows go by instrument name, a new instrument starting
    from its :data:`TRANSFER_FALLBACK` row plus noise (so two new ones differ)."""
    src_net = source.net if isinstance(source, ConditionedUNet) else source
    src = src_net.state_dict()
    dst = target.net.state_dict()
    depth = lambda keys: max((k.count(_LEVEL) for k in keys if k.startswith(_TOP)), default=0)  # noqa: E731
    shift = depth(dst) - depth(src)
    copied = 0
    for key, value in src.items():
        name = key.replace(_TOP, _TOP + _LEVEL * shift, 1) if key.startswith(_TOP) and shift > 0 else key
        if name in dst and dst[name].shape == value.shape:
            dst[name] = value.clone()
            copied += 1
    target.net.load_state_dict(dst)
    rows: dict[str, str] = {}
    src_emb = source.class_embedding.weight.detach() if isinstance(source, ConditionedUNet) and \
        source.class_embedding is not None else None
    if src_emb is not None and target.class_embedding is not None:
        gen = torch.Generator().manual_seed(0)
        with torch.no_grad():
            for i, inst in enumerate(classes):
                origin = inst if inst in source_classes else TRANSFER_FALLBACK.get(inst)
                if origin in source_classes:
                    row = src_emb[list(source_classes).index(origin)].clone()
                    if origin != inst:
                        row += 0.3 * torch.randn(row.shape, generator=gen)
                    target.class_embedding.weight[i] = row
                    rows[inst] = origin
    summary = (f"{copied} of {len(src)} tensors into {len(dst)}, {shift} level(s) added on top; classes "
               + ", ".join(f"{k}<-{v}" if k != v else k for k, v in rows.items()))
    return {"copied": copied, "tensors": len(dst), "shift": shift, "classes": rows, "summary": summary}


def _output_lowpass(settings: TrainSettings, arch: UNetArch, classes: Sequence[str] | None,
                    init_info: ModelInfo | None) -> dict[str, float]:
    """The high-cut the model folder will name: the settings' (checked against the model now,
    before minutes of training), else the fine-tuned model's. An unconditional model's one
    instrument may be named by its name; the folder stores it as "*" (every clip)."""
    if settings.output_lowpass is None:  # a fine-tuned model keeps its high-cut; a transferred one has its own
        return dict(init_info.output_lowpass_hz) if init_info and settings.init else {}
    wanted = {EVERY_INSTRUMENT if not classes and k == settings.instrument else k: v
              for k, v in settings.output_lowpass.items()}
    return parse_lowpass(wanted, sample_rate=arch.sample_rate, classes=list(classes) if classes else None)


def load_training_data(settings: TrainSettings, samples: Sequence[Sample], arch: UNetArch,
                       classes: Sequence[str] | None) -> tuple[DrumSet, list[str]]:
    train, held = split_held_out(samples, settings.held_out)
    wanted = [settings.instrument] if settings.instrument else classes
    data = load_drum_set(train, sample_rate=arch.sample_rate, channels=arch.in_channels,
                         length=arch.length, classes=wanted)
    held_kits = sorted({s.kit for s in held})
    return data, held_kits


def train(settings: TrainSettings, progress: bool | None = None, snapshot_to: Path | None = None) -> TrainResult:
    """Run (or resume) a training run; returns where the model folder was written.

    ``snapshot_to``: write a model folder from the run's last checkpoint there and return,
    without training or touching the checkpoint (listen to a run that is still going).
    """
    if not 0 <= settings.emphasis <= 100:
        raise ValueError(f"emphasis must be 0-100 (the weight of the error's first difference), "
                         f"not {settings.emphasis}")
    out = Path(settings.out).expanduser()
    out.mkdir(parents=True, exist_ok=True)
    ckpt_path = out / "checkpoint.pt"
    threads = settings.threads or max(1, min(4, os.cpu_count() or 1))
    torch.set_num_threads(threads)
    torch.manual_seed(settings.seed)

    # Which classes does the data hold? (cheap: names only, no audio read yet)
    samples = find_samples(settings.data)
    found = sorted({s.instrument for s in split_held_out(samples, settings.held_out)[0]})
    from models.drum_data import INSTRUMENTS

    found = [c for c in INSTRUMENTS if c in found]
    resume = torch.load(ckpt_path, map_location="cpu", weights_only=False) if ckpt_path.is_file() else None
    if resume is not None:
        saved = resume["settings"]
        for key in ("data", "classes", "instrument", "init", "transfer", "arch", "batch", "seed", "amplitude_power"):
            if saved.get(key) != getattr(settings, key):
                raise ValueError(f"{ckpt_path} was written with {key}={saved.get(key)!r}, this run asks "
                                 f"for {getattr(settings, key)!r}: use another --out or the same settings")
        found = resume["classes"] or found
        if settings.output_lowpass is None:  # not asked again: the run keeps the high-cut it was given
            settings.output_lowpass = saved.get("output_lowpass")
    model, arch, classes, origin, init_info = _build(settings, found)
    settings.output_lowpass = _output_lowpass(settings, arch, classes, init_info)
    if resume is not None and resume["classes"] is not None:
        classes = resume["classes"]
    data, held_kits = load_training_data(settings, samples, arch, classes)
    if classes is not None and list(data.classes) != list(classes):
        classes = list(data.classes)
        model = ConditionedUNet(model.net, len(classes),
                                velocity_knots=VELOCITY_KNOTS if model.velocity_embedding is not None else 0)
    log.info("training data: %d clips %s; held out: %s", len(data.labels), data.counts(),
             ", ".join(held_kits) or "none")

    device = resolve_device(settings.device)
    if settings.bf16 and not native_bf16(device):
        log.warning("this CPU has no native bf16 (%s): training in fp32, which is faster here",
                    "/".join(sorted(NATIVE_BF16_FLAGS)))
        settings.bf16 = False
    weights = clip_weights(data.labels, settings.balance)  # checks the range, even for 0
    weights = weights if settings.balance > 0 else None  # 0: uniform draws, as runs before it drew
    model.to(device)
    settings.machine = describe_machine(settings, device)
    if device.type == "cuda":
        log.info("training on %s (%s)", device, torch.cuda.get_device_name(device))
    ema = _ema_model(model, settings.ema_decay)
    params = [p for p in model.parameters() if p.requires_grad]
    # No weight decay on the class embedding: decay would pull the instruments' rows together.
    embedding = list(model.class_embedding.parameters()) if model.class_embedding is not None else []
    velocity = [model.velocity_embedding] if model.velocity_embedding is not None else []
    others = [p for p in params if all(p is not e for e in embedding + velocity)]
    groups = ([{"params": others}] + ([{"params": embedding, "weight_decay": 0.0}] if embedding else [])
              + ([{"params": velocity, "weight_decay": 0.0, "lr": settings.lr * VELOCITY_LR_SCALE}]
                 if velocity else []))
    opt = torch.optim.AdamW(groups, lr=settings.lr, weight_decay=0.01)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / max(1, settings.warmup)))
    gen = torch.Generator().manual_seed(settings.seed + 1)
    step, elapsed, losses = 0, 0.0, []
    if resume is not None:
        model.load_state_dict(resume["model"])
        ema.load_state_dict(resume["ema"])
        opt.load_state_dict(resume["optimizer"])
        sched.load_state_dict(resume["scheduler"])
        gen.set_state(resume["generator"])
        step, elapsed, losses = resume["step"], resume["elapsed_s"], resume["losses"]
        log.info("resuming %s at step %d (%.0f s trained so far)", ckpt_path, step, elapsed)
    resumed_from = step
    if snapshot_to is not None:
        if resume is None:
            raise ValueError(f"no checkpoint in {out} to take a snapshot of")
        final = float(np.mean(losses[-100:])) if losses else float("nan")
        saved = TrainSettings(**resume["settings"])
        saved.output_lowpass = settings.output_lowpass
        write_model_folder(Path(snapshot_to), _on_cpu(ema.module), arch, classes, saved, data, held_kits,
                           _snapshot_origin(origin, step, saved.steps),
                           step=step, wall_s=elapsed, final_loss=final)
        return TrainResult(Path(snapshot_to), step, final, elapsed, step)

    # After the snapshot return (a snapshot trains nothing); the EMA copy made above only averages
    # weights, so only the network that trains needs the guard.
    if settings.bf16 and device.type == "cpu":  # the wrong bf16 kernels are oneDNN's (CPU) ones
        in_fp32 = guard_training_convolutions(model, example_forward(model, arch, settings.batch, classes))
        if in_fp32:
            settings.machine += (f" ({len(in_fp32)} convolution(s) in fp32, this CPU's bf16 kernel is wrong "
                                 f"for them: {', '.join(in_fp32)})")
    if resume is not None:
        settings.machine = machine_history(resume["settings"].get("machine", ""), settings.machine, step)
        settings.data_scale = resume["settings"].get("data_scale") or settings.data_scale
    if settings.data_scale is None:  # a model being fine-tuned keeps the scale it was trained at
        from_init = init_info.data_scale if init_info else None
        if init_info and settings.init and init_info.amplitude_power != settings.amplitude_power:
            raise ValueError(f"{settings.init} works on amplitude power {init_info.amplitude_power}, "
                             f"this run asks for {settings.amplitude_power}: fine-tuning keeps a model's own")
        from_init = from_init if init_info and init_info.amplitude_power == settings.amplitude_power else None
        std = float(compress(torch.from_numpy(data.audio), settings.amplitude_power).std())
        settings.data_scale = from_init or round(0.5 / max(std, 1e-4), 2)
    log.info("data scale %.2f (training audio std %.4f, amplitude power %g)", settings.data_scale,
             float(data.audio.std()), settings.amplitude_power)
    audio = torch.from_numpy(data.audio).to(device)  # a few thousand clips: ~150 MB
    labels = torch.from_numpy(data.labels)
    velocities = torch.from_numpy(data.velocities) if data.velocities is not None else None
    if model.velocity_embedding is None:
        velocities = None
    noise_gen = torch.Generator(device=device) if device.type != "cpu" else None

    def checkpoint() -> None:
        _save_atomic({
            "step": step, "elapsed_s": elapsed, "losses": losses, "settings": settings.to_json(),
            "classes": classes, "arch": arch.to_json(), "model": model.state_dict(),
            "ema": ema.state_dict(), "optimizer": opt.state_dict(), "scheduler": sched.state_dict(),
            "generator": gen.get_state(),
        }, ckpt_path)

    from tqdm import tqdm

    show = sys.stderr.isatty() if progress is None else progress
    bar = tqdm(total=settings.steps, initial=step, desc="train", unit="step", disable=not show,
               **(unsized_terminal_bar() or {"dynamic_ncols": True}))
    model.train()
    stop = _StopRequest()
    with stop.installed():
        log.info("training steps %d-%d on %s; Ctrl-C or SIGTERM stops at the next step and saves a checkpoint",
                 step + 1, settings.steps, device)
        last_ckpt = time.monotonic()
        last_log = time.monotonic()
        t_start = time.monotonic() - elapsed
        running = float(np.mean(losses[-50:])) if losses else float("nan")
        while step < settings.steps:
            if weights is None:
                idx = torch.randint(len(labels), (settings.batch,), generator=gen)
            else:
                idx = torch.multinomial(weights, settings.batch, replacement=True, generator=gen)
            x0 = compress(augment(audio[idx.to(device)], gen), settings.amplitude_power) * settings.data_scale
            loss = v_loss(model, x0, labels[idx] if classes else None, gen, settings.bf16, noise_gen,
                          velocities[idx] if velocities is not None and classes else None, settings.emphasis)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            opt.step()
            sched.step()
            ema.update_parameters(model)
            step += 1
            value = loss.detach().item()
            losses.append(round(value, 5))
            running = value if math.isnan(running) else 0.98 * running + 0.02 * value
            elapsed = time.monotonic() - t_start
            bar.update(1)
            bar.set_postfix(loss=f"{running:.4f}")
            now = time.monotonic()
            if not show and now - last_log > 60:
                rate = (step - resumed_from) / max(1e-9, elapsed - (resume or {}).get("elapsed_s", 0.0))
                log.info("step %d/%d loss %.4f %.2f steps/s ETA %.0f min", step, settings.steps, running,
                         rate, (settings.steps - step) / max(rate, 1e-9) / 60)
                last_log = now
            if settings.snapshot_every and step % settings.snapshot_every == 0:
                folder = out / "snapshots" / f"step-{step:06d}"
                write_model_folder(folder, _on_cpu(ema.module), arch, classes, settings, data, held_kits,
                                   _snapshot_origin(origin, step, settings.steps),
                                   step=step, wall_s=elapsed, final_loss=float(np.mean(losses[-100:])))
            if stop.signal is not None and step < settings.steps:  # on the last step: finish as usual
                bar.close()
                checkpoint()
                raise TrainingStopped(step, settings.steps, ckpt_path, stop.signal)
            if now - last_ckpt > settings.checkpoint_minutes * 60:
                checkpoint()
                last_ckpt = now
    bar.close()
    checkpoint()
    final_loss = float(np.mean(losses[-100:])) if losses else float("nan")
    model_dir = out / "model"
    write_model_folder(model_dir, _on_cpu(ema.module), arch, classes, settings, data, held_kits, origin,
                       step=step, wall_s=elapsed, final_loss=final_loss)
    log.info("wrote %s (%d steps, %.1f min, final loss %.4f)", model_dir, step, elapsed / 60, final_loss)
    return TrainResult(model_dir, step, final_loss, elapsed, resumed_from)


def _snapshot_origin(origin: str, step: int, steps: int) -> str:
    return f"{origin}; a snapshot at step {step} of a run to {steps} steps"


def _on_cpu(model: ConditionedUNet) -> ConditionedUNet:
    """A CPU copy to write (the model folder is for the daemon, which loads on the CPU)."""
    return copy.deepcopy(model).cpu() if any(p.device.type != "cpu" for p in model.parameters()) else model


def example_forward(model: ConditionedUNet, arch: UNetArch, batch: int,
                     classes: Sequence[str] | None) -> Callable[[], object]:
    """One network evaluation on random input of the shape training feeds the model, drawn from
    a private generator (guard_training_convolutions tries each convolution at its shape)."""
    gen = torch.Generator().manual_seed(0)
    device = next(model.parameters()).device
    x = torch.randn((batch, arch.in_channels, arch.length), generator=gen).to(device)
    sigma = torch.rand(batch, generator=gen).to(device)
    labels = torch.zeros(batch, dtype=torch.long, device=device) if classes else None
    if labels is not None and model.velocity_embedding is not None:
        velocity = torch.full((batch,), 0.5, device=device)
        return lambda: model(x, sigma, labels, velocity)
    return lambda: model(x, sigma, labels)


def describe_machine(settings: TrainSettings, device: torch.device) -> str:
    """Where a run trains, for its card (kept in the checkpoint, so a snapshot taken on another
    machine still names the one that trained)."""
    where = (f"{torch.cuda.get_device_name(device)} GPU" if device.type == "cuda"
             else f"{settings.threads or min(4, os.cpu_count() or 1)} threads")
    cpu = cpu_name() + (" (AMX)" if "amx_bf16" in cpu_flags() else "")
    return (f"{platform.machine()}, {cpu}, {os.cpu_count()} cores, torch {torch.__version__}, {where}, "
            f"{'bf16 autocast' if settings.bf16 else 'fp32'}")


#: Between machines in a resumed run's machine line: "A | from step 3000: B".
RESUMED_ON = " | from step "


def machine_history(before: str, now: str, step: int) -> str:
    """The machine line of a run resumed at ``step``: every machine it trained on, in order, so a
    card whose run moved from one CPU to another (whose bf16 kernels may differ) says so. A
    resume on the machine it last ran on adds nothing."""
    if not before or before == now:
        return now
    return before if before.endswith(f": {now}") else f"{before}{RESUMED_ON}{step}: {now}"


def write_model_folder(folder: Path, model: ConditionedUNet, arch: UNetArch, classes: Sequence[str] | None,
                       settings: TrainSettings, data: DrumSet, held_kits: Sequence[str], origin: str, *,
                       step: int, wall_s: float, final_loss: float) -> Path:
    """The EMA network as a genbridge model folder, with a model card (JSON in config.json and
    a readable MODEL_CARD.md) saying what data, how long, and under which licenses."""
    licenses: dict[str, str] = {}
    for s in data.samples:
        licenses.setdefault(s.kit, s.license or "not stated")
    card = {
        "origin": origin,
        "command": settings.command,
        "steps": step,
        "batch": settings.batch,
        "wall_time_s": round(wall_s, 1),
        "final_loss": round(final_loss, 5),
        "machine": settings.machine,
        "data": {"clips": len(data.labels), "per_instrument": data.counts(), "per_package": data.per_package(),
                 "kits": sorted(licenses), "held_out_kits": list(held_kits)},
        "licenses": licenses,
        "settings": settings.to_json(),
    }
    extra = ({"classes": list(classes)} if classes else {}) | {"data_scale": settings.data_scale or 1.0}
    if settings.amplitude_power != 1.0:
        extra["amplitude_power"] = settings.amplitude_power
    if settings.output_lowpass:
        extra["output_lowpass_hz"] = dict(settings.output_lowpass)
    tensors = {CLASS_EMBEDDING_KEY: model.class_embedding.weight.detach()} if classes else {}
    if classes and model.velocity_embedding is not None:
        tensors[VELOCITY_EMBEDDING_KEY] = model.velocity_embedding.detach()
    save_model_folder(folder, model.net, arch, default_steps=settings.default_steps,
                      fp16=settings.fp16_weights, card=card, extra_config=extra | {"sampler": settings.sampler},
                      extra_tensors=tensors or None)
    lines = [
        f"# {settings.name}: drum one-shot diffusion model",
        "",
        f"- {origin}; {step} steps at batch {settings.batch}, {wall_s / 60:.1f} min wall time; "
        f"final loss {final_loss:.4f} (mean of the last 100 steps).",
        f"- Command: `{settings.command}`" if settings.command else "- Command: (called from Python)",
        f"- Machine: {card['machine'] or 'not recorded'}.",
        f"- Instruments: {', '.join(classes) if classes else settings.instrument} "
        f"({arch.sample_rate} Hz, {arch.in_channels} ch, {arch.length} frames); sampler "
        f"{settings.sampler}, {settings.default_steps} steps by default.",
        *([f"- Loss: the v-objective's mean square error plus {settings.emphasis:g} times that of its first "
           "difference (high-frequency emphasis)."] if settings.emphasis else []),
        *([f"- Output high-cut (applied to generated clips, not in training): "
           f"{describe_lowpass(settings.output_lowpass)}."] if settings.output_lowpass else []),
        f"- Training clips: {len(data.labels)} {json.dumps(data.counts())}, by package "
        f"{json.dumps(data.per_package())}; held out for evaluation: {', '.join(held_kits) or 'none'}.",
        *([f"- Conditioned on velocity ({model.velocity_embedding.shape[0]} knots over 0-1): a soft hit sounds "
           "as the data's soft layers do, not only quieter."] if classes and model.velocity_embedding is not None
          else []),
        "",
        "## Data licenses",
        "",
        *[f"- {kit}: {lic}" for kit, lic in sorted(licenses.items())],
        "",
        "Weights trained on these samples are a derivative work in the conservative reading: "
        "honour the share-alike and attribution terms above when you redistribute them.",
        "",
    ]
    (folder / "MODEL_CARD.md").write_text("\n".join(lines))
    return folder
