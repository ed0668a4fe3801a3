"""The callback mixer on its own, block by block, with signals whose right answer is known."""

from __future__ import annotations

import numpy as np

from bridge.mixer import ASAP, BlockClock, Mixer, Trigger, balance_gains

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


def test_in_the_default_kit_a_closed_hat_cuts_a_ringing_open_hat() -> None:
    """The default config's choke groups as the audio handle sends them (``choke``: the
    instrument's choke_group): an open hat rings until a closed hat starts, then fades out within
    fade_ms while the closed hat plays on; a kick meanwhile cuts nothing."""
    from bridge.config import load_config

    instruments = load_config(None).instruments
    m = Mixer(SR, fade_ms=5.0)
    m.trigger(Trigger(_const(SR, 0.4), np.ones(2, np.float32), choke_group=instruments["open_hat"].choke_group))
    m.trigger(Trigger(_const(SR, 0.1), np.ones(2, np.float32), start_frame=500,
                      choke_group=instruments["kick"].choke_group))
    m.trigger(Trigger(_const(2000, 0.2), np.ones(2, np.float32), start_frame=1000,
                      choke_group=instruments["hat"].choke_group))
    out = _run(m, 4096)[:, 0]
    assert np.allclose(out[:500], 0.4) and np.allclose(out[500:1000], 0.5), "the kick cut nothing"
    fade = m.fade_len
    assert np.allclose(out[1000 + fade : 3000], 0.3), "after the fade: the kick and the closed hat, no open hat"
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


def test_a_timed_trigger_starts_on_the_frame_of_its_time_by_the_block_it_falls_in() -> None:
    """A device whose frame clock runs 1 % slow against the monotonic clock: a hit asked for 2 s
    ahead starts on the frame that plays at its time. (Turned into a frame once, at arrival, by
    the block clock then, as before, it started 960 frames = 20 ms late.)"""
    m = Mixer(SR)
    t0, rate = 100.0, SR * 0.99  # frames per monotonic second
    at = t0 + 2.0 + 0.3 / SR  # not on a frame boundary
    m.trigger(Trigger(_const(100), np.ones(2, np.float32), start_time=at))
    m.trigger(Trigger(_const(100, 0.25), np.ones(2, np.float32), start_time=t0 - 1.0))  # in the past: now
    out = np.zeros((256 * 600, 2), np.float32)  # 3.2 s
    buf = np.zeros((256, 2), np.float32)
    for i in range(0, len(out), 256):
        m.process(buf, t0 + i / rate)
        out[i : i + 256] = buf
    assert np.allclose(out[:100], 0.25)
    onset = int(np.flatnonzero(out[100:, 0])[0]) + 100
    # 95040, not the nominal 96000; within the block the nominal rate counts (1 % of <256 frames)
    assert abs(onset - round((at - t0) * rate)) <= 3, onset
    assert m.active_voices() == 0 and not m.pending


def _wakeups(rng: np.random.Generator, blocks: int, rate_error: float, t0: float = 500.0):
    """(frame, true time, wake time) per 256-frame block of a frame clock ``rate_error`` off the
    monotonic clock, woken late as measured: >= 20 us, mostly ~0.2 ms, 5 % of them up to 3 ms."""
    for k in range(blocks):
        frame = 256 * k
        true = t0 + frame / (SR * (1 + rate_error))
        late = 20e-6 + rng.exponential(200e-6) + (rng.random() < 0.05) * rng.uniform(0, 3e-3)
        yield frame, true, true + late


def test_block_clock_follows_a_frame_clock_1_percent_off_through_wakeup_jitter() -> None:
    """Within 0.15 ms of the true block times once settled (never early), where a plain minimum
    of (wake - frame / rate) over the same 64 callbacks is 3.4 ms off at 1 %."""
    rng = np.random.default_rng(3)
    for rate_error in (-0.01, -4e-6, 0.0, 1e-4, 0.01):  # the dummy driver measured -4 ppm
        clock = BlockClock(SR)
        errors = [clock.update(frame, wake) - true for frame, true, wake in _wakeups(rng, 3000, rate_error)]
        settled = np.array(errors[600:])  # 3.2 s: a window, then a 2 s baseline for the slope
        assert np.all(settled >= 0.0) and settled.max() < 1.5e-4, (rate_error, settled.min(), settled.max())
        want = 1 / (1 + rate_error) - 1  # d(monotonic - frame / SR) / d(frame / SR)
        assert abs(clock.drift - want) < 2e-5 + 0.02 * abs(want), (rate_error, clock.drift)


def test_block_clock_reset_follows_a_slip_at_once() -> None:
    """An xrun: the frame clock loses 30 ms against the monotonic clock. Without the reset the
    minimum would hold the old time (30 ms early) for a whole window; with it, one window of
    wake-ups later the times are exact again, and the drift is kept."""
    rng = np.random.default_rng(4)
    clock = BlockClock(SR)
    wakes = list(_wakeups(rng, 2000, 1e-4))
    for frame, _, wake in wakes[:1000]:
        clock.update(frame, wake)
    drift = clock.drift
    clock.reset()
    errors = [clock.update(frame, wake + 0.030) - (true + 0.030) for frame, true, wake in wakes[1000:1100]]
    assert clock.drift == drift  # not measured again until a window and a baseline have passed
    assert max(abs(e) for e in errors[64:]) < 1e-4
