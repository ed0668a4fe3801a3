"""Adopt the never-played clips an earlier run left in the pool folders, so a restarted daemon is
warm at once. A clip is adopted only when its sidecar names the model the instrument plays now
and that model's files are unchanged (their signature); every other one is removed, since it is
another model's sound.
"""

from __future__ import annotations

import logging
from typing import Callable

from bridge.clip import Clip
from bridge.pools import ClipPool
from bridge.sinks.folder import FolderSink

log = logging.getLogger(__name__)


def restore_pools(sink: FolderSink, pools: dict[str, ClipPool], model_of: Callable[[str], tuple[str, str]],
                  prepare: Callable[[Clip], None] | None = None) -> None:
    """Fill ``pools`` from ``sink``'s pool folders; ``model_of(instrument)`` = (model name, signature).

    Runs on the folder writer's thread before any worker starts (a worker refilling meanwhile
    would overfill the pools); ``prepare`` lays each clip out for the audio device. Each band of a
    pool keeps up to its target (a clip's band is the one nearest the velocity its sidecar names).
    """
    for name, pool in pools.items():
        model, signature = model_of(name)
        kept = dropped = 0
        for wav, meta in sink.pooled_files(name):
            if meta.get("model") == model and meta.get("model_signature") == signature and pool.has_room_for(meta):
                try:
                    clip = sink.read_clip(wav, meta)
                    if prepare is not None:
                        prepare(clip)
                except Exception as exc:
                    log.warning("cannot restore %s: %s", wav, exc)
                else:
                    pool.restore(clip)  # into the velocity band it was made for
                    kept += 1
                    continue
            wav.unlink(missing_ok=True)
            wav.with_suffix(".json").unlink(missing_ok=True)
            dropped += 1
        if kept or dropped:
            log.info("pool %s: restored %d fresh clips from an earlier run, removed %d", name, kept, dropped)
