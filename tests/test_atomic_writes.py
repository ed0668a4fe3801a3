"""Done-when 5: a reader watching the shared folder never sees a partial WAV (nor a partial index.html)."""

from __future__ import annotations

import json
import os
import threading
from pathlib import Path

import soundfile as sf
from conftest import TINY_RATE, build_tiny_model, write_config

LONG = 2**17  # 6 s at 22.05 kHz, stereo: 786 kB per WAV, so a non-atomic write has a wide window


def test_watcher_never_sees_a_partial_wav(tmp_path: Path, start_daemon) -> None:
    model = build_tiny_model(tmp_path / "long", in_channels=2, length=LONG, default_steps=2)
    daemon, client = start_daemon(write_config(tmp_path / "c.toml", model, pool=2, instruments=("kick", "snare")))
    session = daemon.session_dir()
    stop = threading.Event()
    problems: list[str] = []
    checked: set[str] = set()
    reads = [0]
    pages = [0]

    def watch() -> None:
        while not stop.is_set():
            for entry in os.scandir(session):
                name = entry.name
                if name.startswith("."):
                    continue  # hidden temporary names are the writer's business
                if name.endswith(".wav"):
                    try:
                        info = sf.info(entry.path)
                        audio, _ = sf.read(entry.path)
                    except FileNotFoundError:
                        continue
                    except Exception as exc:
                        problems.append(f"{name}: unreadable: {exc}")
                        continue
                    reads[0] += 1
                    if info.frames != LONG or len(audio) != LONG:
                        problems.append(f"{name}: {len(audio)} of {LONG} frames")
                    if not os.path.exists(entry.path[:-4] + ".json"):
                        problems.append(f"{name}: visible before its sidecar")
                    checked.add(name)
                elif name.endswith(".json"):
                    try:
                        json.loads(Path(entry.path).read_text())
                    except FileNotFoundError:
                        continue
                    except json.JSONDecodeError as exc:
                        problems.append(f"{name}: partial sidecar: {exc}")
                elif name == "index.html":  # the session's page, rewritten as clips land: always whole
                    try:
                        page = Path(entry.path).read_text()
                    except FileNotFoundError:
                        continue
                    pages[0] += 1
                    if not (page.startswith("<!DOCTYPE html>") and page.endswith("</html>\n")):
                        problems.append(f"{name}: a partial page of {len(page)} characters")
                elif not name.endswith((".wav", ".json")):
                    problems.append(f"unexpected visible file {name}")

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    try:
        client.send("/genbridge/drum/generate", "kick", 8, 100, 0, 1)
        client.expect("/genbridge/job/started")
        ready = [client.expect("/genbridge/drum/ready", timeout=120).args[2] for _ in range(8)]
        client.expect("/genbridge/job/done")
        for _ in range(6):  # pooled clips moved in by triggers, while refills write next door
            client.request("/genbridge/drum/play", "snare", reply="/genbridge/drum/played", timeout=120)
    finally:
        stop.set()
        watcher.join(10)
    assert not problems, problems[:5]
    assert reads[0] > 0 and len(checked) >= 8 and pages[0] > 0
    for path in ready:
        assert sf.info(path).frames == LONG and sf.info(path).samplerate == TINY_RATE
