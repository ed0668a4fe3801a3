"""The shipped default's training data beyond Hydrogen kits: what ``make data`` prepares.

Why this module exists: Debian packages several freely licensed drum collections, each in its
own shape - lmms-common's folder of named one-shots, sonic-pi-samples' flat folder of every kind
of sample (drums among ambiences and loops), and the General MIDI soundfonts, whose drum kits
are not files at all but instruments to be played. Each gets one small reader here that turns it
into the same thing: a folder holding ``genbridge-samples.json`` (a *manifest*), which names each
one-shot's file, instrument, velocity, group and license. :func:`models.drum_data.find_samples`
reads manifests like Hydrogen kits, so ``genbridge train`` needs no per-package code.

Soundfont kits are rendered with the ``fluidsynth`` program (Debian's fluidsynth package; no
Python binding needed): one MIDI file per kit plays every drum note of the General MIDI map at
several velocities, 1.5 s apart, and the render is cut into one file per hit. Their manifests
say ``"rendered": true`` (Sample.rendered). Measured at 40 against 127 (bench/drum_quality.py),
the GM fonts' velocity changes the level by 17-20 dB and the sound only where a font has velocity
zones: the hit centroid of snares x0.89, of kicks and hats x1.00.

avldrums.lv2-soundfont's two AVL Drumkits (Black Pearl, Red Zeppelin) are soundfonts too, but of
another kind: one melodic preset (bank 0, program 0) whose every drum holds five *recorded*
velocity layers, the way the avldrums.lv2 plugin (itself built on fluidsynth) plays them. They
are rendered the same way on a melodic channel, labelled by :data:`AVL_NOTES` (read off the
fonts' own sample names, which differ from the GM map at 48, 50, 52, 58 and 60), and their
manifests are not marked rendered: a soft note plays another recording, as in a Hydrogen kit.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Sequence

import numpy as np

from models.drum_data import DEFAULT_VELOCITY, instrument_for

log = logging.getLogger(__name__)

MANIFEST = "genbridge-samples.json"
LMMS_DRUMS = Path("/usr/share/lmms/samples/drums")
SONIC_PI_SAMPLES = Path("/usr/share/sonic-pi/samples")
#: Sonic Pi's drum samples, by prefix (the folder also holds ambiences, loops, guitars...).
SONIC_PI_PREFIXES = ("bd_", "sn_", "drum_", "elec_", "hat_", "perc_")
#: Sonic Pi's elec_ sounds that are synth blips, not drums.
SONIC_PI_NOT_DRUMS = re.compile(r"elec_(beep|blip|blup|bong|chime|flip|ping|plip|pop|twang|twip|bell|tick)")

#: (Debian package, soundfont file, license as the package's copyright file states it) of each
#: General MIDI soundfont with drum kits. fluid-soundfont-gs is left out: its FluidR3_GS.sf2
#: holds one drum kit, "SFX" (effects).
SOUNDFONTS = (
    ("fluid-soundfont-gm", Path("/usr/share/sounds/sf2/FluidR3_GM.sf2"), "MIT"),
    ("musescore-general-soundfont", Path("/usr/share/sounds/sf3/MuseScore_General_Full.sf3"),
     "MIT (parts public domain or CC0)"),
    ("timgm6mb-soundfont", Path("/usr/share/sounds/sf2/TimGM6mb.sf2"), "GPL-2"),
)
#: The AVL Drumkits fonts of avldrums.lv2-soundfont, and their license (the package's copyright
#: file, stanza ``Files: sf2/*``; the rest of the package is the plugin's code).
AVL_PACKAGE = "avldrums.lv2-soundfont"
AVL_LICENSE = "CC-BY-SA-3.0 (2015 Glen MacArthur)"
AVL_FONTS = (Path("/usr/share/sounds/sf2/Black_Pearl_4_LV2.sf2"), Path("/usr/share/sounds/sf2/Red_Zeppelin_4_LV2.sf2"))
#: Their notes -> our instrument, from the fonts' sample names ("36-Pearl22Kick-1".."-5"; both
#: fonts share the map). Left out: 48 hat swish, 50/52/58 cymbal chokes, 53 ride bell, 55 splash,
#: 60 china (the GM map's tom, tom, -, -, -, -, perc there).
AVL_NOTES = {
    36: "kick", 37: "rim", 38: "snare", 39: "clap", 40: "snare", 41: "tom", 42: "hat", 43: "tom", 44: "hat",
    45: "tom", 46: "open_hat", 47: "tom", 49: "crash", 51: "ride", 54: "perc", 56: "perc", 57: "crash",
    59: "ride", 64: "perc",
}
#: The drum kits (bank 128 programs) rendered from each soundfont: the GM2/GS kit set. The
#: numbered variations ("Standard 1".."7") of FluidR3 re-use the base kit's samples.
SOUNDFONT_KITS = {0: "Standard", 8: "Room", 16: "Power", 24: "Electronic", 25: "TR-808", 32: "Jazz", 40: "Brush"}
#: MIDI velocities each drum note is rendered at.
SOUNDFONT_VELOCITIES = (40, 70, 100, 127)
#: General MIDI percussion key map -> our instrument (notes not listed are not rendered).
GM_DRUM_NOTES = {
    35: "kick", 36: "kick", 37: "rim", 38: "snare", 39: "clap", 40: "snare", 41: "tom", 42: "hat",
    43: "tom", 44: "hat", 45: "tom", 46: "open_hat", 47: "tom", 48: "tom", 49: "crash", 50: "tom",
    51: "ride", 54: "perc", 56: "perc", 57: "crash", 59: "ride", 60: "perc", 61: "perc", 62: "perc",
    63: "perc", 64: "perc", 75: "perc", 76: "perc", 77: "perc",
}
NOTE_SPACING_S = 1.5
RENDER_RATE = 44100


@dataclass(frozen=True)
class ManifestEntry:
    file: str
    instrument: str
    name: str
    velocity: float = DEFAULT_VELOCITY
    group: str = ""


def write_manifest(folder: Path, *, kit: str, package: str, license: str, entries: Sequence[ManifestEntry],
                   rendered: bool = False) -> Path:
    """``folder/genbridge-samples.json`` for ``entries`` (files relative to the folder or absolute),
    written atomically: an interrupted ``make data`` never leaves half a manifest. ``rendered``:
    the velocity layers are one recording rendered at several velocities (Sample.rendered)."""
    folder.mkdir(parents=True, exist_ok=True)
    data = {"kit": kit, "package": package, "license": license, **({"rendered": True} if rendered else {}),
            "samples": [e.__dict__ for e in entries]}
    return _write_atomic(folder / MANIFEST, data)


def _write_atomic(path: Path, data: dict) -> Path:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=1))
    os.replace(tmp, path)
    return path


def _mark_rendered(manifest: Path) -> None:
    """Add ``"rendered": true`` to a soundfont kit's manifest written before the key existed."""
    data = json.loads(manifest.read_text())
    if not data.get("rendered"):
        _write_atomic(manifest, {**data, "rendered": True})


def _copyright(package: str) -> str:
    """The license line of a package's Debian copyright file ("" when it has none)."""
    path = Path("/usr/share/doc") / package / "copyright"
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return ""
    found = re.findall(r"^License:\s*(.+)$", text, flags=re.M)
    return ", ".join(dict.fromkeys(f.strip() for f in found)) or ""


_SOFT = re.compile(r"(^|[_ ])(soft|lite|light)([_ \d]|$)")
_HARD = re.compile(r"(^|[_ ])(hard|heavy)([_ \d]|$)")


def velocity_from_name(stem: str) -> float:
    """A one-shot's velocity from its name: "_soft" is a soft hit (MIDI 45), "_hard" a hard one
    (120), anything else :data:`DEFAULT_VELOCITY`."""
    name = stem.lower()
    if _SOFT.search(name):
        return 45 / 127
    if _HARD.search(name):
        return 120 / 127
    return DEFAULT_VELOCITY


def _group_of(stem: str) -> str:
    """Files that differ only in soft/hard are layers of one drum (Sonic Pi's drum_snare_soft
    and drum_snare_hard)."""
    return re.sub(r"[_ ](soft|hard)$", "", stem.lower())


def lmms_manifest(out: Path, source: Path = LMMS_DRUMS) -> Path | None:
    """lmms-common's drum one-shots, labelled by file name."""
    if not source.is_dir():
        return None
    entries = []
    for path in sorted(source.glob("*.ogg")):
        instrument = instrument_for(path.stem)
        if instrument:
            entries.append(ManifestEntry(str(path), instrument, path.stem, velocity_from_name(path.stem)))
    return write_manifest(out / "lmms", kit="lmms-drums", package="lmms-common",
                          license=_copyright("lmms-common") or "GPL-2+", entries=entries)


def sonic_pi_manifest(out: Path, source: Path = SONIC_PI_SAMPLES) -> Path | None:
    """sonic-pi-samples' drum samples (by prefix), labelled by name; soft/hard pairs are layers."""
    if not source.is_dir():
        return None
    entries = []
    for path in sorted(source.glob("*.flac")):
        stem = path.stem
        if not stem.startswith(SONIC_PI_PREFIXES) or SONIC_PI_NOT_DRUMS.match(stem):
            continue
        instrument = instrument_for(stem)
        if instrument:
            group = _group_of(stem)
            entries.append(ManifestEntry(str(path), instrument, stem, velocity_from_name(stem),
                                         f"sonic-pi/{group}" if group != stem.lower() else ""))
    return write_manifest(out / "sonic-pi", kit="sonic-pi-drums", package="sonic-pi-samples",
                          license=_copyright("sonic-pi-samples") or "CC0-1.0", entries=entries)


def _kit_midi(path: Path, program: int, notes: Iterable[int], velocities: Sequence[int],
              channel: int = 9) -> list[tuple[int, int]]:
    """A MIDI file playing each note at each velocity on ``channel`` (the GM drum channel unless
    told), NOTE_SPACING_S apart, with ``program`` selected; returns the (note, velocity) order."""
    import mido

    ticks = 480  # 120 BPM: a beat is 0.5 s
    per_hit = int(round(NOTE_SPACING_S / 0.5 * ticks))
    midi = mido.MidiFile(ticks_per_beat=ticks)
    track = mido.MidiTrack()
    midi.tracks.append(track)
    track.append(mido.MetaMessage("set_tempo", tempo=500000, time=0))
    track.append(mido.Message("control_change", channel=channel, control=0, value=0, time=0))
    track.append(mido.Message("program_change", channel=channel, program=program, time=0))
    order = []
    gate = ticks // 10
    for i, (note, velocity) in enumerate((n, v) for n in notes for v in velocities):
        track.append(mido.Message("note_on", channel=channel, note=note, velocity=velocity,
                                  time=ticks if i == 0 else per_hit - gate))
        track.append(mido.Message("note_off", channel=channel, note=note, velocity=0, time=gate))
        order.append((note, velocity))
    track.append(mido.MetaMessage("end_of_track", time=per_hit))
    midi.save(str(path))
    return order


def soundfont_kits(font: Path, bank: int = 128) -> dict[int, str]:
    """The presets (programs -> names) of one bank of a soundfont, asked of fluidsynth: bank 128
    holds a GM font's drum kits."""
    result = subprocess.run(["fluidsynth", "-n", "-a", "file", "-o", "audio.file.name=/dev/null", str(font)],
                            input="inst 1\nquit\n", capture_output=True, text=True, timeout=300)
    kits = {}
    for line in result.stdout.splitlines():
        m = re.match(rf"^{bank:03d}-(\d{{3}}) (.+)$", line.strip())
        if m:
            kits[int(m.group(1))] = m.group(2).strip()
    return kits


def render_soundfont(font: Path, package: str, out: Path, license: str,
                     kits: dict[int, str] | None = None, velocities: Sequence[int] = SOUNDFONT_VELOCITIES,
                     progress: Callable[[str], None] | None = None, notes: dict[int, str] | None = None,
                     melodic: bool = False) -> list[Path]:
    """Render each of the font's kits in :data:`SOUNDFONT_KITS` into ``out/<font>/<kit>/`` (one
    WAV per note and velocity, plus its manifest); kits whose manifest exists are kept.

    ``notes`` labels the notes (default :data:`GM_DRUM_NOTES`). ``melodic``: the kit is a bank 0
    preset played on channel 0 whose velocities choose recorded layers (the AVL fonts), so its
    manifest is not marked rendered."""
    import soundfile as sf

    if shutil.which("fluidsynth") is None:
        raise RuntimeError("fluidsynth is not installed (make data installs it)")
    notes = notes or GM_DRUM_NOTES
    present = soundfont_kits(font, 0 if melodic else 128)
    wanted = {p: n for p, n in (kits or SOUNDFONT_KITS).items() if p in present}
    manifests = []
    for program, kit_name in wanted.items():
        kit_dir = out / font.stem / f"{program:03d}-{present[program].replace('/', '-')}"
        if (kit_dir / MANIFEST).is_file():
            if not melodic:
                _mark_rendered(kit_dir / MANIFEST)
            manifests.append(kit_dir / MANIFEST)
            continue
        if progress:
            progress(f"{font.name}: {present[program]}")
        kit_dir.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory() as tmp:
            mid, wav = Path(tmp) / "kit.mid", Path(tmp) / "kit.wav"
            order = _kit_midi(mid, program, sorted(notes), velocities, channel=0 if melodic else 9)
            subprocess.run(["fluidsynth", "-ni", "-q", "-F", str(wav), "-r", str(RENDER_RATE), "-g", "0.5",
                            "-R", "0", "-C", "0", str(font), str(mid)], check=True, capture_output=True,
                           timeout=600)
            audio, rate = sf.read(str(wav), dtype="float32", always_2d=True)
        entries = []
        hop = int(round(NOTE_SPACING_S * rate))
        first = int(round(0.5 * rate))  # the first hit comes one beat in
        for i, (note, velocity) in enumerate(order):
            hit = audio[first + i * hop: first + (i + 1) * hop]
            if not len(hit) or float(np.max(np.abs(hit))) < 1e-4:  # a note this kit does not play
                continue
            name = f"n{note:02d}-v{velocity:03d}"
            sf.write(str(kit_dir / f"{name}.wav"), hit, rate, subtype="PCM_16")
            entries.append(ManifestEntry(f"{name}.wav", notes[note], f"{kit_name} note {note}",
                                         velocity / 127, f"{font.stem}/{program}/{note}"))
        manifests.append(write_manifest(kit_dir, kit=f"{font.stem} {present[program]}", package=package,
                                        license=license, entries=entries, rendered=not melodic))
    return manifests


def prepare_all(out: Path, progress: Callable[[str], None] | None = None) -> list[Path]:
    """Every source above that is installed, into ``out``; returns the manifests written."""
    out = Path(out)
    manifests = [m for m in (lmms_manifest(out), sonic_pi_manifest(out)) if m]
    for package, font, license in SOUNDFONTS:
        if font.is_file():
            manifests += render_soundfont(font, package, out / "soundfonts", license, progress=progress)
        else:
            log.warning("%s not installed (%s missing): skipped", package, font)
    for font in AVL_FONTS:
        if font.is_file():
            manifests += render_soundfont(font, AVL_PACKAGE, out / "soundfonts", AVL_LICENSE, kits={0: font.stem},
                                          progress=progress, notes=AVL_NOTES, melodic=True)
        else:
            log.warning("%s not installed (%s missing): skipped", AVL_PACKAGE, font)
    return manifests
