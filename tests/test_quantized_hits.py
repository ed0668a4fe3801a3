"""Quantised starts on a real, paced sink: hits asked for "on the next beat" land on the beat of
an Ableton Link session (run by another process), as a JACK recorder hears them."""

from __future__ import annotations

import random
import time
from pathlib import Path

import numpy as np
import pytest
import soxr
from conftest import pools_full, write_config
from jack_peer import RATE, Recorder
from test_link import LinkPeer
from test_live_audio import AUDIO, _fresh_status, align, expected

#: One test at a time on this machine, whichever test process runs it (tests/conftest.py):
#: Link peers on one machine join one session, so another test's peer would change the peer count
#: and the tempo.
pytestmark = pytest.mark.machine_wide("link")

pytest.importorskip("aalink")

PLAYED = "/genbridge/drum/played"
BPM = 120.0


def _beat_error_s(peer_state: dict, onset: float, raw_offset: float) -> float:
    """How far ``onset`` (time.monotonic()) is from the nearest beat of the peer's timeline, in s."""
    at = peer_state["time"] + raw_offset  # the peer's Link clock (CLOCK_MONOTONIC_RAW) on the monotonic clock
    beat = peer_state["beat"] + (onset - at) * peer_state["tempo"] / 60
    return (beat - round(beat)) * 60 / peer_state["tempo"]


def test_hits_on_the_next_beat_land_on_the_link_beat_within_1_ms(tmp_path: Path, tiny_model: Path, jack_server,
                                                                  start_daemon) -> None:
    peer = LinkPeer(BPM)
    try:
        config = write_config(tmp_path / "c.toml", tiny_model, instruments=("kick",), pool=4, audio=AUDIO,
                              extra='\n[tempo]\nsource = "link"\n')
        daemon, client = start_daemon(config, env=jack_server.env())
        recorder = Recorder(jack_server, jack_server.wait_for_port("PortAudio"), seconds=120)
        client.wait_until(lambda s: s["audio"]["state"] == "running" and pools_full()(s)
                          and s["tempo"]["peers"] == 1, what="audio, pools and the Link peer")
        recorder.wait_frames(2 * RATE)  # the recorder's clock mapping settles on its first seconds
        rng = random.Random(5)
        errors, dropped = [], 0
        for k in range(80):  # until 20 clean hits: a hit during a dropped block is not counted
            if len(errors) >= 20:
                break
            time.sleep(rng.uniform(0.0, 0.5))  # a random send time within the beat, not synchronisation
            under = _fresh_status(client)["audio"]["underflows"]
            start = recorder.mark()
            client.send("/genbridge/kw/drum/play", "kick", "quantize", "beat", "id", k)
            reply = client.expect(PLAYED)
            assert reply.args[0] == k
            clip = expected(reply.args[2])
            recorder.wait_frames(int(0.5 * RATE) + len(clip) + RATE // 10)
            rec = recorder.since(start)
            lag, corr, _ = align(rec.audio, clip)
            if _fresh_status(client)["audio"]["underflows"] != under:
                dropped += 1  # a dropped block on this shared machine: not a scheduling error
                continue
            assert corr > 0.99, (k, corr)
            onset = rec.time_of(lag)
            raw_offset = time.monotonic() - time.clock_gettime(time.CLOCK_MONOTONIC_RAW)
            errors.append(_beat_error_s(peer.read(), onset, raw_offset))
        assert len(errors) >= 20, f"only {len(errors)} clean hits ({dropped} with underflows)"
        worst = max(abs(e) for e in errors)
        assert worst <= 0.001, [f"{e * 1000:+.3f} ms" for e in errors]
        recorder.close()
    finally:
        peer.close()


def _at_device_rate(path: str) -> np.ndarray:
    """A WAV as the daemon plays it: resampled to the JACK rate, (frames, 2)."""
    import soundfile as sf

    audio, rate = sf.read(path, dtype="float32", always_2d=True)
    out = soxr.resample(audio, rate, RATE, quality="HQ")
    return np.repeat(out, 2, axis=1) if out.shape[1] == 1 else out


def test_played_chunks_start_on_a_bar_and_join_without_gaps(tmp_path: Path, jack_server, start_daemon) -> None:
    from conftest import build_tiny_model
    from test_continue_osc import FIXTURE, _collect, _prompt

    model = build_tiny_model(tmp_path / "drums")
    config = write_config(tmp_path / "c.toml", model, pool=0, instruments=("kick",), audio=AUDIO, subtype="FLOAT",
                          extra=f"""
[continuation]
model = "{FIXTURE}"
prompt_seconds = 1.0
chunk_seconds = 0.5
top_k = 8
play_quantize = "bar"

[tempo]
bpm = 240.0
quantum = 1
""")
    daemon, client = start_daemon(config, env=jack_server.env())
    recorder = Recorder(jack_server, jack_server.wait_for_port("PortAudio"), seconds=60)
    client.wait_until(lambda s: s["audio"]["state"] == "running" and s["continuation"]["state"] == "ready",
                      what="audio and MusicGen")
    _prompt(daemon.out)
    block = 256
    under = _fresh_status(client)["audio"]["underflows"]
    start = recorder.mark()
    before = client.request("/genbridge/tempo", reply="/genbridge/tempo/reply")
    before_t = time.monotonic()
    client.send("/genbridge/kw/continue", "prompt.wav", 2.0, "play", "chunks", "seed", 3, "id", "c")
    job = client.expect("/genbridge/job/queued").args[1]
    _, chunks, done = _collect(client, job)
    pieces = [_at_device_rate(path) for _, path in chunks]
    recorder.wait_frames(sum(len(p) for p in pieces) + RATE)
    rec = recorder.since(start)
    # A block the daemon or the recorder dropped on this shared 2-core machine (an xrun, counted
    # as an underflow) shifts what follows it by whole blocks, wherever in a chunk it falls: that
    # much, and no other offset, is forgiven, once per underflow. So the recording is walked in
    # segments of 4 blocks, each where the one before ended (give or take the dropped blocks); a
    # scheduling gap or overlap between chunks is any number of samples and fails.
    # (a dropped period counted once by the daemon can cost the recorder one as well: twice the count)
    dropped = 2 * (_fresh_status(client)["audio"]["underflows"] - under)
    heard = int(np.argmax(np.abs(rec.audio[:, 0]) > 1e-3))
    onset = max(range(max(0, heard - 64), heard + 64),
                key=lambda i: float(np.dot(rec.audio[i : i + len(pieces[0]), 0], pieces[0][:, 0])))
    position, shifted, spoiled = onset, 0, 0
    segment = 4 * block
    for k, piece in enumerate(pieces):
        for j in range(0, len(piece), segment):
            part = piece[j : j + segment]
            if float(np.std(part)) < 1e-4:  # too quiet to place: it moves the position only
                position += len(part)
                continue
            offsets = [0] + [sign * block * m for m in range(1, dropped - shifted + 1) for sign in (1, -1)]

            def corr(d: int, part: np.ndarray = part) -> float:
                seg = rec.audio[position + d : position + d + len(part)]
                if len(seg) != len(part) or not float(np.std(seg)) > 0.0:
                    # past the end, or silence where the part should sound (a dropped block, or a
                    # gap): no match. Its correlation would be NaN, and max() and the checks below
                    # cannot rank a NaN, so one dropped block failed the test as a gap would.
                    return -1.0
                return float(np.corrcoef(seg.ravel(), part.ravel())[0, 1])

            best = max(offsets, key=corr)
            if corr(best) <= 0.99 and spoiled < dropped:
                # the segment a block was dropped inside is part shifted: it cannot match as a whole;
                # the next one finds the shift (only whole blocks: a true gap still fails there)
                spoiled += 1
                position += len(part)
                continue
            where = "where the chunk before ended" if j == 0 else f"continuous at {j} frames in"
            assert corr(best) > 0.99, f"chunk {k} is not {where} (corr {corr(best):.3f}, {dropped} blocks dropped)"
            shifted += abs(best) // block
            position += best + len(part)
    assert np.abs(rec.audio[position + block : position + RATE // 2]).max() == 0.0, "nothing after the last"
    # on a bar of the fixed timeline (late by whole dropped blocks at most, if any were dropped)
    late = (before.args[2] + (rec.time_of(onset) - before_t) * 240.0 / 60) % 1 * 60 / 240.0
    late = min(late, late - 0.25, key=abs)  # the bar is 0.25 s: near 0 or near 0.25 is on it
    # a dropped block moves the recording's clock either way (the daemon's late, the recorder's early)
    forgiven = min(abs(late - m * block / RATE) for m in range(-dropped, dropped + 1))
    assert forgiven < 0.003, f"starts {late * 1000:.2f} ms off a bar ({dropped} blocks dropped)"
    recorder.close()


def test_cancelling_a_playing_stream_silences_it(tmp_path: Path, jack_server, start_daemon) -> None:
    from conftest import build_tiny_model
    from test_continue_osc import FIXTURE, _prompt

    model = build_tiny_model(tmp_path / "drums")
    config = write_config(tmp_path / "c.toml", model, pool=0, instruments=("kick",), audio=AUDIO, extra=f"""
[continuation]
model = "{FIXTURE}"
prompt_seconds = 1.0
chunk_seconds = 0.5
top_k = 8
play_chunks = true
play_quantize = "off"
""")
    daemon, client = start_daemon(config, env=jack_server.env())
    recorder = Recorder(jack_server, jack_server.wait_for_port("PortAudio"), seconds=60)
    client.wait_until(lambda s: s["audio"]["state"] == "running" and s["continuation"]["state"] == "ready",
                      what="audio and MusicGen")
    _prompt(daemon.out)
    client.send("/genbridge/continue", "prompt.wav", 30.0, "", 3, "long")
    job = client.expect("/genbridge/job/queued").args[1]
    chunks = 0
    while chunks < 3:
        r = client.recv(timeout=60)
        chunks += r.address == "/genbridge/job/chunk"
    start = recorder.mark()
    client.send("/genbridge/job/cancel", job, "stop")
    while (r := client.recv(timeout=60)).address != "/genbridge/job/cancelled":
        pass
    recorder.wait_frames(RATE)
    rec = recorder.since(start).audio
    assert np.abs(rec[: RATE // 100]).max() > 1e-3, "it was playing when cancelled"
    quiet_from = int(0.1 * RATE)  # the cancel's round trip, a block or two and the 5 ms fade
    assert np.abs(rec[quiet_from:]).max() == 0.0, "the cancelled stream kept sounding"
    recorder.close()
