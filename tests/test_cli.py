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
