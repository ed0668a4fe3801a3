"""Tempo replies, and the clients that asked to hear the tempo on every bar.

Why a task of its own: a patch that shows the beat (or flashes on the downbeat) should not poll.
``/genbridge/tempo/listen`` registers the client's reply; this task sends ``/genbridge/tempo/bar``
on each downbeat of the tempo source, for as many bars as asked. It knows no transport: a
listener is the reply callable the transport gave (the OSC transport gives one per client socket,
so the same socket's ``listen 0`` finds its registration).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import OrderedDict
from typing import Any, Callable

from bridge.protocol import REPLIES
from bridge.tempo import TempoReading, Timeline

log = logging.getLogger(__name__)

ReplyFn = Callable[[str, list[Any]], None]
#: The most the task sleeps before it reads the tempo again (a tempo change moves the next bar).
RECHECK_S = 0.25


def tempo_args(request_id: int | str, reading: TempoReading, beat: float | None = None) -> list[Any]:
    """A tempo reply's arguments (bridge.protocol's _TEMPO_ARGS), at ``beat`` or now."""
    if beat is None:
        beat = reading.beat_at(time.monotonic())
    return [request_id, round(reading.bpm, 4), round(beat, 4), round(beat % reading.quantum, 4),
            float(reading.quantum), int(reading.peers), int(reading.playing), reading.source]


def send_tempo(reply: ReplyFn, name: str, request_id: int | str, reading: TempoReading,
               beat: float | None = None) -> None:
    reply(REPLIES[name].address, tempo_args(request_id, reading, beat))


class TempoListeners:
    """Who hears ``tempo/bar``, and the task that tells them."""

    def __init__(self, timeline: Timeline, limit: int = 64) -> None:
        self.timeline = timeline
        self.limit = limit
        #: reply -> [request id, bars left]
        self.listeners: OrderedDict[ReplyFn, list[Any]] = OrderedDict()
        self.sent = 0
        self._task: asyncio.Task[None] | None = None

    def listen(self, reply: ReplyFn, request_id: int | str, bars: int) -> None:
        """Send the next ``bars`` downbeats to ``reply``; 0 stops it."""
        self.listeners.pop(reply, None)
        if bars <= 0:
            return
        self.listeners[reply] = [request_id, bars]
        while len(self.listeners) > self.limit:  # the oldest registration goes first
            self.listeners.popitem(last=False)

    def forget(self, reply: ReplyFn) -> None:
        """A client gone for good (a closed web page): its registration goes with it."""
        self.listeners.pop(reply, None)

    def start(self) -> None:
        self._task = asyncio.ensure_future(self._run())

    def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            self._task = None

    async def _run(self) -> None:
        while True:
            try:
                await self._next_bar()
            except asyncio.CancelledError:
                raise
            except Exception:  # a source that fails one reading must not end the bars for good
                log.exception("tempo listeners: reading the tempo failed")
                await asyncio.sleep(RECHECK_S)

    async def _next_bar(self) -> None:
        """Sleep to the next downbeat (or a recheck, RECHECK_S) and tell the listeners on it."""
        reading = self.timeline.read()
        now = time.monotonic()
        bar = reading.next_grid_time("bar", now + 0.001)
        if bar - now > RECHECK_S:
            await asyncio.sleep(RECHECK_S)
            return
        await asyncio.sleep(max(0.0, bar - time.monotonic()))
        self._tell(reading, reading.beat_at(bar))

    def _tell(self, reading: TempoReading, beat: float) -> None:
        for reply, entry in list(self.listeners.items()):
            try:
                send_tempo(reply, "tempo/bar", entry[0], reading, round(beat))
            except Exception:  # a transport that fails one client must not stop the others
                log.exception("tempo/bar to a listener failed")
            self.sent += 1
            entry[1] -= 1
            if entry[1] <= 0:
                self.listeners.pop(reply, None)

    def status(self) -> dict[str, Any]:
        return {"listeners": len(self.listeners), "bars_sent": self.sent}
