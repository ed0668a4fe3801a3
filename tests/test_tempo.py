"""Musical time without a daemon: the grid, tempo changes, MIDI clock's beat, bar-exact cuts and loops."""

from __future__ import annotations

import time

import numpy as np
import pytest

from bridge.bar_shape import BarShape, ShapeError, cut, loop, shape
from bridge.tempo import FixedTimeline, MidiClock, MidiClockTimeline, TempoError, TempoReading, safe_stream_start


def reading(bpm: float = 120.0, beat: float = 0.0, at: float = 100.0, quantum: float = 4.0) -> TempoReading:
    return TempoReading("fixed", bpm, beat, at, quantum)


@pytest.mark.parametrize("grid, expected_beat", [("1/16", 1.25), ("1/8", 1.5), ("beat", 2.0), ("1/4", 2.0),
                                                 ("1/2", 2.0), ("bar", 4.0)])
def test_next_grid_point_is_the_first_at_or_after_the_time(grid: str, expected_beat: float) -> None:
    r = reading()
    t = r.time_at(1.1)
    assert r.beat_at(r.next_grid_time(grid, t)) == pytest.approx(expected_beat)


def test_a_time_on_the_grid_stays_there_and_off_does_not_move() -> None:
    r = reading(bpm=133.0, beat=7.3)
    on_bar = r.time_at(8.0)
    assert r.next_grid_time("bar", on_bar) == pytest.approx(on_bar, abs=1e-9)
    assert r.next_grid_time("bar", on_bar + 1e-4) == pytest.approx(r.time_at(12.0))
    assert r.next_grid_time("off", 123.4) == 123.4
    with pytest.raises(TempoError, match="unknown grid"):
        r.next_grid_time("1/5", 0.0)


def test_bars_follow_tempo_and_quantum() -> None:
    assert reading(120.0).seconds_for_bars(2) == pytest.approx(4.0)
    assert reading(90.0, quantum=3).seconds_for_bars(1) == pytest.approx(2.0)


def test_a_fixed_tempo_change_keeps_the_beat_continuous() -> None:
    timeline = FixedTimeline(120.0, 4.0)
    before = timeline.read()
    timeline.set_tempo(60.0)
    after = timeline.read()
    t = after.at
    assert after.beat == pytest.approx(before.beat_at(t), abs=1e-9)
    assert after.beat_at(t + 1.0) == pytest.approx(after.beat + 1.0)
    with pytest.raises(TempoError, match="bpm must be"):
        timeline.set_tempo(5.0)


def test_midi_clock_gives_tempo_and_beat_from_start_and_song_position() -> None:
    clock = MidiClock()
    timeline = MidiClockTimeline(100.0, 4.0, clock)
    assert not timeline.read().locked and timeline.read().bpm == 100.0  # no clock yet: the stand-in
    clock.start()
    tick = 60.0 / (140.0 * 24)
    for i in range(24 * 4):
        clock.tick(10.0 + i * tick)
    r = timeline.read()
    assert r.locked and r.playing
    assert r.bpm == pytest.approx(140.0, rel=1e-6)
    assert r.beat == pytest.approx((24 * 4 - 1) / 24)  # the last tick's beat, counted from Start
    clock.song_position(32)  # 16ths: bar 3
    clock.tick(10.0 + 24 * 4 * tick)
    assert timeline.read().beat == pytest.approx(8.0)
    with pytest.raises(TempoError, match="MIDI clock"):
        timeline.set_tempo(90.0)


def _music(rate: int, seconds: float, seed: int = 0) -> np.ndarray:
    """Band-limited noise with a beat: like music, no sample a jump from its neighbour."""
    rng = np.random.default_rng(seed)
    n = int(rate * seconds)
    x = np.convolve(rng.standard_normal(n + 64), np.hanning(64) / 32, mode="same")[:n]
    t = np.arange(n) / rate
    x *= 0.5 + 0.5 * np.cos(2 * np.pi * 2 * t)
    return np.stack([x, 0.9 * x]).astype(np.float32)


def test_two_bars_at_120_are_4_seconds_to_the_sample_with_a_fade() -> None:
    rate = 32000
    spec = BarShape(2, 120.0, 4.0, loop=False)
    audio = _music(rate, spec.seconds_to_generate())
    out = shape(audio, rate, spec)
    assert out.shape == (2, 128000)
    assert out[:, -1].max() == 0.0 and np.abs(out[:, 1000:2000]).max() > 0
    with pytest.raises(ShapeError):
        cut(audio[:, :1000], 128000, rate)


def test_a_loop_wraps_with_no_step_larger_than_its_own() -> None:
    rate = 32000
    spec = BarShape(2, 120.0, 4.0, loop=True)
    audio = _music(rate, spec.seconds_to_generate(), seed=3)
    out = loop(audio, spec.frames(rate), rate)
    assert out.shape == (2, spec.frames(rate))
    steps = np.abs(np.diff(out, axis=1))
    wrap = np.abs(out[:, 0] - out[:, -1])
    assert np.all(wrap <= steps.max(axis=1)), (wrap, steps.max(axis=1))
    # after the overlap the loop is the generated audio itself (from a start moved at most 10 ms)
    overlap, frames = int(0.05 * rate), spec.frames(rate)
    matches = [k for k in range(int(0.01 * rate) + 1)
               if np.array_equal(out[:, overlap:], audio[:, k + overlap : k + frames])]
    assert len(matches) == 1


def test_status_reports_the_beat_now_not_at_the_anchor() -> None:
    r = reading(bpm=120.0, beat=0.0, at=time.monotonic() - 10.0)  # anchored 10 s (20 beats) ago
    d = r.as_dict()
    assert d["beat"] == pytest.approx(20.0, abs=0.05)
    assert min(d["phase"], 4.0 - d["phase"]) < 0.05  # beat 20 is a downbeat (phase wraps at 4)


def test_a_stream_faster_than_real_time_starts_on_the_next_bar() -> None:
    r = reading(bpm=120.0, beat=0.0, at=100.0)  # bars every 2 s from t=100
    # 1 s of a 10 s piece made in 0.5 s (twice real time): the next bar after the device's lead
    assert safe_stream_start(100.5, 1.0, 0.5, 10.0, 100.51, r, "bar") == pytest.approx(102.0)
    assert safe_stream_start(100.5, 1.0, 0.5, 10.0, 100.51, r, "off") == pytest.approx(100.51)


def test_a_stream_slower_than_real_time_waits_for_the_bar_it_will_not_run_dry_from() -> None:
    r = reading(bpm=120.0, beat=0.0, at=100.0)
    # 1 s made in 2 s (half real time), 9 s to come: the last arrives ~19.8 s later, so playback
    # may start no earlier than ~110.8 (it reaches that audio 9 s later): the bar at 112
    start = safe_stream_start(100.0, 1.0, 2.0, 10.0, 100.01, r, "bar")
    assert start == pytest.approx(112.0)
    # and then every chunk is there before it is due (chunks of 1 s arriving every 2.2 s)
    arrivals = [100.0 + 2.2 * k for k in range(10)]
    assert all(arrival <= start + k for k, arrival in enumerate(arrivals))


def test_link_before_it_is_enabled_keeps_one_steady_grid() -> None:
    from bridge.link_timeline import LinkTimeline

    timeline = LinkTimeline(120.0, 4.0)  # not started: the join wait, or aalink failed
    first, later = timeline.read(), timeline.read()
    assert not first.locked and first.bpm == 120.0
    t = time.monotonic() + 1.0
    assert first.next_grid_time("bar", t) == pytest.approx(later.next_grid_time("bar", t), abs=1e-9)


def test_midi_start_keeps_the_tempo_and_counts_the_beat_from_the_first_tick() -> None:
    clock = MidiClock()
    timeline = MidiClockTimeline(100.0, 4.0, clock)
    tick = 60.0 / (140.0 * 24)
    for i in range(24 * 4):  # a sender ticks while stopped
        clock.tick(10.0 + i * tick)
    clock.start()
    clock.tick(10.0 + 24 * 4 * tick)
    r = timeline.read()
    assert r.beat == 0.0 and r.locked and r.bpm == pytest.approx(140.0, rel=1e-6)


def test_a_loop_shorter_than_its_crossfade_still_loops() -> None:
    rate = 32000
    spec = BarShape(0.25, 999.0, 1.0, loop=True)  # 15 ms: shorter than the 50 ms crossfade
    out = shape(_music(rate, spec.seconds_to_generate()), rate, spec)
    assert out.shape == (2, spec.frames(rate))
