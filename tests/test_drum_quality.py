"""The drum-quality benchmark and `genbridge render` run end to end on small data."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import TINY_LENGTH, TINY_RATE, TINY_UNET
from drum_samples import synth, write_hydrogen_kit, write_sample_folder
from helpers import GENBRIDGE, REPO

from models.drum_eval import DrumClassifier, drum_features, hiss_profile, noise_bursts
from models.training import TrainSettings, train


def test_features_tell_a_kick_from_a_hat() -> None:
    kick, hat = synth("kick", 1, TINY_RATE)[None, :8192], synth("hat", 1, TINY_RATE)[None, :8192]
    fk, fh = drum_features(kick, TINY_RATE), drum_features(hat, TINY_RATE)
    assert fk.centroid_hz < 300 < 3000 < fh.centroid_hz
    assert fh.decay_ms < fk.decay_ms
    silent_tail = np.concatenate([kick, np.zeros((1, 8192), np.float32)], axis=1)
    assert drum_features(silent_tail, TINY_RATE).tail_floor_dbfs <= -119
    assert drum_features(noise_bursts(1, 8192, TINY_RATE)[0] + 0.01, TINY_RATE).tail_floor_dbfs > -45


def test_hiss_profile_finds_noise_riding_under_a_kick_body() -> None:
    rate = 22050
    t = np.arange(int(0.3 * rate)) / rate
    body = np.sin(2 * np.pi * 60 * t) * np.exp(-t / 0.08)
    hissy = body + 0.03 * np.abs(body) * np.random.default_rng(0).standard_normal(len(t))
    clean, noisy = hiss_profile(body[None].astype(np.float32), rate), hiss_profile(hissy[None].astype(np.float32), rate)
    assert len(clean) == len(noisy) == int(0.28 * rate) // 1024
    assert max(clean) < -60, clean
    assert all(-40 < v < -25 for v in noisy), "noise that rides on the body is a share that stays put"


def test_classifier_names_held_out_synthetic_drums() -> None:
    train_clips = np.stack([synth(i, v, TINY_RATE)[None, :8192] for i in ("kick", "snare", "hat") for v in range(4)])
    labels = np.repeat(np.arange(3), 4)
    clf = DrumClassifier(["kick", "snare", "hat"]).fit(train_clips, labels, TINY_RATE)
    test = [synth(i, 5, TINY_RATE)[None, :8192] for i in ("kick", "snare", "hat")]
    assert clf.predict(test, TINY_RATE) == ["kick", "snare", "hat"]


def test_benchmark_runs_on_a_trained_model_and_writes_its_table(tmp_path: Path) -> None:
    data = tmp_path / "data"
    write_sample_folder(data / "mine")
    write_hydrogen_kit(data / "HeldKit", first_variant=3)
    write_hydrogen_kit(data / "CopyKit")  # the training folder's recordings again
    result = train(TrainSettings(data=[str(data)], out=str(tmp_path / "run"), held_out=["HeldKit", "CopyKit"],
                                 arch={"sample_rate": TINY_RATE, "length": TINY_LENGTH, "unet": TINY_UNET},
                                 steps=2, batch=2, threads=1), progress=False)
    sheet = tmp_path / "sheet.png"
    run = subprocess.run([sys.executable, "bench/drum_quality.py", "--model", str(result.model_dir), "--n", "3",
                          "--steps", "3", "--data", str(data), "--hold-out", "HeldKit,CopyKit", "--threads", "1",
                          "--sheet", str(sheet), "--name", "test_drum_quality", "--no-onnx"],
                         cwd=REPO, capture_output=True, text=True, timeout=600)
    assert run.returncode in (0, 1), run.stderr  # 1 = the gate failed, which a 2-step model must
    assert "held-out real" in run.stdout and "noise burst" in run.stdout, run.stdout
    assert "velocity 40 against 120" in run.stdout and "one-shots/s at the refill batch 4: torch" in run.stdout
    results = json.loads((REPO / "bench" / "results" / "test_drum_quality.json").read_text())
    assert set(results["instruments"]) == {"kick", "snare", "hat"}
    kick = results["instruments"]["kick"]
    # CopyKit's two kick layers, its snare and its closed hat (its crash is no class of this model).
    assert results["dropped_near_copies"] == {"other": 4}, "a held-out kit's copies of training recordings count not"
    assert kick["held_out_real_clips"] == 2 and kick["held_out_real_accuracy"] == 1.0
    assert set(kick["features"]) == {"real", "generated", "noise", "training"}
    f = kick["features"]  # the training clips' own score on the feature gates, beside the model's
    assert kick["training_data_ratios"]["decay"] == pytest.approx(
        f["training"]["decay_ms"]["median"] / f["real"]["decay_ms"]["median"])
    assert "training clips/real decay / centroid" in run.stdout
    assert set(kick["bands"]) == {"soft", "medium", "hard"} and kick["velocity"]["generated"] is not None
    assert results["oneshots_per_s"]["torch"] > 0
    assert results["instruments"]["kick"]["pass"] is False, "an untrained model cannot pass the gate"
    assert sheet.is_file() and sheet.stat().st_size > 10_000
    hiss = subprocess.run([sys.executable, "bench/drum_hiss.py", "--model", f"{result.model_dir},{result.model_dir}",
                           "--seeds", "2", "--data", str(data), "--hold-out", "HeldKit,CopyKit", "--threads", "1",
                           "--name", "test_drum_hiss"], cwd=REPO, capture_output=True, text=True, timeout=600)
    assert hiss.returncode == 0, hiss.stderr
    measured = json.loads((REPO / "bench" / "results" / "test_drum_hiss.json").read_text())
    model = measured["models"][str(result.model_dir)]
    assert set(model["tail_dbfs"]) == {"kick", "snare", "hat"} and model["kick_centroid_hz"] > 0
    frames = min(TINY_LENGTH, int(0.28 * TINY_RATE)) // 1024
    assert len(model["kick_profile_db"]) == frames == len(measured["held_out_real"]["kick_profile_db"])
    assert measured["held_out_real"]["clips"] == 4, "HeldKit's and CopyKit's kick layers"
    assert "held-out real kicks (4)" in hiss.stdout


def test_cli_render_draws_a_sheet_of_clips(tmp_path: Path) -> None:
    import matplotlib.image as mpimg
    import soundfile as sf

    for name in ("kick", "hat"):
        sf.write(tmp_path / f"{name}-1.wav", synth(name, 1, 22050), 22050)
        (tmp_path / f"{name}-1.json").write_text(json.dumps({"instrument": name}))
    out = tmp_path / "sheet.png"
    run = subprocess.run([*GENBRIDGE, "render", str(tmp_path), "-o", str(out)], cwd=REPO,
                         capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    assert "2 clips" in run.stdout
    image = mpimg.imread(out)
    assert image.shape[1] > image.shape[0] * 0.8, "two columns side by side"
    assert float(image[..., :3].std()) > 0.05, "not a blank image"
    missing = subprocess.run([*GENBRIDGE, "render", str(tmp_path / "nope.wav"), "-o", str(out)], cwd=REPO,
                             capture_output=True, text=True, timeout=120)
    assert missing.returncode == 1 and "nope.wav" in missing.stderr


def test_velocity_pairs_measure_what_a_soft_hit_changes_and_the_gate_follows_the_real_layers() -> None:
    """A soft hit that is the hard one 20 dB down (a soundfont's velocity, where the font has no
    velocity zones) is as bright and dies sooner under the hard hit's level; the gate asks a
    model's ratios to be near the real layers', not only below 1."""
    sys.path.insert(0, str(REPO / "bench"))
    from drum_quality import _pair_ratios, _velocity_pass

    t = np.arange(16384) / 22050
    rng = np.random.default_rng(0)
    hard = (0.3 * rng.normal(size=t.size) * np.exp(-t * 20))[None, :].astype(np.float32)
    dark = np.convolve(hard[0], np.ones(8) / 8, mode="same")[None, :].astype(np.float32)
    level_only = _pair_ratios([(hard * 0.1, hard)], 22050)
    assert level_only["level_db"] == pytest.approx(-20, abs=0.1)
    assert level_only["centroid_ratio"] == pytest.approx(1.0, abs=0.01)
    assert level_only["audible_ratio"] < 0.8
    assert level_only["high_share_db"] == pytest.approx(0.0, abs=0.01), "a level alone moves no energy up or down"
    darker = _pair_ratios([(dark * 0.1, hard)], 22050)
    assert darker["centroid_ratio"] < 0.7 and darker["high_share_db"] < -10
    hiss = 0.003 * rng.normal(size=(1, t.size)).astype(np.float32)  # a floor that does not fall with the hit
    floored = _pair_ratios([(dark * 0.1 + hiss, dark + hiss)], 22050)
    assert floored["high_share_db"] > 3, "the soft hit's floor is a larger share of it"
    reference = {"centroid_ratio": 0.9, "audible_ratio": 0.5}
    assert _velocity_pass({"centroid_ratio": 0.85, "audible_ratio": 0.55}, {"audible_ratio": 0.9}, reference)
    assert not _velocity_pass({"centroid_ratio": 0.85, "audible_ratio": 0.9}, {"audible_ratio": 0.9}, reference), \
        "shorter, but by far less than the real layers"
    assert not _velocity_pass({"centroid_ratio": 1.02, "audible_ratio": 0.5}, {"audible_ratio": 0.9}, reference), \
        "the real layers are darker: so must it be"
    assert not _velocity_pass({"centroid_ratio": 0.85, "audible_ratio": 0.5}, {"audible_ratio": 1.0}, reference), \
        "its length must not be the playback gain's alone"


def test_classifier_benchmark_names_each_source_with_a_classifier_that_never_saw_it(tmp_path: Path) -> None:
    data = tmp_path / "data"
    write_sample_folder(data / "mine")
    write_hydrogen_kit(data / "KitA", first_variant=3)
    sources = f"{data / 'mine'},{data / 'KitA'}"
    run = subprocess.run([sys.executable, "bench/drum_classifier.py", "--data", sources, "--hold-out", "",
                          "--name", "test_drum_classifier"],
                         cwd=REPO, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr
    assert "unweighted" in run.stdout and "fonts apart" in run.stdout, run.stdout
    results = json.loads((REPO / "bench" / "results" / "test_drum_classifier.json").read_text())
    assert results["per_instrument"]["kick"] == 5 and results["per_instrument"]["snare"] == 4
    balanced = results["recall"]["balanced"]
    assert set(balanced) == {"kick", "snare", "hat", "crash", "mean"}
    # A pitch-dropping sine is a kick to a classifier trained on other kits' kicks.
    assert balanced["kick"] >= 0.8, balanced
    assert set(results["balanced_by_source"]) == {"mine", "Test Kit"}, "one source a folder, one a kit"
