"""The shared folder: WAV + JSON sidecar per clip, written so no reader ever sees half a file.

Why atomic: Max's ``buffer~``, Ableton's browser and file watchers read a file as soon as its
name appears. Every file is written under a hidden temporary name in the destination folder,
fsynced, then renamed (an atomic replace on one filesystem); only then is the path announced.

Layout under the configured root:
    <root>/<session>/                 what clients are told about, names sort by time
    <root>/.pool/<instrument>/        pre-generated, never-played clips (same filesystem, so
                                      handing one out is a rename, not a write)
"""

from __future__ import annotations

import itertools
import json
import logging
import os
import threading
import time
from datetime import datetime
from pathlib import Path
from typing import Any

import soundfile as sf

from bridge.clip import Clip

log = logging.getLogger(__name__)

TMP_MARK = ".tmp-"


def _fsync_dir(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _atomic_write(final: Path, write: Any) -> None:
    """Call ``write(tmp_path)``, fsync the result, then rename it to ``final``."""
    tmp = final.with_name(f".{final.name}{TMP_MARK}{os.getpid()}-{threading.get_ident()}")
    try:
        write(tmp)
        with open(tmp, "rb+") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, final)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


class FolderSink:
    """Writes clips into a per-session folder and keeps the pool's files beside it."""

    def __init__(self, root: str | Path, subtype: str = "PCM_24", session: str | None = None) -> None:
        self.root = Path(root).expanduser().resolve()
        self.subtype = subtype
        self.session = session if session is not None else datetime.now().strftime("%Y%m%d-%H%M%S")
        self.session_dir = self.root / self.session
        self.pool_root = self.root / ".pool"
        self._counter = itertools.count(1)
        self._lock = threading.Lock()

    def open(self) -> None:
        """Create the folders and remove what a killed run left behind (temporary files of
        interrupted writes in every session and pool folder, sidecars without their WAV)."""
        from bridge.housekeeping import clean_leftovers

        self.session_dir.mkdir(parents=True, exist_ok=True)
        self.pool_root.mkdir(parents=True, exist_ok=True)
        clean_leftovers(self.root, self.pool_root)

    def pool_dir(self, instrument: str) -> Path:
        return self.pool_root / instrument

    def pooled_files(self, instrument: str) -> list[tuple[Path, dict[str, Any]]]:
        """(WAV, sidecar) of every complete clip in an instrument's pool folder, oldest first."""
        folder = self.pool_dir(instrument)
        found = []
        for wav in sorted(folder.glob("*.wav")) if folder.is_dir() else []:
            try:
                found.append((wav, json.loads(wav.with_suffix(".json").read_text())))
            except (OSError, json.JSONDecodeError):
                continue
        return found

    def read_clip(self, wav: Path, meta: dict[str, Any]) -> Clip:
        audio, rate = sf.read(str(wav), dtype="float32", always_2d=True)
        return Clip(audio.T.copy(), rate, meta, path=wav)

    def discard_pool_files(self, instrument: str) -> int:
        """Remove clips pooled by an earlier run (restoring them is the reliability issue's job)."""
        folder = self.pool_dir(instrument)
        n = 0
        if folder.is_dir():
            for f in folder.iterdir():
                if f.is_file():
                    f.unlink(missing_ok=True)
                    n += f.suffix == ".wav"
        return n

    def _stem(self, instrument: str) -> str:
        with self._lock:
            seq = next(self._counter)
        now = time.time()
        stamp = time.strftime("%Y%m%d-%H%M%S", time.localtime(now)) + f".{int(now % 1 * 1000):03d}"
        return f"{stamp}-{seq:05d}-{instrument}"

    def _write(self, clip: Clip, folder: Path, stem: str) -> Path:
        folder.mkdir(parents=True, exist_ok=True)
        wav = folder / f"{stem}.wav"
        sidecar = folder / f"{stem}.json"
        meta = dict(clip.meta)
        meta.update(sample_rate=clip.sample_rate, channels=clip.channels, frames=clip.frames,
                    duration_s=round(clip.duration_s, 6), wav_subtype=self.subtype)
        # Sidecar first: whoever reacts to the WAV appearing can read its sidecar at once.
        _atomic_write(sidecar, lambda p: p.write_text(json.dumps(meta, indent=2, default=str) + "\n"))
        _atomic_write(wav, lambda p: sf.write(str(p), clip.audio.T, clip.sample_rate,
                                              subtype=self.subtype, format="WAV"))
        _fsync_dir(folder)
        clip.path = wav
        return wav

    def write_to_session(self, clip: Clip) -> Path:
        """Write a freshly generated clip where clients look; returns the WAV path."""
        return self._write(clip, self.session_dir, self._stem(clip.instrument))

    def write_to_pool(self, clip: Clip) -> Path:
        """Write a clip that waits, unplayed, for a trigger."""
        return self._write(clip, self.pool_dir(clip.instrument), self._stem(clip.instrument))

    def publish_pooled(self, clip: Clip) -> Path:
        """Move a pooled clip into the session folder: two renames, no audio written on the trigger."""
        assert clip.path is not None, "pooled clip has no file"
        stem = self._stem(clip.instrument)
        src_wav = clip.path
        dst_wav = self.session_dir / f"{stem}.wav"
        src_json = src_wav.with_suffix(".json")
        if src_json.exists():
            os.replace(src_json, dst_wav.with_suffix(".json"))
        os.replace(src_wav, dst_wav)
        clip.path = dst_wav
        return dst_wav

    def return_to_pool(self, clip: Clip) -> Path:
        """Move an unannounced clip from the session folder back into its pool (never heard)."""
        assert clip.path is not None, "clip has no file"
        folder = self.pool_dir(clip.instrument)
        folder.mkdir(parents=True, exist_ok=True)
        dst = folder / clip.path.name
        src_json = clip.path.with_suffix(".json")
        if src_json.exists():
            os.replace(src_json, dst.with_suffix(".json"))
        os.replace(clip.path, dst)
        clip.path = dst
        return dst
