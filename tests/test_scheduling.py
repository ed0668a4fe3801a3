"""The scheduler as plain code: who a model worker renders for next."""

from __future__ import annotations

from collections import deque

from bridge.jobs import Job, Priority
from bridge.pools import ClipPool
from bridge.scheduling import next_dispatch


def job(id: int, priority: Priority, instrument: str = "kick", seeds: int = 1) -> Job:
    return Job(id, priority, instrument, deque(range(seeds)), {"steps": 4}, seeds)


def pool(instrument: str, target: int, ready: int = 0, in_flight: int = 0) -> ClipPool:
    p = ClipPool(instrument, target)
    p.bands[0].clips.extend([object()] * ready)  # type: ignore[list-item]
    p.bands[0].in_flight = in_flight
    return p


def params(instrument: str) -> dict:
    return {"steps": 8 if instrument != "tom" else 20, "sampler": ""}


def test_a_waiting_play_goes_before_generate_and_generate_before_refills() -> None:
    pools = [pool("kick", 4)]
    queue = [job(2, Priority.GENERATE, seeds=3), job(5, Priority.PLAY_WAIT, "snare")]
    first = next_dispatch(queue, pools, params, 4)
    assert first is not None and first.job is queue[1] and first.instruments == ["snare"]
    queue[1].seeds.clear()
    second = next_dispatch(queue, pools, params, 4)
    assert second is not None and second.job is queue[0] and second.params == {"steps": 4}
    assert len(second.instruments) == 1, "one clip per dispatch: a long generate cannot starve a play"


def test_oldest_generate_first_and_cancelled_jobs_are_skipped() -> None:
    old, new = job(3, Priority.GENERATE), job(7, Priority.GENERATE)
    assert next_dispatch([new, old], [], params, 4).job is old
    old.cancelled = True
    assert next_dispatch([new, old], [], params, 4).job is new


def test_refills_are_dealt_to_the_pool_missing_most_up_to_the_batch() -> None:
    pools = [pool("kick", 4, ready=3), pool("snare", 4), pool("hat", 4, ready=1)]
    d = next_dispatch([], pools, params, 4)
    assert d is not None and d.job is None
    # snare misses 4, hat 3, kick 1: snare, then the tie at 3 goes to the pool holding fewer clips
    # (snare), then hat, then the tie at 2 again to snare
    assert d.instruments == ["snare", "snare", "hat", "snare"], d.instruments
    assert d.params == {"steps": 8, "sampler": ""}
    # places already being made count: a full pool with clips in flight asks for nothing
    assert next_dispatch([], [pool("kick", 2, ready=1, in_flight=1)], params, 4) is None


def test_only_pools_with_the_same_parameters_share_a_batch() -> None:
    pools = [pool("tom", 4), pool("kick", 2)]
    d = next_dispatch([], pools, params, 8)
    assert d is not None and d.instruments == ["tom"] * 4 and d.params["steps"] == 20


def test_batch_of_one_and_nothing_to_do() -> None:
    assert next_dispatch([], [pool("kick", 3)], params, 1).instruments == ["kick"]
    assert next_dispatch([], [pool("kick", 3, ready=3)], params, 4) is None
    assert next_dispatch([job(1, Priority.GENERATE, seeds=0)], [], params, 4) is None
