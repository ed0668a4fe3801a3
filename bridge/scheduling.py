"""What a model worker makes next: plain code, no processes, no event loop.

Per model worker, one dispatch at a time:
    1. plays waiting on a dry pool (policy "wait", or a cold start),
    2. explicit ``generate`` / ``vary`` requests, oldest first,
    3. pool refills, the emptiest pool first, up to ``engine.refill_batch`` clips in one batch
       across the instruments that share the model and its parameters (one network pass per
       step for all of them).
One clip per dispatch for 1 and 2 keeps a long ``generate`` from starving a waiting play; a
refill batch is dealt one place at a time to the pool missing the most. Why batches: on a CPU
a batch of 4 costs about twice one clip (docs/ARCHITECTURE.md, "Measured reasons").

A pool split into velocity bands (bridge/pools.py) is dealt band by band: each band is a place
of its own, the band missing the most first, and among bands missing as many (at start-up, when
all are empty) the one of the model's default velocity first. Bands of one instrument share its
parameters, so soft and hard refills go in one batch (each clip has its own velocity).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

from bridge.jobs import Job
from bridge.pools import Band, ClipPool


@dataclass
class Dispatch:
    """The next render: one clip of ``job``, or refills (``job`` None), one instrument per clip
    and, for refills, the pool band each clip is for (``bands[i]`` goes with ``instruments[i]``)."""

    job: Job | None
    instruments: list[str]
    params: dict[str, Any]
    bands: list[Band] = field(default_factory=list)


def next_dispatch(queue: Sequence[Job], pools: Sequence[ClipPool], params_of: Callable[[str], dict[str, Any]],
                  refill_batch: int) -> Dispatch | None:
    """The next render for one worker: a queued job's next clip, else a refill batch, else None.

    ``pools``: the pools this worker's model fills; ``params_of(instrument)``: the parameters a
    refill for that instrument is rendered with (only equal ones share a batch).
    """
    waiting = [j for j in queue if j.seeds and not j.cancelled]
    if waiting:
        job = min(waiting, key=lambda j: (j.priority, j.id))
        return Dispatch(job, [job.instrument], dict(job.params))
    return refill_dispatch(pools, params_of, refill_batch)


def refill_dispatch(pools: Sequence[ClipPool], params_of: Callable[[str], dict[str, Any]],
                    refill_batch: int) -> Dispatch | None:
    """Up to ``refill_batch`` refill places, dealt one at a time to the pool band missing the most
    (ties: the one holding fewer clips, then the band of the model's default velocity); only pools
    whose parameters equal the neediest's join."""
    places = [(p, b) for p in pools for b in p.bands if b.deficit > 0]
    if not places:
        return None

    def rank(place: tuple[ClipPool, Band], missing: int) -> tuple[int, int, bool]:
        pool, band = place
        return missing, -len(band), band is pool.preferred_band

    neediest = max(places, key=lambda place: rank(place, place[1].deficit))
    params = params_of(neediest[0].instrument)
    group = [place for place in places if params_of(place[0].instrument) == params]
    missing = {id(band): band.deficit for _, band in group}
    chosen: list[tuple[ClipPool, Band]] = []
    while len(chosen) < max(1, refill_batch):
        open_places = [place for place in group if missing[id(place[1])] > 0]
        if not open_places:
            break
        place = max(open_places, key=lambda pl: rank(pl, missing[id(pl[1])]))
        missing[id(place[1])] -= 1
        chosen.append(place)
    return Dispatch(None, [pool.instrument for pool, _ in chosen], dict(params), [band for _, band in chosen])
