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
import subprocess
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np

log = logging.getLogger(__name__)

AUDIO_SUFFIXES = (".wav", ".flac", ".aif", ".aiff", ".ogg")
HYDROGEN_KITS = Path("/usr/share/hydrogen/data/drumkits")
#: Where the default model's data lies after `make data`: Hydrogen's kits, and the manifests and
#: soundfont renders `genbridge data` writes (relative to the repository).
DEFAULT_SOURCES = (str(HYDROGEN_KITS), "data/drums")
#: Kits kept out of the shipped default's training, for evaluation, from four packages: of
#: hydrogen-drumkits one acoustic multi-layer kit and one electronic kit; every kit of
#: timgm6mb-soundfont (rendered at four velocities; a soundfont made apart from FluidR3 and
#: MuseScore General, which share samples); and, never trained on, hydrogen-data (GMRockKit,
#: TR808EmulationKit) and avldrums.lv2-soundfont (two acoustic kits, five recorded velocity
#: layers per drum). Evaluation drops held-out clips that are training recordings again
#: (:func:`near_copies`).
DEFAULT_HELD_OUT = ("Millo_MultiLayered3", "VariBreaks", "timgm6mb-soundfont", "hydrogen-data",
                    "avldrums.lv2-soundfont")

# Order matters: the first pattern that matches a name wins ("Snare Rimshot" is a snare,
# "Hi Hat Open" an open hat, "Hi Hat Closed" a hat, "Side Stick" a rim). Rolls, splashes,
# chinas and effects are left out: they are not one hit, or not drums.
_INSTRUMENT_PATTERNS: tuple[tuple[str, str], ...] = (
    ("skip", r"roll|splash|china|swish|choke|zap|fx|whistle|waterglass|shake|paiste bell|ride bell|bell ride|"
             r"metronome|impact|swoosh|swash|ride ?cup"),
    ("kick", r"kick|bass ?drum|bassdrum|\bbd\b|\bbd_"),
    ("open_hat", r"(hi-?hat|\bhh\b|\bhat\b|hats?\b|cymbal).*(open|\bop\b)|open.*(hi-?hat|\bhh\b|hat)|\bohh\b"),
    ("hat", r"hi-?hat|\bhh\b|\bhat\b|hat |hats?\b|\bchh\b|\bphh\b|cymbal (closed|pedal)"),
    ("snare", r"snare|rimshot|\bsd\b|\bsd_|\bsn\b"),
    ("clap", r"clap|snap"),
    ("tom", r"\btom|floor tom|tomhi|tomlo|tommid"),
    ("ride", r"\bride\b|ride ?\d"),
    ("crash", r"crash|cymbal"),
    ("rim", r"side ?stick|cross ?stick|\brim\b|rim ?click|\bstick"),
    ("perc", r"cowbell|clave|\bclav\b|woodblock|\bwood\b|tambourine|conga|bongo|djembe|cajon|agogo|"
             r"maraca|kenkeni|dununba|sangban|bell|drum \d|click|perc|shaker|triangle"),
)
#: Every instrument a drum model can be trained on, in the order a model's classes take.
INSTRUMENTS = ("kick", "snare", "hat", "open_hat", "clap", "tom", "rim", "crash", "ride", "perc")
#: The velocity (0-1) of a sample that has one layer for every velocity: most packs record their
#: one-shots as firm hits, so a lone layer counts as one (MIDI ~100).
DEFAULT_VELOCITY = 0.8


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
    #: How hard the hit was played, 0-1 (a velocity layer's middle; :data:`DEFAULT_VELOCITY` for
    #: a lone layer): the model is conditioned on it, so a soft hit is a soft sound.
    velocity: float = DEFAULT_VELOCITY
    #: Samples of one group (the layers of one instrument of one kit) are loudness-normalised
    #: with one gain, so a soft layer stays as much softer as it was recorded; "" is a group of one.
    group: str = ""
    #: Linear gain the kit plays this file at (a Hydrogen layer's ``gain``).
    gain: float = 1.0
    #: The Debian package the file comes from ("hydrogen-drumkits"; "" for a user's folder).
    package: str = ""
    #: A velocity layer rendered by a synthesiser (a soundfont note played at several velocities),
    #: not a recording of that hit: it changes the level, and the sample only where the font has
    #: velocity zones (bench/drum_quality.py shows such layers apart from recorded ones).
    rendered: bool = False


def _strip_ns(tag: str) -> str:
    return tag.split("}", 1)[-1]


def _child_text(element: ET.Element, name: str) -> str:
    for child in element:
        if _strip_ns(child.tag) == name:
            return (child.text or "").strip()
    return ""


def read_hydrogen_kit(kit_dir: Path, package: str | None = None) -> list[Sample]:
    """Every layer of every instrument in a Hydrogen kit that maps to one of our instruments.

    Handles the old layout (``instrument/filename``), the layered one (``instrument/layer``) and
    the component one (``instrument/instrumentComponent/layer``), with or without a namespace.
    ``package``: the Debian package holding the kit (default: asked of dpkg for a kit under
    /usr/share/hydrogen/data/drumkits, "" elsewhere).
    """
    xml_path = kit_dir / "drumkit.xml"
    try:
        root = ET.parse(xml_path).getroot()
    except (OSError, ET.ParseError) as exc:
        raise ValueError(f"cannot read Hydrogen kit {xml_path}: {exc}") from exc
    kit_name = _child_text(root, "name") or kit_dir.name
    license_text = _child_text(root, "license")
    if package is None:
        package = debian_packages([kit_dir]).get(kit_dir, "") if kit_dir.parent == HYDROGEN_KITS else ""
    samples: list[Sample] = []
    for inst in root.iter():
        if _strip_ns(inst.tag) != "instrument":
            continue
        name = _child_text(inst, "name")
        instrument = instrument_for(name)
        if instrument is None:
            continue
        seen: set[Path] = set()
        group = f"{kit_name}/{name}"
        for layer in _layers(inst):
            path = kit_dir / layer["filename"]
            if path in seen or not path.is_file():
                continue
            seen.add(path)
            samples.append(Sample(path, instrument, kit_name, name, license_text, layer["velocity"], group,
                                  layer["gain"], package))
    return samples


def debian_packages(paths: Sequence[Path]) -> dict[Path, str]:
    """The Debian package each path belongs to, in one ``dpkg-query -S`` call; paths no package
    holds (or every path, off Debian) are left out. Why: hydrogen-data and hydrogen-drumkits
    install their kits into one folder, and hydrogen-data's GMRockKit is hydrogen-drumkits'
    The Black Pearl 1.0 again, so which package a kit came from decides where it may go."""
    if not paths:
        return {}
    try:
        result = subprocess.run(["dpkg-query", "-S", *map(str, paths)], capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired):
        return {}
    found: dict[Path, str] = {}
    for line in result.stdout.splitlines():
        owners, sep, where = line.partition(": ")
        if sep and "," not in owners:
            found[Path(where.strip())] = owners.strip()
    return found


def _layers(inst: ET.Element) -> list[dict]:
    """An instrument's layers as {filename, velocity, gain}: the layered layouts give each
    layer's velocity range (its middle is the layer's velocity) and gain; a file named without a
    layer (the old layout), or a layer that covers every velocity, plays at DEFAULT_VELOCITY."""
    found = []
    for element in inst.iter():
        tag = _strip_ns(element.tag)
        if tag == "layer":
            name = _child_text(element, "filename")
            if not name:
                continue
            lo, hi = _number(_child_text(element, "min"), 0.0), _number(_child_text(element, "max"), 1.0)
            velocity = DEFAULT_VELOCITY if lo <= 0.0 and hi >= 1.0 else (lo + hi) / 2
            found.append({"filename": name, "velocity": min(1.0, max(0.0, velocity)),
                          "gain": _number(_child_text(element, "gain"), 1.0)})
    if found:
        return found
    return [{"filename": (e.text or "").strip(), "velocity": DEFAULT_VELOCITY, "gain": 1.0}
            for e in inst.iter() if _strip_ns(e.tag) == "filename" and (e.text or "").strip()]


def _number(text: str, default: float) -> float:
    try:
        return float(text)
    except ValueError:
        return default


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


MANIFEST = "genbridge-samples.json"


def read_manifest(path: Path) -> list[Sample]:
    """The samples a ``genbridge-samples.json`` names (what :mod:`models.drum_sources` writes for
    lmms-common, sonic-pi-samples and rendered soundfont kits); files are relative to it."""
    import json

    try:
        data = json.loads(path.read_text())
        entries = data["samples"]
    except (OSError, ValueError, KeyError) as exc:
        raise ValueError(f"cannot read sample manifest {path}: {exc}") from exc
    out = []
    for e in entries:
        file = path.parent / e["file"]
        if e["instrument"] not in INSTRUMENTS or not file.is_file():
            continue
        out.append(Sample(file, e["instrument"], data.get("kit", path.parent.name), e.get("name", file.stem),
                          data.get("license", ""), float(e.get("velocity", DEFAULT_VELOCITY)),
                          e.get("group", ""), 1.0, data.get("package", ""), bool(data.get("rendered", False))))
    return out


def find_samples(sources: Iterable[Path | str]) -> list[Sample]:
    """Samples from each source: a Hydrogen kit, a folder of kits, a sample manifest (or a folder
    of them), or a folder of samples."""
    samples: list[Sample] = []
    for source in sources:
        path = Path(source).expanduser()
        if not path.exists():
            raise FileNotFoundError(f"data source not found: {path}")
        if (path / "drumkit.xml").is_file():
            samples += read_hydrogen_kit(path)
            continue
        manifests = sorted(path.rglob(MANIFEST)) if path.is_dir() else []
        if manifests:
            for manifest in manifests:
                samples += read_manifest(manifest)
            continue
        kits = sorted(p for p in path.iterdir() if (p / "drumkit.xml").is_file()) if path.is_dir() else []
        packages = debian_packages(kits) if path == HYDROGEN_KITS else {}
        for kit in kits:
            samples += read_hydrogen_kit(kit, packages.get(kit, ""))
        # Everything else under the folder is a plain sample collection.
        samples += read_sample_folder(path, skip=kits)
    return samples


def split_held_out(samples: Sequence[Sample], held_out: Sequence[str]) -> tuple[list[Sample], list[Sample]]:
    """(training, held-out): held-out kits are matched by kit name, folder name or, for a whole
    package's kits, by the package's name ("timgm6mb-soundfont")."""
    names = {h.lower() for h in held_out}
    train, test = [], []
    for s in samples:
        held = s.kit.lower() in names or s.path.parent.name.lower() in names or s.package.lower() in names
        (test if held else train).append(s)
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


def fit_length(audio: np.ndarray, length: int, sample_rate: int, fade_s: float = 0.03,
               ring_fade_s: float = 0.25, ring_db: float = -40.0) -> np.ndarray:
    """Crop to ``length`` with a raised-cosine fade, or pad with silence. The fade is ``fade_s``
    where the clip has decayed below ``ring_db`` (re its peak) by the cut, and ``ring_fade_s``
    where it still rings there (a crash, an open hat): a cut ring then dies away rather than
    stopping, which is what the model learns a long ring's end sounds like."""
    channels, frames = audio.shape
    out = np.zeros((channels, length), dtype=np.float32)
    if frames >= length:
        out[:] = audio[:, :length]
        peak = float(np.max(np.abs(audio))) or 1.0
        near_cut = audio[:, max(0, length - int(0.02 * sample_rate)):length]
        ringing = float(np.sqrt(np.mean(np.square(near_cut)))) > peak * 10 ** (ring_db / 20)
        n = min(length, max(1, int((ring_fade_s if ringing else fade_s) * sample_rate)))
        out[:, length - n:] *= (0.5 * (1 + np.cos(np.linspace(0, np.pi, n)))).astype(np.float32)
    else:
        out[:, :frames] = audio
    return out


def _aligned(path: Path, sample_rate: int, channels: int, gain: float) -> np.ndarray:
    audio = read_audio(path, sample_rate, channels) * np.float32(gain)
    return audio[:, onset_frame(audio, sample_rate):]


@dataclass
class DrumSet:
    """Prepared clips in memory (a few thousand one-shots is ~100 MB) with their labels."""

    audio: np.ndarray  # (n, channels, length) float32
    labels: np.ndarray  # (n,) int64 index into classes
    classes: tuple[str, ...]
    samples: list[Sample]
    #: (n,) float32: each clip's velocity, 0-1.
    velocities: np.ndarray | None = None

    def counts(self) -> dict[str, int]:
        return {c: int((self.labels == i).sum()) for i, c in enumerate(self.classes)}

    def per_package(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for s in self.samples:
            out[s.package or "other"] = out.get(s.package or "other", 0) + 1
        return out

    def subset(self, keep: np.ndarray) -> "DrumSet":
        """The clips where ``keep`` (a boolean mask) is true, classes unchanged."""
        idx = np.nonzero(keep)[0]
        return DrumSet(self.audio[idx], self.labels[idx], self.classes, [self.samples[i] for i in idx],
                       None if self.velocities is None else self.velocities[idx])


#: A held-out clip that correlates this well with a training clip of its instrument is the same
#: recording (at another level, or rendered again): hydrogen-data's GMRockKit is The Black Pearl
#: 1.0 of hydrogen-drumkits (71 of its 81 layers at 1.00), TimGM6mb's acoustic kick and toms are
#: lmms-common's (0.96-0.98), the AVL fonts' closed hats and claps are Hydrogen kits' (0.998).
#: Different drums and different layers of one drum stay under 0.9.
NEAR_COPY_CORRELATION = 0.95


def _unit_mono(audio: np.ndarray, window: int) -> np.ndarray:
    mono = audio.mean(axis=1)[:, :window].astype(np.float64)
    return mono / np.maximum(np.linalg.norm(mono, axis=1, keepdims=True), 1e-12)


def _best_correlation(clip: np.ndarray, pool_spectra: np.ndarray, n_fft: int) -> np.ndarray:
    """The highest normalised cross-correlation (any lag) of one unit clip with each pooled one."""
    corr = np.fft.irfft(pool_spectra * np.conj(np.fft.rfft(clip, n_fft)), n_fft)
    return np.abs(corr).max(axis=-1)


def near_copies(held: DrumSet, train: DrumSet, threshold: float = NEAR_COPY_CORRELATION,
                window: int = 4096) -> np.ndarray:
    """A boolean mask over ``held``: the clips whose normalised cross-correlation with some
    training clip of the same class reaches ``threshold`` over their first ``window`` frames
    (mono, at any lag). Why: a held-out kit proves nothing about unseen material where it holds
    a training kit's recording; evaluation drops such clips (bench/drum_quality.py)."""
    mask = np.zeros(len(held.labels), dtype=bool)
    n_fft = 2 * window
    for k, name in enumerate(held.classes):
        rows = np.nonzero(held.labels == k)[0]
        if name not in train.classes or not len(rows):
            continue
        pool = _unit_mono(train.audio[train.labels == train.classes.index(name)], window)
        if not len(pool):
            continue
        spectra = np.fft.rfft(pool, n_fft)
        for i, clip in zip(rows, _unit_mono(held.audio[rows], window)):
            mask[i] = float(_best_correlation(clip, spectra, n_fft).max()) >= threshold
    return mask


def repeats(data: DrumSet, threshold: float = NEAR_COPY_CORRELATION, window: int = 4096) -> np.ndarray:
    """A boolean mask over ``data``: each clip that repeats an earlier one of the same class and
    velocity (correlation as in :func:`near_copies`). Why: kits share recordings - TimGM6mb's
    seven kits hold 28 distinct kick files among 56 - and a recording counted seven times gives
    its package seven votes in every held-out median. Different velocities of one note are not
    repeats: they are what the velocity measurements compare."""
    mask = np.zeros(len(data.labels), dtype=bool)
    velocities = data.velocities if data.velocities is not None else np.zeros(len(data.labels))
    for k in range(len(data.classes)):
        for v in np.unique(velocities[data.labels == k]):
            _mark_later_copies(data, list(np.nonzero((data.labels == k) & (velocities == v))[0]), mask,
                               threshold, window)
    return mask


def _mark_later_copies(data: DrumSet, rows: list[int], mask: np.ndarray, threshold: float, window: int) -> None:
    """Set ``mask`` on each of ``rows`` (in their order) that correlates >= ``threshold`` with an
    earlier row left unmarked: the first of a set of copies is kept, the rest are marked."""
    n_fft = 2 * window
    units = _unit_mono(data.audio[rows], window)
    spectra = np.fft.rfft(units, n_fft)
    kept: list[int] = []
    for j in range(len(rows)):
        if kept and float(_best_correlation(units[j], spectra[kept], n_fft).max()) >= threshold:
            mask[rows[j]] = True
        else:
            kept.append(j)


def level_renders(data: DrumSet, threshold: float = NEAR_COPY_CORRELATION, window: int = 4096,
                  keep_velocity: float = DEFAULT_VELOCITY) -> np.ndarray:
    """A boolean mask over ``data``: the layers of one group (one drum of one kit) that are
    another layer's recording at another level (correlation as in :func:`near_copies`), all but
    the one nearest ``keep_velocity``. Why: a soundfont note without velocity zones, rendered at
    four velocities, is one recording four times; finished (peak-normalised) the four are one
    clip, and they gave that drum four votes in every held-out rate and median (TimGM6mb's
    Electronic kick, named a tom four times, was every miss among the held-out kicks). A layer
    that is its own recording (Hydrogen's layers, a font's velocity zones) stays."""
    mask = np.zeros(len(data.labels), dtype=bool)
    velocities = data.velocities if data.velocities is not None else np.zeros(len(data.labels))
    groups: dict[str, list[int]] = {}
    for i, s in enumerate(data.samples):
        if s is not None and s.group:
            groups.setdefault(s.group, []).append(i)
    for rows in groups.values():
        if len(rows) < 2:
            continue
        rows = sorted(rows, key=lambda i: (abs(float(velocities[i]) - keep_velocity), -float(velocities[i])))
        _mark_later_copies(data, rows, mask, threshold, window)
    return mask


def same_recording(a: np.ndarray, b: np.ndarray, threshold: float = NEAR_COPY_CORRELATION,
                   window: int = 4096) -> bool:
    """Whether two clips (channels, frames) are one recording at two levels (correlation as in
    :func:`near_copies`). Why: a soundfont note rendered soft and hard without velocity zones is
    not a pair of velocity layers, only one sample at two gains; the velocity benchmark shows such
    pairs apart from the layers it compares against."""
    units = _unit_mono(np.stack([a, b]), window)
    n_fft = 2 * window
    return float(_best_correlation(units[0], np.fft.rfft(units[1:], n_fft), n_fft).max()) >= threshold


def load_drum_set(samples: Sequence[Sample], *, sample_rate: int, channels: int, length: int,
                  classes: Sequence[str] | None = None) -> DrumSet:
    """Prepare ``samples``; only those whose instrument is in ``classes`` (default: all found,
    in :data:`INSTRUMENTS` order). Unreadable files are skipped with a warning.

    The layers of one group (one instrument of one kit) share one loudness gain, the one that
    brings their loudest layer to the target: a soft layer stays as much quieter as the kit
    plays it, so level, like timbre, follows velocity. A sample of no group is normalised alone."""
    present = {s.instrument for s in samples}
    classes = tuple(classes) if classes else tuple(i for i in INSTRUMENTS if i in present)
    wanted = [s for s in samples if s.instrument in classes]
    groups: dict[str, list[int]] = {}
    for i, s in enumerate(wanted):
        groups.setdefault(s.group or f"#{i}", []).append(i)
    clips: dict[int, np.ndarray] = {}
    for members in groups.values():
        aligned = {}
        for i in members:
            try:
                aligned[i] = _aligned(wanted[i].path, sample_rate, channels, wanted[i].gain)
            except Exception as exc:  # one bad file in a user's folder must not stop a training run
                log.warning("skipping %s: %s", wanted[i].path, exc)
        if not aligned:
            continue
        gains = [_normalise_gain(a, sample_rate) for a in aligned.values()]
        gain = min(gains)  # the loudest member's: the others keep their level below it
        for i, a in aligned.items():
            clips[i] = fit_length((a * gain).astype(np.float32), length, sample_rate)
    kept_clips, labels, kept, velocities = [], [], [], []
    for i, s in enumerate(wanted):
        clip = clips.get(i)
        if clip is None:
            continue
        if float(np.max(np.abs(clip))) < 1e-4:
            log.warning("skipping %s: silent", s.path)
            continue
        kept_clips.append(clip)
        labels.append(classes.index(s.instrument))
        kept.append(s)
        velocities.append(s.velocity)
    if not kept_clips:
        raise ValueError("no usable samples (none readable with an instrument among "
                         f"{', '.join(classes) or 'the known ones'})")
    return DrumSet(np.stack(kept_clips), np.asarray(labels, dtype=np.int64), classes, kept,
                   np.asarray(velocities, dtype=np.float32))


def _normalise_gain(audio: np.ndarray, sample_rate: int, target_rms_db: float = TARGET_RMS_DB) -> float:
    """The gain that brings the RMS of the first 100 ms (the hit) to ``target_rms_db``, pulled down if a
    peak would exceed the ceiling: a hat (high crest factor) is not made as loud as a kick by its peak."""
    head = audio[:, : max(1, int(0.1 * sample_rate))]
    rms = float(np.sqrt(np.mean(np.square(head, dtype=np.float64))))
    peak = float(np.max(np.abs(audio))) if audio.size else 0.0
    if rms <= 1e-9 or peak <= 0:
        return 1.0
    return min(10 ** (target_rms_db / 20) / rms, PEAK_CEILING / peak)
