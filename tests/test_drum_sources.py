"""`make data`'s sources: lmms-common and sonic-pi-samples as manifests, GM soundfont kits rendered
with fluidsynth at several velocities, and the manifests read back as labelled, layered samples."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from drum_samples import synth
from helpers import GENBRIDGE, REPO

from models.drum_data import (
    DEFAULT_HELD_OUT,
    DEFAULT_VELOCITY,
    DrumSet,
    Sample,
    debian_packages,
    find_samples,
    level_renders,
    load_drum_set,
    near_copies,
    repeats,
    same_recording,
    split_held_out,
)
from models.drum_sources import (
    AVL_NOTES,
    GM_DRUM_NOTES,
    MANIFEST,
    lmms_manifest,
    render_soundfont,
    sonic_pi_manifest,
    velocity_from_name,
)

TIMGM = Path("/usr/share/sounds/sf2/TimGM6mb.sf2")
needs_fluidsynth = pytest.mark.skipif(
    shutil.which("fluidsynth") is None or not TIMGM.is_file(),
    reason="fluidsynth and timgm6mb-soundfont are not installed (make test installs them)")


def _write(folder: Path, names: dict[str, str], suffix: str) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for name, kind in names.items():
        level = 0.2 if "soft" in name else 0.8
        sf.write(folder / f"{name}{suffix}", synth(kind, 1) * level, 44100, format="OGG" if suffix == ".ogg" else None)


def test_lmms_and_sonic_pi_folders_become_labelled_manifests(tmp_path: Path) -> None:
    lmms = tmp_path / "lmms"
    _write(lmms, {"kick_soft01": "kick", "hihat_opened01": "hat", "sidestick01": "snare", "zap01": "hat",
                  "ride01": "hat"}, ".ogg")
    sonic = tmp_path / "sonic"
    _write(sonic, {"drum_snare_soft": "snare", "drum_snare_hard": "snare", "drum_cymbal_closed": "hat",
                   "elec_blip": "hat", "ambi_choir": "hat", "bd_808": "kick"}, ".flac")
    out = tmp_path / "out"
    lmms_manifest(out, lmms)
    sonic_pi_manifest(out, sonic)
    samples = {s.name: s for s in find_samples([out])}
    assert {n: s.instrument for n, s in samples.items()} == {
        "kick_soft01": "kick", "hihat_opened01": "open_hat", "sidestick01": "rim", "ride01": "ride",
        "drum_snare_soft": "snare", "drum_snare_hard": "snare", "drum_cymbal_closed": "hat", "bd_808": "kick"}, \
        "synth blips, ambiences and zaps are not drums"
    assert samples["kick_soft01"].package == "lmms-common" and samples["bd_808"].package == "sonic-pi-samples"
    assert samples["drum_snare_soft"].velocity < 0.4 < 0.9 < samples["drum_snare_hard"].velocity
    assert samples["bd_808"].velocity == DEFAULT_VELOCITY and not samples["bd_808"].rendered
    assert samples["drum_snare_soft"].group == samples["drum_snare_hard"].group != ""
    data = load_drum_set([samples["drum_snare_soft"], samples["drum_snare_hard"]], sample_rate=22050, channels=1,
                         length=8192)
    soft, hard = (20 * np.log10(np.sqrt(np.mean(c[0, :2205] ** 2))) for c in data.audio)
    assert abs((hard - soft) - 20 * np.log10(0.8 / 0.2)) < 0.5, "a soft/hard pair keeps its 12 dB"
    assert velocity_from_name("Kick Lite 1") < 0.5 and velocity_from_name("snare_hard") > 0.9


@needs_fluidsynth
def test_a_soundfont_kit_renders_every_gm_drum_note_at_each_velocity(tmp_path: Path) -> None:
    manifests = render_soundfont(TIMGM, "timgm6mb-soundfont", tmp_path, "GPL-2", kits={0: "Standard"},
                                 velocities=(40, 120))
    assert len(manifests) == 1
    entries = json.loads(manifests[0].read_text())["samples"]
    assert {(e["name"].split()[-1], round(e["velocity"] * 127)) for e in entries} >= {("36", 40), ("36", 120),
                                                                                     ("38", 40), ("46", 120)}
    assert {e["instrument"] for e in entries} >= {"kick", "snare", "hat", "open_hat", "crash", "ride", "tom", "rim"}
    assert all(e["instrument"] == GM_DRUM_NOTES[int(e["name"].split()[-1])] for e in entries)
    samples = find_samples([tmp_path])
    assert {s.package for s in samples} == {"timgm6mb-soundfont"}
    assert split_held_out(samples, ["timgm6mb-soundfont"])[0] == [], "a whole package can be held out"
    assert all(s.rendered for s in samples), "rendered layers are marked apart from recorded ones"
    kick = [s for s in samples if s.name.endswith("note 36")]
    data = load_drum_set(kick, sample_rate=22050, channels=1, length=16384)
    by_velocity = dict(zip((round(v * 127) for v in data.velocities), data.audio))
    soft, hard = (20 * np.log10(np.sqrt(np.mean(by_velocity[v][0, :2205] ** 2))) for v in (40, 120))
    assert hard - soft > 6, "the soft hit of the same note is rendered (and kept) quieter"
    again = render_soundfont(TIMGM, "timgm6mb-soundfont", tmp_path, "GPL-2", kits={0: "Standard"}, velocities=(40, 120))
    assert again == manifests, "a kit already rendered is kept"
    older = json.loads(manifests[0].read_text())
    del older["rendered"]
    manifests[0].write_text(json.dumps(older))
    render_soundfont(TIMGM, "timgm6mb-soundfont", tmp_path, "GPL-2", kits={0: "Standard"}, velocities=(40, 120))
    assert all(s.rendered for s in find_samples([tmp_path])), "a kit rendered before the mark existed gets it"


@needs_fluidsynth
def test_cli_data_writes_manifests_and_reports_them(tmp_path: Path) -> None:
    run = subprocess.run([*GENBRIDGE, "data", "-o", str(tmp_path / "drums")], cwd=REPO, capture_output=True,
                         text=True, timeout=900)
    assert run.returncode == 0, run.stderr
    manifests = sorted((tmp_path / "drums").rglob(MANIFEST))
    assert manifests and "sample manifests" in run.stdout
    assert any("TimGM6mb" in str(m) for m in manifests)


@needs_fluidsynth
def test_a_melodic_preset_renders_on_channel_one_and_its_velocities_count_as_recorded_layers(tmp_path: Path) -> None:
    """The AVL fonts' way: a bank 0 preset whose notes are labelled by the font's own map. TimGM6mb's
    bank 0 program 0 (a piano) stands in for them; CI does not install avldrums.lv2-soundfont."""
    manifests = render_soundfont(TIMGM, "timgm6mb-soundfont", tmp_path, "GPL-2", kits={0: "piano"},
                                 velocities=(40, 120), notes={60: "perc", 64: "perc"}, melodic=True)
    entries = json.loads(manifests[0].read_text())["samples"]
    assert sorted((e["name"].split()[-1], round(e["velocity"] * 127)) for e in entries) == [
        ("60", 40), ("60", 120), ("64", 40), ("64", 120)], "every note at each velocity sounded on channel 1"
    samples = find_samples([tmp_path])
    assert not any(s.rendered for s in samples), "a melodic font's velocities are its recorded layers"
    assert len({s.group for s in samples}) == 2
    assert AVL_NOTES[36] == "kick" and 48 not in AVL_NOTES and 50 not in AVL_NOTES, \
        "AVL's 48 (hat swish) and 50 (crash choke) are not the GM map's toms"


def test_near_copies_and_repeats_find_one_recording_again_at_another_level_and_lag() -> None:
    rate, length = 22050, 8192

    def clip(kind: str, variant: int) -> np.ndarray:
        audio = synth(kind, variant, rate)[:length]
        return np.pad(audio, (0, length - len(audio)))[None].astype(np.float32)

    classes = ("kick", "snare")
    train = DrumSet(np.stack([clip("kick", 1), clip("snare", 1)]), np.array([0, 1]), classes, [None, None])
    again = np.roll(clip("kick", 1), 7, axis=-1) * 0.3  # the training kick, quieter and 7 frames later
    held = DrumSet(np.stack([again, clip("kick", 3), clip("snare", 2), again]), np.array([0, 0, 1, 1]),
                   classes, [None] * 4)
    assert near_copies(held, train).tolist() == [True, False, False, False], \
        "only the same recording of the same instrument is a copy"
    assert len(held.subset(~near_copies(held, train)).labels) == 3
    kicks = DrumSet(np.stack([clip("kick", 2), clip("kick", 2) * 0.5, clip("kick", 2) * 0.2, clip("kick", 4)]),
                    np.zeros(4, dtype=np.int64), classes, [None] * 4, np.array([0.8, 0.8, 0.3, 0.8], np.float32))
    assert repeats(kicks).tolist() == [False, True, False, False], \
        "a recording two kits share counts once per velocity; its other velocities and other drums stay"


def test_one_drums_recording_at_several_velocities_counts_once_and_its_own_layers_stay() -> None:
    """A soundfont note without velocity zones rendered at 40/70/100/127 is one clip four times
    once finished; a layer that is another recording (a velocity zone) is a sound of its own."""
    rate, length = 22050, 8192

    def clip(kind: str, variant: int) -> np.ndarray:
        audio = synth(kind, variant, rate)[:length]
        return np.pad(audio, (0, length - len(audio)))[None].astype(np.float32)

    def sample(group: str, velocity: float) -> Sample:
        return Sample(Path("x.wav"), "kick", "Kit", "kick", velocity=velocity, group=group)

    one, zone, other = clip("kick", 1), clip("kick", 4), clip("kick", 2)
    audio = np.stack([one * 0.3, one * 0.55, one * 0.8, one, zone * 0.4, other, other * 0.5])
    velocities = np.array([40, 70, 100, 127, 40, 100, 40], np.float32) / 127
    samples = [sample("Kit/kick", v) for v in velocities[:5]] + [sample("", v) for v in velocities[5:]]
    kicks = DrumSet(audio, np.zeros(7, dtype=np.int64), ("kick",), samples, velocities)
    assert level_renders(kicks).tolist() == [True, True, False, True, False, False, False], \
        "the renders of one recording count once, at velocity 100 (nearest the default); the zone and " \
        "clips of no group stay"
    assert same_recording(one * 0.3, np.roll(one, 5, axis=-1)) and not same_recording(one, zone)


def test_kits_are_attributed_to_the_debian_package_that_installed_them() -> None:
    if shutil.which("dpkg-query") is None:
        pytest.skip("not a Debian system")
    found = debian_packages([Path("/usr/bin/dpkg"), Path("/no/such/path")])
    assert found == {Path("/usr/bin/dpkg"): "dpkg"}


def test_the_cli_holds_out_the_same_kits_as_the_trainer() -> None:
    from bridge.cli import DEFAULT_HELD_OUT_KITS

    assert DEFAULT_HELD_OUT_KITS == DEFAULT_HELD_OUT
