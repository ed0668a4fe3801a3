"""`genbridge train`: data from sample folders and Hydrogen kits, a resumable run, a model
folder the daemon serves, class conditioning, and fine-tuning a tiny-audio-diffusion checkpoint."""

from __future__ import annotations

import json
import os
import pty
import signal
import subprocess
import threading
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import TINY_LENGTH, TINY_RATE, TINY_UNET, write_config
from drum_samples import write_hydrogen_kit, write_sample_folder
from helpers import GENBRIDGE, REPO, assert_valid_clip
from test_checkpoints import build_tiny_audio_diffusion_ckpt

from models.devices import native_bf16
from models.diffusion import ConditionedUNet, load_generator
from models.drum_data import (
    DEFAULT_VELOCITY,
    TARGET_RMS_DB,
    find_samples,
    instrument_for,
    load_drum_set,
    split_held_out,
)
from models.training import (
    VELOCITY_KNOTS,
    TrainSettings,
    augment,
    clip_weights,
    describe_machine,
    emphasised_mse,
    train,
)


def test_instrument_names_from_hydrogen_kits_and_file_names() -> None:
    cases = {
        "BassDrum": "kick", "Kick (Tama Superstar 22\")": "kick", "c3 - bass drum 1": "kick",
        "Pearl Snare Rimshot": "snare", "Snare Jazz": "snare", "Snare Roll": None,
        "Hi Hat Closed": "hat", "Closed HH 2": "hat", "Hi-Hat Pedal": "hat", "drum_cymbal_closed": "hat",
        "Sabian Hat Semi-Open": "open_hat", "Hat Op Dirty": "open_hat", "hihat_opened01": "open_hat",
        "Hand Clap": "clap", "Tom Low (Tama Superstar 16\")": "tom", "Cowbell": "perc",
        "Side Stick": "rim", "Rim Click (Pearl Free Floating Maple 14x3.5)": "rim",
        "Crash 18\"": "crash", "drum_cymbal_hard": "crash", "Ride Cymbal": "ride", "Crash/Ride (Paiste 18\")": "ride",
        "Ride Bell": None, "ride-cup": None, "Zap 1": None, "drum_splash_soft": None,
    }
    assert {name: instrument_for(name) for name in cases} == cases


def test_kits_and_folders_are_found_labelled_and_prepared(tmp_path: Path) -> None:
    write_hydrogen_kit(tmp_path / "kits" / "TestKit")
    folder = write_sample_folder(tmp_path / "mine")
    samples = find_samples([tmp_path / "kits", folder])
    by_kit = {(s.kit, s.instrument) for s in samples}
    assert ("Test Kit", "kick") in by_kit and ("Test Kit", "snare") in by_kit and ("Test Kit", "hat") in by_kit
    kit_samples = [s for s in samples if s.kit == "Test Kit"]
    assert sorted(s.path.name for s in kit_samples) == ["bd_hard.wav", "bd_soft.wav", "crash.wav", "hh.wav",
                                                        "sn.wav"], "every layer of each instrument"
    assert all(s.license == "CC0" for s in kit_samples)
    velocity = {s.path.name: s.velocity for s in kit_samples}
    assert velocity["bd_soft.wav"] == 0.25 and velocity["bd_hard.wav"] == 0.75, \
        "a layer's velocity is its range's middle"
    assert velocity["sn.wav"] == DEFAULT_VELOCITY, "a lone layer is a firm hit"
    mine = [s for s in samples if s.kit == "mine"]
    assert len(mine) == 9 and "mystery" not in {s.name for s in mine}
    train_part, held = split_held_out(samples, ["TestKit"])
    assert {s.kit for s in held} == {"Test Kit"} and len(train_part) == 9

    data = load_drum_set(samples, sample_rate=22050, channels=1, length=8192)
    assert data.audio.shape == (14, 1, 8192) and data.classes == ("kick", "snare", "hat", "crash")
    assert data.counts() == {"kick": 5, "snare": 4, "hat": 4, "crash": 1}
    head_db = [20 * np.log10(np.sqrt(np.mean(clip[0, :2205] ** 2))) for clip in data.audio]
    for clip, s, level in zip(data.audio, data.samples, head_db):
        peak = np.abs(clip[0])
        # onset-aligned: the hit starts within the 2 ms pre-roll (the files start with 10-30 ms of silence)
        assert int(np.argmax(peak > 0.03 * peak.max())) < int(0.003 * 22050)
        assert level <= TARGET_RMS_DB + 0.1 and peak.max() <= 0.981
        if s.path.name != "bd_soft.wav":
            assert level > TARGET_RMS_DB - 0.1 or peak.max() > 0.97, "loudness-normalised or at the ceiling"
    # The two layers of one drum share one gain: the soft one stays as much quieter as the kit plays it
    # (its file's level times its layer gain of 0.5), not normalised up to the hard one.
    import soundfile as sf

    def file_db(name: str, gain: float) -> float:
        audio, _ = sf.read(str(tmp_path / "kits" / "TestKit" / name), dtype="float32")
        audio = audio[np.argmax(np.abs(audio) > 0.03 * np.abs(audio).max()):] * gain
        return 20 * np.log10(np.sqrt(np.mean(audio[: int(0.1 * 44100)] ** 2)))

    names = [s.path.name for s in data.samples]
    soft, hard = head_db[names.index("bd_soft.wav")], head_db[names.index("bd_hard.wav")]
    assert hard > TARGET_RMS_DB - 0.1 and soft < hard - 1.0
    assert abs((soft - hard) - (file_db("bd_soft.wav", 0.5) - file_db("bd_hard.wav", 1.0))) < 0.5
    assert np.allclose(sorted(data.velocities[data.labels == 0]), [0.25, 0.75, 0.8, 0.8, 0.8])


def _arch_file(tmp_path: Path) -> Path:
    path = tmp_path / "arch.json"
    path.write_text(json.dumps({"sample_rate": TINY_RATE, "length": TINY_LENGTH, "unet": TINY_UNET}))
    return path


def test_cli_trains_resumes_and_the_daemon_serves_the_model(tmp_path: Path, start_daemon) -> None:
    data = write_sample_folder(tmp_path / "samples")
    run = tmp_path / "run"
    base = [*GENBRIDGE, "train", str(data), "-o", str(run), "--arch", str(_arch_file(tmp_path)),
            "--batch", "2", "--threads", "1", "--hold-out", "", "--lowpass", "kick=3000"]
    first = subprocess.run(base + ["--steps", "3", "--snapshot-every", "2"], cwd=REPO, capture_output=True,
                           text=True, timeout=600)
    assert first.returncode == 0, first.stderr
    assert torch.load(run / "checkpoint.pt", weights_only=False)["step"] == 3
    snapshot = run / "snapshots" / "step-000002"
    assert sorted(p.name for p in (run / "snapshots").iterdir()) == ["step-000002"]
    assert "a snapshot at step 2" in json.loads((snapshot / "config.json").read_text())["card"]["origin"]
    assert load_generator(snapshot, name="snap").classes == ["kick", "snare", "hat"]
    second = subprocess.run(base + ["--steps", "5"], cwd=REPO, capture_output=True, text=True, timeout=600)
    assert second.returncode == 0, second.stderr
    assert "resuming" in second.stderr and "at step 3" in second.stderr
    checkpoint = torch.load(run / "checkpoint.pt", weights_only=False)
    assert checkpoint["step"] == 5 and len(checkpoint["losses"]) == 5

    model = run / "model"
    config = json.loads((model / "config.json").read_text())
    assert config["classes"] == ["kick", "snare", "hat"]
    assert config["card"]["steps"] == 5 and "genbridge train" in config["card"]["command"]
    assert config["card"]["data"]["per_instrument"] == {"kick": 3, "snare": 3, "hat": 3}
    card = (model / "MODEL_CARD.md").read_text()
    assert "5 steps" in card and "## Data licenses" in card

    cfg = write_config(tmp_path / "c.toml", model, pool=1, steps=3)
    daemon, client = start_daemon(cfg)
    for inst in ("kick", "hat"):
        reply = client.request("/genbridge/drum/play", inst, 100, reply="/genbridge/drum/played", timeout=120)
        meta = assert_valid_clip(reply.args[2], sample_rate=TINY_RATE, frames=TINY_LENGTH, channels=1)
        assert meta["instrument"] == inst and meta["trained"] is True
        assert meta["output_lowpass_hz"] == (3000.0 if inst == "kick" else None), "the sidecar says what was cut"


def _signals_as_on_a_terminal() -> None:
    """A job a non-interactive shell starts with ``&`` (as CI's runner may) inherits SIGINT
    ignored, and a run keeps an ignored signal ignored; the run under test starts as one typed
    at a terminal does, with both signals at their defaults."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)


def _train_until_signalled(command: list[str], sig: int) -> tuple[int, str]:
    """Start ``genbridge train``, send ``sig`` once it is training, and return its exit code and log.
    A run that never says it trains, or ignores the signal, is killed after 120 s (the test fails)."""
    proc = subprocess.Popen(command, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                            preexec_fn=_signals_as_on_a_terminal)
    watchdog = threading.Timer(120, proc.kill)
    watchdog.start()
    try:
        seen = []
        assert proc.stderr is not None
        for line in proc.stderr:  # the run says when it trains (the signal handlers are in place by then)
            seen.append(line)
            if "stops at the next step" in line:
                proc.send_signal(sig)
                break
        seen.append(proc.stderr.read())
        return proc.wait(), "".join(seen)
    finally:
        watchdog.cancel()
        proc.kill()
        proc.wait()


def test_ctrl_c_or_sigterm_stops_at_a_step_saves_it_and_the_same_command_goes_on(tmp_path: Path) -> None:
    data = write_sample_folder(tmp_path / "samples")
    run = tmp_path / "run"
    command = [*GENBRIDGE, "train", str(data), "-o", str(run), "--arch", str(_arch_file(tmp_path)),
               "--batch", "2", "--threads", "1", "--hold-out", "", "--steps", "100000"]
    rc, log = _train_until_signalled(command, signal.SIGINT)
    assert rc == 128 + signal.SIGINT, log
    first = torch.load(run / "checkpoint.pt", weights_only=False)
    assert first["step"] >= 1 and f"stopped by SIGINT at step {first['step']}/100000;" in log, log
    assert "run the same command again" in log and not (run / "model").exists()

    rc, log = _train_until_signalled(command, signal.SIGTERM)  # what a supervisor or `kill` sends
    assert rc == 128 + signal.SIGTERM and f"resuming {run / 'checkpoint.pt'} at step {first['step']}" in log, log
    second = torch.load(run / "checkpoint.pt", weights_only=False)
    assert second["step"] > first["step"] and f"stopped by SIGTERM at step {second['step']}/" in log, log
    assert len(second["losses"]) == second["step"], "every step up to the stop was kept"
    assert second["losses"][:first["step"]] == first["losses"], "the second run went on from the first"


def test_a_run_on_a_terminal_shows_a_progress_bar_even_one_nobody_sized(tmp_path: Path) -> None:
    data = write_sample_folder(tmp_path / "samples")
    command = [*GENBRIDGE, "train", str(data), "-o", str(tmp_path / "run"), "--arch", str(_arch_file(tmp_path)),
               "--batch", "2", "--threads", "1", "--hold-out", "", "--steps", "3"]
    master, terminal = pty.openpty()  # a new pseudo-terminal reports 0 columns until someone sizes it
    shown = b""
    try:
        proc = subprocess.Popen(command, cwd=REPO, stdin=terminal, stdout=terminal, stderr=terminal)
        os.close(terminal)
        terminal = -1
        watchdog = threading.Timer(120, proc.kill)  # a run that never ends closes the terminal too
        watchdog.start()
        try:
            while True:
                try:
                    chunk = os.read(master, 65536)
                except OSError:  # EIO: the run closed the terminal
                    break
                if not chunk:
                    break
                shown += chunk
            rc = proc.wait()
        finally:
            watchdog.cancel()
            proc.kill()
            proc.wait()
    finally:
        os.close(master)
        if terminal >= 0:
            os.close(terminal)
    assert rc == 0, shown.decode(errors="replace")
    bars = [line for line in shown.decode(errors="replace").split("\r") if line.startswith("train:")]
    assert bars and "3/3" in bars[-1] and "100%" in bars[-1] and "loss=" in bars[-1], bars


def test_a_changed_run_does_not_resume_silently(tmp_path: Path) -> None:
    data = write_sample_folder(tmp_path / "samples")
    arch = json.loads(_arch_file(tmp_path).read_text())
    settings = TrainSettings(data=[str(data)], out=str(tmp_path / "run"), arch=arch, steps=1, batch=2,
                             held_out=[], threads=1)
    train(settings, progress=False)
    settings.batch = 3
    with pytest.raises(ValueError, match="batch"):
        train(settings, progress=False)


def test_class_conditioning_changes_the_clip_and_unknown_instruments_are_refused(tmp_path: Path) -> None:
    data = write_sample_folder(tmp_path / "samples")
    arch = json.loads(_arch_file(tmp_path).read_text())
    result = train(TrainSettings(data=[str(data)], out=str(tmp_path / "run"), arch=arch, steps=2, batch=2,
                                 held_out=[], threads=1), progress=False)
    gen = load_generator(result.model_dir, name="drums")
    assert isinstance(gen.net, ConditionedUNet) and gen.classes == ["kick", "snare", "hat"]
    with torch.no_grad():  # make the embedding rows clearly different, as training does over time
        gen.net.class_embedding.weight.copy_(torch.randn_like(gen.net.class_embedding.weight) * 3)
    kick, hat, kick_again = (gen.generate(7, 4, instrument=i) for i in ("kick", "hat", "kick"))
    assert np.array_equal(kick, kick_again)
    assert float(np.abs(kick - hat).max()) > 1e-3
    with pytest.raises(ValueError, match="generates kick, snare, hat"):
        gen.generate(7, 4, instrument="cowbell")


def test_fine_tuning_a_tiny_audio_diffusion_checkpoint(tmp_path: Path) -> None:
    ckpt = build_tiny_audio_diffusion_ckpt(tmp_path / "kicks")
    data = write_sample_folder(tmp_path / "samples")
    base = dict(data=[str(data)], init=str(ckpt), steps=3, batch=2, held_out=[], threads=1, lr=1e-5)
    with pytest.raises(ValueError, match="--instrument"):
        train(TrainSettings(out=str(tmp_path / "a"), **base), progress=False)
    result = train(TrainSettings(out=str(tmp_path / "b"), instrument="kick", ema_decay=0.5, **base),
                   progress=False)
    tuned = load_generator(result.model_dir, name="tuned")
    original = load_generator(ckpt, name="orig")
    assert tuned.classes is None and tuned.arch.length == TINY_LENGTH and tuned.arch.sample_rate == TINY_RATE
    a, b = original.net.state_dict(), tuned.net.state_dict()
    assert set(a) == set(b)
    changed = sum(not torch.allclose(a[k], b[k].float()) for k in a)
    assert changed > len(a) // 2, "the weights moved"
    rel = max(float((a[k] - b[k].float()).norm() / (a[k].norm() + 1e-8)) for k in a if a[k].is_floating_point())
    assert rel < 0.05, f"fine-tuning starts from the checkpoint (largest relative change {rel:.3f})"
    card = json.loads((result.model_dir / "config.json").read_text())["card"]
    assert card["origin"].startswith("fine-tuned from") and card["data"]["per_instrument"] == {"kick": 3}
    clip = tuned.generate(3, 4)
    assert clip.shape == (1, TINY_LENGTH) and float(np.abs(clip).max()) > 0


def test_augmentation_resamples_like_interpolate_and_keeps_gain_and_polarity_in_range() -> None:
    """The batched resampler must match F.interpolate clip by clip (what it replaced), and a hit
    pitched up must end in silence rather than wrap or repeat."""
    clips = torch.randn(16, 1, 4096)
    out = augment(clips, torch.Generator().manual_seed(3))
    g = torch.Generator().manual_seed(3)  # the same draws, in the same order
    semis = torch.rand(16, generator=g) * 2 - 1
    gains = 10 ** ((torch.rand(16, generator=g) * 5 - 4) / 20)
    signs = torch.where(torch.rand(16, generator=g) < 0.5, -1.0, 1.0)
    for i in range(16):
        new_len = max(8, round(4096 / 2 ** (float(semis[i]) / 12)))
        ref = F.interpolate(clips[i : i + 1], size=new_len, mode="linear", align_corners=False)[0, :, :4096]
        ref = ref * gains[i] * signs[i]
        got = out[i, :, : ref.shape[1]]
        assert float((got - ref).abs().max()) < 0.01 * float(ref.abs().max()), i
        assert not out[i, :, ref.shape[1] :].any(), "a shortened hit ends in silence"
    assert 10 ** (-4.1 / 20) < float(gains.min()) and float(gains.max()) < 10 ** (1.1 / 20)


def test_balance_draws_rare_instruments_as_often_as_common_ones() -> None:
    labels = np.repeat(np.arange(3), [47, 132, 22])  # kicks, percussion, claps: as uneven as the kits
    share = {}
    for balance in (0.0, 1.0):
        draws = torch.multinomial(clip_weights(labels, balance), 60000, replacement=True,
                                  generator=torch.Generator().manual_seed(0))
        share[balance] = np.bincount(labels[draws.numpy()], minlength=3) / 60000
    assert np.allclose(share[0.0], [47 / 201, 132 / 201, 22 / 201], atol=0.01), share[0.0]
    assert np.allclose(share[1.0], [1 / 3] * 3, atol=0.01), share[1.0]
    with pytest.raises(ValueError, match="0..1"):
        clip_weights(labels, 1.5)


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a GPU: --device cuda would train")
def test_asking_for_a_gpu_that_is_not_there_is_a_clear_error(tmp_path: Path) -> None:
    data = write_sample_folder(tmp_path / "samples")
    run = subprocess.run([*GENBRIDGE, "train", str(data), "-o", str(tmp_path / "run"), "--arch",
                          str(_arch_file(tmp_path)), "--steps", "1", "--hold-out", "", "--device", "cuda"],
                         cwd=REPO, capture_output=True, text=True, timeout=300)
    assert run.returncode == 1 and "sees no CUDA GPU" in run.stderr, run.stderr
    assert not (tmp_path / "run" / "checkpoint.pt").exists()


def test_velocity_conditioning_changes_the_sound_and_survives_the_model_folder(tmp_path: Path) -> None:
    data = write_sample_folder(tmp_path / "samples")
    arch = json.loads(_arch_file(tmp_path).read_text())
    result = train(TrainSettings(data=[str(data)], out=str(tmp_path / "run"), arch=arch, steps=2, batch=2,
                                 held_out=[], threads=1), progress=False)
    gen = load_generator(result.model_dir, name="drums")
    assert gen.info.velocity and gen.net.velocity_embedding.shape == (VELOCITY_KNOTS, 1024)
    assert "Conditioned on velocity" in (result.model_dir / "MODEL_CARD.md").read_text()
    with torch.no_grad():  # training moves the knots apart over thousands of steps; here by hand
        gen.net.velocity_embedding.copy_(torch.randn_like(gen.net.velocity_embedding) * 3)
    soft, hard, soft_again = (gen.generate(7, 4, instrument="snare", velocity=v) for v in (0.3, 0.95, 0.3))
    assert np.array_equal(soft, soft_again)
    assert float(np.abs(soft - hard).max()) > 1e-3
    batch = gen.generate_batch([7, 7], 4, instruments=["snare", "snare"], velocities=[0.3, 0.95])
    assert np.allclose(batch[0], soft, atol=1e-5) and np.allclose(batch[1], hard, atol=1e-5), \
        "each clip of a batch has its own velocity"
    default = gen.generate(7, 4, instrument="snare")
    assert np.array_equal(default, gen.generate(7, 4, instrument="snare", velocity=DEFAULT_VELOCITY))
    with pytest.raises(ValueError, match="velocity must be 0-1"):
        gen.generate(7, 4, instrument="snare", velocity=1.5)


def test_transfer_grows_a_model_with_a_new_first_level_from_a_smaller_one(tmp_path: Path) -> None:
    data = write_sample_folder(tmp_path / "samples")
    source = train(TrainSettings(data=[str(data)], out=str(tmp_path / "src"), steps=2, batch=2, held_out=[],
                                 threads=1, classes=["kick", "hat"],
                                 arch={"sample_rate": TINY_RATE, "length": TINY_LENGTH, "unet": TINY_UNET}),
                   progress=False)
    bigger = dict(TINY_UNET, channels=[8] + list(TINY_UNET["channels"]), factors=[1] + list(TINY_UNET["factors"]),
                  items=[1] + list(TINY_UNET["items"]), attentions=[0] + list(TINY_UNET["attentions"]))
    grown = train(TrainSettings(data=[str(data)], out=str(tmp_path / "grown"), steps=1, batch=2, held_out=[],
                                threads=1, lr=1e-9, warmup=1, transfer=str(source.model_dir),
                                classes=["kick", "snare", "hat", "open_hat"],
                                arch={"sample_rate": TINY_RATE, "length": TINY_LENGTH, "unet": bigger}),
                  progress=False)
    src = load_generator(source.model_dir, name="src")
    new = load_generator(grown.model_dir, name="new")
    assert new.classes == ["kick", "snare", "hat", "open_hat"]
    assert len(new.arch.channels) == len(TINY_UNET["channels"]) + 1
    a, b = src.net.net.state_dict(), new.net.net.state_dict()
    same = [k for k in a if k.replace("blocks.2.net.block", "blocks.2.net.block.blocks.3.block", 1) in b
            and torch.allclose(a[k].float(), b[k.replace("blocks.2.net.block", "blocks.2.net.block.blocks.3.block", 1)
                                                 ].float(), atol=1e-3)]
    assert len(same) > len(a) * 0.8, f"the old levels sit one level down ({len(same)} of {len(a)} tensors)"
    rows = new.net.class_embedding.weight.detach()
    old = src.net.class_embedding.weight.detach()
    assert torch.allclose(rows[0], old[0], atol=1e-2) and torch.allclose(rows[2], old[1], atol=1e-2), "by name"
    assert 0.05 < float((rows[3] - old[1]).abs().mean()) < 1.0, "open_hat starts near the hat, not on it"
    card = json.loads((grown.model_dir / "config.json").read_text())["card"]
    assert card["origin"].startswith("grown from") and "open_hat<-hat" in card["origin"]


def test_a_companded_model_hands_back_plain_audio_and_a_bad_power_is_refused(tmp_path: Path) -> None:
    """amplitude_power 0.5: the network works on sign(x)*sqrt(|x|); what it hands back is audio again."""
    from models.diffusion import ModelLoadError, compress, expand

    x = torch.tensor([-0.5, -1e-4, 0.0, 2.5e-3, 0.81])
    assert torch.allclose(expand(compress(x, 0.5), 0.5), x, atol=1e-7)
    assert torch.allclose(compress(x, 0.5), torch.tensor([-0.7071, -0.01, 0.0, 0.05, 0.9]), atol=1e-4)
    data = write_sample_folder(tmp_path / "samples")
    arch = json.loads(_arch_file(tmp_path).read_text())
    plain = train(TrainSettings(data=[str(data)], out=str(tmp_path / "plain"), arch=arch, steps=1, batch=2,
                                held_out=[], threads=1), progress=False)
    companded = train(TrainSettings(data=[str(data)], out=str(tmp_path / "comp"), arch=arch, steps=1, batch=2,
                                    held_out=[], threads=1, amplitude_power=0.5), progress=False)
    config = json.loads((companded.model_dir / "config.json").read_text())
    assert config["amplitude_power"] == 0.5 and "amplitude_power" not in json.loads(
        (plain.model_dir / "config.json").read_text())
    assert config["data_scale"] < json.loads((plain.model_dir / "config.json").read_text())["data_scale"], \
        "companded audio has a larger spread, so it is scaled less"
    gen = load_generator(companded.model_dir, name="c")
    assert gen.info.amplitude_power == 0.5
    source = np.zeros((1, TINY_LENGTH), np.float32)
    source[0, :400] = np.linspace(0.5, 0.0, 400)
    assert np.allclose(gen.vary(source, 3, 0.0, instrument="kick"), source, atol=1e-6), \
        "a variation at strength 0 gives back the source itself"
    config["amplitude_power"] = 1.5
    (companded.model_dir / "config.json").write_text(json.dumps(config))
    with pytest.raises(ModelLoadError, match="amplitude_power must be within"):
        load_generator(companded.model_dir, name="c")


def test_emphasis_weighs_high_frequency_error_more_and_a_bad_weight_is_refused(tmp_path: Path) -> None:
    """--emphasis W: an error at 8 kHz counts about 1 + 4W*0.83 times, one at 100 Hz about once;
    without it the loss is plain MSE."""
    t = torch.arange(4096) / 22050
    target = torch.zeros(1, 1, 4096)
    low = 0.1 * torch.sin(2 * torch.pi * 100 * t).view(1, 1, -1)
    high = 0.1 * torch.sin(2 * torch.pi * 8000 * t).view(1, 1, -1)
    assert torch.isclose(emphasised_mse(high, target), emphasised_mse(low, target), rtol=0.01)
    ratio_low = float(emphasised_mse(low, target, 4.0) / emphasised_mse(low, target))
    ratio_high = float(emphasised_mse(high, target, 4.0) / emphasised_mse(high, target))
    assert ratio_low < 1.01
    assert ratio_high == pytest.approx(1 + 16 * np.sin(np.pi * 8000 / 22050) ** 2, rel=0.01)
    data = write_sample_folder(tmp_path / "samples")
    arch = json.loads(_arch_file(tmp_path).read_text())
    run = train(TrainSettings(data=[str(data)], out=str(tmp_path / "emph"), arch=arch, steps=2, batch=2,
                              held_out=[], threads=1, emphasis=4.0), progress=False)
    assert "plus 4 times that of its first difference" in (run.model_dir / "MODEL_CARD.md").read_text()
    clip = load_generator(run.model_dir, name="e").generate(0, 2, instrument="kick")
    assert clip.shape[-1] == TINY_LENGTH and np.isfinite(clip).all() and np.abs(clip).max() > 0
    with pytest.raises(ValueError, match="emphasis must be 0-100"):
        train(TrainSettings(data=[str(data)], out=str(tmp_path / "bad"), arch=arch, steps=1, batch=2,
                            held_out=[], threads=1, emphasis=-1.0), progress=False)


def test_a_run_resumed_on_another_machine_names_both_on_its_card(tmp_path: Path) -> None:
    """bf16 kernels differ between CPUs (models/bf16_guard.py), so a card must not hide that a
    run moved: the machine line lists each machine from the step it took over."""
    data = write_sample_folder(tmp_path / "samples")
    arch = json.loads(_arch_file(tmp_path).read_text())
    settings = dict(data=[str(data)], out=str(tmp_path / "run"), arch=arch, batch=2, held_out=[], threads=1)
    train(TrainSettings(steps=2, **settings), progress=False)
    ckpt_path = tmp_path / "run" / "checkpoint.pt"
    ckpt = torch.load(ckpt_path, weights_only=False)
    ckpt["settings"]["machine"] = "riscv64, a CPU of another VM, 64 cores"  # as if it began elsewhere
    torch.save(ckpt, ckpt_path)
    cpu = torch.device("cpu")
    here = describe_machine(TrainSettings(**settings, bf16=native_bf16(cpu)), cpu)

    def machine_line() -> str:
        card = (tmp_path / "run" / "model" / "MODEL_CARD.md").read_text()
        return next(line for line in card.splitlines() if line.startswith("- Machine: "))

    train(TrainSettings(steps=3, **settings), progress=False)
    expected = f"- Machine: riscv64, a CPU of another VM, 64 cores | from step 2: {here}"
    assert machine_line().startswith(expected), machine_line()
    train(TrainSettings(steps=4, **settings), progress=False)  # resumed again, on the same machine
    assert machine_line().startswith(expected) and machine_line().count(" | from step ") == 1, machine_line()
