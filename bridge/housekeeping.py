"""Keep the shared folder within a size and age cap, and clean up after a killed run.

Why: a set runs for hours and every trigger leaves a WAV; a disk that fills up mid-set stops
everything. The oldest clips go first, but never one younger than a minimum age (a DAW may be
loading it right now) and never one still in use (the clip a dry pool replays, a job's source).
Pools (``.pool/``) are not swept: those clips are the daemon's stock, already bounded by their
targets. Pure file work, run on the folder writer's thread; what a sweep removes from the
current session is told to the sink's observers, so the session's ``index.html`` follows.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable

from bridge.session_index import INDEX_NAME

log = logging.getLogger(__name__)

SESSION_NAME = re.compile(r"^\d{8}-\d{6}$")
TMP_MARK = ".tmp-"


@dataclass
class SweepResult:
    removed: int = 0
    freed_bytes: int = 0
    kept_bytes: int = 0
    #: The WAVs removed (their sidecars went with them), for the session folder's observers.
    removed_paths: list[Path] = field(default_factory=list)


def session_dirs(root: Path) -> list[Path]:
    return sorted(d for d in root.iterdir() if d.is_dir() and SESSION_NAME.match(d.name)) if root.is_dir() else []


def _index_only(folder: Path) -> list[Path] | None:
    """What ``folder`` holds when that is nothing but its ``index.html`` and the index's temporary
    files (an earlier session whose clips were all swept); None when it holds anything else."""
    entries = list(folder.iterdir())
    index_tmp = f".{INDEX_NAME}{TMP_MARK}"
    if all(e.name == INDEX_NAME or e.name.startswith(index_tmp) for e in entries):
        return entries
    return None


def clean_leftovers(root: Path, pool_root: Path) -> int:
    """Remove what a killed run can leave: temporary files of interrupted writes, and sidecars
    whose WAV never got its final name (a sidecar is written first). Returns files removed."""
    removed = 0
    folders = [*session_dirs(root), *(p for p in pool_root.glob("*") if p.is_dir())]
    for folder in folders:
        for stale in folder.glob(f".*{TMP_MARK}*"):
            stale.unlink(missing_ok=True)
            removed += 1
        for sidecar in folder.glob("*.json"):
            if not sidecar.with_suffix(".wav").exists():
                try:
                    ours = "sample_rate" in json.loads(sidecar.read_text())
                except (OSError, ValueError):
                    ours = False
                if ours:
                    sidecar.unlink(missing_ok=True)
                    removed += 1
    if removed:
        log.info("removed %d leftovers of an interrupted run in %s", removed, root)
    return removed


def sweep(root: Path, *, max_bytes: int, max_age_s: float, min_age_s: float, protected: Iterable[Path],
          current_session: Path | None = None, now: float | None = None) -> SweepResult:
    """Delete the oldest session clips (WAV + sidecar) beyond the caps; 0 means no cap."""
    now = time.time() if now is None else now
    keep = {Path(p).resolve() for p in protected if p}
    clips = []
    for folder in session_dirs(root):
        for wav in folder.glob("*.wav"):
            try:
                st = wav.stat()
            except OSError:
                continue
            side = wav.with_suffix(".json")
            size = st.st_size + (side.stat().st_size if side.exists() else 0)
            clips.append((st.st_mtime, wav, size))
    clips.sort()
    total = sum(c[2] for c in clips)
    result = SweepResult()
    for mtime, wav, size in clips:
        age = now - mtime
        too_old = max_age_s > 0 and age > max_age_s
        too_big = max_bytes > 0 and total > max_bytes
        if not (too_old or too_big):
            continue
        if age < min_age_s or wav.resolve() in keep:
            continue
        wav.unlink(missing_ok=True)
        wav.with_suffix(".json").unlink(missing_ok=True)
        total -= size
        result.removed += 1
        result.freed_bytes += size
        result.removed_paths.append(wav)
    for folder in session_dirs(root):  # empty folders of earlier sessions (an index of nothing is empty)
        if folder == current_session:
            continue
        # one that cannot go now (something appeared in it, it is read-only) waits for the next sweep
        with contextlib.suppress(OSError):
            leftover = _index_only(folder)
            if leftover is not None:
                for entry in leftover:
                    entry.unlink(missing_ok=True)
                folder.rmdir()
    result.kept_bytes = total
    return result


class FolderSweeper:
    """Applies ``output.max_mb`` / ``max_age_h`` every ``sweep_every_s`` on the folder writer's
    thread, keeping whatever the ``protected`` providers name (the clip a dry pool replays, the
    sources of running jobs, the last continuation)."""

    def __init__(self, writer: Any, output: Any, protected: list[Callable[[], list[Path]]], counters: Any) -> None:
        self.writer = writer
        self.output = output
        self.protected = protected
        self.counters = counters
        self._task: asyncio.Task[None] | None = None
        self._stop = asyncio.Event()

    @property
    def enabled(self) -> bool:
        return self.output.max_mb > 0 or self.output.max_age_h > 0

    def start(self) -> None:
        if self.enabled:
            self._task = asyncio.ensure_future(self._run())

    async def stop(self) -> None:
        self._stop.set()
        if self._task is not None:
            await asyncio.gather(self._task, return_exceptions=True)

    async def _run(self) -> None:
        out = self.output
        sink = self.writer.sink
        while not self._stop.is_set():
            protected = [p for provider in self.protected for p in provider()]

            def sweep_and_tell() -> SweepResult:
                result = sweep(sink.root, max_bytes=int(out.max_mb * 1e6), max_age_s=out.max_age_h * 3600,
                               min_age_s=out.min_age_s, protected=protected, current_session=sink.session_dir)
                sink.clips_removed(result.removed_paths)  # on the writer thread, before the next write
                return result

            try:
                result = await self.writer.run(sweep_and_tell)
            except (OSError, RuntimeError) as exc:
                log.warning("folder sweep failed: %s", exc)
            else:
                if result.removed:
                    log.info("folder sweep removed %d old clips (%.1f MB)", result.removed, result.freed_bytes / 1e6)
                self.counters.add("swept_files", result.removed)
                self.counters.add("swept_bytes", result.freed_bytes)
            try:
                await asyncio.wait_for(self._stop.wait(), out.sweep_every_s)
            except asyncio.TimeoutError:
                pass
