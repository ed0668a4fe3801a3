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


def test_every_patch_sends_only_what_the_table_accepts() -> None:
    patches = check_patches.all_patches()
    assert {p.name for p in patches} >= {"genbridge_pads.maxpat", "genbridge_pads.pd"}
    for patch in patches:
        report = check_patches.check(patch)
        assert report.sends, f"{patch.name} sends nothing the checker can see"
        assert not report.errors, report.errors
        addresses = {a for a, _ in report.sends}
        assert {"/genbridge/drum/play", "/genbridge/client/reply_port"} <= addresses


@pytest.mark.parametrize("name", ["genbridge_pads.maxpat", "pd/genbridge_pads.pd"])
def test_the_checker_fails_when_an_address_changes(tmp_path: Path, name: str) -> None:
    original = (REPO / "max_patches" / name).read_text()
    broken = original.replace("drum/play", "drum/plya").replace("drum play", "drum plya")
    assert broken != original
    copy = tmp_path / Path(name).name
    copy.write_text(broken)
    report = check_patches.check(copy)
    assert any("unknown address '/genbridge/drum/plya'" in e for e in report.errors), report.errors


def test_committed_patches_are_what_the_generator_writes() -> None:
    assert (REPO / "max_patches" / "pd" / "genbridge_pads.pd").read_text() == make_patches.pd_pads()
    assert (REPO / "max_patches" / "genbridge_pads.maxpat").read_text() == make_patches.max_pads()


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
                if {"genbridge-samples", "genbridge-played"} <= set(lines):
                    break
        finally:
            watchdog.cancel()
            pd.kill()
            pd.wait(5)
        assert "genbridge-played" in lines, f"no reply reached Pd: {lines}"
        played = lines["genbridge-played"].split()
        assert played[1] == "kick" and played[3] == "1", played
        assert int(float(lines["genbridge-samples"])) == sf.info(played[2]).frames
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
                         ("pd/genbridge_pads.pd", "genbridge_pads_pd.svg")):
        assert f"max_patches/img/{image}" in readme
        svg = render_patch.render(REPO / "max_patches" / patch)
        assert (REPO / "max_patches" / "img" / image).read_text() == svg, f"re-render {image}"
        assert svg.count("<rect") > 20 and "<line" in svg
