"""The callback mixer on its own, block by block, with signals whose right answer is known."""

from __future__ import annotations

import numpy as np

from bridge.mixer import ASAP, Mixer, Trigger, balance_gains

SR = 48000


def _run(mixer: Mixer, frames: int, block: int = 256) -> np.ndarray:
    out = np.zeros((frames, mixer.channels), np.float32)
    buf = np.zeros((block, mixer.channels), np.float32)
    for i in range(0, frames, block):
        mixer.process(buf)
        out[i : i + block] = buf[: min(block, frames - i)]
    return out


def _const(frames: int, level: float = 0.5) -> np.ndarray:
    return np.full((frames, 2), level, np.float32)


def test_voice_plays_with_gain_and_pan_at_the_exact_frame() -> None:
    m = Mixer(SR)
    m.trigger(Trigger(_const(1000), balance_gains(2, 0.5, -0.5), start_frame=300))
    out = _run(m, 2048)
    assert not out[:300].any()
    assert np.allclose(out[300:1300, 0], 0.25) and np.allclose(out[300:1300, 1], 0.125)
    assert not out[1300:].any()
    assert m.active_voices() == 0


def test_overlapping_voices_add_and_asap_starts_at_the_next_block() -> None:
    m = Mixer(SR)
    _run(m, 512)
    m.trigger(Trigger(_const(100, 0.2), np.ones(2, np.float32)))
    m.trigger(Trigger(_const(100, 0.3), np.ones(2, np.float32), start_frame=50))  # in the past: asap
    out = _run(m, 256)
    assert np.allclose(out[:100], 0.5) and not out[100:].any()


def test_choke_fades_the_other_voice_within_the_fade_time() -> None:
    m = Mixer(SR, fade_ms=5.0)
    m.trigger(Trigger(_const(SR, 0.4), np.ones(2, np.float32), choke_group=1))  # open hat, 1 s
    m.trigger(Trigger(_const(10, 0.0), np.ones(2, np.float32), start_frame=1000, choke_group=1))  # closed
    out = _run(m, 4096)
    assert np.allclose(out[:1000], 0.4)
    fade = m.fade_len
    assert np.all(np.diff(out[1000 : 1000 + fade, 0]) <= 1e-7), "a smooth fade, no step up"
    assert not out[1000 + fade :].any(), "silent after the fade time"
    assert m.stats.voices_choked == 1


def test_voice_limit_steals_the_oldest_with_a_fade() -> None:
    m = Mixer(SR, max_voices=4, fade_ms=2.0, limiter_threshold=0.99)
    for k in range(5):
        m.trigger(Trigger(_const(SR, 0.1), np.ones(2, np.float32), start_frame=k * 100))
    out = _run(m, 2048)
    assert m.stats.voices_stolen == 1
    assert abs(out[400, 0] - 0.5) < 1e-6  # five voices at the moment the fifth starts
    assert np.all(np.diff(out[400 : 400 + m.fade_len, 0]) <= 1e-7)  # the oldest fades out smoothly
    assert np.allclose(out[400 + m.fade_len + 10 : 2048], 0.4, atol=1e-6)  # four left


def test_limiter_keeps_32_stacked_hits_below_full_scale() -> None:
    m = Mixer(SR, max_voices=32)
    rng = np.random.default_rng(0)
    for _ in range(32):
        hit = (rng.standard_normal((4000, 2)) * 0.3).clip(-0.89, 0.89).astype(np.float32)
        m.trigger(Trigger(hit, np.ones(2, np.float32)))
    out = _run(m, 4096)
    assert np.max(np.abs(out)) < 1.0
    assert m.stats.limited_blocks > 0
    quiet = Mixer(SR)
    quiet.trigger(Trigger(_const(100, 0.5), np.ones(2, np.float32)))
    assert np.allclose(_run(quiet, 256)[:100], 0.5), "below the threshold the limiter changes nothing"


def test_frame_clock_maps_times_to_frames() -> None:
    m = Mixer(SR)
    _run(m, 1024)
    frame, t = m.clock
    assert frame == 768
    assert m.frame_at(t + 0.1) == frame + 4800
    assert ASAP == -1
