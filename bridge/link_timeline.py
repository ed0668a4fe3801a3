"""Ableton Link as a tempo source (aalink): Live, Bitwig, Max, Pd, phones on one beat.

Why aalink: a maintained asyncio binding of Ableton's own Link library (GPL-2.0+, like Link);
Link does discovery, tempo and phase agreement itself, on its own threads. This module only reads
the session state and turns Link's clock into the daemon's.

Clocks: Link's clock on Linux is CLOCK_MONOTONIC_RAW (measured: ``link.time`` equals
``clock_gettime(CLOCK_MONOTONIC_RAW)`` to within 10 us), the mixer's is ``time.monotonic()``
(CLOCK_MONOTONIC, slewed by NTP by at most 500 ppm). A reading takes the offset between the two
at that moment, so a beat a bar ahead moves by at most 1 ms even at the largest slew.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

from bridge.tempo import FixedTimeline, MidiClock, TempoReading, check_bpm

log = logging.getLogger(__name__)

#: Wait between creating the Link object and enabling it. Without it a joining peer now and then
#: imposes its start tempo on the session instead of adopting the session's (aalink issue #7:
#: 30 % of trials; 500 ms cured it, 200 ms did not).
JOIN_DELAY_S = 0.5


#: Read Link's beat between two clock readings at most this far apart, or read again: the first
#: call of a run (pybind11 converting its first timedelta) took milliseconds, and a beat paired
#: with the middle of such a bracket was off by as much (measured: the first hit of a test run
#: 1.0-1.4 ms off the beat, every later one within 0.2 ms).
BRACKET_S = 100e-6


class LinkTimeline:
    """Joins the Link session on start; follows its tempo and phase; changes its tempo on request."""

    name = "link"

    def __init__(self, bpm: float, quantum: float, midi_clock: MidiClock | None = None) -> None:
        self.quantum = quantum
        self.link: Any = None
        self.state = "off"
        self._enabling: asyncio.TimerHandle | None = None
        #: The beat until Link is enabled (the join wait), or for good if it cannot start: one
        #: steady line, so quantised starts and tempo/bar still have a grid. Its tempo is the
        #: start tempo Link is created with.
        self.fallback = FixedTimeline(check_bpm(bpm), quantum)

    async def start(self) -> None:
        """Create the Link peer and enable it JOIN_DELAY_S later, without holding up the daemon's
        start (its disabled timeline is the beat meanwhile)."""
        from aalink import Link

        self.link = Link(self.fallback.bpm)
        self.link.quantum = self.quantum
        self.link.start_stop_sync_enabled = True
        self._enabling = asyncio.get_running_loop().call_later(JOIN_DELAY_S, self._enable)

    def _enable(self) -> None:
        self._enabling = None
        if self.link is None:
            return
        self.link.enabled = True
        self.state = "enabled"
        log.info("Ableton Link enabled (start tempo %.2f BPM, quantum %g)", self.fallback.bpm, self.quantum)

    def read(self) -> TempoReading:
        link = self.link
        if link is None:
            return self.fallback.read().standing_in_for(self.name)
        for _ in range(3):  # a reading bracketed tightly: the beat is that of the bracket's middle
            before = link.time.total_seconds()
            beat = link.beat
            after = link.time.total_seconds()
            if after - before < BRACKET_S:
                break
        # Link time is CLOCK_MONOTONIC_RAW: move it onto time.monotonic() by the offset right now
        offset = time.monotonic() - time.clock_gettime(time.CLOCK_MONOTONIC_RAW)
        return TempoReading(self.name, float(link.tempo), float(beat), (before + after) / 2 + offset, self.quantum,
                            peers=int(link.num_peers), playing=bool(link.playing))

    def set_tempo(self, bpm: float) -> None:
        bpm = check_bpm(bpm)
        if self.link is not None:
            self.link.tempo = bpm
        else:
            self.fallback.set_tempo(bpm)

    def close(self) -> None:
        if self._enabling is not None:
            self._enabling.cancel()
            self._enabling = None
        if self.link is not None:
            self.link.enabled = False
            self.link = None
        self.state = "off"

    def status(self) -> dict[str, Any]:
        return {"link": self.state}
