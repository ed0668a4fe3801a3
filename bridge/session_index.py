"""A static ``index.html`` in the session folder: every clip with a player and its sidecar.

Why: the session folder is what a musician opens after a set (or during it, from another
machine's file share), and a folder of thousands of timestamped WAVs is hard to browse. Like
the sampler pages of Jukebox, the folder carries its own page, which opens from disk (file://)
without the daemon, needs no network and works without JavaScript: relative links and
``<audio>`` players next to each clip's sidecar.

Why it is kept in memory and rewritten whole: the page is one file that must never be seen half
written (a browser reloading it mid-write would show half a list), so it is written like the
clips, under a temporary name and renamed (:func:`~bridge.sinks.folder.atomic_write`). Knowing
the clips from the sink's observer hooks, it never re-reads the folder per change (a 30-minute
soak writes ~7000 clips; re-reading their sidecars per clip would cost more than the clips). Each
clip's HTML is made once, when it arrives, so a rewrite is a join, not 7000 JSON dumps. Rewrites
are coalesced by the folder writer (:meth:`~bridge.folder_writer.FolderWriter.request_index_write`):
a burst of clips means one rewrite, of the latest state.

Why a failed write is only a warning: the page is a convenience beside the clips. A full disk or
a read-only folder is the clips' error to report (they do, clearly); the page says so once per
failure streak in the log and is written again on the next change once the folder takes writes.
"""

from __future__ import annotations

import html
import json
import logging
import threading
import time
from collections import OrderedDict
from pathlib import Path
from typing import Any, Callable
from urllib.parse import quote

from bridge.sinks.folder import atomic_write, folder_error

log = logging.getLogger(__name__)

INDEX_NAME = "index.html"
#: The page ends with this line; a reader that sees it has the whole page (tests rely on it).
END = "</html>\n"

_STYLE = """
:root { color-scheme: dark; }
body { background: #15171a; color: #d8dadd; font: 14px/1.45 system-ui, -apple-system, "Segoe UI", sans-serif;
       margin: 0 auto; max-width: 64rem; padding: 1.5rem; }
h1 { font-size: 1.3rem; font-weight: 600; margin: 0 0 .2rem; }
header p { color: #8b9096; margin: 0 0 1.2rem; }
ol { list-style: none; margin: 0; padding: 0; }
li.clip { background: #1e2125; border: 1px solid #2b2f35; border-radius: 6px; margin: 0 0 .6rem; padding: .6rem .8rem; }
.row { display: flex; flex-wrap: wrap; gap: .3rem 1rem; align-items: baseline; }
a { color: #7fb8ff; text-decoration: none; font-family: ui-monospace, Menlo, Consolas, monospace; }
a:hover, a:focus { text-decoration: underline; }
.inst { color: #f0c674; font-weight: 600; }
.when, .dur { color: #8b9096; }
audio { display: block; width: 100%; height: 2rem; margin: .4rem 0 .2rem; }
summary { color: #8b9096; cursor: pointer; }
pre { background: #111316; border-radius: 4px; color: #b5bd68; font-size: 12px; margin: .3rem 0 0;
      overflow-x: auto; padding: .5rem; }
.empty { color: #8b9096; }
"""

# Only one clip plays at a time (optional: without JavaScript every player works on its own).
_SCRIPT = """
document.addEventListener("play", function (e) {
  document.querySelectorAll("audio").forEach(function (a) { if (a !== e.target) a.pause(); });
}, true);
"""


def _created(meta: dict[str, Any]) -> str:
    """The clip's ``created`` (epoch seconds) as local date and time, or "" when it has none."""
    try:
        return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(float(meta["created"])))
    except (KeyError, TypeError, ValueError, OverflowError, OSError):
        return ""


def _duration(meta: dict[str, Any]) -> str:
    try:
        return f"{float(meta['duration_s']):.2f} s"
    except (KeyError, TypeError, ValueError):
        return ""


def clip_item(name: str, meta: dict[str, Any]) -> str:
    """One clip's ``<li>``: its name linked, instrument, time, duration, a player and its sidecar.
    Every text is HTML-escaped (sidecars hold user text such as descriptions); the URLs are the
    relative file name, percent-encoded, so the page works from file:// and over HTTP alike."""
    e = html.escape
    url = e(quote(name, safe=""))
    sidecar = json.dumps(meta, indent=2, default=str)
    instrument = meta.get("instrument") or meta.get("model_kind") or ""
    return (f'<li class="clip" data-name="{e(name)}">\n'
            f'<div class="row"><a href="{url}">{e(name)}</a>'
            f'<span class="inst">{e(str(instrument))}</span>'
            f'<span class="when">{e(_created(meta))}</span>'
            f'<span class="dur">{e(_duration(meta))}</span></div>\n'
            f'<audio controls preload="none" src="{url}"></audio>\n'
            f"<details><summary>sidecar</summary><pre>{e(sidecar)}</pre></details>\n"
            "</li>\n")


class SessionIndex:
    """The clips of one session folder, in memory, and the page that lists them.

    A :class:`~bridge.sinks.folder.SessionObserver`: ``clip_added`` and ``clip_removed`` come from
    the folder writer's thread and from the event loop's (pooled clips moved in on a trigger), so
    the state is under a lock; ``on_change`` (called outside it, on the caller's thread) asks for
    a rewrite. :meth:`write` runs on the folder writer's thread.
    """

    def __init__(self, session_dir: Path, *, on_change: Callable[[], None] | None = None) -> None:
        self.session_dir = session_dir
        self.path = session_dir / INDEX_NAME
        self.on_change = on_change
        self._lock = threading.Lock()
        #: name -> (sidecar, its <li>), oldest first.
        self._clips: OrderedDict[str, tuple[dict[str, Any], str]] = OrderedDict()
        self._version = 0  # changes so far
        self._written = -1  # the version the file on disk shows (-1: none written yet)
        self._failing = False
        self._load()

    def _load(self) -> None:
        """Adopt the clips already in the folder (a reused session), oldest first (names sort by
        time). A WAV whose sidecar cannot be read is listed with an empty one: it is there."""
        if not self.session_dir.is_dir():
            return
        for wav in sorted(self.session_dir.glob("*.wav")):
            if wav.name.startswith("."):
                continue
            try:
                meta = json.loads(wav.with_suffix(".json").read_text())
            except (OSError, ValueError):
                meta = {}
            if not isinstance(meta, dict):
                meta = {}
            self._clips[wav.name] = (meta, clip_item(wav.name, meta))
        self._version += bool(self._clips)

    # ------------------------------------------------------------------ observer

    def clip_added(self, wav: Path, meta: dict[str, Any]) -> None:
        """A clip is in the session folder (its WAV and sidecar in place)."""
        item = clip_item(wav.name, meta)  # outside the lock: the JSON dump is the costly part
        with self._lock:
            self._clips.pop(wav.name, None)  # the same name again: it is the newest now
            self._clips[wav.name] = (dict(meta), item)
            self._version += 1
        self._changed()

    def clip_removed(self, wav: Path) -> None:
        """A clip left the session folder (back to its pool, or swept)."""
        with self._lock:
            if self._clips.pop(wav.name, None) is None:
                return
            self._version += 1
        self._changed()

    def _changed(self) -> None:
        if self.on_change is not None:
            self.on_change()

    # ------------------------------------------------------------------ reading

    def clips(self) -> list[tuple[Path, dict[str, Any]]]:
        """(WAV, sidecar) of every clip in the session folder, oldest first. The sidecars are the
        index's own: read them, do not change them."""
        with self._lock:
            return [(self.session_dir / name, meta) for name, (meta, _) in self._clips.items()]

    def count(self) -> int:
        """How many clips the session folder holds (not ``__len__``: an empty index is no false value)."""
        with self._lock:
            return len(self._clips)

    @property
    def dirty(self) -> bool:
        """Whether the page on disk (if any) is older than the clips in memory."""
        with self._lock:
            return self._written != self._version

    def _snapshot(self) -> tuple[int, list[str]]:
        with self._lock:
            return self._version, [item for _, item in self._clips.values()]

    def render(self) -> str:
        """The whole page, newest clip first."""
        return self._render(self._snapshot()[1])

    def _render(self, items: list[str]) -> str:
        name = html.escape(self.session_dir.name)
        n = len(items)
        count = f"{n} clip{'' if n == 1 else 's'}"
        updated = time.strftime("%Y-%m-%d %H:%M:%S")
        body = "".join(reversed(items)) if items else '<li class="empty">No clips yet.</li>\n'
        return ("<!DOCTYPE html>\n"
                '<html lang="en">\n<head>\n<meta charset="utf-8">\n'
                '<meta name="viewport" content="width=device-width, initial-scale=1">\n'
                f"<title>genbridge session {name}</title>\n<style>{_STYLE}</style>\n</head>\n<body>\n"
                f'<header><h1>genbridge session {name}</h1>\n'
                f'<p><span class="count">{count}</span>, newest first; updated {updated}.</p></header>\n'
                f'<ol class="clips">\n{body}</ol>\n'
                f"<script>{_SCRIPT}</script>\n</body>\n{END}")

    # ------------------------------------------------------------------ writing

    def _forget_vanished(self) -> None:
        """When the page written before is gone, so (most likely) is the folder it was in: it was
        removed and the sink made it again for the next clip. Then the clips whose files went with
        it are dropped. One stat per write; only then one per clip."""
        if self._written < 0 or self.path.exists():
            return
        with self._lock:
            names = list(self._clips)
        gone = [n for n in names if not (self.session_dir / n).exists()]
        if gone:
            with self._lock:
                for name in gone:
                    self._clips.pop(name, None)
                self._version += 1
            log.info("%s was removed: the %d clips gone with it are off the new one", self.path, len(gone))

    def write(self) -> None:
        """Write the page of the latest state atomically. A folder that is gone or refuses writes
        (full, read-only) is a warning once per failure streak, never an exception: the next
        change writes it again."""
        self._forget_vanished()
        version, items = self._snapshot()
        try:
            atomic_write(self.path, self._render(items).encode())
        except OSError as exc:
            if not self._failing:
                self._failing = True
                log.warning("%s (the session's %s is written again on the next change)",
                            folder_error(exc, self.session_dir), INDEX_NAME)
            return
        except Exception:  # a bug here must not stop the folder writer either
            if not self._failing:
                self._failing = True
                log.exception("cannot write %s", self.path)
            return
        if self._failing:
            self._failing = False
            log.info("%s is written again", self.path)
        with self._lock:
            self._written = max(self._written, version)
