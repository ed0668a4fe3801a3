"""The shared folder: WAV + JSON sidecar per clip, written so no reader ever sees half a file.

Why atomic: Max's ``buffer~``, Ableton's browser and file watchers read a file as soon as its
name appears. Every file is written under a hidden temporary name in the destination folder,
fsynced, then renamed (an atomic replace on one filesystem); only then is the path announced.

Why a write failure is a :class:`FolderError`: a full disk, a folder remounted read-only or
removed mid-set must reach the musician as one line that names the folder and says what is
wrong ("cannot write to /x/20261122-024554: disk full (ENOSPC)"), not as libsndfile's "System
error" or a traceback. The WAV is encoded in memory first, so the bytes reach the disk through
one ``os.write`` loop whose errno says exactly why it failed, and whatever a failed write left
(its temporary file, its sidecar) is removed before the error is raised. :meth:`FolderSink.health`
says whether the folder takes writes right now (the last write decides), for status.

Why observers: the session's ``index.html`` (and the web console) must follow the clips that enter
and leave the session folder without re-reading it per change; :class:`SessionObserver` is told,
after the files are in place, by whichever thread did the move or the write.

Layout under the configured root:
    <root>/<session>/                 what clients are told about, names sort by time
    <root>/.pool/<instrument>/        pre-generated, never-played clips (same filesystem, so
                                      handing one out is a rename, not a write)
"""

from __future__ import annotations

import contextlib
import errno
import io
import itertools
import json
import logging
import os
import threading
import time
from datetime import datetime
from pathlib import Path
from typing import Any, Callable, Iterable, Protocol

import soundfile as sf

from bridge.clip import Clip

log = logging.getLogger(__name__)

TMP_MARK = ".tmp-"

#: What an errno means for the musician, said in words before its name.
REASONS: dict[int, str] = {
    errno.ENOSPC: "disk full (ENOSPC)",
    errno.EDQUOT: "over the disk quota (EDQUOT)",
    errno.EROFS: "the folder is read-only (EROFS)",
    errno.ENOENT: "the folder vanished (ENOENT)",
    errno.EIO: "I/O error (EIO)",
    errno.EACCES: "permission denied (EACCES)",
    errno.EPERM: "permission denied (EPERM)",
}


class FolderError(OSError):
    """A write or move in the shared folder failed. ``str()`` is the message for the musician
    (it names the folder and the reason); ``errno`` is the system's code; ``path`` the file."""

    def __init__(self, message: str, code: int | None = None, path: Path | None = None) -> None:
        super().__init__(message)
        self.errno = code  # type: ignore[misc]
        self.path = path


class PooledFileGone(FolderError):
    """A pooled clip's file is no longer there (its folder was removed); the clip itself, still
    in memory and never heard, can be written again."""


def folder_error(exc: OSError, folder: Path, action: str = "write to") -> FolderError:
    """``exc`` as a :class:`FolderError` whose message names ``folder`` and says why in words."""
    if isinstance(exc, FolderError):
        return exc
    code = exc.errno
    if code in REASONS:
        reason = REASONS[code]
    elif code:
        reason = f"{exc.strerror or os.strerror(code)} ({errno.errorcode.get(code, code)})"
    else:
        reason = str(exc)
    path = Path(exc.filename) if isinstance(exc.filename, str) else None
    return FolderError(f"cannot {action} {folder}: {reason}", code, path)


def _fsync_dir(folder: Path) -> None:
    """Make the renames in ``folder`` durable. Best effort: the file is complete and visible
    already, so a directory that cannot be fsynced is logged, not a failed write."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError as exc:
        log.warning("cannot fsync %s: %s", folder, exc)
    finally:
        os.close(fd)


def _write_file(path: Path, data: bytes) -> None:
    """Create ``path`` (it must not exist) holding ``data``, fsynced. Every byte goes through
    ``os.write``, so a failure is an OSError with the errno of the disk's answer."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o666)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view):]
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write(final: Path, data: bytes) -> None:
    """Write ``data`` under a hidden temporary name beside ``final``, fsync it, rename it to
    ``final``; on any failure the temporary file is removed and the error raised. The temporary
    name (``.<name>.tmp-<pid>-<thread>``) is one that :func:`~bridge.housekeeping.clean_leftovers`
    removes after a killed run."""
    tmp = final.with_name(f".{final.name}{TMP_MARK}{os.getpid()}-{threading.get_ident()}")
    try:
        _write_file(tmp, data)
        os.replace(tmp, final)
    except BaseException:
        with contextlib.suppress(OSError):  # a read-only folder never had it; the first error is the one to tell
            tmp.unlink(missing_ok=True)
        raise


class SessionObserver(Protocol):
    """Told about clips entering and leaving the session folder (after the files are in place).

    Called on the thread that did the work: the folder writer's thread for writes, returns to the
    pool and sweeps, the asyncio event loop's thread for pooled clips moved in on a trigger. So an
    observer must be thread-safe, and quick (it holds up the write or the trigger). Whatever it
    raises is logged, never the write's failure.
    """

    def clip_added(self, wav: Path, meta: dict[str, Any]) -> None: ...

    def clip_removed(self, wav: Path) -> None: ...


def wav_bytes(clip: Clip, subtype: str) -> bytes:
    """The clip as a complete WAV file in memory (no disk involved, so nothing here fails for
    the disk's reasons)."""
    buffer = io.BytesIO()
    sf.write(buffer, clip.audio.T, clip.sample_rate, subtype=subtype, format="WAV")
    return buffer.getvalue()


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
        #: The error of the last write when it failed (None once a write succeeds again).
        self._failure: FolderError | None = None
        self._failing_since = 0.0
        self.failed_writes = 0
        self._observers: list[SessionObserver] = []
        self._opened: list[Callable[[], None]] = []
        self._broken_observers: set[int] = set()

    def open(self) -> None:
        """Create the folders and remove what a killed run left behind (temporary files of
        interrupted writes in every session and pool folder, sidecars without their WAV); then
        call the :meth:`when_opened` callbacks (the session index's first write)."""
        from bridge.housekeeping import clean_leftovers

        self.session_dir.mkdir(parents=True, exist_ok=True)
        self.pool_root.mkdir(parents=True, exist_ok=True)
        clean_leftovers(self.root, self.pool_root)
        for callback in list(self._opened):
            self._notify(callback, callback)

    # ------------------------------------------------------------------ observers

    def add_observer(self, observer: SessionObserver) -> None:
        """Tell ``observer`` about every clip that enters or leaves the session folder from now on
        (pool writes are not the session's)."""
        self._observers.append(observer)

    def when_opened(self, callback: Callable[[], None]) -> None:
        """Call ``callback()`` (on the caller's thread) each time :meth:`open` has made the folders."""
        self._opened.append(callback)

    def _notify(self, owner: object, call: Callable[..., None], *args: Any) -> None:
        """``call(*args)``; what it raises is logged (with its traceback the first time for each
        ``owner``) and goes no further: an observer never makes a write fail."""
        try:
            call(*args)
        except Exception:
            if id(owner) not in self._broken_observers:
                self._broken_observers.add(id(owner))
                log.exception("session observer %r failed (the clip is in place; logged once)", owner)

    def _added(self, wav: Path, meta: dict[str, Any]) -> None:
        for observer in list(self._observers):
            self._notify(observer, observer.clip_added, wav, meta)

    def _removed(self, wav: Path) -> None:
        for observer in list(self._observers):
            self._notify(observer, observer.clip_removed, wav)

    def clips_removed(self, paths: Iterable[Path]) -> None:
        """Tell the observers about WAVs removed from the folder by someone else (the sweep);
        only those in the current session folder concern them."""
        for wav in paths:
            if wav.parent == self.session_dir:
                self._removed(wav)

    # ------------------------------------------------------------------ health

    @property
    def failure(self) -> FolderError | None:
        """Why the last write failed, or None when it succeeded (or none failed yet)."""
        return self._failure

    def _failed(self, exc: FolderError) -> None:
        if self._failure is None:
            self._failing_since = time.time()
        self._failure = exc
        self.failed_writes += 1

    def _succeeded(self) -> None:
        if self._failure is not None:
            log.info("the shared folder %s takes writes again", self.root)
        self._failure = None

    def health(self) -> dict[str, Any]:
        """For status: whether the folder takes writes now, and if not, why and since when."""
        failure = self._failure
        return {"state": "ok" if failure is None else "failing", "dir": str(self.root),
                "error": None if failure is None else str(failure),
                "failing_since": round(self._failing_since, 3) if failure is not None else None,
                "failed_writes": self.failed_writes}

    # ------------------------------------------------------------------ pool files

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

    # ------------------------------------------------------------------ writes

    def _stem(self, instrument: str) -> str:
        with self._lock:
            seq = next(self._counter)
        now = time.time()
        stamp = time.strftime("%Y%m%d-%H%M%S", time.localtime(now)) + f".{int(now % 1 * 1000):03d}"
        return f"{stamp}-{seq:05d}-{instrument}"

    def sidecar_meta(self, clip: Clip) -> dict[str, Any]:
        """The sidecar of ``clip`` as it is written: its meta plus the file facts (a new dict);
        :meth:`publish_pooled` builds it again for the observers rather than read the file."""
        meta = dict(clip.meta)
        meta.update(sample_rate=clip.sample_rate, channels=clip.channels, frames=clip.frames,
                    duration_s=round(clip.duration_s, 6), wav_subtype=self.subtype)
        return meta

    def _write(self, clip: Clip, folder: Path, stem: str) -> tuple[Path, dict[str, Any]]:
        """Sidecar, then WAV, each atomically; a folder that is gone is made again. Raises
        :class:`FolderError` and leaves nothing of this clip behind when the folder refuses.
        Returns the WAV and the sidecar's dict."""
        wav = folder / f"{stem}.wav"
        sidecar = folder / f"{stem}.json"
        meta = self.sidecar_meta(clip)
        audio = wav_bytes(clip, self.subtype)
        text = (json.dumps(meta, indent=2, default=str) + "\n").encode()
        try:
            folder.mkdir(parents=True, exist_ok=True)
            # Sidecar first: whoever reacts to the WAV appearing can read its sidecar at once.
            atomic_write(sidecar, text)
            try:
                atomic_write(wav, audio)
            except BaseException:
                with contextlib.suppress(OSError):  # no sidecar without its WAV
                    sidecar.unlink(missing_ok=True)
                raise
        except OSError as exc:
            error = folder_error(exc, folder)
            self._failed(error)
            raise error from exc
        _fsync_dir(folder)
        self._succeeded()
        clip.path = wav
        return wav, meta

    def write_to_session(self, clip: Clip) -> Path:
        """Write a freshly generated clip where clients look; returns the WAV path."""
        wav, meta = self._write(clip, self.session_dir, self._stem(clip.instrument))
        self._added(wav, meta)
        return wav

    def write_to_pool(self, clip: Clip) -> Path:
        """Write a clip that waits, unplayed, for a trigger."""
        return self._write(clip, self.pool_dir(clip.instrument), self._stem(clip.instrument))[0]

    @staticmethod
    def _move(src_wav: Path, dst_wav: Path) -> None:
        """Rename a WAV and its sidecar (sidecar first); a failed WAV rename puts the sidecar back."""
        src_json, dst_json = src_wav.with_suffix(".json"), dst_wav.with_suffix(".json")
        moved_json = src_json.exists()
        if moved_json:
            os.replace(src_json, dst_json)
        try:
            os.replace(src_wav, dst_wav)
        except OSError:
            if moved_json:
                with contextlib.suppress(OSError):
                    os.replace(dst_json, src_json)
            raise

    def publish_pooled(self, clip: Clip) -> Path:
        """Move a pooled clip into the session folder: two renames, no audio written on the trigger.

        A removed session folder is made again. Raises :class:`PooledFileGone` when the pooled
        file itself is gone, :class:`FolderError` when the folder refuses the move (nothing moved).
        """
        assert clip.path is not None, "pooled clip has no file"
        src_wav = clip.path
        if not src_wav.is_file():
            raise PooledFileGone(f"the pooled clip {src_wav} vanished", errno.ENOENT, src_wav)
        dst_wav = self.session_dir / f"{self._stem(clip.instrument)}.wav"
        try:
            try:
                self._move(src_wav, dst_wav)
            except FileNotFoundError:
                if self.session_dir.is_dir():
                    raise
                log.warning("the session folder %s was removed; making it again", self.session_dir)
                self.session_dir.mkdir(parents=True, exist_ok=True)
                self._move(src_wav, dst_wav)
        except OSError as exc:
            # counted in the folder's health; a move that works does not clear it (renames need no
            # space: only a write that lands says the folder takes writes again)
            error = folder_error(exc, self.session_dir, "move a clip into")
            self._failed(error)
            raise error from exc
        clip.path = dst_wav
        meta = self.sidecar_meta(clip)
        if "wav_subtype" in clip.meta:  # restored from an earlier run's pool: its file's own subtype
            meta["wav_subtype"] = clip.meta["wav_subtype"]
        self._added(dst_wav, meta)
        return dst_wav

    def return_to_pool(self, clip: Clip) -> Path:
        """Move an unannounced clip from the session folder back into its pool (never heard)."""
        assert clip.path is not None, "clip has no file"
        src = clip.path
        folder = self.pool_dir(clip.instrument)
        dst = folder / src.name
        try:
            folder.mkdir(parents=True, exist_ok=True)
            self._move(src, dst)
        except OSError as exc:
            error = folder_error(exc, folder, "move a clip into")
            self._failed(error)
            raise error from exc
        clip.path = dst
        if src.parent == self.session_dir:
            self._removed(src)
        return dst
