"""Musical time: where the beat is, from Ableton Link, MIDI clock or a fixed tempo.

Why one module: everything that works in musical time (quantised starts, lengths in bars,
chunks played from the next bar, the tempo replies) asks one question - "which beat is it at
monotonic time t, and when is beat b?" - and a tempo source answers it with a
:class:`TempoReading`: a straight line between the monotonic clock and the beat, valid until the
tempo changes. The audio mixer already starts a voice on the exact sample of a monotonic time,
so a quantised hit is only a time computed here. The sources are a registry
(:data:`TEMPO_SOURCES`): a new one is one class with ``read``/``set_tempo``/``start``/``close``.

Beat numbers follow Link's convention: beat 0 is where the timeline began, the bar (``quantum``
beats) is aligned across every peer of a Link session, so ``beat % quantum`` (the phase) is the
same on every peer even where their beat numbers differ.
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections import deque
from dataclasses import dataclass
from typing import Any, Protocol

#: Grid names a hit or a playback may be quantised to, in beats (quarter notes); "bar" is the
#: quantum, "off" plays at once (or at the bundle's timetag).
GRIDS: dict[str, float | None] = {"off": None, "1/32": 0.125, "1/16": 0.25, "1/8": 0.5, "1/4": 1.0, "beat": 1.0,
                                  "1/2": 2.0, "bar": 0.0}
GRID_HINT = ", ".join(repr(g) for g in GRIDS)
#: Tempo bounds every source accepts (Link's own are 20-999).
MIN_BPM, MAX_BPM = 20.0, 999.0


class TempoError(ValueError):
    """A tempo request this source cannot honour (the message says why)."""


def is_grid(name: str) -> bool:
    return name in GRIDS


def grid_beats(grid: str, quantum: float) -> float | None:
    """The grid's step in beats (None for "off")."""
    if grid not in GRIDS:
        raise TempoError(f"unknown grid {grid!r} (known: {GRID_HINT})")
    step = GRIDS[grid]
    if step is None:
        return None
    return quantum if step == 0.0 else step


@dataclass(frozen=True)
class TempoReading:
    """The beat as a straight line through (``at``, ``beat``) at ``bpm``: exact until the tempo changes."""

    source: str
    bpm: float
    beat: float  # the beat at monotonic time ``at``
    at: float
    quantum: float = 4.0
    peers: int = 0
    playing: bool = False
    #: False while the source has nothing to say (MIDI clock before its first ticks): the fixed
    #: tempo stands in.
    locked: bool = True

    @property
    def seconds_per_beat(self) -> float:
        return 60.0 / self.bpm

    @property
    def phase(self) -> float:
        """Where in the bar: 0 <= phase < quantum."""
        return self.beat % self.quantum

    def beat_at(self, t: float) -> float:
        return self.beat + (t - self.at) / self.seconds_per_beat

    def time_at(self, beat: float) -> float:
        return self.at + (beat - self.beat) * self.seconds_per_beat

    def next_grid_time(self, grid: str, not_before: float) -> float:
        """The first point of ``grid`` at or after monotonic time ``not_before`` (itself for "off").

        A point that ``not_before`` misses by under a microsecond counts as hit, so a time that
        is already on the grid stays there rather than moving a whole step on rounding noise."""
        step = grid_beats(grid, self.quantum)
        if step is None:
            return not_before
        beat = self.beat_at(not_before)
        target = math.ceil(beat / step - 1e-6 / (self.seconds_per_beat * step)) * step
        return self.time_at(target)

    def seconds_for_bars(self, bars: float) -> float:
        return bars * self.quantum * self.seconds_per_beat

    def standing_in_for(self, source: str) -> "TempoReading":
        """This reading given as ``source``'s while that source has nothing to say (not locked)."""
        return dataclasses.replace(self, source=source, locked=False)

    def as_dict(self) -> dict[str, Any]:
        """For status: the beat and phase now (the line extrapolated from ``at``)."""
        beat = self.beat_at(time.monotonic())
        return {"source": self.source, "bpm": round(self.bpm, 4), "beat": round(beat, 4),
                "phase": round(beat % self.quantum, 4), "quantum": self.quantum, "peers": self.peers,
                "playing": self.playing, "locked": self.locked}


def safe_stream_start(now: float, made_s: float, elapsed_s: float, total_s: float, earliest: float,
                      reading: TempoReading, grid: str, margin: float = 1.1) -> float:
    """When to start playing audio that is still being made, so playback never runs dry.

    ``made_s`` seconds were made in ``elapsed_s``; ``total_s`` will be made in all. At that rate
    (with ``margin`` for a slower rest) the last piece arrives at ``now + (total - made) / rate``;
    playback started at ``s`` needs it at ``s + (total - made)`` (for chunks of equal length),
    so ``s`` must be no earlier than ``arrival - (total - made)``. Faster than real time that is
    already past: the start is then the next point of ``grid`` at or after ``earliest`` (the
    device's lead), else the first such point after the bound.
    """
    rate = made_s / max(1e-3, elapsed_s)
    rest = max(0.0, total_s - made_s)
    last_arrives = now + margin * rest / max(1e-6, rate)
    start = max(earliest, last_arrives - rest)
    return reading.next_grid_time(grid, start)


class Timeline(Protocol):
    """A tempo source: the daemon reads it (cheap, any time on the event loop) and may ask it to
    change tempo."""

    name: str

    def read(self) -> TempoReading: ...

    def set_tempo(self, bpm: float) -> None:
        """Change the tempo from now on (the beat stays continuous); TempoError when not allowed."""

    async def start(self) -> None: ...

    def close(self) -> None: ...

    def status(self) -> dict[str, Any]: ...


def check_bpm(bpm: float) -> float:
    if not (isinstance(bpm, (int, float)) and math.isfinite(bpm) and MIN_BPM <= bpm <= MAX_BPM):
        raise TempoError(f"bpm must be {MIN_BPM:g}-{MAX_BPM:g}, got {bpm!r}")
    return float(bpm)


class FixedTimeline:
    """A steady tempo of its own: beat 0 when the daemon started; a tempo change keeps the beat
    continuous (the line turns at that moment, as Link's does)."""

    name = "fixed"

    def __init__(self, bpm: float, quantum: float, midi_clock: "MidiClock | None" = None) -> None:
        self.quantum = quantum
        self._anchor = (time.monotonic(), 0.0)  # (monotonic time, beat there)
        self.bpm = check_bpm(bpm)

    def read(self) -> TempoReading:
        at, beat = self._anchor
        return TempoReading(self.name, self.bpm, beat, at, self.quantum)

    def set_tempo(self, bpm: float) -> None:
        bpm = check_bpm(bpm)
        now = time.monotonic()
        self._anchor = (now, self.read().beat_at(now))
        self.bpm = bpm

    async def start(self) -> None:
        return None

    def close(self) -> None:
        return None

    def status(self) -> dict[str, Any]:
        return {}


class MidiClock:
    """MIDI clock as it arrives (24 ticks per quarter note, start/stop/continue, song position).

    Ticks are stamped on arrival, so each carries the JACK/ALSA period it arrived in plus any
    wait for the GIL. The tempo is the median, over the window, of the time 48 ticks (two beats)
    took: a late tick spoils two of ~150 spans, not the answer. The beat counts ticks from the
    last start (beat 0) or song position pointer (16ths), and is extrapolated between ticks at
    that tempo.
    """

    SPAN = 48
    WINDOW = 192  # ticks (8 beats, 4 s at 120 BPM) in the tempo estimate

    def __init__(self, window: int = WINDOW) -> None:
        self.times: deque[float] = deque(maxlen=window)
        self.ticks = 0
        self.transport = "stopped"
        #: Beat of the next tick, and (beat, monotonic time) of the last one.
        self._next_beat = 0.0
        self.last: tuple[float, float] | None = None

    def tick(self, t: float) -> None:
        if self.times and t - self.times[-1] > 1.0:  # a pause longer than any sane tick: restart
            self.times.clear()
        self.times.append(t)
        self.ticks += 1
        self.last = (self._next_beat, t)
        self._next_beat += 1 / 24

    def start(self) -> None:
        """MIDI Start: the next tick is beat 0 (the tempo estimate goes on: senders tick while
        stopped too, and a real pause is caught by the 1 s gap rule in ``tick``)."""
        self.transport = "playing"
        self._next_beat = 0.0

    def resume(self) -> None:
        """MIDI Continue: the next tick goes on from where the song position is."""
        self.transport = "playing"

    def stop(self) -> None:
        self.transport = "stopped"

    def song_position(self, sixteenths: int) -> None:
        self._next_beat = sixteenths / 4

    def bpm(self) -> float | None:
        times = list(self.times)
        spans = sorted(times[i + self.SPAN] - times[i] for i in range(len(times) - self.SPAN))
        if len(spans) < 24:
            return None
        seconds_per_tick = spans[len(spans) // 2] / self.SPAN
        return 60.0 / (24 * seconds_per_tick) if seconds_per_tick > 0 else None


class MidiClockTimeline:
    """The beat from a MIDI clock sender (a DAW, a drum machine). Its tempo belongs to the sender,
    so ``set_tempo`` is refused; before ticks arrive the fixed tempo stands in (``locked`` false)."""

    name = "midi"

    def __init__(self, bpm: float, quantum: float, midi_clock: MidiClock | None = None) -> None:
        self.quantum = quantum
        self.clock = midi_clock or MidiClock()
        self.fallback = FixedTimeline(bpm, quantum)

    def read(self) -> TempoReading:
        bpm, last = self.clock.bpm(), self.clock.last
        if last is None:  # no tick yet: the stand-in's own beat
            return self.fallback.read().standing_in_for(self.name)
        beat, at = last
        # the clock's beat always; its tempo once 3 beats of ticks give one (the stand-in's till then)
        return TempoReading(self.name, bpm or self.fallback.bpm, beat, at, self.quantum,
                            playing=self.clock.transport == "playing", locked=bpm is not None)

    def set_tempo(self, bpm: float) -> None:
        raise TempoError("the tempo follows MIDI clock ([tempo] source = \"midi\"): change it on the clock's sender")

    async def start(self) -> None:
        return None

    def close(self) -> None:
        return None

    def status(self) -> dict[str, Any]:
        return {"clock_ticks": self.clock.ticks}


#: [tempo] source -> the timeline class ("module:Class" for those with optional dependencies).
TEMPO_SOURCES: dict[str, str] = {
    "fixed": "bridge.tempo:FixedTimeline",
    "midi": "bridge.tempo:MidiClockTimeline",
    "link": "bridge.link_timeline:LinkTimeline",
}


def make_timeline(source: str, bpm: float, quantum: float, midi_clock: MidiClock | None = None) -> Timeline:
    """The configured tempo source (not started: ``await timeline.start()`` on the event loop)."""
    import importlib

    try:
        module, _, cls = TEMPO_SOURCES[source].partition(":")
    except KeyError:
        raise TempoError(f"unknown tempo source {source!r} (known: {', '.join(TEMPO_SOURCES)})") from None
    return getattr(importlib.import_module(module), cls)(bpm, quantum, midi_clock)
