"""Done-when 2: a checkpoint laid out exactly like tiny-audio-diffusion's, served by the daemon."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
from conftest import TINY_LENGTH, TINY_RATE, TINY_UNET, write_config

from bridge.finishing import FinishingSettings, finish_clip
from models.adp import import_adp
from models.diffusion import DiffusionGenerator, ModelInfo, ModelLoadError, load_generator, tiny_arch_from

CONFIG_YAML = """\
# @package _global_
module: main.diffusion_module
batch_size: 1
sampling_rate: {rate}
length: {length}
channels: {channels}
model:
  _target_: ${{module}}.Model
  lr: 1e-4
  ema_beta: 0.995
  ema_power: 0.7
  model:
    _target_: audio_diffusion_pytorch.DiffusionModel
    net_t:
      _target_: ${{module}}.UNetT
    in_channels: {channels}
    channels: {unet_channels}
    factors: {factors}
    items: {items}
    attentions: {attentions}
    attention_heads: {heads}
    attention_features: {features}
callbacks:
  audio_samples_logger:
    sampling_steps: [50]
    use_ema_model: True
"""


def _diffusion_model(seed: int) -> torch.nn.Module:
    """A DiffusionModel with weights that depend strongly on ``seed``.

    A freshly initialised U-Net predicts almost nothing, so two inits give near-identical
    clips; every weight is perturbed so the EMA and online copies sound clearly different.
    """
    adp = import_adp()
    torch.manual_seed(seed)
    model = adp.DiffusionModel(net_t=adp.UNetV0, diffusion_t=adp.VDiffusion, sampler_t=adp.VSampler, **TINY_UNET)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.2)
    return model


def build_tiny_audio_diffusion_ckpt(folder: Path, online_seed: int = 1, ema_seed: int = 2) -> Path:
    """A Lightning checkpoint with the layout of the public kick/snare/hat .ckpt files."""
    folder.mkdir(parents=True, exist_ok=True)
    online, ema = _diffusion_model(online_seed), _diffusion_model(ema_seed)
    optimizer = torch.optim.AdamW(online.parameters(), lr=1e-4, betas=(0.95, 0.999))
    online(torch.randn(1, 1, TINY_LENGTH)).backward()
    optimizer.step()
    state: dict[str, torch.Tensor] = {}
    state.update({f"model.{k}": v for k, v in online.state_dict().items()})
    state.update({f"model_ema.online_model.{k}": v for k, v in online.state_dict().items()})
    state.update({f"model_ema.ema_model.{k}": v for k, v in ema.state_dict().items()})
    state["model_ema.initted"] = torch.tensor(True)
    state["model_ema.step"] = torch.tensor(1234)
    checkpoint = {
        "epoch": 3,
        "global_step": 1234,
        "pytorch-lightning_version": "1.7.7",
        "state_dict": state,
        "loops": {"fit_loop": {"state_dict": {}, "epoch_progress": {"total": {"ready": 4}}}},
        "callbacks": {"ModelCheckpoint{'monitor': 'valid_loss'}": {"best_model_score": torch.tensor(0.1)}},
        "optimizer_states": [optimizer.state_dict()],
        "lr_schedulers": [],
    }
    path = folder / "epoch=03-valid_loss=0.100.ckpt"
    torch.save(checkpoint, path)
    (folder / "config.yaml").write_text(CONFIG_YAML.format(
        rate=TINY_RATE, length=TINY_LENGTH, channels=TINY_UNET["in_channels"],
        unet_channels=TINY_UNET["channels"], factors=TINY_UNET["factors"], items=TINY_UNET["items"],
        attentions=TINY_UNET["attentions"], heads=TINY_UNET["attention_heads"],
        features=TINY_UNET["attention_features"]))
    return path


def _expected_clip(net: torch.nn.Module, seed: int, steps: int) -> np.ndarray:
    arch = tiny_arch_from(TINY_UNET, TINY_RATE, TINY_LENGTH)
    info = ModelInfo("x", "", "", "", True, 0, TINY_RATE, 1, TINY_LENGTH, steps, 0, "fp32")
    raw = DiffusionGenerator(net, arch, info).generate(seed, steps)
    return finish_clip(raw, TINY_RATE, FinishingSettings())[0]


def test_loader_takes_the_ema_weights(tmp_path: Path) -> None:
    ckpt = build_tiny_audio_diffusion_ckpt(tmp_path / "kicks")
    gen = load_generator(ckpt, name="kicks")
    ema = _diffusion_model(2).net.state_dict()
    online = _diffusion_model(1).net.state_dict()
    loaded = gen.net.state_dict()
    assert set(loaded) == set(ema)
    assert all(torch.equal(loaded[k], ema[k]) for k in ema)
    assert not all(torch.equal(loaded[k], online[k]) for k in online)
    assert gen.info.weights == "ema" and gen.info.default_steps == 50
    assert (gen.info.sample_rate, gen.info.length, gen.info.channels) == (TINY_RATE, TINY_LENGTH, 1)


def test_daemon_serves_a_tiny_audio_diffusion_ckpt_with_ema_weights(tmp_path: Path, start_daemon) -> None:
    ckpt = build_tiny_audio_diffusion_ckpt(tmp_path / "kicks")
    config = write_config(tmp_path / "c.toml", ckpt, pool=0, steps=4, subtype="FLOAT", instruments=("kick",))
    daemon, client = start_daemon(config)
    client.send("/genbridge/drum/generate", "kick", 1, 11, 0, "ema-check")
    client.expect("/genbridge/job/started")
    path = client.expect("/genbridge/drum/ready").args[2]
    served, rate = sf.read(path, dtype="float32", always_2d=True)
    assert rate == TINY_RATE
    served = served.T
    want_ema = _expected_clip(_diffusion_model(2).net, 11, 4)
    want_online = _expected_clip(_diffusion_model(1).net, 11, 4)
    err_ema = float(np.max(np.abs(served - want_ema)))
    err_online = float(np.max(np.abs(served - want_online)))
    assert err_ema < 1e-3, f"served clip differs from the EMA model's by {err_ema}"
    assert err_online > max(100 * err_ema, 0.05), f"served clip is as close to the online weights ({err_online})"


def test_ckpt_without_config_yaml_is_a_clear_error(tmp_path: Path) -> None:
    ckpt = build_tiny_audio_diffusion_ckpt(tmp_path / "k")
    (tmp_path / "k" / "config.yaml").unlink()
    with pytest.raises(ModelLoadError, match="config.yaml"):
        load_generator(ckpt, name="k")


def test_ckpt_with_mismatched_config_is_a_clear_error(tmp_path: Path) -> None:
    ckpt = build_tiny_audio_diffusion_ckpt(tmp_path / "k")
    cfg = tmp_path / "k" / "config.yaml"
    text = cfg.read_text()
    cfg.write_text(text.replace(f"channels: {TINY_UNET['channels']}", "channels: [8, 16, 64]"))
    with pytest.raises(ModelLoadError, match="shape"):
        load_generator(ckpt, name="k")
    cfg.write_text(text.replace("attention_heads: 2", "attention_heads: 2\n    not_a_unet_option: 1"))
    with pytest.raises(ModelLoadError, match="not_a_unet_option"):
        load_generator(ckpt, name="k")
