"""Drum one-shot data for training and evaluation: Hydrogen kits and plain sample folders.

Why this module exists: a musician's samples come as a folder of WAV/FLAC/AIFF files (often one
sub-folder per instrument) or as Hydrogen kits, whose ``drumkit.xml`` names each instrument
("BassDrum", "Hi Hat Closed", "Pearl Snare Rimshot"...). Training needs them as labelled,
equally long, equally loud mono or stereo arrays at the model's rate, so every sample goes
through the same steps here: find -> label -> read -> resample -> align to the onset ->
loudness-normalise -> crop/pad with a fade. Evaluation uses the same steps on held-out kits, so
real and generated clips are compared like for like.
"""

from __future__ import annotations

import logging
import re
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np

log = logging.getLogger(__name__)

AUDIO_SUFFIXES = (".wav", ".flac", ".aif", ".aiff", ".ogg")
HYDROGEN_KITS = Path("/usr/share/hydrogen/data/drumkits")
#: Kits of Debian's hydrogen-drumkits kept out of the shipped default's training, for evaluation:
#: one acoustic multi-layer kit and one electronic kit, both with kicks, snares and hats.
DEFAULT_HELD_OUT = ("Millo_MultiLayered3", "VariBreaks")

# Order matters: the first pattern that matches a name wins ("Snare Rimshot" is a snare,
# "Hi Hat Closed" is a hat, "Kick Drum" is a kick, "Side Stick" is perc). Cymbals, rolls and
# effects are left out: they ring far longer than a one-shot model's length or are not drums.
_INSTRUMENT_PATTERNS: tuple[tuple[str, str], ...] = (
    ("skip", r"roll|crash|ride|splash|china|cymbal|swish|choke|zap|fx|whistle|waterglass|shake|paiste bell"),
    ("kick", r"kick|bass ?drum|bassdrum|\bbd\b|\bbd_"),
    ("hat", r"hi-?hat|\bhh\b|\bhat\b|hat |hats?\b|\bohh\b|\bchh\b|\bphh\b"),
    ("snare", r"snare|rimshot|\bsd\b|\bsd_"),
    ("clap", r"clap|snap"),
    ("tom", r"\btom|floor tom|tomhi|tomlo|tommid"),
    ("perc", r"stick|rim|cowbell|clave|woodblock|tambourine|conga|bongo|djembe|cajon|agogo|"
             r"maraca|kenkeni|dununba|sangban|bell|drum \d|click|perc|shaker"),
)
INSTRUMENTS = ("kick", "snare", "hat", "clap", "tom", "perc")


def instrument_for(name: str) -> str | None:
    """Our instrument for a Hydrogen instrument or file name, or None when it is none of ours."""
    text = re.sub(r"[_\-.]+", " ", name.lower())
    text = re.sub(r"([a-z])(\d)", r"\1 \2", text)
    for instrument, pattern in _INSTRUMENT_PATTERNS:
        if re.search(pattern, text) or re.search(pattern, name.lower()):
            return None if instrument == "skip" else instrument
    return None


@dataclass(frozen=True)
class Sample:
    """One labelled one-shot file."""

    path: Path
    instrument: str
    kit: str
    name: str
    license: str = ""


def _strip_ns(tag: str) -> str:
    return tag.split("}", 1)[-1]


def _child_text(element: ET.Element, name: str) -> str:
    for child in element:
        if _strip_ns(child.tag) == name:
            return (child.text or "").strip()
    return ""


def read_hydrogen_kit(kit_dir: Path) -> list[Sample]:
    """Every layer of every instrument in a Hydrogen kit that maps to one of our instruments.

    Handles the old layout (``instrument/filename``), the layered one (``instrument/layer``) and
    the component one (``instrument/instrumentComponent/layer``), with or without a namespace.
    """
    xml_path = kit_dir / "drumkit.xml"
    try:
        root = ET.parse(xml_path).getroot()
    except (OSError, ET.ParseError) as exc:
        raise ValueError(f"cannot read Hydrogen kit {xml_path}: {exc}") from exc
    kit_name = _child_text(root, "name") or kit_dir.name
    license_text = _child_text(root, "license")
    samples: list[Sample] = []
    for inst in root.iter():
        if _strip_ns(inst.tag) != "instrument":
            continue
        name = _child_text(inst, "name")
        instrument = instrument_for(name)
        if instrument is None:
            continue
        seen: set[Path] = set()
        for element in inst.iter():
            if _strip_ns(element.tag) != "filename" or not (element.text or "").strip():
                continue
            path = kit_dir / element.text.strip()
            if path in seen or not path.is_file():
                continue
            seen.add(path)
            samples.append(Sample(path, instrument, kit_name, name, license_text))
    return samples


def read_sample_folder(folder: Path, skip: Sequence[Path] = ()) -> list[Sample]:
    """Audio files under ``folder``, labelled by their sub-folder's name (``kick/``, ``Snares/``)
    or, failing that, by their own file name. Unlabelled files are skipped with a log line;
    so are files under the folders in ``skip`` (Hydrogen kits, read on their own)."""
    samples: list[Sample] = []
    skipped = 0
    for path in sorted(folder.rglob("*")):
        if path.suffix.lower() not in AUDIO_SUFFIXES or not path.is_file():
            continue
        if any(k in path.parents for k in skip):
            continue
        instrument = None
        for part in reversed(path.relative_to(folder).parts[:-1]):
            instrument = instrument_for(part)
            if instrument:
                break
        instrument = instrument or instrument_for(path.stem)
        if instrument is None:
            skipped += 1
            continue
        samples.append(Sample(path, instrument, folder.name, path.stem))
    if skipped:
        log.info("%s: %d files with no recognisable instrument name skipped", folder, skipped)
    return samples


def find_samples(sources: Iterable[Path | str]) -> list[Sample]:
    """Samples from each source: a Hydrogen kit, a folder of kits, or a folder of samples."""
    samples: list[Sample] = []
    for source in sources:
        path = Path(source).expanduser()
        if not path.exists():
            raise FileNotFoundError(f"data source not found: {path}")
        if (path / "drumkit.xml").is_file():
            samples += read_hydrogen_kit(path)
            continue
        kits = sorted(p for p in path.iterdir() if (p / "drumkit.xml").is_file()) if path.is_dir() else []
        for kit in kits:
            samples += read_hydrogen_kit(kit)
        # Everything else under the folder is a plain sample collection.
        samples += read_sample_folder(path, skip=kits)
    return samples


def split_held_out(samples: Sequence[Sample], held_out: Sequence[str]) -> tuple[list[Sample], list[Sample]]:
    """(training, held-out): held-out kits are matched by kit name or folder name."""
    names = {h.lower() for h in held_out}
    train, test = [], []
    for s in samples:
        (test if s.kit.lower() in names or s.path.parent.name.lower() in names else train).append(s)
    return train, test


# --------------------------------------------------------------------------- audio preparation


def read_audio(path: Path, sample_rate: int, channels: int) -> np.ndarray:
    """A file as float32 (channels, frames) at ``sample_rate``: downmixed or duplicated to the
    channel count, resampled with soxr (the same resampler the daemon uses)."""
    import soundfile as sf
    import soxr

    data, rate = sf.read(str(path), dtype="float32", always_2d=True)
    if channels == 1:
        data = data.mean(axis=1, keepdims=True)
    elif data.shape[1] == 1:
        data = np.repeat(data, channels, axis=1)
    else:
        data = data[:, :channels]
    if rate != sample_rate and len(data):
        data = soxr.resample(data, rate, sample_rate, quality="HQ")
    return np.ascontiguousarray(data.T, dtype=np.float32)


ONSET_THRESHOLD_DB = -30.0
PRE_ROLL_S = 0.002
TARGET_RMS_DB = -18.0
PEAK_CEILING = 0.98


def onset_frame(audio: np.ndarray, sample_rate: int, threshold_db: float = ONSET_THRESHOLD_DB) -> int:
    """First frame within ``threshold_db`` of the peak, minus a 2 ms pre-roll: sample packs pad
    hits with varying silence, and a model learns faster when every hit starts at frame ~0."""
    mono = np.max(np.abs(audio), axis=0)
    peak = float(mono.max()) if mono.size else 0.0
    if peak <= 0.0:
        return 0
    above = np.nonzero(mono >= peak * 10 ** (threshold_db / 20))[0]
    return max(0, int(above[0]) - int(PRE_ROLL_S * sample_rate)) if len(above) else 0


def loudness_normalise(audio: np.ndarray, sample_rate: int, target_rms_db: float = TARGET_RMS_DB) -> np.ndarray:
    """Scale so the RMS of the first 100 ms (the hit) sits at ``target_rms_db``, then pull the
    gain down if a peak would exceed the ceiling: a quiet velocity layer and a loud one end up
    equally loud, and a hat (high crest factor) is not made as loud as a kick by its peak."""
    head = audio[:, : max(1, int(0.1 * sample_rate))]
    rms = float(np.sqrt(np.mean(np.square(head, dtype=np.float64))))
    if rms <= 1e-9:
        return audio.astype(np.float32, copy=True)
    gain = 10 ** (target_rms_db / 20) / rms
    peak = float(np.max(np.abs(audio)))
    gain = min(gain, PEAK_CEILING / peak)
    return (audio * gain).astype(np.float32)


def fit_length(audio: np.ndarray, length: int, sample_rate: int, fade_s: float = 0.03) -> np.ndarray:
    """Crop to ``length`` with a raised-cosine fade over the last ``fade_s`` (no click where a
    long ring is cut), or pad with silence."""
    channels, frames = audio.shape
    out = np.zeros((channels, length), dtype=np.float32)
    if frames >= length:
        out[:] = audio[:, :length]
        n = min(length, max(1, int(fade_s * sample_rate)))
        out[:, length - n:] *= (0.5 * (1 + np.cos(np.linspace(0, np.pi, n)))).astype(np.float32)
    else:
        out[:, :frames] = audio
    return out


def prepare_sample(path: Path, sample_rate: int, channels: int, length: int) -> np.ndarray:
    """read -> onset-align -> loudness-normalise -> crop/pad: one training or evaluation clip."""
    audio = read_audio(path, sample_rate, channels)
    audio = audio[:, onset_frame(audio, sample_rate):]
    return fit_length(loudness_normalise(audio, sample_rate), length, sample_rate)


@dataclass
class DrumSet:
    """Prepared clips in memory (a few hundred one-shots is a few MB) with their labels."""

    audio: np.ndarray  # (n, channels, length) float32
    labels: np.ndarray  # (n,) int64 index into classes
    classes: tuple[str, ...]
    samples: list[Sample]

    def counts(self) -> dict[str, int]:
        return {c: int((self.labels == i).sum()) for i, c in enumerate(self.classes)}


def load_drum_set(samples: Sequence[Sample], *, sample_rate: int, channels: int, length: int,
                  classes: Sequence[str] | None = None) -> DrumSet:
    """Prepare ``samples``; only those whose instrument is in ``classes`` (default: all found,
    in :data:`INSTRUMENTS` order). Unreadable files are skipped with a warning."""
    present = {s.instrument for s in samples}
    classes = tuple(classes) if classes else tuple(i for i in INSTRUMENTS if i in present)
    clips, labels, kept = [], [], []
    for s in samples:
        if s.instrument not in classes:
            continue
        try:
            clip = prepare_sample(s.path, sample_rate, channels, length)
        except Exception as exc:  # one bad file in a user's folder must not stop a training run
            log.warning("skipping %s: %s", s.path, exc)
            continue
        if float(np.max(np.abs(clip))) < 1e-4:
            log.warning("skipping %s: silent", s.path)
            continue
        clips.append(clip)
        labels.append(classes.index(s.instrument))
        kept.append(s)
    if not clips:
        raise ValueError("no usable samples (none readable with an instrument among "
                         f"{', '.join(classes) or 'the known ones'})")
    return DrumSet(np.stack(clips), np.asarray(labels, dtype=np.int64), classes, kept)
