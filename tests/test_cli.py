"""The other subcommands: batch generation with progress, devices, protocol, --version."""

from __future__ import annotations

import subprocess
from pathlib import Path

from conftest import TINY_LENGTH, TINY_RATE, write_config
from helpers import GENBRIDGE, REPO, assert_valid_clip

from bridge import __version__
from bridge.protocol import markdown_table


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*GENBRIDGE, *args], cwd=REPO, capture_output=True, text=True, timeout=120)


def test_generate_writes_n_clips_with_progress(tmp_path: Path, tiny_model: Path) -> None:
    config = write_config(tmp_path / "c.toml", tiny_model)
    out = tmp_path / "clips"
    result = _run("generate", "snare", "-n", "3", "--seed", "40", "--steps", "3", "--sampler", "dpmpp2m",
                  "-o", str(out),
                  "--config", str(config))
    assert result.returncode == 0, result.stderr
    wavs = sorted(out.glob("*.wav"))
    assert len(wavs) == 3 and all("snare" in w.name for w in wavs)
    metas = [assert_valid_clip(w, sample_rate=TINY_RATE, frames=TINY_LENGTH, channels=1) for w in wavs]
    assert [m["seed"] for m in metas] == [40, 41, 42] and all(m["steps"] == 3 for m in metas)
    assert all(m["sampler"] == "dpmpp2m" for m in metas)
    assert "9/9" in result.stderr, "the progress bar counts steps"
    assert not list(out.glob(".*")), "no temporary files left behind"


def test_generate_unknown_instrument_exits_2(tmp_path: Path, tiny_model: Path) -> None:
    config = write_config(tmp_path / "c.toml", tiny_model)
    result = _run("generate", "tuba", "-o", str(tmp_path), "--config", str(config))
    assert result.returncode == 2 and "unknown instrument 'tuba'" in result.stderr


def test_devices_protocol_version() -> None:
    devices = _run("devices")
    assert devices.returncode == 0
    assert "Audio devices:" in devices.stdout and "MIDI ports:" in devices.stdout
    protocol = _run("protocol")
    assert protocol.stdout.strip() == markdown_table()
    version = _run("--version")
    assert version.stdout.strip() == f"genbridge {__version__}"


def test_music_writes_each_take_with_its_sidecar(tmp_path: Path) -> None:
    import json

    import numpy as np
    import soundfile as sf
    from musicgen_models import build_tiny_musicgen

    model = build_tiny_musicgen(tmp_path / "musicgen")
    out = tmp_path / "takes"
    result = _run("music", "calm piano", "--seconds", "1", "--takes", "2", "--seed", "11", "--model", str(model),
                  "--threads", "1", "-o", str(out))
    assert result.returncode == 0, result.stderr
    wavs = sorted(out.glob("*.wav"))
    assert len(wavs) == 2, wavs
    audio = []
    for take, wav in enumerate(wavs):
        data, rate = sf.read(wav, dtype="float32", always_2d=True)
        assert rate == 32000 and data.shape == (32000, 1), (wav, data.shape)
        assert float(np.sqrt(np.mean(data ** 2))) > 1e-4, f"{wav.name} is silent"
        meta = json.loads(wav.with_suffix(".json").read_text())
        assert (meta["take"], meta["seed"], meta["description"], meta["source"]) == (take, 11 + take, "calm piano",
                                                                                    "text"), meta
        assert str(wav) in result.stdout + result.stderr, "each take's path is printed"
        audio.append(data)
    assert not np.array_equal(audio[0], audio[1]), "two takes, two pieces"
    assert "100%" in result.stderr, "the progress bar counts percent"
    assert not list(out.glob(".*")), "no temporary files left behind"


def test_music_bad_arguments_exit_2(tmp_path: Path) -> None:
    for bad in (["--takes", "0"], ["--takes", "9"], ["--seconds", "0"], ["--seconds", "301"]):
        args = ["--seconds", "1", *bad] if bad[0] == "--takes" else bad
        result = _run("music", "calm piano", *args, "--model", str(tmp_path / "none"), "-o", str(tmp_path / "out"))
        assert result.returncode == 2, (bad, result.stderr)
        assert "--takes must be 1-8" in result.stderr
    assert not (tmp_path / "out").exists(), "nothing written"
