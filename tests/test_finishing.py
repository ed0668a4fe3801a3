"""One-shot finishing on synthetic hits whose right answer is known."""

from __future__ import annotations

import numpy as np

from bridge.finishing import FinishingSettings, envelope_db, finish_clip

SR = 22050


def _hit(noise_db: float, dc: float = 0.0, seconds: float = 0.75) -> np.ndarray:
    """A decaying 80 Hz thump (tau 40 ms) over a constant noise floor, plus DC."""
    rng = np.random.default_rng(0)
    t = np.arange(int(SR * seconds)) / SR
    hit = 0.6 * np.sin(2 * np.pi * 80 * t) * np.exp(-t / 0.04)
    noise = rng.standard_normal(len(t)) * 0.6 * 10 ** (noise_db / 20)
    return (hit + noise + dc).astype(np.float32)[None, :]


def test_dc_removed_and_peak_normalised_and_length_kept() -> None:
    raw = _hit(-90, dc=0.2)
    out, report = finish_clip(raw, SR, FinishingSettings())
    assert out.shape == raw.shape and out.dtype == np.float32
    assert abs(report["dc_removed"][0] - 0.2) < 1e-3
    assert abs(float(out[:, int(0.4 * SR):int(0.7 * SR)].mean())) < 1e-4, "the offset is gone from the tail"
    assert abs(float(np.max(np.abs(out))) - 10 ** (-1 / 20)) < 1e-6, "peak at -1 dBFS"
    assert np.max(np.abs(out[:, -5:])) < 1e-3, "faded out at the end"


def test_noisy_tail_is_trimmed_to_silence() -> None:
    raw = _hit(-35)
    out, report = finish_clip(raw, SR, FinishingSettings())
    cut = report["tail_cut_s"]
    assert cut is not None
    # the thump decays 8.7 dB per 40 ms: it meets a -35 dB floor (+6 dB margin) near 0.13-0.2 s
    assert 0.08 < cut < 0.3, cut
    assert -40 < report["noise_floor_db"] < -25
    tail = out[:, int((cut + 0.03) * SR):]
    assert np.all(tail == 0.0), "after the cut and its fade the clip is silent"
    assert envelope_db(out, SR)[:10].max() == 0.0  # the hit itself is intact


def test_clean_tail_and_pure_noise_are_left_whole() -> None:
    _, clean = finish_clip(_hit(-100), SR, FinishingSettings())
    assert clean["tail_cut_s"] is None
    noise = np.random.default_rng(1).standard_normal((1, SR)).astype(np.float32) * 0.1
    out, report = finish_clip(noise, SR, FinishingSettings())
    assert report["tail_cut_s"] is None, "noise throughout (an untrained model) must not be cut to nothing"
    assert np.sqrt(np.mean(out**2)) > 0.1


def test_silence_stays_silent_and_disabled_changes_nothing() -> None:
    out, report = finish_clip(np.zeros((2, 1000), np.float32), SR, FinishingSettings())
    assert report["silent"] and not out.any()
    raw = _hit(-35, dc=0.1)
    out, report = finish_clip(raw, SR, FinishingSettings(enabled=False))
    assert np.array_equal(out, raw) and report == {"enabled": False}


def test_a_drum_still_ringing_at_the_clip_end_keeps_its_ring() -> None:
    """A floor tom (100 Hz, tau 200 ms) rings past a 0.75 s clip: its last quarter, around -30 dB,
    is its own decay, not a noise floor, and cutting where the decay nears it chops the ring."""
    t = np.arange(int(SR * 0.75)) / SR
    tom = (0.6 * np.sin(2 * np.pi * 100 * t) * np.exp(-t / 0.2)).astype(np.float32)[None, :]
    out, report = finish_clip(tom, SR, FinishingSettings())
    assert report["tail_cut_s"] is None, report
    late = slice(int(0.6 * SR), int(0.72 * SR))  # before the 10 ms end fade
    level = 20 * np.log10(np.sqrt(np.mean(out[:, late] ** 2)) / np.sqrt(np.mean(tom[:, late] ** 2)))
    gain = report["gain_db"]
    assert abs(level - gain) < 0.1, "the ring is only normalised, not faded"
    _, report = finish_clip(tom, SR, FinishingSettings(tail_floor_max_fall_db_s=1e9))
    assert report["tail_cut_s"] is not None, "with the check off the ring is cut, as before"


def test_a_hit_that_reaches_its_noise_floor_late_or_ends_in_silence_is_still_trimmed() -> None:
    """Hits that decay into a flat floor inside the clip, one quickly (tau 50 ms), one only near
    the clip's end (tau 110 ms: the level is still falling into the floor at the cut), and one
    whose floor ends in the digital silence of a padded sample: each floor is noise to trim."""
    t = np.arange(int(SR * 0.75)) / SR
    noise = np.random.default_rng(2).standard_normal(t.shape).astype(np.float32) * 0.6 * 10 ** (-45 / 20)
    for tau, lo, hi in ((0.05, 0.15, 0.5), (0.11, 0.3, 0.65)):
        hit = (0.6 * np.sin(2 * np.pi * 100 * t) * np.exp(-t / tau)).astype(np.float32) + noise
        _, report = finish_clip(hit[None, :], SR, FinishingSettings())
        assert report["tail_cut_s"] is not None and lo < report["tail_cut_s"] < hi, (tau, report)
    padded = (0.6 * np.sin(2 * np.pi * 100 * t) * np.exp(-t / 0.04)).astype(np.float32) + noise * 10 ** (-5 / 20)
    padded[int(0.68 * SR):] = 0.0
    _, report = finish_clip(padded[None, :], SR, FinishingSettings())
    assert report["tail_cut_s"] is not None and report["tail_cut_s"] < 0.4, report
