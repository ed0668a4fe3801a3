"""`genbridge train`: data from sample folders and Hydrogen kits, a resumable run, a model
folder the daemon serves, class conditioning, and fine-tuning a tiny-audio-diffusion checkpoint."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import TINY_LENGTH, TINY_RATE, TINY_UNET, write_config
from drum_samples import write_hydrogen_kit, write_sample_folder
from helpers import GENBRIDGE, REPO, assert_valid_clip
from test_checkpoints import build_tiny_audio_diffusion_ckpt

from models.diffusion import ConditionedUNet, load_generator
from models.drum_data import TARGET_RMS_DB, find_samples, instrument_for, load_drum_set, split_held_out
from models.training import TrainSettings, augment, clip_weights, train


def test_instrument_names_from_hydrogen_kits_and_file_names() -> None:
    cases = {
        "BassDrum": "kick", "Kick (Tama Superstar 22\")": "kick", "c3 - bass drum 1": "kick",
        "Pearl Snare Rimshot": "snare", "Snare Jazz": "snare", "Snare Roll": None,
        "Hi Hat Closed": "hat", "Sabian Hat Semi-Open": "hat", "Closed HH 2": "hat", "Hi-Hat Pedal": "hat",
        "Hand Clap": "clap", "Tom Low (Tama Superstar 16\")": "tom", "Cowbell": "perc",
        "Crash 18\"": None, "Ride Bell": None, "Zap 1": None,
    }
    assert {name: instrument_for(name) for name in cases} == cases


def test_kits_and_folders_are_found_labelled_and_prepared(tmp_path: Path) -> None:
    write_hydrogen_kit(tmp_path / "kits" / "TestKit")
    folder = write_sample_folder(tmp_path / "mine")
    samples = find_samples([tmp_path / "kits", folder])
    by_kit = {(s.kit, s.instrument) for s in samples}
    assert ("Test Kit", "kick") in by_kit and ("Test Kit", "snare") in by_kit and ("Test Kit", "hat") in by_kit
    kit_samples = [s for s in samples if s.kit == "Test Kit"]
    assert sorted(s.path.name for s in kit_samples) == ["bd_hard.wav", "bd_soft.wav", "hh.wav", "sn.wav"], \
        "every layer of each instrument, and no crash cymbal"
    assert all(s.license == "CC0" for s in kit_samples)
    mine = [s for s in samples if s.kit == "mine"]
    assert len(mine) == 9 and "mystery" not in {s.name for s in mine}
    train_part, held = split_held_out(samples, ["TestKit"])
    assert {s.kit for s in held} == {"Test Kit"} and len(train_part) == 9

    data = load_drum_set(samples, sample_rate=22050, channels=1, length=8192)
    assert data.audio.shape == (13, 1, 8192) and data.classes == ("kick", "snare", "hat")
    assert data.counts() == {"kick": 5, "snare": 4, "hat": 4}
    for clip in data.audio:
        peak = np.abs(clip[0])
        # onset-aligned: the hit starts within the 2 ms pre-roll (the files start with 10-30 ms of silence)
        assert int(np.argmax(peak > 0.03 * peak.max())) < int(0.003 * 22050)
        head_rms_db = 20 * np.log10(np.sqrt(np.mean(clip[0, :2205] ** 2)))
        assert head_rms_db <= TARGET_RMS_DB + 0.1 and peak.max() <= 0.981
        assert head_rms_db > TARGET_RMS_DB - 0.1 or peak.max() > 0.97, "loudness-normalised or at the ceiling"


def _arch_file(tmp_path: Path) -> Path:
    path = tmp_path / "arch.json"
    path.write_text(json.dumps({"sample_rate": TINY_RATE, "length": TINY_LENGTH, "unet": TINY_UNET}))
    return path


def test_cli_trains_resumes_and_the_daemon_serves_the_model(tmp_path: Path, start_daemon) -> None:
    data = write_sample_folder(tmp_path / "samples")
    run = tmp_path / "run"
    base = [*GENBRIDGE, "train", str(data), "-o", str(run), "--arch", str(_arch_file(tmp_path)),
            "--batch", "2", "--threads", "1", "--hold-out", "", "--lowpass", "kick=3000"]
    first = subprocess.run(base + ["--steps", "3", "--snapshot-every", "2"], cwd=REPO, capture_output=True,
                           text=True, timeout=600)
    assert first.returncode == 0, first.stderr
    assert torch.load(run / "checkpoint.pt", weights_only=False)["step"] == 3
    snapshot = run / "snapshots" / "step-000002"
    assert sorted(p.name for p in (run / "snapshots").iterdir()) == ["step-000002"]
    assert "a snapshot at step 2" in json.loads((snapshot / "config.json").read_text())["card"]["origin"]
    assert load_generator(snapshot, name="snap").classes == ["kick", "snare", "hat"]
    second = subprocess.run(base + ["--steps", "5"], cwd=REPO, capture_output=True, text=True, timeout=600)
    assert second.returncode == 0, second.stderr
    assert "resuming" in second.stderr and "at step 3" in second.stderr
    checkpoint = torch.load(run / "checkpoint.pt", weights_only=False)
    assert checkpoint["step"] == 5 and len(checkpoint["losses"]) == 5

    model = run / "model"
    config = json.loads((model / "config.json").read_text())
    assert config["classes"] == ["kick", "snare", "hat"]
    assert config["card"]["steps"] == 5 and "genbridge train" in config["card"]["command"]
    assert config["card"]["data"]["per_instrument"] == {"kick": 3, "snare": 3, "hat": 3}
    card = (model / "MODEL_CARD.md").read_text()
    assert "5 steps" in card and "## Data licenses" in card

    cfg = write_config(tmp_path / "c.toml", model, pool=1, steps=3)
    daemon, client = start_daemon(cfg)
    for inst in ("kick", "hat"):
        reply = client.request("/genbridge/drum/play", inst, 100, reply="/genbridge/drum/played", timeout=120)
        meta = assert_valid_clip(reply.args[2], sample_rate=TINY_RATE, frames=TINY_LENGTH, channels=1)
        assert meta["instrument"] == inst and meta["trained"] is True
        assert meta["output_lowpass_hz"] == (3000.0 if inst == "kick" else None), "the sidecar says what was cut"


def test_a_changed_run_does_not_resume_silently(tmp_path: Path) -> None:
    data = write_sample_folder(tmp_path / "samples")
    arch = json.loads(_arch_file(tmp_path).read_text())
    settings = TrainSettings(data=[str(data)], out=str(tmp_path / "run"), arch=arch, steps=1, batch=2,
                             held_out=[], threads=1)
    train(settings, progress=False)
    settings.batch = 3
    with pytest.raises(ValueError, match="batch"):
        train(settings, progress=False)


def test_class_conditioning_changes_the_clip_and_unknown_instruments_are_refused(tmp_path: Path) -> None:
    data = write_sample_folder(tmp_path / "samples")
    arch = json.loads(_arch_file(tmp_path).read_text())
    result = train(TrainSettings(data=[str(data)], out=str(tmp_path / "run"), arch=arch, steps=2, batch=2,
                                 held_out=[], threads=1), progress=False)
    gen = load_generator(result.model_dir, name="drums")
    assert isinstance(gen.net, ConditionedUNet) and gen.classes == ["kick", "snare", "hat"]
    with torch.no_grad():  # make the embedding rows clearly different, as training does over time
        gen.net.class_embedding.weight.copy_(torch.randn_like(gen.net.class_embedding.weight) * 3)
    kick, hat, kick_again = (gen.generate(7, 4, instrument=i) for i in ("kick", "hat", "kick"))
    assert np.array_equal(kick, kick_again)
    assert float(np.abs(kick - hat).max()) > 1e-3
    with pytest.raises(ValueError, match="generates kick, snare, hat"):
        gen.generate(7, 4, instrument="cowbell")


def test_fine_tuning_a_tiny_audio_diffusion_checkpoint(tmp_path: Path) -> None:
    ckpt = build_tiny_audio_diffusion_ckpt(tmp_path / "kicks")
    data = write_sample_folder(tmp_path / "samples")
    base = dict(data=[str(data)], init=str(ckpt), steps=3, batch=2, held_out=[], threads=1, lr=1e-5)
    with pytest.raises(ValueError, match="--instrument"):
        train(TrainSettings(out=str(tmp_path / "a"), **base), progress=False)
    result = train(TrainSettings(out=str(tmp_path / "b"), instrument="kick", ema_decay=0.5, **base),
                   progress=False)
    tuned = load_generator(result.model_dir, name="tuned")
    original = load_generator(ckpt, name="orig")
    assert tuned.classes is None and tuned.arch.length == TINY_LENGTH and tuned.arch.sample_rate == TINY_RATE
    a, b = original.net.state_dict(), tuned.net.state_dict()
    assert set(a) == set(b)
    changed = sum(not torch.allclose(a[k], b[k].float()) for k in a)
    assert changed > len(a) // 2, "the weights moved"
    rel = max(float((a[k] - b[k].float()).norm() / (a[k].norm() + 1e-8)) for k in a if a[k].is_floating_point())
    assert rel < 0.05, f"fine-tuning starts from the checkpoint (largest relative change {rel:.3f})"
    card = json.loads((result.model_dir / "config.json").read_text())["card"]
    assert card["origin"].startswith("fine-tuned from") and card["data"]["per_instrument"] == {"kick": 3}
    clip = tuned.generate(3, 4)
    assert clip.shape == (1, TINY_LENGTH) and float(np.abs(clip).max()) > 0


def test_augmentation_resamples_like_interpolate_and_keeps_gain_and_polarity_in_range() -> None:
    """The batched resampler must match F.interpolate clip by clip (what it replaced), and a hit
    pitched up must end in silence rather than wrap or repeat."""
    clips = torch.randn(16, 1, 4096)
    out = augment(clips, torch.Generator().manual_seed(3))
    g = torch.Generator().manual_seed(3)  # the same draws, in the same order
    semis = torch.rand(16, generator=g) * 2 - 1
    gains = 10 ** ((torch.rand(16, generator=g) * 5 - 4) / 20)
    signs = torch.where(torch.rand(16, generator=g) < 0.5, -1.0, 1.0)
    for i in range(16):
        new_len = max(8, round(4096 / 2 ** (float(semis[i]) / 12)))
        ref = F.interpolate(clips[i : i + 1], size=new_len, mode="linear", align_corners=False)[0, :, :4096]
        ref = ref * gains[i] * signs[i]
        got = out[i, :, : ref.shape[1]]
        assert float((got - ref).abs().max()) < 0.01 * float(ref.abs().max()), i
        assert not out[i, :, ref.shape[1] :].any(), "a shortened hit ends in silence"
    assert 10 ** (-4.1 / 20) < float(gains.min()) and float(gains.max()) < 10 ** (1.1 / 20)


def test_balance_draws_rare_instruments_as_often_as_common_ones() -> None:
    labels = np.repeat(np.arange(3), [47, 132, 22])  # kicks, percussion, claps: as uneven as the kits
    share = {}
    for balance in (0.0, 1.0):
        draws = torch.multinomial(clip_weights(labels, balance), 60000, replacement=True,
                                  generator=torch.Generator().manual_seed(0))
        share[balance] = np.bincount(labels[draws.numpy()], minlength=3) / 60000
    assert np.allclose(share[0.0], [47 / 201, 132 / 201, 22 / 201], atol=0.01), share[0.0]
    assert np.allclose(share[1.0], [1 / 3] * 3, atol=0.01), share[1.0]
    with pytest.raises(ValueError, match="0..1"):
        clip_weights(labels, 1.5)


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a GPU: --device cuda would train")
def test_asking_for_a_gpu_that_is_not_there_is_a_clear_error(tmp_path: Path) -> None:
    data = write_sample_folder(tmp_path / "samples")
    run = subprocess.run([*GENBRIDGE, "train", str(data), "-o", str(tmp_path / "run"), "--arch",
                          str(_arch_file(tmp_path)), "--steps", "1", "--hold-out", "", "--device", "cuda"],
                         cwd=REPO, capture_output=True, text=True, timeout=300)
    assert run.returncode == 1 and "sees no CUDA GPU" in run.stderr, run.stderr
    assert not (tmp_path / "run" / "checkpoint.pt").exists()
