"""Full, read-only, removed and failing output folders: clear error replies naming the folder, no
partial file ever visible, the daemon serving on, and recovery without a restart.

The mount-based tests put the daemon's output folder on a small tmpfs of their own (root only;
skipped elsewhere); EIO has no real faulty device here, so it is injected where the bytes are
written (``os.write``) in an in-process engine.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import json
import os
import shutil
import subprocess
import threading
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import pytest
import soundfile as sf
from conftest import TINY_LENGTH, TINY_RATE, pools_full, write_config
from helpers import Daemon, OscClient, assert_valid_clip
from test_session_index import wait_for_page

from bridge.clip import Clip
from bridge.engine import EngineError
from bridge.folder_writer import FolderWriter
from bridge.sinks.folder import FolderSink

ERROR = "/genbridge/error"
PLAYED = "/genbridge/drum/played"


# --------------------------------------------------------------------------- peers


def _mount(*args: str) -> None:
    result = subprocess.run(["mount", *args], capture_output=True, text=True, timeout=30)
    assert result.returncode == 0, f"mount {' '.join(args)}: {result.stderr.strip()}"


@pytest.fixture
def tmpfs(tmp_path: Path) -> Iterator[Path]:
    """A 2 MB tmpfs of this test's own, to be the daemon's output folder (unmounted afterwards)."""
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root (CI runs as root)")
    mount_point = tmp_path / "out"
    mount_point.mkdir()
    result = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(mount_point)],
                            capture_output=True, text=True, timeout=30)
    if result.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {result.stderr.strip()}")
    try:
        yield mount_point
    finally:
        if subprocess.run(["umount", str(mount_point)], capture_output=True, timeout=30).returncode:
            subprocess.run(["umount", "-l", str(mount_point)], capture_output=True, timeout=30)


@contextlib.contextmanager
def serving(out: Path, config: Path) -> Iterator[tuple[Daemon, OscClient]]:
    """``genbridge serve`` writing to ``out``, stopped before the folder is unmounted."""
    daemon = Daemon(out, config)
    client = None
    try:
        daemon.wait_for_ping()
        client = OscClient(daemon.port)
        yield daemon, client
    finally:
        if client is not None:
            client.close()
        daemon.stop()


def fill(folder: Path, room: int = 0) -> Path:
    """Fill the filesystem holding ``folder`` to its last byte but ``room``; returns the filler."""
    reserve = folder / "reserve.bin"
    reserve.write_bytes(b"\0" * room)
    filler = folder / "filler.bin"
    with open(filler, "wb", buffering=0) as fh:
        for chunk in (1 << 16, 4096, 512, 1):
            try:
                while True:
                    fh.write(b"\0" * chunk)
            except OSError as exc:
                assert exc.errno == errno.ENOSPC, exc
    reserve.unlink()
    return filler


class FolderWatcher:
    """Reads every visible WAV (and index.html) in a folder tree over and over, as a DAW's browser
    would, and records any that cannot be read whole, and any sidecar left without its WAV at the end."""

    def __init__(self, root: Path, frames: int | None = TINY_LENGTH) -> None:
        """``frames``: the length every WAV must have (None: any length, read whole)."""
        self.root, self.frames = root, frames
        self.problems: list[str] = []
        self.reads = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, daemon=True)

    def __enter__(self) -> "FolderWatcher":
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        self._thread.join(10)
        self.check_once()

    def _watch(self) -> None:
        while not self._stop.wait(0.002):  # pacing, so the watcher does not starve the daemon of a core
            self.check_once(orphans=False)

    def check_once(self, orphans: bool = True) -> None:
        for dirpath, _, names in os.walk(self.root):
            for name in names:
                path = Path(dirpath) / name
                if name.endswith(".wav") and not name.startswith("."):
                    try:
                        with open(path, "rb") as fh:  # opened here, so a file moved away is a FileNotFoundError
                            frames = len(sf.read(fh)[0])
                    except FileNotFoundError:
                        continue  # moved into the session folder meanwhile
                    except Exception as exc:
                        self.problems.append(f"{path}: unreadable: {exc}")
                        continue
                    self.reads += 1
                    if self.frames is not None and frames != self.frames:
                        self.problems.append(f"{path}: {frames} of {self.frames} frames")
                elif name == "index.html":  # the session's page: whole, or the last whole one
                    try:
                        page = path.read_text()
                    except FileNotFoundError:
                        continue
                    if not (page.startswith("<!DOCTYPE html>") and page.endswith("</html>\n")):
                        self.problems.append(f"{path}: a partial page of {len(page)} characters")
                elif orphans and ".tmp-" in name:
                    self.problems.append(f"{path}: a temporary file left behind")
                elif orphans and name.endswith(".json") and not path.with_suffix(".wav").exists():
                    self.problems.append(f"{path}: a sidecar without its WAV")


def play(client: OscClient, instrument: str = "kick", rid: str = "p") -> Any:
    client.send("/genbridge/drum/play", instrument, 100, rid)
    return client.recv(timeout=60)


def generate(client: OscClient, instrument: str = "kick", rid: str = "g") -> Any:
    """drum/generate of one clip; returns its drum/ready or the error that came instead."""
    client.send("/genbridge/drum/generate", instrument, 1, 5, 0, rid)
    client.expect("/genbridge/job/started", timeout=60)
    reply = client.recv(timeout=60)
    if reply.address == "/genbridge/drum/ready":
        client.expect("/genbridge/job/done", timeout=60)
    return reply


def assert_fresh_clip(reply: Any) -> None:
    assert reply.address == PLAYED and reply.args[3] == 1, reply
    assert_valid_clip(reply.args[2], sample_rate=TINY_RATE, frames=TINY_LENGTH, channels=1)


def assert_serving(client: OscClient) -> None:
    assert client.request("/genbridge/ping", 9, reply="/genbridge/pong").args[0] == 9
    assert client.status()["models"]["m"]["state"] == "ready"


# --------------------------------------------------------------------------- a full disk


@pytest.mark.parametrize("room", [0, 8192], ids=["no-room", "room-for-a-sidecar-not-a-wav"])
def test_a_full_disk_gets_clear_errors_and_plays_resume_fresh_once_space_returns(
        tmp_path: Path, tiny_model: Path, tmpfs: Path, room: int) -> None:
    config = write_config(tmp_path / "c.toml", tiny_model, pool=2, instruments=("kick",))
    with serving(tmpfs, config) as (daemon, client), FolderWatcher(tmpfs) as watcher:
        client.wait_until(pools_full(), what="the pool")
        filler = fill(tmpfs, room)
        for _ in range(2):  # pooled clips are renamed into the session folder: no space needed
            assert_fresh_clip(play(client))
        status = client.wait_until(lambda s: s["output"]["held_clips"].get("kick") == 2,
                                   what="the refills the full disk refused to wait in memory")
        assert status["output"]["state"] == "failing"
        assert f"cannot write to {tmpfs}/.pool/kick: disk full (ENOSPC)" in status["output"]["error"]
        assert status["instruments"]["kick"]["ready"] == 0

        last = play(client, rid="full")  # dry: the pad still sounds, the last clip again (it needs no space)
        assert last.address == PLAYED and last.args[0] == "full" and last.args[3] == 0, last
        assert_valid_clip(last.args[2], sample_rate=TINY_RATE, frames=TINY_LENGTH, channels=1)
        err = generate(client, rid="gen-full")
        assert err.address == ERROR and err.args[1] == "/genbridge/drum/generate", err
        assert f"cannot write to {daemon.session_dir()}: disk full (ENOSPC)" in err.args[2], err.args
        assert_serving(client)
        assert client.status()["models"]["m"]["restarts"] == 0

        filler.unlink()
        status = client.wait_until(lambda s: s["output"]["state"] == "ok" and pools_full()(s),
                                   what="the held clips to land once space returned")
        assert status["output"]["held_clips"] == {}
        assert_fresh_clip(play(client, rid="again"))
        ready = generate(client, rid="gen-again")
        assert ready.address == "/genbridge/drum/ready", ready
        assert_valid_clip(ready.args[2], sample_rate=TINY_RATE, frames=TINY_LENGTH, channels=1)
        # the page failed quietly while the disk was full; the next change wrote it whole again
        assert Path(ready.args[2]).name in wait_for_page(daemon.session_dir())
        assert daemon.proc.poll() is None
    assert not watcher.problems, watcher.problems[:5]
    assert watcher.reads > 0
    assert "Traceback" not in daemon.log()


# --------------------------------------------------------------------------- read-only


def test_a_read_only_folder_gets_clear_errors_keeps_its_pool_and_recovers_on_rw(
        tmp_path: Path, tiny_model: Path, tmpfs: Path) -> None:
    config = write_config(tmp_path / "c.toml", tiny_model, pool=2, instruments=("kick",))
    with serving(tmpfs, config) as (daemon, client), FolderWatcher(tmpfs) as watcher:
        client.wait_until(pools_full(), what="the pool")
        session = daemon.session_dir()
        _mount("-o", "remount,ro", str(tmpfs))
        try:
            err = play(client, rid="ro")
            assert err.address == ERROR and err.args[0] == "ro", err
            assert f"cannot move a clip into {session}: the folder is read-only (EROFS)" in err.args[2], err.args
            status = client.status()  # a refused move alone says the folder is failing
            assert status["output"]["state"] == "failing" and "read-only" in status["output"]["error"], status["output"]
            err = generate(client, rid="gen-ro")
            assert err.address == ERROR, err
            assert f"cannot write to {session}: the folder is read-only (EROFS)" in err.args[2], err.args
            assert_serving(client)
            status = client.status()
            assert status["instruments"]["kick"]["ready"] == 2, "the clip the move failed for stays in the pool"
            assert status["instruments"]["kick"]["served_fresh"] == 0
            assert status["output"]["state"] == "failing"
        finally:
            _mount("-o", "remount,rw", str(tmpfs))
        assert_fresh_clip(play(client, rid="rw"))
        ready = generate(client, rid="gen-rw")
        assert ready.address == "/genbridge/drum/ready", ready
        status = client.wait_until(pools_full(), what="the refill after the play")
        assert status["output"]["state"] == "ok" and status["instruments"]["kick"]["served_fresh"] == 1
        assert Path(ready.args[2]).name in wait_for_page(session)
    assert not watcher.problems, watcher.problems[:5]


# --------------------------------------------------------------------------- removed at runtime


def test_a_removed_session_or_output_folder_is_made_again_and_plays_stay_fresh(
        tmp_path: Path, tiny_model: Path, start_daemon: Any) -> None:
    config = write_config(tmp_path / "c.toml", tiny_model, pool=2, instruments=("kick",))
    daemon, client = start_daemon(config)
    client.wait_until(pools_full(), what="the pool")
    session = daemon.session_dir()

    shutil.rmtree(session)
    reply = play(client, rid="no-session")
    assert_fresh_clip(reply)
    assert Path(reply.args[2]).parent == session, "the session folder is made again where it was"

    client.wait_until(pools_full(), what="the refill")
    shutil.rmtree(daemon.out)  # everything: the session folder and the pooled clips' files
    for rid in ("gone-1", "gone-2"):  # the pooled clips, never heard, are written again from memory
        reply = play(client, rid=rid)
        assert_fresh_clip(reply)
        assert Path(reply.args[2]).parent == session
    ready = generate(client, rid="gen")
    assert ready.address == "/genbridge/drum/ready", ready
    assert_valid_clip(ready.args[2], sample_rate=TINY_RATE, frames=TINY_LENGTH, channels=1)
    status = client.wait_until(pools_full(), what="the pool to refill into a new pool folder")
    assert status["output"]["state"] == "ok"
    assert len(list((daemon.out / ".pool" / "kick").glob("*.wav"))) == 2
    assert_serving(client)


def test_a_replay_whose_file_was_removed_names_a_file_that_is_there(
        tmp_path: Path, tiny_model: Path, start_daemon: Any) -> None:
    # pool 0: every play after the first replays the last clip (fresh 0)
    config = write_config(tmp_path / "c.toml", tiny_model, pool=0, instruments=("kick",))
    daemon, client = start_daemon(config)
    first = play(client, rid="first")
    assert_fresh_clip(first)
    heard = sf.read(first.args[2], dtype="float32")[0]
    wait_for_page(daemon.session_dir())  # its page is written: nothing is being written into the folder now
    shutil.rmtree(daemon.session_dir())
    replay = play(client, rid="replay")
    assert replay.address == PLAYED and replay.args[3] == 0, replay
    assert Path(replay.args[2]).is_file(), "a replay never names a file that is not there"
    assert np.array_equal(sf.read(replay.args[2], dtype="float32")[0], heard), "the same clip, written again"


# --------------------------------------------------------------------------- EIO


@pytest.fixture
def eio(monkeypatch: pytest.MonkeyPatch) -> Any:
    """``os.write`` to files under ``faults.under`` writes half of what it is given, then fails
    with EIO, while ``faults.on``; other files are written as usual."""
    real_write = os.write

    class Faults:
        on = False
        under = Path("/nonexistent")
        hits = 0

    def write(fd: int, data: Any) -> int:
        if Faults.on:
            try:
                target = os.readlink(f"/proc/self/fd/{fd}")
            except OSError:
                target = ""
            if target.startswith(str(Faults.under)):
                Faults.hits += 1
                if Faults.hits % 2:  # the disk takes part of it, then gives up
                    return real_write(fd, bytes(data[: max(1, len(data) // 2)]))
                raise OSError(errno.EIO, os.strerror(errno.EIO))
        return real_write(fd, data)

    monkeypatch.setattr(os, "write", write)
    return Faults


def _every_file(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.is_file())


def test_eio_on_write_names_the_path_leaves_no_file_and_the_next_write_succeeds(tmp_path: Path, eio: Any) -> None:
    sink = FolderSink(tmp_path / "out", subtype="PCM_24", session="s")
    sink.open()
    writer = FolderWriter(sink)
    eio.under = sink.root
    tone = (0.5 * np.sin(np.arange(4000) / 5.0)).astype(np.float32)[None]
    clip = Clip(tone, 8000, {"instrument": "kick", "model": "m"})

    async def run() -> None:
        eio.on = True
        with pytest.raises(OSError) as failed:
            await writer.save(clip)
        assert str(failed.value) == f"cannot write to {sink.session_dir}: I/O error (EIO)"
        assert failed.value.errno == errno.EIO
        assert eio.hits >= 2, "the bytes went through the patched write"
        assert _every_file(sink.session_dir) == [], "no partial WAV, temporary file or lone sidecar"
        assert writer.status()["state"] == "failing" and "EIO" in writer.status()["error"]
        eio.on = False
        path = await writer.save(clip)
        audio, rate = sf.read(str(path), dtype="float32", always_2d=True)
        assert rate == 8000 and np.allclose(audio.T, tone, atol=1e-6)
        assert json.loads(path.with_suffix(".json").read_text())["frames"] == 4000
        clips = [p for p in _every_file(sink.session_dir) if p.suffix in (".wav", ".json")]
        assert clips == [path.with_suffix(".json"), path]  # (and index.html, rewritten beside them)
        assert writer.status()["state"] == "ok" and writer.status()["error"] is None

    try:
        asyncio.run(run())
    finally:
        writer.shutdown()


def test_eio_fails_jobs_clearly_and_keeps_refills_in_memory_until_the_disk_recovers(
        tmp_path: Path, tiny_model: Path, eio: Any) -> None:
    from test_engine_inprocess import make_engine, until

    engine, made, writer = make_engine(tmp_path, tiny_model)
    eio.under = engine.sink.root

    async def run() -> None:
        eio.on = True
        await engine.start()
        worker = made[0]
        await until(lambda: writer.held == {"kick": 4, "snare": 2}, "the refused refills to wait in memory")
        rendered = sum(worker.batches)
        assert rendered == 6, worker.batches
        assert [p for p in _every_file(engine.sink.root) if p.suffix in (".wav", ".json") or ".tmp-" in p.name] == []

        errors: list[str] = []
        engine.generate("kick", 1, seed=3, on_error=lambda job, message: errors.append(message))
        await until(lambda: errors, "the generate job's error")
        assert errors == [f"cannot write to {engine.sink.session_dir}: I/O error (EIO)"], errors
        # a job of several clips fails once, and is then forgotten (failed jobs piled up in the soak)
        engine.generate("kick", 3, seed=5, on_error=lambda job, message: errors.append(message))
        await until(lambda: len(errors) == 2 and not engine.jobs, "the 3-clip job to fail and be let go")
        assert engine.status()["jobs"]["active"] == 0
        made_so_far = sum(worker.batches)
        with pytest.raises(EngineError) as refused:  # the pool is dry because its refills cannot be stored
            await engine.play("kick")
        assert str(refused.value).startswith(f"no fresh kick clip: cannot write to {engine.sink.root}")
        assert str(refused.value).endswith(": I/O error (EIO)")
        assert engine.counters.to_json()["write_errors"] >= 7

        eio.on = False
        await until(lambda: len(engine.pools["kick"]) == 4 and len(engine.pools["snare"]) == 2,
                    "the held clips to be stored")
        assert sum(worker.batches) == made_so_far, "the held clips were stored, not rendered again"
        assert writer.held == {"kick": 0, "snare": 0} and writer.status()["held_clips"] == {}
        pooled = sorted((engine.sink.root / ".pool").rglob("*.wav"))
        assert len(pooled) == 6 and all(sf.info(str(p)).frames == 800 for p in pooled)
        played = await engine.play("kick")
        assert played.fresh and played.path.is_file()
        await engine.stop()

    try:
        asyncio.run(run())
    finally:
        writer.shutdown()
    # once every write is over (index.html's rewrite for the play runs after it): nothing left behind
    assert not [p for p in _every_file(engine.sink.root) if ".tmp-" in p.name]


# --------------------------------------------------------------------------- a continuation on a full disk


def test_a_continuation_on_a_full_disk_gets_one_error_and_stops_then_the_next_one_works(
        tmp_path: Path, tmpfs: Path) -> None:
    """Its first chunk cannot be written: one error reply (not one per chunk), MusicGen stops
    rather than render a minute of audio with nowhere to go, and after space returns the next
    continuation is made whole."""
    from test_continue_osc import _config, _prompt

    with serving(tmpfs, _config(tmp_path)) as (daemon, client), FolderWatcher(tmpfs, frames=None) as watcher:
        _prompt(tmpfs)
        client.wait_until(lambda s: s.get("continuation", {}).get("state") == "ready", what="the MusicGen worker")
        filler = fill(tmpfs)
        client.send("/genbridge/continue", "prompt.wav", 60.0, "", 5, "full")
        job = client.expect("/genbridge/job/queued").args[1]
        while (r := client.recv(timeout=120)).address == "/genbridge/job/progress":
            pass
        assert r.address == ERROR and r.args[:2] == ["full", "/genbridge/continue"], r
        assert "cannot write chunk 0" in r.args[2] and "disk full (ENOSPC)" in r.args[2], r.args
        status = client.wait_until(lambda s: s["continuation"]["running"] is None, timeout=60,
                                   what="MusicGen to stop the job whose chunks cannot be stored")
        assert status["continuation"]["failed"] == 1 and status["continuation"]["cancelled"] == 0
        assert client.request("/genbridge/ping", 3, reply="/genbridge/pong").args[0] == 3  # no more replies for it
        filler.unlink()
        client.send("/genbridge/continue", "prompt.wav", 1.0, "", 6, "after")
        assert client.expect("/genbridge/job/queued").args[1] == job + 1
        while (r := client.recv(timeout=120)).address != "/genbridge/job/done":
            assert r.address != ERROR, r
        whole, rate = sf.read(r.args[3], dtype="float32", always_2d=True)
        assert rate == 32000 and whole.shape == (32000, 1)
        assert Path(r.args[3]).name in wait_for_page(daemon.session_dir())
        assert daemon.proc.poll() is None
    assert not watcher.problems, watcher.problems[:5]
