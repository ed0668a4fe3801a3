"""ONNX export of the denoiser: parity with torch, and the daemon serving from onnxruntime."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import numpy as np
import soundfile as sf
import torch
from conftest import TINY_LENGTH, TINY_RATE, build_tiny_model, write_config
from helpers import GENBRIDGE, REPO

from bridge.finishing import FinishingSettings, finish_clip
from models.diffusion import load_generator


def test_cli_export_checks_parity_and_writes_metadata(tmp_path: Path, tiny_model: Path) -> None:
    out = tmp_path / "tiny.onnx"
    result = subprocess.run([*GENBRIDGE, "export", "onnx", str(tiny_model), "-o", str(out)], cwd=REPO,
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert "max abs error" in result.stdout
    meta = json.loads(out.with_name(out.name + ".json").read_text())
    assert meta["parity"]["max_abs"] < 1e-4 and meta["parity"]["batches"] == [1, 2]
    assert (meta["sample_rate"], meta["length"], meta["channels"]) == (TINY_RATE, TINY_LENGTH, 1)
    import onnxruntime as ort

    session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    shapes = {i.name: i.shape for i in session.get_inputs()}
    assert shapes["x"][0] == "batch" and shapes["sigma"][0] == "batch", shapes


def test_daemon_serves_from_onnxruntime_the_same_clips(tmp_path: Path, start_daemon) -> None:
    model = build_tiny_model(tmp_path / "model", seed=4)
    config = write_config(tmp_path / "c.toml", model, pool=1, subtype="FLOAT", instruments=("kick",),
                          extra="")
    config.write_text(config.read_text().replace('[models.m]\n', '[models.m]\nruntime = "onnx"\n'))
    daemon, client = start_daemon(config)
    status = client.wait_until(lambda s: s["models"]["m"]["state"] == "ready", what="the onnx worker")
    assert status["models"]["m"]["info"]["runtime"] == "onnx"
    assert (model / "denoiser.onnx").is_file(), "exported on first use, beside the model"
    assert "exporting" in daemon.log()
    client.send("/genbridge/drum/generate", "kick", 1, 11, 0, "ort")
    client.expect("/genbridge/job/started")
    path = client.expect("/genbridge/drum/ready").args[2]
    meta = json.loads(Path(path).with_suffix(".json").read_text())
    assert meta["runtime"] == "onnx" and meta["seed"] == 11
    served, _ = sf.read(path, dtype="float32", always_2d=True)
    gen = load_generator(model, name="m")
    want, _ = finish_clip(gen.generate(11, meta["steps"]), TINY_RATE, FinishingSettings())
    assert float(np.abs(served.T - want).max()) < 1e-3, "the same seed gives the same clip on either runtime"


def test_an_export_is_reused_until_the_model_changes(tmp_path: Path, start_daemon) -> None:
    model = build_tiny_model(tmp_path / "model", seed=5)
    config = write_config(tmp_path / "c.toml", model, pool=0, instruments=("kick",))
    config.write_text(config.read_text().replace('[models.m]\n', '[models.m]\nruntime = "onnx"\n'))
    logs, signatures = [], []
    for rebuild in (False, False, True):
        if rebuild:
            build_tiny_model(tmp_path / "model", seed=6)  # new weights in the same folder; the export stays
        daemon, client = start_daemon(config)
        client.wait_until(lambda s: s["models"]["m"]["state"] == "ready", what="the onnx worker")
        daemon.stop()
        logs.append(daemon.log())
        signatures.append(json.loads((model / "denoiser.onnx.json").read_text())["source_signature"])
    assert ["exporting" in log for log in logs] == [True, False, True]
    assert signatures[0] == signatures[1] != signatures[2]


def test_a_class_conditioned_model_exports_with_a_label_input(tmp_path: Path) -> None:
    from conftest import TINY_UNET
    from drum_samples import write_sample_folder

    from export.onnx import export_denoiser
    from models.onnx_runtime import load_onnx_generator
    from models.training import TrainSettings, train

    result = train(TrainSettings(data=[str(write_sample_folder(tmp_path / "s"))], out=str(tmp_path / "run"),
                                 arch={"sample_rate": TINY_RATE, "length": TINY_LENGTH, "unet": TINY_UNET},
                                 steps=2, batch=2, held_out=[], threads=1, output_lowpass={"kick": 3000}),
                   progress=False)
    onnx_file = tmp_path / "drums.onnx"
    meta = export_denoiser(result.model_dir, onnx_file)
    assert meta["classes"] == ["kick", "snare", "hat"] and meta["parity"]["max_abs"] < 1e-4
    assert meta["output_lowpass_hz"] == {"kick": 3000.0}
    ort_gen = load_onnx_generator(onnx_file, name="d", threads=1)
    torch_gen = load_generator(result.model_dir, name="d")
    for inst in ("kick", "hat"):
        got, want = ort_gen.generate(5, 3, instrument=inst), torch_gen.generate(5, 3, instrument=inst)
        assert float(np.abs(got - want).max()) < 1e-4, "the same clip, the kick's high-cut included"
    torch_gen.info.output_lowpass_hz = {}
    assert float(np.abs(ort_gen.generate(5, 3, instrument="kick") - torch_gen.generate(5, 3, instrument="kick")
                        ).max()) > 1e-3, "onnxruntime applies the high-cut too"


def test_a_velocity_conditioned_model_exports_with_a_velocity_input(tmp_path: Path) -> None:
    from conftest import TINY_UNET
    from drum_samples import write_sample_folder
    from safetensors.torch import load_file, save_file

    from export.onnx import export_denoiser
    from models.diffusion import VELOCITY_EMBEDDING_KEY
    from models.onnx_runtime import load_onnx_generator
    from models.training import TrainSettings, train

    result = train(TrainSettings(data=[str(write_sample_folder(tmp_path / "s"))], out=str(tmp_path / "run"),
                                 arch={"sample_rate": TINY_RATE, "length": TINY_LENGTH, "unet": TINY_UNET},
                                 steps=1, batch=2, held_out=[], threads=1, amplitude_power=0.5), progress=False)
    weights = result.model_dir / "model.safetensors"
    tensors = load_file(str(weights))  # knots apart, as thousands of training steps would move them
    tensors[VELOCITY_EMBEDDING_KEY] = torch.randn(tensors[VELOCITY_EMBEDDING_KEY].shape, dtype=torch.float16) * 3
    save_file(tensors, str(weights))
    onnx_file = tmp_path / "drums.onnx"
    meta = export_denoiser(result.model_dir, onnx_file)
    assert meta["velocity"] is True and meta["amplitude_power"] == 0.5 and meta["parity"]["max_abs"] < 1e-4
    ort_gen = load_onnx_generator(onnx_file, name="d", threads=1)
    torch_gen = load_generator(result.model_dir, name="d")
    assert ort_gen.info.velocity and ort_gen.info.amplitude_power == 0.5
    got = ort_gen.generate_batch([5, 5], 3, instruments=["snare", "snare"], velocities=[0.3, 0.95])
    want = torch_gen.generate_batch([5, 5], 3, instruments=["snare", "snare"], velocities=[0.3, 0.95])
    assert all(float(np.abs(g - w).max()) < 1e-4 for g, w in zip(got, want)), "the same clips on either runtime"
    assert float(np.abs(got[0] - got[1]).max()) > 1e-3, "the soft and the hard hit differ"
