"""The Max and Pd patches speak the protocol table; the Pd pads patch works headless."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import threading
from pathlib import Path

import pytest
import soundfile as sf
from conftest import pools_full, write_config
from helpers import REPO, Daemon, OscClient

sys.path.insert(0, str(REPO / "max_patches"))
import check_patches  # noqa: E402
import make_patches  # noqa: E402

#: One test at a time on this machine, whichever test process runs it (tests/conftest.py):
#: the patches talk to the daemon on their fixed ports (9000, 9001, 9002).
pytestmark = pytest.mark.machine_wide("pd")


def test_every_patch_sends_only_what_the_table_accepts() -> None:
    patches = check_patches.all_patches()
    assert {p.name for p in patches} >= {"genbridge_pads.maxpat", "genbridge_pads.pd", "genbridge_continue.maxpat",
                                         "genbridge_continue.pd", "genbridge_pads_m4l.maxpat",
                                         "genbridge_continue_m4l.maxpat"}
    for patch in patches:
        report = check_patches.check(patch)
        assert report.sends, f"{patch.name} sends nothing the checker can see"
        assert not report.errors, report.errors
        addresses = {a for a, _ in report.sends}
        wanted = ({"/genbridge/continue", "/genbridge/job/cancel"} if "continue" in patch.name
                  else {"/genbridge/kw/drum/play", "/genbridge/tempo/listen"})
        assert wanted | {"/genbridge/client/reply_port"} <= addresses, (patch.name, addresses)


@pytest.mark.parametrize("name, good, bad", [
    ("genbridge_pads.maxpat", "kw/drum/play", "kw/drum/plya"), ("pd/genbridge_pads.pd", "kw drum play", "kw drum plya"),
    ("pd/genbridge_pads.pd", "tempo listen", "tempo lisen"),
    ("genbridge_continue.maxpat", "genbridge/continue", "genbridge/contine"),
    ("pd/genbridge_continue.pd", "genbridge continue", "genbridge contine"),
    ("m4l/genbridge_continue_m4l.maxpat", "job/cancel", "job/cancl"),
])
def test_the_checker_fails_when_an_address_changes(tmp_path: Path, name: str, good: str, bad: str) -> None:
    original = (REPO / "max_patches" / name).read_text()
    broken = original.replace(good, bad)
    assert broken != original
    copy = tmp_path / Path(name).name
    copy.write_text(broken)
    report = check_patches.check(copy)
    assert any("unknown address '/" + bad.replace(" ", "/").removeprefix("genbridge/").join(["genbridge/", "'"])
               in e for e in report.errors), report.errors


def test_committed_patches_are_what_the_generator_writes() -> None:
    assert (REPO / "max_patches" / "pd" / "genbridge_pads.pd").read_text() == make_patches.pd_pads()
    assert (REPO / "max_patches" / "genbridge_pads.maxpat").read_text() == make_patches.max_pads()
    assert (REPO / "max_patches" / "pd" / "genbridge_continue.pd").read_text() == make_patches.pd_continue()
    assert (REPO / "max_patches" / "genbridge_continue.maxpat").read_text() == make_patches.max_continue()
    assert (REPO / "max_patches" / "m4l" / "genbridge_continue_m4l.maxpat").read_text() == \
        make_patches.max_continue(m4l=True)
    assert (REPO / "max_patches" / "m4l" / "genbridge_pads_m4l.maxpat").read_text() == make_patches.max_pads_m4l()


@pytest.mark.skipif(shutil.which("pd") is None, reason="Pure Data is not installed (make test installs it)")
def test_pd_pads_patch_triggers_and_loads_the_clip(tmp_path: Path, tiny_model: Path) -> None:
    """Headless Pd against the daemon on the default ports, as a musician's patch expects them."""
    config = write_config(tmp_path / "c.toml", tiny_model, pool=1)
    daemon = Daemon(tmp_path / "out", config, port=make_patches.DAEMON_PORT)
    try:
        daemon.wait_for_ping()
        client = OscClient(daemon.port)
        client.wait_until(pools_full(), what="pools")
        client.close()
        pd = subprocess.Popen(["pd", "-nogui", "-noaudio", "-nomidi", "-stderr", "-send", "gb-play kick 100",
                               str(REPO / "max_patches" / "pd" / "genbridge_pads.pd")],
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        lines: dict[str, str] = {}
        watchdog = threading.Timer(60, pd.kill)  # a silent Pd must fail the test, not hang it
        watchdog.start()
        try:
            assert pd.stderr is not None
            for line in pd.stderr:  # Pd prints as it goes; stop once the reply and the count are in
                key, _, value = line.strip().partition(": ")
                lines[key] = value
                if {"genbridge-samples", "genbridge-played", "genbridge-tempo"} <= set(lines):
                    break
        finally:
            watchdog.cancel()
            pd.kill()
            pd.wait(5)
        assert "genbridge-played" in lines, f"no reply reached Pd: {lines}"
        played = lines["genbridge-played"].split()
        assert played[1] == "kick" and played[3] == "1", played
        assert int(float(lines["genbridge-samples"])) == sf.info(played[2]).frames
        # the patch listens to the tempo: a tempo/bar on a downbeat (id bpm beat phase quantum ...)
        tempo = lines["genbridge-tempo"].split()
        assert float(tempo[1]) == 120.0 and float(tempo[3]) == 0.0 and tempo[-1] == "fixed", tempo
    finally:
        daemon.stop()


def test_pd_patch_ports_match_the_default_config() -> None:
    text = (REPO / "max_patches" / "pd" / "genbridge_pads.pd").read_text()
    assert re.search(rf"connect 127\.0\.0\.1 {make_patches.DAEMON_PORT};", text)
    assert f"netreceive -u -b {make_patches.REPLY_PORT};" in text


def test_readme_pictures_are_rendered_from_the_patches() -> None:
    import render_patch

    readme = (REPO / "README.md").read_text()
    for patch, image in (("genbridge_pads.maxpat", "genbridge_pads.svg"),
                         ("pd/genbridge_pads.pd", "genbridge_pads_pd.svg"),
                         ("genbridge_continue.maxpat", "genbridge_continue.svg"),
                         ("pd/genbridge_continue.pd", "genbridge_continue_pd.svg")):
        assert f"max_patches/img/{image}" in readme
        svg = render_patch.render(REPO / "max_patches" / patch)
        assert (REPO / "max_patches" / "img" / image).read_text() == svg, f"re-render {image}"
        assert svg.count("<rect") > 20 and "<line" in svg


@pytest.mark.skipif(shutil.which("pd") is None, reason="Pure Data is not installed (make test installs it)")
def test_pd_continue_patch_gets_chunks_and_loads_the_result(tmp_path: Path, tiny_model: Path) -> None:
    """Headless Pd asks for a continuation of a file and loads each chunk and the result."""
    import numpy as np

    fixture = REPO / "tests" / "fixtures" / "musicgen" / "audiocraft"
    config = write_config(tmp_path / "c.toml", tiny_model, pool=0, instruments=("kick",), extra=f"""
[continuation]
model = "{fixture}"
prompt_seconds = 1.0
chunk_seconds = 0.5
top_k = 8
""")
    daemon = Daemon(tmp_path / "out", config, port=make_patches.DAEMON_PORT)
    try:
        daemon.wait_for_ping()
        client = OscClient(daemon.port)
        client.wait_until(lambda s: s.get("continuation", {}).get("state") == "ready", what="the MusicGen worker")
        client.close()
        t = np.arange(44100) / 44100
        sf.write(daemon.out / "prompt.wav", (0.3 * np.sin(2 * np.pi * 220 * t)).astype(np.float32), 44100)
        pd = subprocess.Popen(["pd", "-nogui", "-noaudio", "-nomidi", "-stderr",
                               "-send", "gb-continue-request prompt.wav 2",
                               str(REPO / "max_patches" / "pd" / "genbridge_continue.pd")],
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        lines: list[tuple[str, str]] = []
        watchdog = threading.Timer(120, pd.kill)
        watchdog.start()
        try:
            assert pd.stderr is not None
            for line in pd.stderr:
                key, _, value = line.strip().partition(": ")
                lines.append((key, value))
                if {"genbridge-continue-samples", "genbridge-continue-path"} <= {k for k, _ in lines}:
                    break
        finally:
            watchdog.cancel()
            pd.kill()
            pd.wait(5)
        got = dict(lines)
        assert "genbridge-continue-path" in got, f"no job/done reached Pd: {lines}"
        path = got["genbridge-continue-path"].removeprefix("symbol ")  # [print] shows a symbol as "symbol X"
        assert int(float(got["genbridge-continue-samples"])) == sf.info(path).frames == 64000
        assert sum(k == "genbridge-chunk-samples" for k, _ in lines) >= 2, lines
        assert got["genbridge-queued"] == "0", "position 0: nothing ahead of it"
        assert not any(k == "error" for k, _ in lines), lines
    finally:
        daemon.stop()


def test_the_checker_fails_on_a_grid_the_daemon_does_not_know(tmp_path: Path) -> None:
    """Pd's selector boxes are followed into the pads' messages ([list append]'s right inlet)."""
    original = (REPO / "max_patches" / "pd" / "genbridge_pads.pd").read_text()
    broken = original.replace("quantize 1/16", "quantize 1/15")
    assert broken != original
    copy = tmp_path / "genbridge_pads.pd"
    copy.write_text(broken)
    report = check_patches.check(copy)
    assert any("quantize must be one of" in e for e in report.errors), report.errors
