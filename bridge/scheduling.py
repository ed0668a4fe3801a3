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
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Sequence

from bridge.jobs import Job
from bridge.pools import ClipPool


@dataclass
class Dispatch:
    """The next render: one clip of ``job``, or refills (``job`` None), one instrument per clip."""

    job: Job | None
    instruments: list[str]
    params: dict[str, Any]


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
    """Up to ``refill_batch`` refill places, dealt one at a time to the pool missing the most
    (ties: the one holding fewer clips); only pools whose parameters equal the neediest's join."""
    needy = [p for p in pools if p.deficit > 0]
    if not needy:
        return None

    def rank(p: ClipPool, missing: int) -> tuple[int, int]:
        return missing, -len(p)

    neediest = max(needy, key=lambda p: rank(p, p.deficit))
    params = params_of(neediest.instrument)
    group = [p for p in needy if params_of(p.instrument) == params]
    missing = {p.instrument: p.deficit for p in group}
    instruments: list[str] = []
    while len(instruments) < max(1, refill_batch):
        open_pools = [p for p in group if missing[p.instrument] > 0]
        if not open_pools:
            break
        pool = max(open_pools, key=lambda p: rank(p, missing[p.instrument]))
        missing[pool.instrument] -= 1
        instruments.append(pool.instrument)
    return Dispatch(None, instruments, dict(params))
