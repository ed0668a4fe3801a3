"""Corrupt model files and sources that are not audio: each one a clear error that names the file,
nothing else disturbed (the other model plays on, the daemon serves on, the CLI prints one line)."""

from __future__ import annotations

import json
import random
import subprocess
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pytest
import soundfile as sf
from conftest import TINY_LENGTH, TINY_RATE, build_tiny_model, pools_full, write_config
from helpers import GENBRIDGE, REPO, assert_valid_clip

from models.diffusion import ModelLoadError
from models.generator import GeneratorError, LoadSpec, get_family
from models.signature import source_signature

ERROR = "/genbridge/error"
MUSICGEN = Path(__file__).resolve().parent / "fixtures" / "musicgen" / "audiocraft"


def _garbage(n: int, seed: int = 7) -> bytes:
    return random.Random(seed).randbytes(n)


def _truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def _lie(folder: Path, **unet: Any) -> None:
    """Make ``config.json`` describe another U-Net than the weights hold."""
    config = json.loads((folder / "config.json").read_text())
    config["unet"].update(unet)
    (folder / "config.json").write_text(json.dumps(config, indent=2))


def _ckpt(folder: Path) -> Path:
    from test_checkpoints import build_tiny_audio_diffusion_ckpt

    return build_tiny_audio_diffusion_ckpt(folder)


def _garbage_onnx(folder: Path) -> Path:
    """A model whose exported denoiser.onnx is garbage while its metadata still calls it fresh
    (what a disk error or an interrupted copy leaves): the daemon loads it rather than export."""
    model = build_tiny_model(folder)
    (model / "denoiser.onnx").write_bytes(_garbage(4096))
    meta = {"source": str(model), "source_signature": source_signature(model), "sample_rate": TINY_RATE,
            "length": TINY_LENGTH, "channels": 1, "default_steps": 4}
    (model / "denoiser.onnx.json").write_text(json.dumps(meta))
    return model / "denoiser.onnx"


def truncated_safetensors(folder: Path) -> tuple[Path, Path]:
    model = build_tiny_model(folder)
    _truncate(model / "model.safetensors")
    return model, model / "model.safetensors"


def random_bytes_safetensors(folder: Path) -> tuple[Path, Path]:
    model = build_tiny_model(folder)
    (model / "model.safetensors").write_bytes(_garbage(5000))
    return model, model / "model.safetensors"


def truncated_ckpt(folder: Path) -> tuple[Path, Path]:
    ckpt = _ckpt(folder)
    _truncate(ckpt)
    return ckpt, ckpt


def garbage_ckpt(folder: Path) -> tuple[Path, Path]:
    ckpt = _ckpt(folder)
    ckpt.write_bytes(_garbage(3000))
    return ckpt, ckpt


def garbage_onnx(folder: Path) -> tuple[Path, Path]:
    onnx = _garbage_onnx(folder)
    return onnx.parent, onnx


def config_lying(**unet: Any) -> Callable[[Path], tuple[Path, Path]]:
    def build(folder: Path) -> tuple[Path, Path]:
        model = build_tiny_model(folder)
        _lie(model, **unet)
        return model, model / "config.json"

    return build


#: kind -> (build(folder) -> (the path a config names, the file the error must name), family)
CORRUPT: dict[str, tuple[Callable[[Path], tuple[Path, Path]], str]] = {
    "truncated-safetensors": (truncated_safetensors, "diffusion"),
    "random-bytes-safetensors": (random_bytes_safetensors, "diffusion"),
    "truncated-ckpt": (truncated_ckpt, "diffusion"),
    "garbage-ckpt": (garbage_ckpt, "diffusion"),
    "garbage-onnx": (garbage_onnx, "diffusion-onnx"),
    "config-lies-about-channels": (config_lying(channels=[8, 16, 64]), "diffusion"),  # a layer width
    "config-lies-about-input-channels": (config_lying(in_channels=2), "diffusion"),
    "config-lies-about-factors": (config_lying(factors=[1, 4, 3]), "diffusion"),
}


def corrupt_model(kind: str, folder: Path) -> tuple[Path, Path, str]:
    build, family = CORRUPT[kind]
    model, named = build(folder)
    return model, named, family


def _runtime_line(family: str) -> str:
    return 'runtime = "onnx"\n' if family == "diffusion-onnx" else ""


@pytest.mark.parametrize("kind", list(CORRUPT))
def test_a_corrupt_model_is_an_error_naming_the_file_in_the_family_and_the_cli(tmp_path: Path, kind: str) -> None:
    model, named, family = corrupt_model(kind, tmp_path / "bad")
    with pytest.raises((ModelLoadError, GeneratorError)) as failed:
        get_family(family).load(LoadSpec(name="bad", path=str(model)))
    assert str(named) in str(failed.value), failed.value

    config = write_config(tmp_path / "c.toml", model, instruments=("kick",))
    config.write_text(config.read_text().replace("[models.m]\n", "[models.m]\n" + _runtime_line(family)))
    out = tmp_path / "clips"
    result = subprocess.run([*GENBRIDGE, "generate", "kick", "-n", "1", "-o", str(out), "--config", str(config)],
                            cwd=REPO, capture_output=True, text=True, timeout=120)
    assert result.returncode == 1, (result.returncode, result.stderr[-2000:])
    assert str(named) in result.stderr, result.stderr[-2000:]
    assert "Traceback" not in result.stderr, result.stderr[-2000:]
    assert not out.exists() or not list(out.rglob("*.wav"))


def _two_models(tmp_path: Path, good: Path, bad: Path, bad_family: str) -> Path:
    config = tmp_path / "two.toml"
    config.write_text(f"""
[audio]
device = "none"

[engine]
threads = 1

[models.good]
path = "{good}"

[models.bad]
path = "{bad}"
{_runtime_line(bad_family)}
[instruments.kick]
model = "good"
pool = 2

[instruments.snare]
model = "bad"
pool = 2
""")
    return config


@pytest.mark.parametrize("kind", ["truncated-safetensors", "garbage-ckpt", "garbage-onnx",
                                  "config-lies-about-channels"])
def test_a_corrupt_model_fails_alone_while_the_good_one_plays_fresh(tmp_path: Path, tiny_model: Path,
                                                                    start_daemon: Any, kind: str) -> None:
    bad, named, family = corrupt_model(kind, tmp_path / "bad")
    daemon, client = start_daemon(_two_models(tmp_path, tiny_model, bad, family))
    status = client.wait_until(lambda s: s["models"]["bad"]["state"] == "failed" and pools_full("kick")(s),
                               what="the corrupt model to fail and the good one to fill its pool")
    bad_status, good_status = status["models"]["bad"], status["models"]["good"]
    assert str(named) in bad_status["error"], bad_status["error"]
    assert "Traceback" not in bad_status["error"]
    assert good_status["state"] == "ready" and good_status["restarts"] == 0
    assert bad_status["restarts"] == 0, "a model that cannot load is not restarted in a loop"

    for rid in ("k1", "k2"):
        client.send("/genbridge/drum/play", "kick", 100, rid)
        played = client.expect("/genbridge/drum/played")
        assert played.args[0] == rid and played.args[3] == 1, played
        assert_valid_clip(played.args[2], sample_rate=TINY_RATE, frames=TINY_LENGTH, channels=1)
    client.send("/genbridge/drum/play", "snare", 100, "s1")
    err = client.expect(ERROR)
    assert err.args[0] == "s1" and "model 'bad' for snare failed to load" in err.args[2], err.args
    assert str(named) in err.args[2], err.args
    assert client.request("/genbridge/ping", 3, reply="/genbridge/pong").args[0] == 3
    assert client.status()["models"]["good"]["state"] == "ready"


def _not_audio(folder: Path) -> dict[str, Path]:
    """Files named .wav that are no WAV: random bytes, a text file, a WAV cut inside its header,
    and a WAV with a header and not one frame."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "random.wav").write_bytes(_garbage(3000))
    (folder / "notes.wav").write_text("kick on 1 and 3, snare on 2 and 4\n" * 40)
    good = folder / "good.wav"
    sf.write(good, (0.3 * np.sin(np.arange(TINY_RATE) / 10.0)).astype(np.float32), TINY_RATE, subtype="PCM_16")
    (folder / "cut-header.wav").write_bytes(good.read_bytes()[:20])
    good.unlink()
    sf.write(folder / "no-frames.wav", np.zeros(0, dtype=np.float32), TINY_RATE, subtype="PCM_16")
    return {name: folder / f"{name}.wav" for name in ("random", "notes", "cut-header", "no-frames")}


def test_a_source_that_is_not_a_wav_is_an_error_naming_it_and_the_daemon_serves_on(
        tmp_path: Path, tiny_model: Path, start_daemon: Any) -> None:
    config = write_config(tmp_path / "c.toml", tiny_model, pool=1, instruments=("kick",), extra=f"""
[continuation]
model = "{MUSICGEN}"
prompt_seconds = 1.0
max_seconds = 10
""")
    daemon, client = start_daemon(config)
    client.wait_until(lambda s: s["models"]["m"]["state"] == "ready", what="the drum model")
    for name, path in _not_audio(daemon.out / "sources").items():
        client.send("/genbridge/drum/vary", "kick", str(path), 0.4, 1, 0, f"vary-{name}")  # the id after seed, steps
        err = client.expect(ERROR)
        assert err.args[:2] == [f"vary-{name}", "/genbridge/drum/vary"], err.args
        assert str(path) in err.args[2] and "cannot read" in err.args[2], err.args

        client.send("/genbridge/continue", str(path.relative_to(daemon.out)), 2.0, "", 5, f"cont-{name}")
        err = client.expect(ERROR)
        assert err.args[:2] == [f"cont-{name}", "/genbridge/continue"], err.args
        assert str(path) in err.args[2] and "cannot read" in err.args[2], err.args

        client.send("/genbridge/drum/play", "kick", 100, f"play-{name}")
        played = client.expect("/genbridge/drum/played", timeout=60)
        assert played.args[0] == f"play-{name}" and Path(played.args[2]).is_file(), played
    status = client.status()
    assert status["models"]["m"]["state"] == "ready" and status["models"]["m"]["restarts"] == 0
    assert status["continuation"]["state"] != "failed" and status["continuation"]["queued"] == []
    assert status["continuation"]["failed"] == 0
