"""The session folder's index.html: every clip listed with a relative player and its escaped
sidecar, newest first, kept up to date from the folder sink's observer hooks, rewritten in
coalesced writes that are never seen half written, and quiet when the folder refuses it."""

from __future__ import annotations

import asyncio
import errno
import html
import json
import logging
import os
import re
import shutil
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from conftest import pools_full, write_config

from bridge.clip import Clip
from bridge.folder_writer import FolderWriter
from bridge.housekeeping import FolderSweeper, clean_leftovers, sweep
from bridge.session_index import END, INDEX_NAME, SessionIndex
from bridge.sinks.folder import FolderSink

NAME = re.compile(r'<li class="clip" data-name="([^"]*)"')


def listed(page: str) -> list[str]:
    """The clip names an index page lists, in its order."""
    return [html.unescape(n) for n in NAME.findall(page)]


def tone(instrument: str = "kick", frames: int = 400, **meta: Any) -> Clip:
    audio = (0.5 * np.sin(np.arange(frames) / 5.0)).astype(np.float32)[None]
    return Clip(audio, 8000, {"instrument": instrument, "model": "m", "created": 1_700_000_000.0, **meta})


class Recorder:
    """A SessionObserver that remembers what it was told."""

    def __init__(self) -> None:
        self.events: list[tuple[str, Path, dict[str, Any] | None]] = []

    def clip_added(self, wav: Path, meta: dict[str, Any]) -> None:
        self.events.append(("added", wav, meta))

    def clip_removed(self, wav: Path) -> None:
        self.events.append(("removed", wav, None))


def opened_sink(tmp_path: Path, session: str = "20260101-120000") -> FolderSink:
    sink = FolderSink(tmp_path / "out", session=session)
    sink.open()
    return sink


# --------------------------------------------------------------------------- the page


def test_the_page_lists_every_clip_newest_first_with_relative_players_and_escaped_sidecars(tmp_path: Path) -> None:
    folder = tmp_path / "20260101-120000"
    folder.mkdir()
    index = SessionIndex(folder)
    names = ["a-00001-kick.wav", "b-00002-snare.wav", "c d&e-00003-hat.wav"]
    for k, name in enumerate(names):
        index.clip_added(folder / name, {"instrument": name.split("-")[-1][:-4], "created": 1_700_000_000 + k,
                                         "duration_s": 0.25, "description": "<script>alert(1)</script> & more"})
    page = index.render()
    assert page.startswith("<!DOCTYPE html>") and page.endswith(END)
    assert listed(page) == names[::-1], "newest first"
    assert '<span class="count">3 clips</span>' in page and "20260101-120000" in page
    # relative, percent-encoded URLs: they work from file:// and over HTTP
    assert '<a href="c%20d%26e-00003-hat.wav">c d&amp;e-00003-hat.wav</a>' in page
    assert '<audio controls preload="none" src="c%20d%26e-00003-hat.wav"></audio>' in page
    assert 'src="a-00001-kick.wav"' in page and "file:" not in page and "http" not in page
    # user text comes out escaped, in the sidecar and everywhere else
    assert "<script>alert" not in page and "&lt;script&gt;alert(1)&lt;/script&gt; &amp; more" in page
    assert page.count("<details><summary>sidecar</summary><pre>") == 3
    assert time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(1_700_000_002)) in page
    assert "0.25 s" in page and '<span class="inst">hat</span>' in page
    assert [p.name for p, _ in index.clips()] == names, "clips() is oldest first"


def test_an_empty_session_says_so(tmp_path: Path) -> None:
    page = SessionIndex(tmp_path).render()
    assert listed(page) == [] and "0 clips" in page and "No clips yet." in page


def test_a_reused_session_folder_is_read_once_at_creation(tmp_path: Path) -> None:
    sink = opened_sink(tmp_path)
    paths = [sink.write_to_session(tone("kick")), sink.write_to_session(tone("snare"))]
    (sink.session_dir / "notes.txt").write_text("not a clip")
    index = SessionIndex(sink.session_dir)
    assert [p for p, _ in index.clips()] == paths
    assert index.clips()[1][1]["instrument"] == "snare" and index.clips()[1][1]["frames"] == 400
    assert listed(index.render()) == [p.name for p in reversed(paths)]


def test_a_removed_clip_disappears(tmp_path: Path) -> None:
    folder = tmp_path / "s"
    index = SessionIndex(folder)
    index.clip_added(folder / "one.wav", {})
    index.clip_added(folder / "two.wav", {})
    index.clip_removed(folder / "one.wav")
    index.clip_removed(folder / "never-there.wav")
    assert listed(index.render()) == ["two.wav"]


# --------------------------------------------------------------------------- the sink's observer hooks


def test_the_sink_tells_its_observers_about_the_session_folder_only(tmp_path: Path) -> None:
    sink = opened_sink(tmp_path)
    seen = Recorder()
    sink.add_observer(seen)
    fresh = sink.write_to_session(tone())
    assert seen.events[-1][:2] == ("added", fresh)
    assert seen.events[-1][2] == json.loads(fresh.with_suffix(".json").read_text()), "exactly the sidecar"

    pooled = tone("snare")
    sink.write_to_pool(pooled)
    assert len(seen.events) == 1, "pool writes are not the session's"
    moved = sink.publish_pooled(pooled)
    assert seen.events[-1][:2] == ("added", moved)
    assert seen.events[-1][2] == json.loads(moved.with_suffix(".json").read_text())

    sink.return_to_pool(pooled)
    assert seen.events[-1] == ("removed", moved, None)
    sink.clips_removed([fresh, sink.pool_dir("kick") / "x.wav"])
    assert seen.events[-1] == ("removed", fresh, None) and len(seen.events) == 4


def test_an_observer_that_raises_is_logged_once_and_never_fails_the_write(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    class Broken:
        def clip_added(self, wav: Path, meta: dict[str, Any]) -> None:
            raise ValueError("observer bug")

        def clip_removed(self, wav: Path) -> None:
            raise ValueError("observer bug")

    sink = opened_sink(tmp_path)
    seen = Recorder()
    sink.add_observer(Broken())
    sink.add_observer(seen)
    with caplog.at_level(logging.ERROR, logger="bridge.sinks.folder"):
        paths = [sink.write_to_session(tone()) for _ in range(3)]
    assert all(p.is_file() for p in paths)
    assert [e[1] for e in seen.events] == paths, "the observers after it are still told"
    assert len([r for r in caplog.records if "observer bug" in (r.exc_text or "")]) == 1
    assert sink.health()["state"] == "ok"


# --------------------------------------------------------------------------- the folder writer's page


def test_the_writer_shows_an_empty_page_once_the_folder_is_opened(tmp_path: Path) -> None:
    sink = FolderSink(tmp_path / "out", session="20260101-120000")
    writer = FolderWriter(sink)
    writer.shutdown()
    assert not sink.session_dir.exists(), "nothing written before open, not even at shutdown"

    sink = FolderSink(tmp_path / "out", session="20260101-120001")
    writer = FolderWriter(sink)
    sink.open()
    writer.shutdown()
    page = (sink.session_dir / INDEX_NAME).read_text()
    assert listed(page) == [] and page.endswith(END)


def count_index_writes(writer: FolderWriter) -> list[int]:
    """A one-element list counting the writer's index.html rewrites from now on."""
    writes = [0]
    real_write = writer.index.write

    def counting_write() -> None:
        writes[0] += 1
        real_write()

    writer.index.write = counting_write  # type: ignore[method-assign]
    return writes


def test_a_burst_of_clips_is_one_rewrite_of_the_latest_state(tmp_path: Path) -> None:
    sink = opened_sink(tmp_path)
    writer = FolderWriter(sink)
    writes = count_index_writes(writer)
    busy, release = threading.Event(), threading.Event()

    async def run() -> list[Path]:
        await writer.run(lambda: None)  # the open's empty page is written (or queued before this)
        before = writes[0]
        blocked = writer.run(lambda: (busy.set(), release.wait(10)))
        task = asyncio.ensure_future(blocked)
        await asyncio.get_running_loop().run_in_executor(None, busy.wait, 10)
        saves = [asyncio.ensure_future(writer.save(tone(seed=k))) for k in range(40)]
        await asyncio.sleep(0)  # the saves are queued behind the busy write (run_in_executor submits at once)
        release.set()
        await task
        paths = await asyncio.gather(*saves)
        await writer.run(lambda: None)  # whatever index write was queued behind them has run
        assert writes[0] - before <= 2, f"{writes[0] - before} rewrites for a burst of 40 clips"
        return paths

    try:
        paths = asyncio.run(run())
    finally:
        writer.shutdown()
    assert listed((sink.session_dir / INDEX_NAME).read_text()) == [p.name for p in reversed(paths)]


def test_clips_landing_one_by_one_are_not_one_rewrite_each(tmp_path: Path) -> None:
    sink = opened_sink(tmp_path)
    writer = FolderWriter(sink)
    writes = count_index_writes(writer)

    async def run() -> list[Path]:
        return [await writer.save(tone(seed=k)) for k in range(60)]  # each awaited: no burst

    try:
        t0 = time.monotonic()
        paths = asyncio.run(run())
        took = time.monotonic() - t0
    finally:
        writer.shutdown()
    allowed = 2 + took / writer.INDEX_MIN_GAP_S + 1  # spaced, plus the open's page and shutdown's last one
    assert writes[0] <= allowed and writes[0] < len(paths), (writes[0], took)  # spaced, never one per clip
    assert listed((sink.session_dir / INDEX_NAME).read_text()) == [p.name for p in reversed(paths)]


def test_a_reader_never_sees_half_a_page(tmp_path: Path) -> None:
    sink = opened_sink(tmp_path)
    writer = FolderWriter(sink)
    writer.INDEX_MIN_GAP_S = writer.INDEX_COST_FACTOR = 0.0  # rewrite as often as it can: many chances to tear
    page_path = sink.session_dir / INDEX_NAME
    stop = threading.Event()
    problems: list[str] = []
    seen: set[int] = set()

    def read() -> None:
        while not stop.is_set():
            try:
                page = page_path.read_text()
            except FileNotFoundError:
                continue
            if not (page.startswith("<!DOCTYPE html>\n") and page.endswith(END)):
                problems.append(f"a partial page of {len(page)} characters")
            seen.add(len(listed(page)))

    reader = threading.Thread(target=read, daemon=True)
    reader.start()

    async def run() -> list[Path]:
        # bursts and single clips, sessions' and pooled ones (moved in on the event loop's thread)
        paths = list(await asyncio.gather(*(writer.save(tone(seed=k)) for k in range(150))))
        for k in range(100):
            paths.append(await writer.save(tone(seed=k)))
            pooled = tone("snare", seed=k)
            await writer.run(sink.write_to_pool, pooled)
            paths.append(sink.publish_pooled(pooled))
        return paths

    try:
        paths = asyncio.run(run())
        writer.shutdown()
    finally:
        stop.set()
        reader.join(10)
    assert not problems, problems[:5]
    assert len(seen) > 3, f"the reader saw only {sorted(seen)} clips listed: too few rewrites to test"
    assert set(listed(page_path.read_text())) == {p.name for p in paths} and len(paths) == 350
    assert not list(sink.session_dir.glob(".*.tmp-*"))


def test_shutdown_writes_the_last_state_and_no_index_write_comes_after(tmp_path: Path) -> None:
    sink = opened_sink(tmp_path)
    writer = FolderWriter(sink)
    writer.INDEX_MIN_GAP_S = writer.INDEX_MAX_GAP_S = 30.0  # the next rewrite waits on its timer...
    path = asyncio.run(writer.save(tone()))
    asyncio.run(writer.save(tone()))  # ...so this one is not on the page yet
    writer.shutdown()  # cancels the timer and writes the last state itself
    page_path = sink.session_dir / INDEX_NAME
    assert len(listed(page_path.read_text())) == 2
    stamp = page_path.stat().st_mtime_ns
    writer.index.clip_removed(path)  # a change after shutdown: nothing queued, nothing raised
    writer.request_index_write()
    assert page_path.stat().st_mtime_ns == stamp and len(listed(page_path.read_text())) == 2


# --------------------------------------------------------------------------- a folder that refuses


def test_a_gone_or_refusing_folder_never_raises_and_warns_once_per_streak(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    folder = tmp_path / "20260101-120000"
    index = SessionIndex(folder)
    index.clip_added(folder / "a.wav", {})
    with caplog.at_level(logging.INFO, logger="bridge.session_index"):
        index.write()  # the folder does not exist
        index.write()
        assert [r.levelname for r in caplog.records] == ["WARNING"]
        assert f"cannot write to {folder}: the folder vanished (ENOENT)" in caplog.records[0].getMessage()
        assert index.dirty

        folder.mkdir()
        index.write()
        assert listed((folder / INDEX_NAME).read_text()) == ["a.wav"] and not index.dirty
        assert caplog.records[-1].levelname == "INFO", "a recovery is said once"

        import bridge.session_index as module

        def read_only(final: Path, data: bytes) -> None:
            raise OSError(errno.EROFS, os.strerror(errno.EROFS), str(final))

        monkeypatch.setattr(module, "atomic_write", read_only)
        caplog.clear()
        index.clip_added(folder / "b.wav", {})
        index.write()
        index.write()
        assert [r.levelname for r in caplog.records] == ["WARNING"]
        assert "the folder is read-only (EROFS)" in caplog.records[0].getMessage()
    assert listed((folder / INDEX_NAME).read_text()) == ["a.wav"], "the last whole page stays"


def test_a_session_folder_made_again_forgets_the_clips_gone_with_the_old_one(tmp_path: Path) -> None:
    sink = opened_sink(tmp_path)
    writer = FolderWriter(sink)
    try:
        first = asyncio.run(writer.save(tone()))
        page = sink.session_dir / INDEX_NAME
        deadline = time.monotonic() + 10
        while not (page.exists() and listed(page.read_text()) == [first.name]):  # the page of the first clip
            assert time.monotonic() < deadline, "the first clip's page was never written"
            time.sleep(0.01)  # its rewrite is the folder writer's (spaced) business: no event to await
        shutil.rmtree(sink.session_dir)
        kept = asyncio.run(writer.save(tone()))  # the sink makes the folder again
    finally:
        writer.shutdown()
    assert listed((sink.session_dir / INDEX_NAME).read_text()) == [kept.name]
    assert [p for p, _ in writer.index.clips()] == [kept]


# --------------------------------------------------------------------------- sweeps and leftovers


def test_a_sweep_reports_what_it_removed_and_the_page_follows(tmp_path: Path) -> None:
    sink = opened_sink(tmp_path)
    writer = FolderWriter(sink)
    try:
        paths = [asyncio.run(writer.save(tone())) for _ in range(4)]
        result = asyncio.run(writer.run(lambda: sweep(sink.root, max_bytes=1, max_age_s=0, min_age_s=0,
                                                      protected=[paths[-1]], current_session=sink.session_dir)))
        assert result.removed == 3 and result.removed_paths == paths[:3]
        sink.clips_removed(result.removed_paths)
    finally:
        writer.shutdown()
    assert listed((sink.session_dir / INDEX_NAME).read_text()) == [paths[-1].name]
    assert sorted(p.name for p in sink.session_dir.iterdir()) == sorted([INDEX_NAME, paths[-1].name,
                                                                        paths[-1].with_suffix(".json").name])


def test_the_sweeper_tells_the_page(tmp_path: Path) -> None:
    from types import SimpleNamespace

    sink = opened_sink(tmp_path)
    writer = FolderWriter(sink)
    output = SimpleNamespace(max_mb=1e-6, max_age_h=0.0, min_age_s=0.0, sweep_every_s=0.01)

    class Counters:
        def add(self, name: str, n: int = 1) -> None:
            pass

    async def run() -> None:
        await writer.save(tone())
        sweeper = FolderSweeper(writer, output, [], Counters())
        sweeper.start()
        while writer.index.count():
            await asyncio.sleep(0.01)  # the sweeper runs on its own timer
        await sweeper.stop()

    try:
        asyncio.run(asyncio.wait_for(run(), 10))
    finally:
        writer.shutdown()
    assert listed((sink.session_dir / INDEX_NAME).read_text()) == []


def test_an_earlier_session_holding_only_its_page_is_removed(tmp_path: Path) -> None:
    root = tmp_path / "out"
    only_page, with_clip, current = root / "20250101-000000", root / "20250101-000001", root / "20260101-000000"
    for folder in (only_page, with_clip, current):
        folder.mkdir(parents=True)
        (folder / INDEX_NAME).write_text("<!DOCTYPE html>")
    (only_page / f".{INDEX_NAME}.tmp-1-2").write_text("half")
    (with_clip / "young.wav").write_bytes(b"RIFF")
    sweep(root, max_bytes=0, max_age_s=3600, min_age_s=0, protected=[], current_session=current)
    assert not only_page.exists()
    assert with_clip.is_dir() and current.is_dir() and (current / INDEX_NAME).is_file()


def test_leftovers_are_the_pages_temporary_files_not_the_page(tmp_path: Path) -> None:
    root = tmp_path / "out"
    session = root / "20260101-000000"
    session.mkdir(parents=True)
    (session / INDEX_NAME).write_text("<!DOCTYPE html>")
    (session / f".{INDEX_NAME}.tmp-123-456").write_text("half a page")
    assert clean_leftovers(root, root / ".pool") == 1
    assert [p.name for p in session.iterdir()] == [INDEX_NAME]


# --------------------------------------------------------------------------- the daemon


def wait_for_page(session: Path, timeout: float = 30.0) -> list[str]:
    """The names index.html lists once they are exactly the WAVs in the folder (polling the folder,
    which has no event to await from another process)."""
    deadline = time.monotonic() + timeout
    while True:
        wavs = sorted(p.name for p in session.glob("*.wav") if not p.name.startswith("."))
        try:
            names = listed((session / INDEX_NAME).read_text())
        except FileNotFoundError:
            names = []
        if sorted(names) == wavs:
            return names
        if time.monotonic() > deadline:
            raise AssertionError(f"index.html lists {names}, the folder holds {wavs}")
        time.sleep(0.05)  # pacing between looks at the folder


def test_the_daemons_session_folder_has_a_page_of_exactly_its_clips(
        tmp_path: Path, tiny_model: Path, start_daemon: Any) -> None:
    daemon, client = start_daemon(write_config(tmp_path / "c.toml", tiny_model, pool=2, instruments=("kick",)))
    session = daemon.session_dir()
    assert wait_for_page(session) == [], "an empty session shows an empty page"
    client.wait_until(pools_full(), what="the pool")
    played = [client.request("/genbridge/drum/play", "kick", 100, f"p{k}", reply="/genbridge/drum/played",
                             timeout=60).args[2] for k in range(3)]
    client.send("/genbridge/drum/generate", "kick", 2, 5, 0, "g")
    client.expect("/genbridge/job/started", timeout=60)
    ready = [client.expect("/genbridge/drum/ready", timeout=60).args[2] for _ in range(2)]
    client.expect("/genbridge/job/done", timeout=60)
    names = wait_for_page(session)
    assert set(names) == {Path(p).name for p in played + ready}, (names, played, ready)
    page = (session / INDEX_NAME).read_text()
    for name in names:
        assert f'<audio controls preload="none" src="{name}"></audio>' in page
    assert names[0] == Path(ready[-1]).name or names[0] == Path(ready[0]).name, "newest first"
    daemon.stop()
    assert sorted(listed((session / INDEX_NAME).read_text())) == sorted(names), "still whole after a stop"
