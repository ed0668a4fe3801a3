"""A PNG contact sheet of one-shots: waveform over spectrogram, one column per instrument.

Why: "does it sound like drums?" is faster to judge by eye first - a kick's low, short body, a
hat's bright noise, a hiss that never decays - and a picture goes in the README and in review
notes where audio cannot. Used by ``genbridge render`` and bench/drum_quality.py.
"""

from __future__ import annotations

import json
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np


@dataclass
class SheetClip:
    label: str
    audio: np.ndarray  # (channels, frames) or (frames,)
    sample_rate: int
    title: str = ""


def clips_from_paths(paths: Sequence[str | Path]) -> list[SheetClip]:
    """WAV files (folders: their *.wav, sorted), labelled by the sidecar's instrument when there
    is one, else by the file name's first word."""
    import soundfile as sf

    files: list[Path] = []
    for p in map(Path, paths):
        files += sorted(p.glob("*.wav")) if p.is_dir() else [p]
    clips = []
    for f in files:
        audio, rate = sf.read(str(f), dtype="float32", always_2d=True)
        label = f.stem.split("-")[0].split("_")[0]
        sidecar = f.with_suffix(".json")
        if sidecar.is_file():
            try:
                label = json.loads(sidecar.read_text()).get("instrument") or label
            except (OSError, ValueError):
                pass
        clips.append(SheetClip(label, audio.T, rate, f.name))
    return clips


def render_sheet(clips: Sequence[SheetClip], out: str | Path, *, per_column: int = 4,
                 title: str = "") -> Path:
    """Write the sheet; at most ``per_column`` clips per label. Returns the PNG's path."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if not clips:
        raise ValueError("no clips to render")
    groups: OrderedDict[str, list[SheetClip]] = OrderedDict()
    for c in clips:
        if len(groups.setdefault(c.label, [])) < per_column:
            groups[c.label].append(c)
    cols, rows = len(groups), max(len(g) for g in groups.values())
    magma = plt.get_cmap("magma")
    floor_cmap = magma.with_extremes(bad=magma(0.0), under=magma(0.0))
    fig, axes = plt.subplots(rows * 2, cols, figsize=(3.2 * cols, 2.3 * rows), squeeze=False,
                             gridspec_kw={"height_ratios": [1, 1.6] * rows})
    for ax in axes.flat:
        ax.set_axis_off()
    for j, (label, group) in enumerate(groups.items()):
        for i, clip in enumerate(group):
            mono = clip.audio.mean(axis=0) if clip.audio.ndim == 2 else clip.audio
            t = np.arange(len(mono)) / clip.sample_rate
            wave, spec = axes[2 * i, j], axes[2 * i + 1, j]
            wave.set_axis_on()
            wave.plot(t, mono, linewidth=0.5, color="#1f4e79")
            wave.set_xlim(0, t[-1] if len(t) else 1)
            wave.set_ylim(-1.05, 1.05)
            wave.set_xticks([])
            wave.set_yticks([])
            wave.set_title(f"{label}" + (f"  {clip.title}" if clip.title else ""), fontsize=7)
            spec.set_axis_on()
            # Finished clips end in exact zeros: power 0 is -inf dB there, drawn in the floor
            # colour (a masked value would be left white); numpy's divide warning says no more.
            with np.errstate(divide="ignore"):
                spec.specgram(mono, NFFT=512, noverlap=384, Fs=clip.sample_rate, cmap=floor_cmap,
                              vmin=-120, vmax=-20)
            spec.set_yticks([0, clip.sample_rate // 4, clip.sample_rate // 2])
            spec.set_yticklabels(["0", f"{clip.sample_rate // 4000}k", f"{clip.sample_rate // 2000}k"], fontsize=6)
            spec.tick_params(axis="x", labelsize=6)
    if title:
        fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out
