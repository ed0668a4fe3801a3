"""Velocity in the timbre: a model conditioned on velocity gets an instrument's fresh clips per band.

A soft hit of such a model is its own sound (made as the data's soft layers sound), so a clip
made for a hard hit is the wrong one for a soft hit: each band (engine.velocity_bands) keeps its
own fresh clips, a hit takes from the band nearest its velocity (OSC's drum/play velocity, a
MIDI note's), refills go to the emptiest band, and a model that ignores velocity keeps the one
pool it always had. Most tests hand the engine an in-process worker (no processes); the last
drives the daemon with a real tiny velocity-conditioned model over OSC.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from conftest import TINY_LENGTH, TINY_RATE, pools_full, write_config
from helpers import assert_valid_clip
from test_engine_inprocess import until

from bridge.config import config_from_mapping
from bridge.engine import Engine, EngineError
from bridge.folder_writer import FolderWriter
from bridge.sinks.folder import FolderSink
from bridge.worker_handle import WorkerSpec
from models.generator import get_family

RATE, LENGTH = 8000, 800
SOFT, MEDIUM, HARD = (round(v / 127, 4) for v in (40, 80, 120))


class VelocityWorker:
    """Answers renders on the next loop turn (or when released); each clip's sidecar says the
    velocity it was made at, as the diffusion family's do, when the model is conditioned on it."""

    def __init__(self, spec: WorkerSpec, loop: asyncio.AbstractEventLoop, on_message: Any, on_exit: Any,
                 velocity: bool, classes: list[str] | None) -> None:
        self.spec, self.loop, self.on_message, self.on_exit = spec, loop, on_message, on_exit
        self.velocity, self.classes = velocity, classes
        self.renders: list[list[dict[str, Any]]] = []
        self.held: list[dict[str, Any]] = []
        self.hold = False
        self.pid, self.restarts = 4343, 0

    def start(self) -> None:
        info = {"family": "in-process", "sample_rate": RATE, "channels": 1, "length": LENGTH, "device": "cpu",
                "device_name": "test", "precision": "fp32", "classes": self.classes,
                "capabilities": {"variations": False, "batches": True, "velocity": self.velocity},
                "details": {"default_velocity": 0.8} if self.velocity else {}}
        self.loop.call_soon(self.on_message, {"op": "ready", "info": info, "memory": {}})

    def send(self, msg: dict[str, Any]) -> bool:
        if msg["op"] == "render":
            self.renders.append(msg["tasks"])
            self.held.append(msg)
            if not self.hold:
                self.release()
        return True

    def release(self) -> None:
        """Answer the renders held so far."""
        for msg in self.held:
            for t in msg["tasks"]:
                audio = np.exp(-np.arange(LENGTH) / 100) * np.sin(np.arange(LENGTH) * (0.1 + t["seed"] % 7))
                meta = {"model": self.spec.model_name, "seed": t["seed"], "instrument": t["instrument"],
                        "model_signature": get_family(self.spec.family).signature(self.spec.model_path)}
                if self.velocity:
                    meta["velocity"] = round(0.8 if t["velocity"] is None else t["velocity"], 4)
                self.loop.call_soon(self.on_message, {"op": "clip", "task": t["task"], "sample_rate": RATE,
                                                      "audio": audio.astype(np.float32)[None], "meta": meta})
        self.held = []

    def stop(self) -> None:
        pass

    def health(self) -> dict[str, Any]:
        return {"restarts": 0, "last_exit": None}


def make_engine(tmp_path: Path, model: Path, *, velocity: bool = True, classes: list[str] | None = None,
                instruments: tuple[str, ...] = ("kick",), pool: int = 2, batch: int = 4,
                engine: dict[str, Any] | None = None) -> tuple[Engine, list[VelocityWorker], FolderWriter]:
    config = config_from_mapping({
        "audio": {"device": "none"}, "engine": {"refill_batch": batch, **(engine or {})},
        "models": {"m": {"path": str(model)}},
        "instruments": {name: {"model": "m", "pool": pool} for name in instruments},
    })
    made: list[VelocityWorker] = []

    def factory(spec: WorkerSpec, loop: Any, on_message: Any, on_exit: Any) -> VelocityWorker:
        made.append(VelocityWorker(spec, loop, on_message, on_exit, velocity, classes))
        return made[-1]

    writer = FolderWriter(FolderSink(tmp_path / "out"))
    return Engine(config, writer, workers=factory), made, writer




def _full(engine: Engine) -> bool:
    return all(len(p) == p.target and not p.in_flight for p in engine.pools.values())


def _sidecar_velocity(path: Path) -> float | None:
    return json.loads(path.with_suffix(".json").read_text()).get("velocity")


def test_a_soft_and_a_hard_hit_are_served_from_their_own_bands(tmp_path: Path, tiny_model: Path) -> None:
    async def run() -> None:
        engine, made, writer = make_engine(tmp_path, tiny_model, pool=2)
        await engine.start()
        await until(lambda: _full(engine), "every band full")
        kick = engine.status()["instruments"]["kick"]
        assert [(b["velocity"], b["ready"], b["target"]) for b in kick["bands"]] == [(40, 2, 2), (80, 2, 2),
                                                                                      (120, 2, 2)]
        assert (kick["ready"], kick["target"]) == (6, 6), "the instrument's totals, as status always said"
        asked = len(made[0].renders)
        soft = await engine.play("kick", 30 / 127)
        hard = await engine.play("kick", 1.0)
        tie = await engine.play("kick", 100 / 127)  # as far from 80 as from 120: the harder band
        assert soft.fresh and hard.fresh and tie.fresh
        assert [_sidecar_velocity(r.path) for r in (soft, hard, tie)] == [SOFT, HARD, HARD]
        assert soft.velocity == pytest.approx(30 / 127), "the mixer still gets the hit's own velocity"
        # the holes are refilled at their bands' velocities
        await until(lambda: _full(engine), "the bands refilled")
        refills = sorted(t["velocity"] for r in made[0].renders[asked:] for t in r)
        assert refills == pytest.approx([40 / 127, 120 / 127, 120 / 127])
        assert engine.status()["instruments"]["kick"]["served_other_band"] == 0
        await engine.stop()
        writer.shutdown()

    asyncio.run(run())


def test_start_up_covers_every_band_once_the_default_velocitys_first(tmp_path: Path, tiny_model: Path) -> None:
    """From empty pools: the first refills are the model's default velocity's band (0.8: the 120
    band) of every instrument, and no band gets a second clip before every band has one."""
    async def run() -> None:
        engine, made, writer = make_engine(tmp_path, tiny_model, instruments=("kick", "snare", "hat"), pool=2,
                                           batch=3)
        worker_made = made
        await engine.start()
        await until(lambda: worker_made and worker_made[0].renders, "the first render")
        worker = worker_made[0]
        worker.hold = True
        assert worker.renders[0] == [dict(t, velocity=pytest.approx(120 / 127)) for t in worker.renders[0]]
        assert [t["instrument"] for t in worker.renders[0]] == ["kick", "snare", "hat"]
        bands = [b for p in engine.pools.values() for b in p.bands]
        while not _full(engine):
            worker.release()
            await until(lambda: worker.held or _full(engine), "the next render")
            # Ready or coming (rendered, or still in the writer thread): what the engine plans by.
            counts = [len(b) + b.in_flight for b in bands]
            if min(counts) == 0:
                assert max(counts) <= 1, f"a band got a second clip while another had none: {counts}"
        assert sum(len(r) for r in worker.renders) == 18, "3 instruments x 3 bands x pool 2, nothing more"
        await engine.stop()
        writer.shutdown()

    asyncio.run(run())


def test_a_dry_band_lends_the_nearest_bands_fresh_clip(tmp_path: Path, tiny_model: Path) -> None:
    async def run() -> None:
        engine, made, writer = make_engine(tmp_path, tiny_model, pool=1)
        await engine.start()
        await until(lambda: _full(engine), "every band full")
        made[0].hold = True  # nothing refills meanwhile
        plays = [await engine.play("kick", 20 / 127) for _ in range(4)]
        assert [p.fresh for p in plays] == [True, True, True, False], "fresh while any band has a clip"
        assert [_sidecar_velocity(p.path) for p in plays[:3]] == [SOFT, MEDIUM, HARD], "nearest band first"
        assert plays[3].path == plays[2].path, "then the dry policy: the last played clip"
        kick = engine.status()["instruments"]["kick"]
        assert (kick["served_fresh"], kick["served_other_band"], kick["served_replay"]) == (3, 2, 1)
        await engine.stop()
        writer.shutdown()

    asyncio.run(run())


def test_a_model_without_velocity_conditioning_keeps_one_pool(tmp_path: Path, tiny_model: Path) -> None:
    async def run() -> None:
        engine, made, writer = make_engine(tmp_path, tiny_model, velocity=False, pool=3)
        await engine.start()
        await until(lambda: _full(engine), "the pool full")
        kick = engine.status()["instruments"]["kick"]
        assert (kick["ready"], kick["target"]) == (3, 3)
        assert kick["bands"] == [{"velocity": None, "ready": 3, "target": 3, "in_flight": 0}]
        assert [t["velocity"] for r in made[0].renders for t in r] == [None, None, None], "no velocity is asked"
        soft, hard = await engine.play("kick", 10 / 127), await engine.play("kick", 1.0)
        assert soft.fresh and hard.fresh and soft.path != hard.path
        assert _sidecar_velocity(soft.path) is None and soft.velocity == pytest.approx(10 / 127)
        # explicit generate requests pass a velocity through; the family ignores it
        done = asyncio.Event()
        engine.generate("kick", 1, velocity=0.5, on_done=lambda job: done.set())
        await asyncio.wait_for(done.wait(), 10)
        assert [t["velocity"] for r in made[0].renders for t in r].count(0.5) == 1
        await engine.stop()
        writer.shutdown()

    asyncio.run(run())


def test_bands_as_configured_one_value_and_none(tmp_path: Path, tiny_model: Path) -> None:
    """velocity_bands = [100]: one pool made at 100; [] one pool at the model's default velocity."""
    async def run() -> None:
        for bands, made_at in (([100], 100 / 127), ([], None)):
            engine, made, writer = make_engine(tmp_path / str(len(bands)), tiny_model, pool=2,
                                               engine={"velocity_bands": bands})
            await engine.start()
            await until(lambda e=engine: _full(e), "the pool full")
            assert len(engine.pools["kick"].bands) == 1 and engine.pools["kick"].target == 2
            assert {t["velocity"] for r in made[0].renders for t in r} == {made_at}
            await engine.stop()
            writer.shutdown()

    asyncio.run(run())


def test_a_midi_note_velocity_picks_the_band(tmp_path: Path, tiny_model: Path) -> None:
    import mido

    from bridge.midi import MidiInput
    from bridge.service import Service

    async def run() -> None:
        engine, made, writer = make_engine(tmp_path, tiny_model, instruments=("snare",), pool=1)
        await engine.start()
        await until(lambda: _full(engine), "every band full")
        made[0].hold = True
        midi = MidiInput(engine.config, Service(engine, writer).handle)
        snare = engine.pools["snare"]
        for n, (velocity, band) in enumerate(((25, SOFT), (127, HARD), (75, MEDIUM)), start=1):
            midi.handle(mido.Message("note_on", note=38, velocity=velocity), 0.0)
            await until(lambda n=n: snare.stats.served_fresh == n, f"note {n} to play")
            assert snare.last_played is not None and snare.last_played.path is not None
            assert _sidecar_velocity(snare.last_played.path) == band, (velocity, band)
        assert snare.stats.served_other_band == 0
        await engine.stop()
        writer.shutdown()

    asyncio.run(run())


def test_an_instrument_the_model_lacks_is_refused_and_spoils_no_refill(tmp_path: Path, tiny_model: Path) -> None:
    """A class-conditioned model asked for an instrument it does not make: status and plays say
    why once it is loaded; the other instruments' refills are never batched with the bad one."""
    async def run() -> None:
        engine, made, writer = make_engine(tmp_path, tiny_model, classes=["kick", "snare"],
                                           instruments=("kick", "crash"), pool=1)
        await engine.start()
        await until(lambda: len(engine.pools["kick"]) == 3, "the kick bands")
        assert {t["instrument"] for r in made[0].renders for t in r} == {"kick"}
        error = engine.status()["instruments"]["crash"]["error"]
        assert "makes kick, snare, not 'crash'" in error and "instruments.crash" in error
        with pytest.raises(EngineError, match="not 'crash'"):
            await engine.play("crash", 1.0)
        with pytest.raises(EngineError, match="not 'crash'"):
            engine.generate("crash", 1)
        assert engine.status()["instruments"]["kick"]["error"] is None
        await engine.stop()
        writer.shutdown()

    asyncio.run(run())


def test_a_restarted_daemon_keeps_its_clips_in_their_bands(tmp_path: Path, tiny_model: Path) -> None:
    async def run() -> None:
        engine, made, writer = make_engine(tmp_path, tiny_model, pool=2)
        await engine.start()
        await until(lambda: _full(engine), "every band full")
        await engine.stop()
        writer.shutdown()
        again, made_again, writer_again = make_engine(tmp_path, tiny_model, pool=2)
        await again.start()
        await until(lambda: made_again and again.slots["m"].state == "ready", "the model")
        kick = again.status()["instruments"]["kick"]
        assert kick["restored"] == 6 and [b["ready"] for b in kick["bands"]] == [2, 2, 2]
        assert not made_again[0].renders, "nothing to make: every band came back full"
        await again.stop()
        writer_again.shutdown()

    asyncio.run(run())


def test_soft_and_hard_hits_of_a_velocity_model_over_osc(tmp_path: Path, tiny_velocity_model: Path,
                                                         start_daemon) -> None:
    """The real worker and model: a soft and a hard drum/play get fresh clips made at their bands'
    velocities (another sound, not only another level), and drum/generate takes a velocity by name."""
    config = write_config(tmp_path / "c.toml", tiny_velocity_model, pool=1, instruments=("kick", "snare"))
    daemon, client = start_daemon(config)
    status = client.wait_until(pools_full(), what="every band full")
    assert [b["velocity"] for b in status["instruments"]["kick"]["bands"]] == [40, 80, 120]
    assert status["models"]["m"]["info"]["capabilities"]["velocity"] is True
    played = "/genbridge/drum/played"
    _, _, soft_path, soft_fresh = client.request("/genbridge/drum/play", "kick", 30, "s", reply=played).args
    _, _, hard_path, hard_fresh = client.request("/genbridge/drum/play", "kick", 127, "h", reply=played).args
    assert (soft_fresh, hard_fresh) == (1, 1)
    soft = assert_valid_clip(soft_path, sample_rate=TINY_RATE, frames=TINY_LENGTH, channels=1)
    hard = assert_valid_clip(hard_path, sample_rate=TINY_RATE, frames=TINY_LENGTH, channels=1)
    assert (soft["velocity"], hard["velocity"]) == (SOFT, HARD)
    paths = {}
    for velocity in (40, 127):  # the same seed at two velocities: two different sounds
        client.send("/genbridge/kw/drum/generate", "snare", "velocity", velocity, "seed", 11, "id", velocity)
        assert client.expect("/genbridge/job/started").args[0] == velocity
        paths[velocity] = client.expect("/genbridge/drum/ready").args[2]
        client.expect("/genbridge/job/done")
        meta = assert_valid_clip(paths[velocity], sample_rate=TINY_RATE, frames=TINY_LENGTH, channels=1)
        assert (meta["velocity"], meta["seed"]) == (round(velocity / 127, 4), 11)
    import soundfile as sf

    soft_snare, hard_snare = (sf.read(paths[v], dtype="float32")[0] for v in (40, 127))
    assert float(np.abs(soft_snare - hard_snare).max()) > 1e-2, "velocity changed the sound itself"
