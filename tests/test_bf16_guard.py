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
from models.bf16_guard import BF16_CONV_TOLERANCE_DB, guard_training_convolutions
from models.diffusion import load_generator
from models.training import TrainSettings, train

_real_conv_forward = nn.Conv1d._conv_forward


class _NoiseGradient(torch.autograd.Function):
    """Identity forward; its backward hands back noise, as a wrong backward kernel would."""

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        return torch.randn_like(grad) * grad.std()


def _wrong_kernel(where: str):
    """A Conv1d forward that is wrong under CPU bf16 autocast for 16 -> 32 channels, kernel 4,
    stride 4 (the shape a VM of this project got back as noise), in its output or its gradient."""

    def conv_forward(self: nn.Conv1d, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None):
        out = _real_conv_forward(self, x, weight, bias)
        shape = (self.in_channels, self.out_channels, self.kernel_size[0], self.stride[0])
        if not torch.is_autocast_enabled("cpu") or shape != (16, 32, 4, 4):
            return out
        if where == "forward":
            return torch.randn_like(out) * out.std()
        return _NoiseGradient.apply(out)

    return conv_forward


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


@pytest.mark.parametrize("where", ["forward", "gradient"])
def test_a_wrong_kernel_is_found_in_its_forward_or_its_gradient_and_trained_in_fp32(
        where: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(nn.Conv1d, "_conv_forward", _wrong_kernel(where))
    net = _net()
    keys = list(net.state_dict())
    x = torch.randn(4, 1, 2048, generator=torch.Generator().manual_seed(1))
    before = _errors(net, x)
    assert max(before) > BF16_CONV_TOLERANCE_DB  # the wrong kernel spoils the step as it stands

    assert guard_training_convolutions(net, lambda: net(x)) == ["2"]

    after = _errors(net, x)
    assert max(after) < BF16_CONV_TOLERANCE_DB, after
    assert list(net.state_dict()) == keys  # checkpoints and model folders keep their names
    twin = copy.deepcopy(net)  # the EMA copy is a deep copy: it must keep the cure
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert torch.allclose(twin(x).float(), net(x).float())


def test_honest_kernels_are_left_in_bf16(monkeypatch: pytest.MonkeyPatch) -> None:
    """Rounding is not a wrong kernel: with every kernel honest nothing moves to fp32 (the check
    is made on a model whose shapes avoid the one this project's VMs got wrong)."""
    monkeypatch.setattr(nn.Conv1d, "_conv_forward", _wrong_kernel("forward"))
    net = nn.Sequential(nn.Conv1d(1, 16, 3, padding=1), nn.SiLU(), nn.Conv1d(16, 24, 2, stride=2))
    x = torch.randn(4, 1, 2048, generator=torch.Generator().manual_seed(1))
    assert guard_training_convolutions(net, lambda: net(x)) == []
    assert all(type(m) in (nn.Conv1d, nn.SiLU) for m in net)


def test_a_training_run_trains_the_wrong_layer_in_fp32_and_its_card_says_so(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """TINY_UNET's second level is 16 -> 32 channels, kernel 4, stride 4: the run must find the
    wrong kernel there, train through it in fp32, and write a model folder that loads."""
    monkeypatch.setattr(nn.Conv1d, "_conv_forward", _wrong_kernel("forward"))
    monkeypatch.setattr(training, "native_bf16", lambda device: True)  # bf16 even on a CPU without it
    data = write_sample_folder(tmp_path / "samples")
    arch = {"sample_rate": TINY_RATE, "length": TINY_LENGTH, "unet": TINY_UNET}
    result = train(TrainSettings(data=[str(data)], out=str(tmp_path / "run"), arch=arch, steps=2, batch=2,
                                 held_out=[], threads=1), progress=False)
    machine = json.loads((result.model_dir / "config.json").read_text())["card"]["machine"]
    assert "bf16 autocast" in machine and "1 convolution(s) in fp32" in machine, machine
    assert math.isfinite(result.final_loss)
    gen = load_generator(result.model_dir, name="tiny")
    assert gen.generate(3, 2, instrument="kick").shape == (1, TINY_LENGTH)
