"""A model folder's own output high-cut: the previous default's (models/drums-v1) kicks lose the
hiss above the hit and keep their body, other instruments are untouched, bad values are refused
at load and on the command line, and a training run records (and keeps on resume) the high-cut
it was given. The current default needs none: less hiss and a lower floor without one."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import numpy as np
import pytest
from conftest import TINY_LENGTH, TINY_RATE, TINY_UNET, build_tiny_model
from drum_samples import write_sample_folder
from helpers import GENBRIDGE, REPO

from models.diffusion import ModelLoadError, load_generator
from models.training import TrainSettings, train

#: The default before issue 16: a half-rate first level, whose kicks carried hiss up to Nyquist.
DRUMS_V1 = REPO / "models" / "drums-v1"


def _band_db(clip: np.ndarray, rate: int, lo: float, hi: float) -> float:
    """Energy between lo and hi Hz relative to the clip's whole energy (dB)."""
    spectrum = np.abs(np.fft.rfft(clip[0].astype(np.float64))) ** 2
    freqs = np.fft.rfftfreq(clip.shape[1], 1.0 / rate)
    band = spectrum[(freqs >= lo) & (freqs < hi)].sum()
    return float(10 * np.log10(max(band, 1e-30) / spectrum.sum()))


def test_the_previous_defaults_kicks_lose_the_hiss_above_the_hit_and_keep_their_body() -> None:
    gen = load_generator(DRUMS_V1, name="drums-v1")
    assert gen.info.output_lowpass_hz == {"kick": 8000.0}, "the model folder names its kick high-cut"
    seeds, rate = [3, 4, 5, 6], gen.sample_rate
    kicks = gen.generate_batch(seeds, instruments=["kick"] * 4)
    snares = gen.generate_batch(seeds, instruments=["snare"] * 4)
    gen.info.output_lowpass_hz = {}
    raw_kicks = gen.generate_batch(seeds, instruments=["kick"] * 4)
    raw_snares = gen.generate_batch(seeds, instruments=["snare"] * 4)
    for kick, raw in zip(kicks, raw_kicks):
        # Real kicks hold about -50 dB above 6 kHz; the raw network's hold -20..-30 dB there.
        assert _band_db(raw, rate, 9000, rate / 2) > _band_db(kick, rate, 9000, rate / 2) + 20
        assert _band_db(kick, rate, 9000, rate / 2) < -50
        body, raw_body = (float(np.sum(np.abs(np.fft.rfft(c[0]))[: int(200 * c.shape[1] / rate)] ** 2))
                          for c in (kick, raw))
        assert abs(10 * np.log10(body / raw_body)) < 0.5, "the low end below 200 Hz is kept"
        assert float(np.abs(kick[:, :100]).max()) < 1.05 * float(np.abs(raw[:, :100]).max()) + 1e-6, \
            "causal: nothing rings before the attack"
    for snare, raw in zip(snares, raw_snares):
        assert np.array_equal(snare, raw), "a snare keeps its top end"


@pytest.mark.parametrize("value, message", [
    ({"cowbell": 8000}, "names 'cowbell'; the model generates kick, snare, hat"),
    ({"kick": 12000}, "between 0 and Nyquist"),
    ({"kick": "high"}, "must be a number of Hz"),
    ([8000], "must map instruments to Hz"),
])
def test_a_bad_output_high_cut_is_refused_when_the_model_loads(tmp_path: Path, value: object,
                                                                message: str) -> None:
    result = train(TrainSettings(data=[str(write_sample_folder(tmp_path / "s"))], out=str(tmp_path / "run"),
                                 arch={"sample_rate": TINY_RATE, "length": TINY_LENGTH, "unet": TINY_UNET},
                                 steps=1, batch=2, held_out=[], threads=1), progress=False)
    config_file = result.model_dir / "config.json"
    config = json.loads(config_file.read_text())
    config["output_lowpass_hz"] = value
    config_file.write_text(json.dumps(config))
    with pytest.raises(ModelLoadError, match=message):
        load_generator(result.model_dir, name="m")


def test_an_unconditional_model_takes_a_high_cut_for_every_clip(tmp_path: Path) -> None:
    model = build_tiny_model(tmp_path / "m", seed=2)
    raw = load_generator(model, name="m").generate(9, 2)
    config = json.loads((model / "config.json").read_text())
    (model / "config.json").write_text(json.dumps(config | {"output_lowpass_hz": {"*": 2000}}))
    filtered = load_generator(model, name="m").generate(9, 2, instrument="kick")
    assert _band_db(raw, TINY_RATE, 4000, TINY_RATE / 2) > _band_db(filtered, TINY_RATE, 4000, TINY_RATE / 2) + 20


def test_train_records_the_high_cut_keeps_it_on_resume_and_refuses_a_bad_one(tmp_path: Path) -> None:
    data = write_sample_folder(tmp_path / "samples")
    arch = tmp_path / "arch.json"
    arch.write_text(json.dumps({"sample_rate": TINY_RATE, "length": TINY_LENGTH, "unet": TINY_UNET}))
    run = tmp_path / "run"
    base = [*GENBRIDGE, "train", str(data), "-o", str(run), "--arch", str(arch), "--batch", "2", "--threads", "1",
            "--hold-out", ""]

    malformed = subprocess.run(base + ["--steps", "1", "--lowpass", "kick"], cwd=REPO, capture_output=True,
                               text=True, timeout=300)
    assert malformed.returncode == 2 and "--lowpass wants INSTRUMENT=HZ" in malformed.stderr
    unknown = subprocess.run(base + ["--steps", "1", "--lowpass", "cowbell=3000"], cwd=REPO, capture_output=True,
                             text=True, timeout=300)
    assert unknown.returncode == 1 and "'cowbell'" in unknown.stderr
    assert not (run / "checkpoint.pt").exists(), "refused before any training"

    first = subprocess.run(base + ["--steps", "1", "--lowpass", "kick=3000"], cwd=REPO, capture_output=True,
                           text=True, timeout=300)
    assert first.returncode == 0, first.stderr
    second = subprocess.run(base + ["--steps", "2"], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert second.returncode == 0, second.stderr
    config = json.loads((run / "model" / "config.json").read_text())
    assert config["card"]["steps"] == 2 and config["output_lowpass_hz"] == {"kick": 3000.0}
    assert "Output high-cut (applied to generated clips, not in training): kick 3000 Hz" in \
        (run / "model" / "MODEL_CARD.md").read_text()
    gen = load_generator(run / "model", name="m")
    kick = gen.generate(4, 3, instrument="kick")
    gen.info.output_lowpass_hz = {}
    raw = gen.generate(4, 3, instrument="kick")
    assert _band_db(raw, TINY_RATE, 6000, TINY_RATE / 2) > _band_db(kick, TINY_RATE, 6000, TINY_RATE / 2) + 20


def _tail_dbfs(clip: np.ndarray) -> float:
    return float(20 * np.log10(np.sqrt(np.mean(clip[0, -1600:].astype(np.float64) ** 2)) + 1e-12))


def test_the_default_has_no_high_cut_and_less_hiss_and_a_lower_floor_than_the_previous_one() -> None:
    """Issue 16: the hiss fixed at its cause (a full-rate first level, companded audio), not filtered."""
    new, old = (load_generator(REPO / "models" / name, name=name) for name in ("default", "drums-v1"))
    assert new.info.output_lowpass_hz == {} and new.info.amplitude_power == 0.5
    old.info.output_lowpass_hz = {}  # the previous network's raw clips
    # 16 seeds: a median of 4 raw tails swings by 8 dB from one set of seeds to the next.
    seeds, rate = list(range(3, 19)), new.sample_rate
    new_kicks = new.generate_batch(seeds, instruments=["kick"] * len(seeds))
    old_kicks = old.generate_batch(seeds, instruments=["kick"] * len(seeds))
    new_hf = np.median([_band_db(k, rate, 9000, rate / 2) for k in new_kicks])
    old_hf = np.median([_band_db(k, rate, 9000, rate / 2) for k in old_kicks])
    assert new_hf < old_hf - 8, f"energy above 9 kHz: {new_hf:.1f} dB against the previous default's {old_hf:.1f}"
    new_tail = np.median([_tail_dbfs(k) for k in new_kicks])
    old_tail = np.median([_tail_dbfs(k) for k in old_kicks])
    assert new_tail < -60 and new_tail < old_tail - 15, f"tail {new_tail:.1f} dBFS against {old_tail:.1f}"


def test_the_defaults_soft_hits_are_quieter_sounds_than_its_hard_ones() -> None:
    gen = load_generator(REPO / "models" / "default", name="default")
    assert gen.info.velocity
    for inst in ("kick", "snare", "hat"):
        soft, hard = (gen.generate_batch([1, 2, 3], instruments=[inst] * 3, velocities=[v] * 3)
                      for v in (40 / 127, 1.0))
        level = [np.median([20 * np.log10(np.sqrt(np.mean(c[0, :2205] ** 2))) for c in clips])
                 for clips in (soft, hard)]
        assert level[0] < level[1] - 6, f"{inst}: velocity 40 at {level[0]:.1f} dB, 127 at {level[1]:.1f} dB"
