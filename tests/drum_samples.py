"""Synthetic drum one-shots on disk, in the layouts users train from (a sample folder with one
sub-folder per instrument, and a Hydrogen kit with a drumkit.xml), for the training tests."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import soundfile as sf

RATE = 44100


def synth(instrument: str, variant: int, rate: int = RATE) -> np.ndarray:
    """A recognisable hit: a pitch-dropping sine (kick), tone + noise (snare), short bright
    noise (hat). Variants change pitch, decay and level, and start after some silence."""
    rng = np.random.default_rng(variant + 100 * len(instrument))
    n = int(rate * (0.6 + 0.1 * variant))
    t = np.arange(n) / rate
    if instrument == "kick":
        f = 45 + 10 * variant + 120 * np.exp(-t * 30)
        hit = np.sin(2 * np.pi * np.cumsum(f) / rate) * np.exp(-t * (6 + variant))
    elif instrument == "snare":
        hit = (0.5 * np.sin(2 * np.pi * (180 + 20 * variant) * t) + rng.normal(0, 0.5, n)) * np.exp(-t * 14)
    else:
        noise = rng.normal(0, 0.5, n)
        hit = np.diff(noise, prepend=0.0) * np.exp(-t * (40 + 5 * variant))
    lead = np.zeros(int(rate * 0.01 * (variant + 1)))
    return (np.concatenate([lead, hit]) * (0.3 + 0.1 * variant)).astype(np.float32)


def write_sample_folder(folder: Path, per_instrument: int = 3) -> Path:
    """kick/, snare/, hat/ sub-folders with WAV, FLAC and AIFF files, plus an unlabelled file."""
    suffixes = (".wav", ".flac", ".aiff")
    for inst in ("kick", "snare", "hat"):
        (folder / inst).mkdir(parents=True, exist_ok=True)
        for v in range(per_instrument):
            sf.write(folder / inst / f"{inst}{v}{suffixes[v % 3]}", synth(inst, v), RATE)
    sf.write(folder / "mystery.wav", synth("kick", 0), RATE)
    return folder


KIT_XML = """<?xml version="1.0" encoding="UTF-8"?>
<drumkit_info xmlns="http://www.hydrogen-music.org/drumkit">
  <name>Test Kit</name>
  <license>CC0</license>
  <instrumentList>
    <instrument><id>0</id><name>Bass Drum 1</name>
      <layer><filename>bd_soft.wav</filename><min>0</min><max>0.5</max><gain>0.5</gain></layer>
      <layer><filename>bd_hard.wav</filename><min>0.5</min><max>1</max></layer>
    </instrument>
    <instrument><id>1</id><name>Snare Rimshot</name>
      <instrumentComponent><layer><filename>sn.wav</filename></layer></instrumentComponent>
    </instrument>
    <instrument><id>2</id><name>Hi-Hat Closed</name><filename>hh.wav</filename></instrument>
    <instrument><id>3</id><name>Crash 18"</name><layer><filename>crash.wav</filename></layer></instrument>
  </instrumentList>
</drumkit_info>
"""


def write_hydrogen_kit(folder: Path, first_variant: int = 0) -> Path:
    """A small layered kit; ``first_variant`` > 0 makes its drums other recordings than
    :func:`write_sample_folder`'s (whose variants are 0-2)."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "drumkit.xml").write_text(KIT_XML)
    for name, inst, v in (("bd_soft", "kick", 0), ("bd_hard", "kick", 1), ("sn", "snare", 0),
                          ("hh", "hat", 0), ("crash", "hat", 2)):
        sf.write(folder / f"{name}.wav", synth(inst, v + first_variant), RATE)
    return folder
