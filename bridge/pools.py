"""Per-instrument pools of fresh clips: why a pad hit can sound now.

Generating a one-shot takes 0.1-8 s on a 2-core CPU; a trigger must answer within one audio
buffer. So each instrument keeps ``target`` clips that have never been played; a trigger takes
one, a worker refills in the background. The pool also remembers the last played clip, which
the "replay" dry policy hands out (flagged not fresh) when drumming outruns generation.

Velocity bands: when the instrument's model is conditioned on velocity (a soft hit is a darker,
shorter sound, not only a quieter one), a clip made for a hard hit is the wrong sound for a soft
one, so the pool is split into bands - clips made at a few velocities (``engine.velocity_bands``)
- and a hit takes from the band nearest its velocity. Each band keeps ``target`` clips. A hit
whose band is dry takes a fresh clip from the nearest band that has one (fresh beats exact; the
mixer still plays it at the hit's gain) before the dry policy applies. An instrument whose model
ignores velocity has one band (velocity None), which is the pool as it always was.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from typing import Any, Sequence

from bridge.clip import Clip


@dataclass
class PoolStats:
    served_fresh: int = 0
    served_replay: int = 0
    served_waited: int = 0
    #: Fresh clips taken from another band than the hit's (its own was dry).
    served_other_band: int = 0
    refilled: int = 0
    restored: int = 0


@dataclass(eq=False)
class Band:
    """The clips of one instrument made at one velocity (0-1; None: the model's own default)."""

    velocity: float | None
    target: int
    clips: deque[Clip] = field(default_factory=deque)
    #: Refills asked for this band and not yet in it.
    in_flight: int = 0

    def __len__(self) -> int:
        return len(self.clips)

    @property
    def deficit(self) -> int:
        """Clips still to ask for, counting those already being generated."""
        return max(0, self.target - len(self.clips) - self.in_flight)

    def to_json(self) -> dict[str, Any]:
        """As status shows it: the velocity as MIDI 0-127 (what the config names), None when unbanded."""
        return {"velocity": None if self.velocity is None else round(self.velocity * 127),
                "ready": len(self.clips), "target": self.target, "in_flight": self.in_flight}


def clip_velocity(clip: Clip) -> float | None:
    """The velocity (0-1) a clip was made at, as its sidecar says; None when it says none."""
    return _velocity_of(clip.meta)


def _velocity_of(meta: dict[str, Any]) -> float | None:
    v = meta.get("velocity")
    return float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else None


class ClipPool:
    """One instrument's never-played clips, in one band or several (see the module doc).

    ``target`` is per band; the pool's ``target``, ``len`` and ``in_flight`` are the sums over its
    bands (what status has always reported per instrument). ``preferred`` is the velocity a hit
    or a clip without one counts as - the model's default - whose band goes first when bands are
    equally short (at start-up, when all are empty).
    """

    def __init__(self, instrument: str, target: int, velocities: Sequence[float | None] = (None,),
                 preferred: float | None = None) -> None:
        self.instrument = instrument
        self.per_band = target
        self.bands: list[Band] = []
        self.preferred: float | None = None
        self.last_played: Clip | None = None
        self.stats = PoolStats()
        self._borrowed = False  # the last take_fresh came from another band than the hit's
        self.set_bands(velocities, preferred)

    # ------------------------------------------------------------------ shape

    @property
    def velocities(self) -> list[float | None]:
        return [b.velocity for b in self.bands]

    @property
    def banded(self) -> bool:
        return len(self.bands) > 1

    def set_bands(self, velocities: Sequence[float | None], preferred: float | None = None) -> None:
        """Lay the pool out in these bands (one per velocity, in order); the clips it holds move to
        the band nearest the velocity they were made at. The same layout again changes nothing
        (a restarted worker keeps its places in flight)."""
        velocities = list(velocities) or [None]
        self.preferred = preferred
        if velocities == self.velocities:
            return
        clips = [c for b in self.bands for c in b.clips]
        self.bands = [Band(v, self.per_band) for v in velocities]
        for clip in clips:
            self.band_for(clip_velocity(clip)).clips.append(clip)

    def band_for(self, velocity: float | None) -> Band:
        """The band a hit (or a clip) at ``velocity`` belongs to: the nearest; a tie goes to the
        harder band. None counts as ``preferred`` (the model's default velocity)."""
        return self._by_distance(velocity)[0]

    def _by_distance(self, velocity: float | None) -> list[Band]:
        """The bands nearest ``velocity`` first (ties: the harder first). None: ``preferred``, or
        a full-velocity hit when no default is known (what ``drum/play`` without one is)."""
        if not self.banded:
            return list(self.bands)
        v = velocity if velocity is not None else self.preferred if self.preferred is not None else 1.0
        return sorted(self.bands, key=lambda b: (abs(float(b.velocity or 0.0) - v), -float(b.velocity or 0.0)))

    @property
    def preferred_band(self) -> Band:
        return self.band_for(None)

    # ------------------------------------------------------------------ sums (what status reports)

    def __len__(self) -> int:
        return sum(len(b) for b in self.bands)

    @property
    def target(self) -> int:
        return sum(b.target for b in self.bands)

    @property
    def in_flight(self) -> int:
        return sum(b.in_flight for b in self.bands)

    @property
    def deficit(self) -> int:
        return sum(b.deficit for b in self.bands)

    # ------------------------------------------------------------------ clips in and out

    def add(self, clip: Clip, band: Band | None = None) -> None:
        """A new clip: into ``band`` (the one its refill was asked for) while that is still one of
        this pool's, else into the band of the velocity it was made at."""
        into = band if band is not None and any(b is band for b in self.bands) else self.band_for(clip_velocity(clip))
        into.clips.append(clip)
        self.stats.refilled += 1

    def has_room_for(self, meta: dict[str, Any]) -> bool:
        """Whether a clip with this sidecar fits its band (restoring an earlier run's clips)."""
        band = self.band_for(_velocity_of(meta))
        return len(band) < band.target

    def restore(self, clip: Clip) -> None:
        self.band_for(clip_velocity(clip)).clips.append(clip)
        self.stats.restored += 1

    def take_fresh(self, velocity: float | None = None) -> Clip | None:
        """The oldest never-played clip of the band nearest ``velocity``; that band dry, of the
        nearest band that has one; None when every band is dry. Each clip is handed out once."""
        for k, band in enumerate(self._by_distance(velocity)):
            if band.clips:
                clip = band.clips.popleft()
                self.last_played = clip
                self.stats.served_fresh += 1
                self.stats.served_other_band += k > 0
                self._borrowed = k > 0
                return clip
        return None

    def put_back(self, clip: Clip, before: Clip | None) -> None:
        """Undo :meth:`take_fresh` (the folder refused to publish it): unheard, it goes back to the
        front of its band, and ``before`` is the last played clip again."""
        self.band_for(clip_velocity(clip)).clips.appendleft(clip)
        self.stats.served_fresh -= 1
        self.stats.served_other_band -= self._borrowed
        self._borrowed = False
        self.last_played = before

    def take_replay(self) -> Clip | None:
        if self.last_played is not None:
            self.stats.served_replay += 1
        return self.last_played

    def clear(self) -> None:
        """Forget every clip (a kit switch: they are the old model's sound)."""
        for band in self.bands:
            band.clips.clear()
        self.last_played = None

    def to_json(self) -> dict[str, Any]:
        return {
            "ready": len(self),
            "target": self.target,
            "generating": self.in_flight,
            "served_fresh": self.stats.served_fresh,
            "served_replay": self.stats.served_replay,
            "served_waited": self.stats.served_waited,
            "served_other_band": self.stats.served_other_band,
            "refilled": self.stats.refilled,
            "restored": self.stats.restored,
            "bands": [b.to_json() for b in self.bands],
        }
