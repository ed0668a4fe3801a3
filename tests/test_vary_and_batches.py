"""Variations of a clip (/genbridge/drum/vary) and pool refills made in batches."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import soundfile as sf
from conftest import TINY_LENGTH, TINY_RATE, build_tiny_model, pools_full, write_config

from models.diffusion import load_generator


def _vary(client, instrument, source, strength, seed, steps=0, rid="v"):
    """The id comes after every positional argument, the optional seed and steps included."""
    client.send("/genbridge/drum/vary", instrument, source, strength, seed, steps, rid)
    reply = client.recv(timeout=120)
    if reply.address == "/genbridge/error":
        return reply
    assert reply.address == "/genbridge/job/started", reply
    ready = client.expect("/genbridge/drum/ready", timeout=120)
    client.expect("/genbridge/job/done")
    return ready


def _audio(path: str) -> np.ndarray:
    data, rate = sf.read(path, dtype="float32", always_2d=True)
    assert rate == TINY_RATE and data.shape == (TINY_LENGTH, 1)
    return data.T


def test_vary_is_deterministic_keeps_the_source_at_strength_0_and_stays_in_the_folder(
        tmp_path: Path, start_daemon) -> None:
    model = build_tiny_model(tmp_path / "model", seed=3)
    config = write_config(tmp_path / "c.toml", model, pool=1, subtype="FLOAT", instruments=("kick",))
    daemon, client = start_daemon(config)
    source = client.request("/genbridge/drum/play", "kick", reply="/genbridge/drum/played", timeout=120).args[2]

    a = _vary(client, "kick", source, 0.5, 7)
    b = _vary(client, "kick", str(Path(source).relative_to(daemon.out)), 0.5, 7)  # relative to the folder
    c = _vary(client, "kick", source, 0.5, 8)
    assert a.address == b.address == c.address == "/genbridge/drum/ready", (a, b, c)
    va, vb, vc = (_audio(r.args[2]) for r in (a, b, c))
    assert np.array_equal(va, vb), "same seed + same source + same strength = same clip"
    assert float(np.abs(va - vc).max()) > 1e-3, "another seed gives another variation"
    src = _audio(source)
    assert float(np.abs(va - src).max()) > 1e-3, "strength 0.5 changes the clip"
    meta = json.loads(Path(a.args[2]).with_suffix(".json").read_text())
    assert meta["variation"] == {"source": str(Path(source).resolve()), "strength": 0.5}
    assert meta["steps"] == 2, "a variation runs strength x the model's 4 steps"

    same = _audio(_vary(client, "kick", "last", 0.0, 1).args[2])
    # Strength 0 returns the source, finished again: the same audio up to what finishing does to
    # every clip (a DC offset, the peak gain, the 10 ms fade-out at the end).
    body = slice(0, TINY_LENGTH - int(0.010 * TINY_RATE))
    x, y = src[0, body], same[0, body]
    gain, offset = np.polyfit(x, y, 1)
    assert abs(gain - 1) < 0.05, gain
    assert float(np.abs(y - (gain * x + offset)).max()) < 1e-4

    outside = tmp_path / "outside.wav"
    sf.write(outside, src.T, TINY_RATE)
    (daemon.out / "escape.wav").symlink_to(outside)
    for bad in (str(outside), "../outside.wav", "escape.wav", "/etc/passwd"):
        err = _vary(client, "kick", bad, 0.5, 1, rid="bad")
        assert err.address == "/genbridge/error", (bad, err)
        assert "outside the shared folder" in err.args[2] or "no such file" in err.args[2], err.args
    err = _vary(client, "kick", "nothing-here.wav", 0.5, 1, rid="bad")
    assert err.address == "/genbridge/error" and "no such file" in err.args[2]
    err = _vary(client, "kick", source, 1.5, 1, rid="bad")
    assert err.address == "/genbridge/error" and "strength" in err.args[2]


def test_vary_last_before_any_play_is_a_clear_error(tmp_path: Path, start_daemon) -> None:
    model = build_tiny_model(tmp_path / "model", seed=3)
    config = write_config(tmp_path / "c.toml", model, pool=0, instruments=("kick",))
    daemon, client = start_daemon(config)
    client.wait_until(lambda s: s["models"]["m"]["state"] == "ready", what="the worker")
    err = _vary(client, "kick", "last", 0.5, 1)
    assert err.address == "/genbridge/error" and "no kick clip has been played yet" in err.args[2]


def test_refills_are_made_in_batches_across_instruments(tmp_path: Path, start_daemon) -> None:
    model = build_tiny_model(tmp_path / "model", seed=3)
    config = write_config(tmp_path / "c.toml", model, pool=3, extra="")
    config.write_text(config.read_text().replace("[engine]\n", "[engine]\nrefill_batch = 4\n"))
    daemon, client = start_daemon(config)
    status = client.wait_until(pools_full(), what="full pools")
    assert all(i["ready"] == i["target"] == 3 for i in status["instruments"].values()), "no overfill"
    sidecars = [json.loads(p.read_text()) for p in (daemon.out / ".pool").rglob("*.json")]
    assert len(sidecars) == 9
    assert max(m["batch"] for m in sidecars) == 4, [m["batch"] for m in sidecars]
    assert len({m["seed"] for m in sidecars}) == 9


def test_a_batch_gives_the_clips_its_seeds_give_alone(tiny_model: Path) -> None:
    gen = load_generator(tiny_model, name="t")
    batch = gen.generate_batch([5, 6, 7], 4, sampler="dpmpp2m")
    for seed, clip in zip((5, 6, 7), batch):
        assert float(np.abs(clip - gen.generate(seed, 4, sampler="dpmpp2m")).max()) < 1e-4
