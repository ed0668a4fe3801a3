"""A model family from outside the tree, served by the daemon through the generator seam alone.

The family below lives in a plugin module the test writes into its own folder (as a user's
would): the config names it by import path, and the daemon's engine, worker body and sidecar
code serve it unchanged - pools, drum/play, drum/generate, its own parameter check.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from helpers import assert_valid_clip

PLUGIN = '''
import json
from pathlib import Path

import numpy as np

from models.generator import Capabilities, Family, Generator, GeneratorError, GeneratorInfo, Rendered


class ToneGenerator(Generator):
    def __init__(self, spec):
        cfg = json.loads((Path(spec.path) / "tone.json").read_text())
        self.rate, self.length = int(cfg["sample_rate"]), int(cfg["length"])
        self.info = GeneratorInfo(
            family="fake-tone", name=spec.name, sample_rate=self.rate, channels=1, length=self.length,
            capabilities=Capabilities(batches=True), device="cpu", device_name="a test's tone maker",
            details={"source": spec.path, "trained": True, "weights": "none", "runtime": "numpy"})

    def render(self, requests, params, progress=None):
        t = np.arange(self.length) / self.rate
        out = []
        for r in requests:
            hz = 100 + r.seed % 1000
            audio = (np.sin(2 * np.pi * hz * t) * np.exp(-8 * t)).astype(np.float32)[None]
            out.append(Rendered(audio, {"steps": int(params.get("steps") or 1), "tone_hz": hz}))
        return out


class ToneFamily(Family):
    def check_params(self, params, info):
        if (params.get("steps") or 0) > 50:
            raise GeneratorError("the tone family renders at most 50 steps")
        return dict(params)

    def load(self, spec):
        return ToneGenerator(spec)
'''

RATE, LENGTH = 16000, 8000


def test_a_plugged_in_family_is_served_without_engine_changes(tmp_path: Path, start_daemon) -> None:
    plugins = tmp_path / "plugins"
    plugins.mkdir()
    (plugins / "tone_family.py").write_text(PLUGIN)
    model = tmp_path / "tone-model"
    model.mkdir()
    (model / "tone.json").write_text(json.dumps({"sample_rate": RATE, "length": LENGTH}))
    config = tmp_path / "c.toml"
    config.write_text(f'''
[audio]
device = "none"
[models.tone]
path = "{model}"
family = "tone_family:ToneFamily"
[instruments.kick]
model = "tone"
pool = 2
''')
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(plugins), os.environ.get("PYTHONPATH", "")]))
    daemon, client = start_daemon(config, env=env)
    status = client.wait_until(lambda s: s["instruments"]["kick"]["ready"] == 2, what="the tone pool")
    model_status = status["models"]["tone"]
    assert model_status["family"] == "fake-tone" and model_status["device"] == "cpu"
    assert model_status["info"]["capabilities"]["batches"] is True

    reply = client.request("/genbridge/drum/play", "kick", 100, reply="/genbridge/drum/played")
    meta = assert_valid_clip(reply.args[2], sample_rate=RATE, frames=LENGTH, channels=1)
    assert meta["family"] == "fake-tone" and meta["tone_hz"] == 100 + meta["seed"] % 1000
    assert meta["model"] == "tone" and meta["instrument"] == "kick"

    # the family's own check refuses before anything is queued
    client.send("/genbridge/drum/generate", "kick", 2, 7, 60, "too-many")
    error = client.expect("/genbridge/error")
    assert error.args[0] == "too-many" and "at most 50 steps" in error.args[2]
    assert client.status()["jobs"]["active"] == 0

    client.send("/genbridge/drum/generate", "kick", 1, 7, 3, "ok")
    client.expect("/genbridge/job/started")
    ready = client.expect("/genbridge/drum/ready")
    meta = assert_valid_clip(ready.args[2], sample_rate=RATE, frames=LENGTH, channels=1)
    assert (meta["seed"], meta["steps"], meta["tone_hz"]) == (7, 3, 107)
    assert client.expect("/genbridge/job/done").args[0] == "ok"


def test_an_unknown_family_is_a_config_error(tmp_path: Path, tiny_model: Path) -> None:
    import subprocess
    import sys

    from helpers import REPO

    config = tmp_path / "c.toml"
    config.write_text(f'[models.m]\npath = "{tiny_model}"\nfamily = "granular"\n[instruments.kick]\nmodel = "m"\n')
    run = subprocess.run([sys.executable, "-m", "bridge", "serve", "--config", str(config)], cwd=REPO,
                         capture_output=True, text=True, timeout=60)
    assert run.returncode == 2
    assert "models.m.family" in run.stderr and "diffusion" in run.stderr
