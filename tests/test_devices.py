"""Device placement: "auto" is the CPU here, a GPU this machine lacks is a config error at start."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import TINY_LENGTH, TINY_RATE, write_config
from helpers import REPO, assert_valid_clip


def genbridge(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "bridge", *args], cwd=REPO, capture_output=True, text=True,
                          timeout=timeout)


def cuda_here() -> bool:
    import torch

    return torch.cuda.is_available()


def test_auto_runs_on_the_cpu_and_status_and_sidecar_say_so(tmp_path: Path, tiny_model: Path, start_daemon) -> None:
    config = write_config(tmp_path / "c.toml", tiny_model, pool=1, instruments=("kick",))
    _, client = start_daemon(config)
    status = client.wait_until(lambda s: s["instruments"]["kick"]["ready"] == 1, what="the pool")
    model = status["models"]["m"]
    expected = "cuda:0" if cuda_here() else "cpu"
    assert model["device"] == expected and model["info"]["device"] == expected
    assert model["device_name"], "the device has a name (CPU model or GPU)"
    assert model["info"]["precision"] == ("bf16" if cuda_here() else "fp32"), "auto precision"
    assert (model["memory"].get("rss_mb") or model["memory"].get("allocated_mb") or 0) > 0
    reply = client.request("/genbridge/drum/play", "kick", reply="/genbridge/drum/played")
    meta = assert_valid_clip(reply.args[2], sample_rate=TINY_RATE, frames=TINY_LENGTH, channels=1)
    assert meta["device"] == expected and meta["family"] == "diffusion"


@pytest.mark.skipif("cuda_here()", reason="this machine has a CUDA GPU")
@pytest.mark.parametrize("device,key", [("cuda", "models.m.device"), ("cuda:1", "models.m.device")])
def test_a_gpu_this_machine_lacks_is_a_config_error(tmp_path: Path, tiny_model: Path, device: str, key: str) -> None:
    config = write_config(tmp_path / "c.toml", tiny_model, instruments=("kick",))
    config.write_text(config.read_text().replace("[models.m]", f'[models.m]\ndevice = "{device}"'))
    run = genbridge("serve", "--config", str(config), "--osc-port", "0")
    assert run.returncode == 2, run.stderr
    assert f"config error: {key}" in run.stderr and "sees no CUDA GPU" in run.stderr


@pytest.mark.skipif("cuda_here()", reason="this machine has a CUDA GPU")
def test_device_flags_are_checked_like_the_file(tmp_path: Path, tiny_model: Path) -> None:
    config = write_config(tmp_path / "c.toml", tiny_model, instruments=("kick",))
    run = genbridge("serve", "--config", str(config), "--device", "cuda")
    assert run.returncode == 2 and "config error: --device" in run.stderr
    run = genbridge("generate", "kick", "-n", "1", "-o", str(tmp_path / "o"), "--config", str(config),
                    "--device", "cuda")
    assert run.returncode == 2 and "--device" in run.stderr and not (tmp_path / "o").exists()
    run = genbridge("serve", "--config", str(config), "--device", "tpu")
    assert run.returncode == 2 and "'auto', 'cpu', 'cuda' or 'cuda:N'" in run.stderr
    cont = tmp_path / "cont.toml"
    cont.write_text(config.read_text() + f'\n[continuation]\nmodel = "{tiny_model}"\ndevice = "cuda"\n')
    run = genbridge("serve", "--config", str(cont))
    assert run.returncode == 2 and "continuation.device" in run.stderr


def test_generate_on_the_cpu_writes_the_device_into_the_sidecar(tmp_path: Path, tiny_model: Path) -> None:
    config = write_config(tmp_path / "c.toml", tiny_model, instruments=("kick",))
    run = genbridge("generate", "kick", "-n", "2", "--seed", "5", "-o", str(tmp_path / "o"), "--config",
                    str(config), "--device", "cpu")
    assert run.returncode == 0, run.stderr
    wavs = sorted((tmp_path / "o").glob("*.wav"))
    assert len(wavs) == 2
    metas = [assert_valid_clip(w, sample_rate=TINY_RATE, frames=TINY_LENGTH, channels=1) for w in wavs]
    assert [m["seed"] for m in metas] == [5, 6] and {m["device"] for m in metas} == {"cpu"}


def test_fp16_on_a_cpu_fails_the_model_with_a_clear_error(tmp_path: Path, tiny_model: Path, start_daemon) -> None:
    config = write_config(tmp_path / "c.toml", tiny_model, instruments=("kick",))
    config.write_text(config.read_text().replace("[models.m]", '[models.m]\nprecision = "fp16"\ndevice = "cpu"'))
    _, client = start_daemon(config)
    status = client.wait_until(lambda s: s["models"]["m"]["state"] == "failed", what="the model to fail")
    assert "fp16" in status["models"]["m"]["error"] and "CUDA" in status["models"]["m"]["error"]
    client.send("/genbridge/drum/play", "kick", 100, "p")
    error = client.expect("/genbridge/error")
    assert error.args[0] == "p" and "failed to load" in error.args[2]


def test_devices_lists_compute_devices() -> None:
    run = genbridge("devices")
    assert run.returncode == 0
    assert "compute devices:" in run.stdout and "  cpu: " in run.stdout
    assert ("cuda:0:" if cuda_here() else "cuda: none") in run.stdout
    assert "onnxruntime" in run.stdout and "CPUExecutionProvider" in run.stdout


def test_the_same_seed_gives_the_same_clip_whatever_the_batch(tiny_model: Path) -> None:
    """The noise of a seed comes from a generator of its own on the model's device."""
    import numpy as np

    from models.diffusion import load_generator

    gen = load_generator(tiny_model, name="t", device="auto")
    alone = gen.generate(11, 3)
    batched = gen.generate_batch([3, 11, 5], 3)
    assert np.allclose(alone, batched[1], atol=1e-5)
    assert not np.allclose(batched[0], batched[1])
    json.dumps(gen.info.to_json())  # what the worker sends is JSON
