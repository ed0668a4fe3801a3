"""Keep the shared folder within a size and age cap, and clean up after a killed run.

Why: a set runs for hours and every trigger leaves a WAV; a disk that fills up mid-set stops
everything. The oldest clips go first, but never one younger than a minimum age (a DAW may be
loading it right now) and never one still in use (the clip a dry pool replays, a job's source).
Pools (``.pool/``) are not swept: those clips are the daemon's stock, already bounded by their
targets. Pure file work, run on the folder writer's thread.
"""

from __future__ import annotations

import json
import logging
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

log = logging.getLogger(__name__)

SESSION_NAME = re.compile(r"^\d{8}-\d{6}$")
TMP_MARK = ".tmp-"


@dataclass
class SweepResult:
    removed: int = 0
    freed_bytes: int = 0
    kept_bytes: int = 0


def session_dirs(root: Path) -> list[Path]:
    return sorted(d for d in root.iterdir() if d.is_dir() and SESSION_NAME.match(d.name)) if root.is_dir() else []


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
    for folder in session_dirs(root):  # empty folders of earlier sessions
        if folder != current_session and not any(folder.iterdir()):
            folder.rmdir()
    result.kept_bytes = total
    return result
