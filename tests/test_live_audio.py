"""Live audio on a real, paced sink: jackd -d dummy, recorded by a JACK client."""

from __future__ import annotations

import random
import time
from pathlib import Path

import numpy as np
import soundfile as sf
import soxr
from conftest import pools_full, write_config
from helpers import osc_bundle, osc_message
from jack_peer import RATE, Player, Recorder

PLAYED = "/genbridge/drum/played"

AUDIO = """device = "system"
block_size = 256
velocity_exponent = 2.0"""


def expected(path: str, gain: float = 1.0) -> np.ndarray:
    """The WAV the daemon announced, resampled to the JACK rate like the daemon does, (frames, 2)."""
    audio, rate = sf.read(path, dtype="float32", always_2d=True)
    out = soxr.resample(audio, rate, RATE, quality="HQ")
    if out.ndim == 1:
        out = out[:, None]
    if out.shape[1] == 1:
        out = np.repeat(out, 2, axis=1)
    return out * gain


def align(recording: np.ndarray, clip: np.ndarray) -> tuple[int, float, float]:
    """Best lag of ``clip`` in ``recording``; the correlation there; level difference in dB."""
    a, b = recording[:, 0].astype(np.float64), clip[:, 0].astype(np.float64)
    n = 1 << int(np.ceil(np.log2(len(a) + len(b))))
    xc = np.fft.irfft(np.fft.rfft(a, n) * np.conj(np.fft.rfft(b, n)), n)[: len(a) - len(b) + 1]
    lag = int(np.argmax(np.abs(xc)))
    seg = recording[lag : lag + len(clip)]
    corr = float(np.corrcoef(seg.ravel(), clip.ravel())[0, 1])
    level = 20 * np.log10(np.sqrt(np.mean(seg**2)) / np.sqrt(np.mean(clip**2)))
    return lag, corr, float(level)


def _setup(tmp_path: Path, tiny_model: Path, start_daemon, jack_server, extra: str = "", seconds: float = 30.0,
           **kw):
    config = write_config(tmp_path / "c.toml", tiny_model, extra=extra, audio=AUDIO, **kw)
    daemon, client = start_daemon(config, env=jack_server.env())
    outs = jack_server.wait_for_port("PortAudio")
    recorder = Recorder(jack_server, outs, seconds=seconds)
    client.wait_until(lambda s: s["audio"]["state"] == "running" and pools_full()(s), what="audio and pools")
    return daemon, client, recorder


def _play(client, recorder, *args, settle: float = 0.5, attempts: int = 4):
    """Play and record. A sample-exact comparison cannot survive a dropped block (an underflow
    on this shared 2-core machine; the benchmark counts those), so retry only when the daemon
    reported one during the take."""
    for _ in range(attempts):
        under = client.status()["audio"]["underflows"]
        start = recorder.mark()
        reply = client.request("/genbridge/drum/play", *args, reply=PLAYED)
        recorder.wait_frames(int(settle * RATE))
        if client.status()["audio"]["underflows"] == under:
            break
    return reply.args[2], recorder.since(start)


def test_trigger_plays_the_clip_and_velocity_follows_the_curve(tmp_path, tiny_model, jack_server, start_daemon):
    daemon, client, recorder = _setup(tmp_path, tiny_model, start_daemon, jack_server, instruments=("kick",))
    try:
        path, rec = _play(client, recorder, "kick", 127)
        lag, corr, level = align(rec.audio, expected(path))
        assert corr > 0.99, corr
        assert abs(level) < 0.5, level
        path, rec = _play(client, recorder, "kick", 64)
        lag, corr, level = align(rec.audio, expected(path))
        want = 20 * np.log10((64 / 127) ** 2.0)  # the configured curve: exponent 2
        assert corr > 0.99 and abs(level - want) < 0.5, (corr, level, want)
        status = client.status()["audio"]
        assert status["state"] == "running" and status["voices_started"] >= 2, status
    finally:
        recorder.close()


CHOKE = """
[instruments.ohat]
model = "m"
pool = 2
choke_group = 1
[instruments.chat]
model = "m"
pool = 2
choke_group = 1
"""


def _timed_play(t: float, *args) -> bytes:
    from pythonosc.osc_bundle_builder import OscBundleBuilder
    from pythonosc.osc_message import OscMessage

    b = OscBundleBuilder(t)
    b.add_content(OscMessage(osc_message("/genbridge/drum/play", *args)))
    return b.build().dgram


def _choke_once(client, recorder) -> tuple[str | None, int]:
    """Open hat, closed hat 50 ms later; returns (what went wrong or None, underflows meanwhile)."""
    under = client.status()["audio"]["underflows"]
    start = recorder.mark()
    t0 = time.time() + 0.15
    # velocity 100: headroom, so the master limiter (above -0.5 dBFS) leaves every sample alone
    client.send_raw(_timed_play(t0, "ohat", 100, 1))
    client.send_raw(_timed_play(t0 + 0.05, "chat", 100, 2))
    replies = sorted((client.expect(PLAYED) for _ in range(2)), key=lambda r: r.args[0])
    recorder.wait_frames(int(0.6 * RATE))
    rec = recorder.since(start).audio
    under = client.status()["audio"]["underflows"] - under
    gain = (100 / 127) ** 2.0
    open_hat, closed_hat = expected(replies[0].args[2], gain), expected(replies[1].args[2], gain)
    lag_o, corr_o, _ = align(rec, open_hat[: int(0.045 * RATE)])  # the part before the choke
    if corr_o < 0.99:
        return f"open hat not found (corr {corr_o:.3f})", under
    # the closed hat starts 50 ms after the open hat (timetags), to within one buffer
    window = lag_o + int(0.05 * RATE) - 256
    lag_c, corr_c, _ = align(rec[window:], closed_hat)
    onset_c = window + lag_c
    if abs(onset_c - (lag_o + int(0.05 * RATE))) > 256:
        return f"closed hat {onset_c - lag_o} frames after the open hat", under
    fade = int(0.005 * RATE)
    before = np.abs(rec[lag_o : onset_c - 1] - open_hat[: onset_c - 1 - lag_o]).max()
    if before > 1e-4:
        return f"before the closed hat the open hat is not alone (max diff {before:.4f})", under
    after = rec[onset_c + fade : onset_c + len(closed_hat)]
    diff = np.abs(after - closed_hat[fade : len(after) + fade]).max(axis=1)
    residual = diff.max()
    if residual > 1e-4:
        bad = np.flatnonzero(diff > 1e-4)
        return (f"the open hat still sounds after the fade (max diff {residual:.4f}; {len(bad)} frames "
                f"from {bad[0]} to {bad[-1]} of {len(diff)})"), under
    return None, under


def test_closed_hat_chokes_the_open_hat_within_the_fade(tmp_path, tiny_model, jack_server, start_daemon):
    daemon, client, recorder = _setup(tmp_path, tiny_model, start_daemon, jack_server, extra=CHOKE,
                                      instruments=("kick",))
    try:
        # A sample-exact comparison cannot survive an underflow (a dropped block) on this shared
        # machine; those are counted by the benchmark. Retry only when one happened.
        for _ in range(4):
            problem, underflows = _choke_once(client, recorder)
            if problem is None or underflows == 0:
                break
        assert problem is None, f"{problem} ({underflows} underflows)"
        assert client.status()["audio"]["voices_choked"] >= 1
    finally:
        recorder.close()


def test_32_overlapping_hits_never_exceed_full_scale(tmp_path, tiny_model, jack_server, start_daemon):
    daemon, client, recorder = _setup(tmp_path, tiny_model, start_daemon, jack_server, instruments=("kick",),
                                      pool=4)
    try:
        start = recorder.mark()
        client.send_raw(osc_bundle(*(osc_message("/genbridge/drum/play", "kick", 127, k + 1) for k in range(32))))
        for _ in range(32):
            client.expect(PLAYED)
        recorder.wait_frames(int(0.5 * RATE))
        rec = recorder.since(start).audio
        assert np.max(np.abs(rec)) < 1.0
        assert np.max(np.abs(rec)) > 0.9, "32 stacked hits are loud"
        assert client.status()["audio"]["limited_blocks"] > 0
    finally:
        recorder.close()


#: Lead times of the timed hits: from just past the device's reach (lead_s: ~18 ms) to a bar at
#: 120 BPM, the furthest ahead a Link-quantised start is asked for.
LEADS = (0.05, 0.5, 1.0, 1.5, 2.0)


def _fresh_status(client) -> dict:
    """A status the audio process read after this call began: the status it sends every 0.25 s
    can miss the latest underflow (which would then be counted in the next take)."""
    now = time.monotonic()
    return client.wait_until(lambda s: s["audio"].get("measured_at", 0.0) >= now, what="a fresh audio status")


def _timed_take(client, recorder, rng, leads: tuple[float, ...] = LEADS) -> tuple[list[tuple[float, float]], int]:
    """One hit per lead time, all sent at once; returns (error: heard - asked in s, correlation
    with the clip) per hit and the underflows the daemon counted meanwhile."""
    under = _fresh_status(client)["audio"]["underflows"]
    start = recorder.mark()
    wall, mono = time.time(), time.monotonic()
    # a random phase within the block: the start must be exact to the frame, not to the block
    targets = [lead + rng.uniform(0, 256 / RATE) for lead in leads]
    for k, lead in enumerate(targets):
        client.send_raw(_timed_play(wall + lead, "kick", 127, k))
    paths = {}
    for _ in targets:
        reply = client.expect(PLAYED)
        paths[reply.args[0]] = reply.args[2]
    # the kicks last 0.19 s. Nothing heavy until the take is recorded: a resampling or an FFT
    # here holds the GIL the recorder's callback needs every 5.3 ms, and its xrun (which the
    # daemon counts as an underflow too) would drop the take
    recorder.wait_frames(int((max(targets) + 0.5) * RATE))
    rec = recorder.since(start)
    status = _fresh_status(client)
    clips = {k: expected(p) for k, p in paths.items()}
    errors = []
    origin = rec.time_of(0)
    for k, lead in enumerate(targets):
        clip = clips[k]
        guess = int((mono + lead - origin) * RATE)  # where it should be, by the recorder's clock
        lo = max(0, guess - RATE // 20)  # +-50 ms: far more than any error, less than the hits' spacing
        lag, corr, _ = align(rec.audio[lo : guess + RATE // 20 + len(clip)], clip)
        errors.append((rec.time_of(lo + lag) - (mono + lead), corr))
    return errors, status["audio"]["underflows"] - under


def test_future_timetag_plays_within_1_ms_of_its_time(tmp_path, tiny_model, jack_server, start_daemon):
    """20 hits timed 50 ms to 2 s ahead start within 1 ms of their timetags, as a JACK recorder
    hears them (what a beat-quantised start from Ableton Link needs), in takes that each begin
    just after an xrun."""
    daemon, client, recorder = _setup(tmp_path, tiny_model, start_daemon, jack_server, instruments=("kick",),
                                      seconds=120)
    rng = random.Random(7)
    try:
        clean, dropped = [], []
        for _ in range(20):  # 4 clean takes needed; 1-8 of them were lost to underflows per run
            # An xrun before each take, as a starved machine has them: the server stalls, its
            # frame clock slips against the monotonic clock, and JACK's DLL (PortAudio's
            # currentTime) takes seconds to settle. Measured: the old per-block offset put every
            # clean take after it 24-27 ms late (3 runs of 3); with no xrun it was within 0.33 ms
            # idle, but under load one take of ~30 was 2.1 ms early and another 0.9 ms late.
            before = _fresh_status(client)["audio"]["underflows"]
            jack_server.stall(0.1)
            client.wait_until(lambda s: s["audio"]["underflows"] > before, what="the daemon to see the xrun")
            errors, underflows = _timed_take(client, recorder, rng)
            # an underflow (a dropped block on this shared machine) delays and distorts what
            # follows it; that is counted by the benchmark, not a scheduling error
            (dropped if underflows else clean).extend(errors)
            if len(clean) >= 20:
                break
        assert len(clean) >= 20, f"underflows in almost every take: {len(clean)} clean hits, {len(dropped)} dropped"
        assert min(corr for _, corr in clean) > 0.99, clean
        ms = [f"{e * 1000:+.3f}" for e, _ in clean]
        assert max(abs(e) for e, _ in clean) <= 0.001, (ms, client.status()["audio"])
    finally:
        recorder.close()


def test_capture_save_returns_what_came_in(tmp_path, tiny_model, jack_server, start_daemon):
    daemon, client, recorder = _setup(tmp_path, tiny_model, start_daemon, jack_server, instruments=("kick",))
    recorder.close()
    ins = jack_server.wait_for_port("PortAudio:in", is_input=True)
    rng = np.random.default_rng(3)
    t = np.arange(RATE) / RATE
    signal = np.stack([0.3 * np.sin(2 * np.pi * 440 * t) + 0.05 * rng.standard_normal(RATE),
                       0.2 * rng.standard_normal(RATE)], axis=1)
    for attempt in range(3):
        audio = client.status()["audio"]
        player = Player(jack_server, ins, signal)
        try:
            assert player.finished.wait(10), "the JACK player never finished"
            reply = client.request("/genbridge/capture/save", 2.0, "cap", reply="/genbridge/capture/saved")
        finally:
            player.close()
        assert reply.args[0] == "cap" and abs(reply.args[2] - 2.0) < 1e-3
        saved, rate = sf.read(reply.args[1], dtype="float32", always_2d=True)
        assert rate == RATE and saved.shape == (2 * RATE, 2)
        assert Path(reply.args[1]).with_suffix(".json").is_file()
        # a sample-exact comparison cannot survive a dropped cycle on this shared machine: a
        # JACK xrun (the player was late) or an overflow the daemon counted means take again
        after = client.status()["audio"]
        if player.xruns == 0 and after["overflows"] == audio["overflows"]:
            break
    lag, corr, level = align(saved, signal.astype(np.float32))
    assert corr > 0.999, (corr, attempt, player.xruns)
    assert abs(level) < 0.1, level


def test_jack_restarted_mid_run_plays_again(tmp_path, tiny_model, jack_server, start_daemon):
    """jackd dies mid-set: OSC and the shared folder keep working; when it returns, sound does."""
    daemon, client, recorder = _setup(tmp_path, tiny_model, start_daemon, jack_server, instruments=("kick",))
    path, rec = _play(client, recorder, "kick", 127)
    assert align(rec.audio, expected(path))[1] > 0.99
    recorder.close()
    jack_server.kill()
    status = client.wait_until(lambda s: s["audio"]["state"] in ("lost", "waiting"), what="the daemon to notice")
    assert status["audio"]["reason"]
    assert client.request("/genbridge/ping", 5, reply="/genbridge/pong").args[0] == 5
    reply = client.request("/genbridge/drum/play", "kick", 100, reply=PLAYED)
    assert Path(reply.args[2]).is_file()
    client.send("/genbridge/drum/generate", "kick", 2, 1, 0, "g")
    client.expect("/genbridge/job/started")
    assert all(Path(client.expect("/genbridge/drum/ready").args[2]).is_file() for _ in range(2))
    client.expect("/genbridge/job/done")

    jack_server.start()
    client.wait_until(lambda s: s["audio"]["state"] == "running" and s["audio"]["reopened"] >= 1,
                      what="the audio device to come back")
    recorder = Recorder(jack_server, jack_server.wait_for_port("PortAudio"))
    try:
        path, rec = _play(client, recorder, "kick", 127)
        lag, corr, level = align(rec.audio, expected(path))
        assert corr > 0.99 and abs(level) < 0.5, (corr, level)
    finally:
        recorder.close()
    assert daemon.stop(timeout=15) == 0


def test_a_frozen_audio_process_is_replaced_and_sound_comes_back(tmp_path, tiny_model, jack_server, start_daemon):
    """The audio process stops answering (SIGSTOP: what a PortAudio call stuck on a vanished
    server looks like from outside): it is killed within its heartbeat limit, a new one opens the
    device, and hits sound again; OSC and plays are served throughout."""
    import os
    import signal

    daemon, client, recorder = _setup(tmp_path, tiny_model, start_daemon, jack_server, instruments=("kick",))
    status = client.wait_until(lambda s: s["audio"]["state"] == "running", what="the audio device to open")
    pid = status["audio"]["pid"]
    recorder.close()
    os.kill(pid, signal.SIGSTOP)
    try:
        # hits keep coming: far more audio than a pipe holds goes to a process that does not read,
        # and the daemon must not block on it (OSC answers, the watch kills and restarts it)
        for n in range(12):
            assert client.request("/genbridge/drum/play", "kick", 100, n, reply=PLAYED).args[0] == n
        assert client.request("/genbridge/ping", 5, reply="/genbridge/pong").args[0] == 5
        status = client.wait_until(lambda s: s["audio"]["state"] == "running" and s["audio"]["pid"] != pid,
                                   timeout=60, what="a new audio process")
    finally:
        try:
            os.kill(pid, signal.SIGCONT)
        except ProcessLookupError:
            pass
    assert "no heartbeat" in status["audio"]["health"]["last_exit"]
    assert status["audio"]["process_restarts"] == 1
    recorder = Recorder(jack_server, jack_server.wait_for_port("PortAudio"))
    try:
        path, rec = _play(client, recorder, "kick", 127)
        assert align(rec.audio, expected(path))[1] > 0.99
    finally:
        recorder.close()
    assert daemon.stop(timeout=15) == 0
