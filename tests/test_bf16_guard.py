"""A CPU bf16 convolution kernel that is wrong (as torch 2.13's oneDNN is for some shapes on some
CPUs) is found by trying it and run in fp32: in training, forward and backward, and at load."""

from __future__ import annotations

import copy
import json
import math
from pathlib import Path

import pytest
import torch
from conftest import TINY_LENGTH, TINY_RATE, TINY_UNET
from drum_samples import write_sample_folder
from torch import nn

from models import training
from models.bf16_guard import BF16_CONV_TOLERANCE_DB, guard_bf16_convolutions, guard_training_convolutions
from models.diffusion import load_generator
from models.training import TrainSettings, train

_real_conv_forward = nn.Conv1d._conv_forward


class _NoiseGradient(torch.autograd.Function):
    """Identity forward; its backward hands back noise, as a wrong backward kernel would."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
        ctx.gen = gen
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor, None]:
        return torch.randn(grad.shape, generator=ctx.gen, dtype=grad.dtype) * grad.std(), None


class _Kernels:
    """Stands in for oneDNN's bf16 convolutions, so the tests do not depend on the host CPU's own
    kernels: honest bf16 (inputs, weights and output rounded to bf16, summed in fp32) for every
    shape but 16 -> 32 channels, kernel 4, stride 4 (the one a VM of this project got back as
    noise), which is wrong in its output or in its gradient (only on inputs longer than
    ``longer_than``, when that is set: blocking bugs depend on the length). ``wrong_calls``
    counts its uses."""

    def __init__(self, where: str, longer_than: int = 0) -> None:
        self.where = where
        self.longer_than = longer_than
        self.wrong_calls = 0
        self.gen = torch.Generator().manual_seed(2)  # a kernel draws nothing from torch's own stream

    def __call__(self, conv: nn.Conv1d, x: torch.Tensor, weight: torch.Tensor,
                 bias: torch.Tensor | None) -> torch.Tensor:
        if not torch.is_autocast_enabled("cpu"):
            return _real_conv_forward(conv, x, weight, bias)
        with torch.autocast("cpu", enabled=False):
            rounded = [t.to(torch.bfloat16).float() if t is not None else None for t in (x, weight, bias)]
            out = _real_conv_forward(conv, *rounded).to(torch.bfloat16)
        if ((conv.in_channels, conv.out_channels, conv.kernel_size[0], conv.stride[0]) != (16, 32, 4, 4)
                or x.shape[-1] <= self.longer_than):
            return out
        self.wrong_calls += 1
        if self.where == "forward":
            return torch.randn(out.shape, generator=self.gen, dtype=out.dtype) * out.float().std()
        return _NoiseGradient.apply(out, self.gen)


def _install(monkeypatch: pytest.MonkeyPatch, where: str, longer_than: int = 0) -> _Kernels:
    kernels = _Kernels(where, longer_than)
    monkeypatch.setattr(nn.Conv1d, "_conv_forward", lambda conv, x, weight, bias: kernels(conv, x, weight, bias))
    return kernels


def _net() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv1d(1, 16, 3, padding=1), nn.SiLU(), nn.Conv1d(16, 32, 4, stride=4),
                         nn.SiLU(), nn.Conv1d(32, 32, 3, padding=1))


def _errors(net: nn.Module, x: torch.Tensor) -> tuple[float, float]:
    """dB from fp32 of the bf16 output and of the first layer's weight gradient."""
    results = []
    for bf16 in (False, True):
        net.zero_grad(set_to_none=True)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            out = net(x).float()
        out.square().mean().backward()
        results.append((out.detach(), net[0].weight.grad.detach().clone()))
    (o32, g32), (o16, g16) = results
    db = [10 * math.log10(float((a - b).square().mean() / a.square().mean())) for a, b in ((o32, o16), (g32, g16))]
    return db[0], db[1]


def _sampling_error_db(net: nn.Module, x: torch.Tensor) -> float:
    """dB from fp32 of the network's bf16 output, as sampling runs it (no gradients)."""
    with torch.inference_mode():
        ref = net(x)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            low = net(x).float()
    return 10 * math.log10(float((ref - low).square().mean() / ref.square().mean()))


@pytest.mark.parametrize("where", ["forward", "gradient"])
def test_a_wrong_kernel_is_found_in_its_forward_or_its_gradient_and_trained_in_fp32(
        where: str, monkeypatch: pytest.MonkeyPatch) -> None:
    _install(monkeypatch, where)
    net = _net()
    keys = list(net.state_dict())
    x = torch.randn(4, 1, 2048, generator=torch.Generator().manual_seed(1))
    before = _errors(net, x)
    assert max(before) > BF16_CONV_TOLERANCE_DB  # the wrong kernel spoils the step as it stands

    rng = torch.get_rng_state()
    assert guard_training_convolutions(net, lambda: net(x)) == ["2"]
    assert torch.equal(torch.get_rng_state(), rng)  # a run's own random stream is not touched

    after = _errors(net, x)
    assert max(after) < BF16_CONV_TOLERANCE_DB, after
    assert list(net.state_dict()) == keys  # checkpoints and model folders keep their names
    twin = copy.deepcopy(net)  # the EMA copy and a checkpoint's copy keep the cure
    assert [type(m) for m in twin] == [type(m) for m in net] and type(net[2]) is not nn.Conv1d


def test_honest_kernels_are_left_in_bf16(monkeypatch: pytest.MonkeyPatch) -> None:
    """Rounding is not a wrong kernel: with every kernel honest nothing moves to fp32."""
    _install(monkeypatch, "forward")
    net = nn.Sequential(nn.Conv1d(1, 16, 3, padding=1), nn.SiLU(), nn.Conv1d(16, 24, 2, stride=2))
    x = torch.randn(4, 1, 2048, generator=torch.Generator().manual_seed(1))
    assert guard_training_convolutions(net, lambda: net(x)) == []
    assert all(type(m) in (nn.Conv1d, nn.SiLU) for m in net)


def test_sampling_in_bf16_runs_the_wrong_and_the_narrow_convolutions_in_fp32(monkeypatch: pytest.MonkeyPatch) -> None:
    _install(monkeypatch, "forward")
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv1d(16, 16, 3, padding=1), nn.SiLU(), nn.Conv1d(16, 32, 4, stride=4),
                        nn.SiLU(), nn.Conv1d(32, 8, 3, padding=1))
    x = torch.randn(2, 16, 2048, generator=torch.Generator().manual_seed(1))

    assert _sampling_error_db(net, x) > BF16_CONV_TOLERANCE_DB
    assert guard_bf16_convolutions(net, 2048) == ["2", "4"]  # the wrong one, and 32 -> 8 for being narrow
    assert _sampling_error_db(net, x) < BF16_CONV_TOLERANCE_DB


def test_sampling_tries_each_convolution_at_the_length_the_network_gives_it(monkeypatch: pytest.MonkeyPatch) -> None:
    """A kernel wrong only at the length a clip reaches it with is missed by a probe 2048 long and
    found by trying each convolution at the shape one clip's forward gives it."""
    _install(monkeypatch, "forward", longer_than=2048)
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv1d(16, 32, 4, stride=4), nn.SiLU(), nn.Conv1d(32, 32, 3, padding=1))
    x = torch.randn(1, 16, 8192, generator=torch.Generator().manual_seed(1))

    assert guard_bf16_convolutions(copy.deepcopy(net), 8192) == []  # the fixed probe: blind to it
    assert _sampling_error_db(net, x) > BF16_CONV_TOLERANCE_DB
    rng = torch.get_rng_state()
    assert guard_bf16_convolutions(net, 8192, lambda: net(x)) == ["0"]
    assert torch.equal(torch.get_rng_state(), rng)
    assert _sampling_error_db(net, x) < BF16_CONV_TOLERANCE_DB


def test_loading_a_model_in_bf16_tries_its_convolutions_at_their_sampling_shapes(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The daemon's load path drives the guard with one clip of the model's own length."""
    from conftest import build_tiny_model

    seen: dict[str, tuple[int, ...]] = {}
    real_conv = nn.Conv1d._conv_forward

    def recording(conv: nn.Conv1d, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        if torch.is_autocast_enabled("cpu"):
            seen.setdefault(f"{conv.in_channels}->{conv.out_channels}", tuple(x.shape))
        return real_conv(conv, x, weight, bias)

    model = build_tiny_model(tmp_path / "tiny")
    monkeypatch.setattr(nn.Conv1d, "_conv_forward", recording)
    load_generator(model, name="tiny", precision="bf16")
    # Levels 2 and 3 of the tiny U-Net run at a quarter and a sixteenth of the clip (level 1's 8
    # channels are narrow, fp32 without a try); the fixed probe tried everything at 2048.
    lengths = {shape[-1] for shape in seen.values()}
    assert all(shape[0] == 1 for shape in seen.values()), seen
    assert lengths == {TINY_LENGTH // 4, TINY_LENGTH // 16}, seen


def test_a_training_run_trains_the_wrong_layer_in_fp32_and_its_card_says_so(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """TINY_UNET's second level is 16 -> 32 channels, kernel 4, stride 4: the run must find the
    wrong kernel there, never use it in a step, and write a model folder that loads."""
    kernels = _install(monkeypatch, "forward")
    monkeypatch.setattr(training, "native_bf16", lambda device: True)  # bf16 even on a CPU without it
    data = write_sample_folder(tmp_path / "samples")
    arch = {"sample_rate": TINY_RATE, "length": TINY_LENGTH, "unet": TINY_UNET}
    result = train(TrainSettings(data=[str(data)], out=str(tmp_path / "run"), arch=arch, steps=3, batch=2,
                                 held_out=[], threads=1), progress=False)
    assert kernels.wrong_calls == 1  # the guard's own try; none of the three steps went through it
    machine = json.loads((result.model_dir / "config.json").read_text())["card"]["machine"]
    assert "bf16 autocast" in machine and "1 convolution(s) in fp32" in machine, machine
    gen = load_generator(result.model_dir, name="tiny")
    assert gen.generate(3, 2, instrument="kick").shape == (1, TINY_LENGTH)
