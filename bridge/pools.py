"""Per-instrument pools of fresh clips: why a pad hit can sound now.

Generating a one-shot takes 0.1-8 s on a 2-core CPU; a trigger must answer within one audio
buffer. So each instrument keeps ``target`` clips that have never been played; a trigger takes
one, a worker refills in the background. The pool also remembers the last played clip, which
the "replay" dry policy hands out (flagged not fresh) when drumming outruns generation.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

from bridge.clip import Clip


@dataclass
class PoolStats:
    served_fresh: int = 0
    served_replay: int = 0
    served_waited: int = 0
    refilled: int = 0
    restored: int = 0


@dataclass
class ClipPool:
    instrument: str
    target: int
    clips: deque[Clip] = field(default_factory=deque)
    last_played: Clip | None = None
    in_flight: int = 0
    stats: PoolStats = field(default_factory=PoolStats)

    def __len__(self) -> int:
        return len(self.clips)

    @property
    def deficit(self) -> int:
        """Clips still to ask for, counting those already being generated."""
        return max(0, self.target - len(self.clips) - self.in_flight)

    def add(self, clip: Clip) -> None:
        self.clips.append(clip)
        self.stats.refilled += 1

    def take_fresh(self) -> Clip | None:
        """Oldest never-played clip, or None when the pool is dry. Each clip is handed out once."""
        if not self.clips:
            return None
        clip = self.clips.popleft()
        self.last_played = clip
        self.stats.served_fresh += 1
        return clip

    def take_replay(self) -> Clip | None:
        if self.last_played is not None:
            self.stats.served_replay += 1
        return self.last_played

    def to_json(self) -> dict[str, int]:
        return {
            "ready": len(self.clips),
            "target": self.target,
            "generating": self.in_flight,
            "served_fresh": self.stats.served_fresh,
            "served_replay": self.stats.served_replay,
            "served_waited": self.stats.served_waited,
            "refilled": self.stats.refilled,
            "restored": self.stats.restored,
        }
