"""A model's own output low-pass, per instrument: the EQ its folder says its clips need.

Why: a small U-Net whose first level runs at half rate brings its output back with a kernel-2,
stride-2 transposed convolution, which leaves a mirror image of the low end near Nyquist and a
broadband hiss above the hit. The shipped default's kicks carry it at -19 to -25 dB where real
kicks have nothing (-50 dB above 6 kHz), so they sound (and classify) like a kick under a hat.
An audio engineer would put a high-cut on that channel; the model folder records where, so
every runtime (torch, ONNX), every path (a single clip, a refill batch, a variation) and every
benchmark applies the same filter. Snares and hats keep their top end: their noise is content.

The filter is a causal Butterworth low-pass (scipy.signal), not zero-phase: a one-shot must not
ring before its attack.
"""

from __future__ import annotations

from collections.abc import Mapping
from functools import lru_cache
from typing import Any

import numpy as np

#: The key that applies to every clip of the model (an unconditional model has no instruments).
EVERY_INSTRUMENT = "*"
#: Steepness of the high-cut: 24 dB per octave, a mixing desk's steep setting.
LOWPASS_ORDER = 4


class OutputFilterError(ValueError):
    """A model folder's ``output_lowpass_hz`` that cannot be applied as written."""


def parse_lowpass(value: Any, *, sample_rate: int, classes: list[str] | None) -> dict[str, float]:
    """Check a config's ``{"kick": 8000}`` mapping (known instruments or "*", 0 < Hz < Nyquist)
    and design its filters."""
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise OutputFilterError(f"output_lowpass_hz must map instruments to Hz, got {value!r}")
    nyquist = sample_rate / 2
    known = set(classes or []) | {EVERY_INSTRUMENT}
    out: dict[str, float] = {}
    for name, hz in value.items():
        if name not in known:
            raise OutputFilterError(f"output_lowpass_hz names {name!r}; the model generates "
                                    f"{', '.join(classes or []) or 'one instrument'} "
                                    f"(use {EVERY_INSTRUMENT!r} for every clip)")
        if isinstance(hz, bool) or not isinstance(hz, (int, float)) or not 0 < hz < nyquist:
            raise OutputFilterError(f"output_lowpass_hz[{name!r}] = {hz!r}: must be a number of Hz "
                                    f"between 0 and Nyquist ({nyquist:g})")
        out[str(name)] = float(hz)
    for hz in out.values():
        # Designed now, at load: importing scipy.signal takes ~0.8 s here, which must not land
        # on the first kick of a set.
        _sos(hz, int(sample_rate))
    return out


def parse_lowpass_args(items: list[str]) -> dict[str, float]:
    """``["kick=8000", ...]`` from the command line, as a mapping (checked later against the model)."""
    out: dict[str, float] = {}
    for item in items:
        name, sep, hz = item.partition("=")
        try:
            if not sep or not name.strip():
                raise ValueError
            out[name.strip()] = float(hz)
        except ValueError:
            raise OutputFilterError(f"--lowpass wants INSTRUMENT=HZ (e.g. kick=8000), got {item!r}") from None
    return out


def cutoff_for(lowpass: Mapping[str, float], instrument: str | None) -> float | None:
    """The cut-off that applies to a clip of ``instrument``: its own, else the "*" one, else none."""
    if instrument is not None and instrument in lowpass:
        return lowpass[instrument]
    return lowpass.get(EVERY_INSTRUMENT)


def describe_lowpass(lowpass: Mapping[str, float]) -> str:
    """``kick 8000 Hz, hat 12000 Hz`` for cards and reports; empty when there is none."""
    return ", ".join(f"{name} {hz:g} Hz" for name, hz in lowpass.items())


@lru_cache(maxsize=32)
def _sos(hz: float, sample_rate: int) -> np.ndarray:
    from scipy import signal

    return signal.butter(LOWPASS_ORDER, hz, btype="lowpass", fs=sample_rate, output="sos")


def apply_lowpass(audio: np.ndarray, hz: float | None, sample_rate: int) -> np.ndarray:
    """``audio`` (channels, frames) through the high-cut at ``hz``; unchanged when ``hz`` is None."""
    if hz is None:
        return audio
    from scipy import signal

    return signal.sosfilt(_sos(float(hz), int(sample_rate)), audio, axis=-1).astype(np.float32, copy=False)
