"""The one value type for audio that moves between workers, pools and sinks."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np


@dataclass
class Clip:
    """Float32 audio shaped (channels, frames) with its sample rate and where it came from.

    ``meta`` is what ends up in the JSON sidecar (model, checkpoint, instrument, seed, steps,
    finishing, generation time); ``path`` is where the folder sink last put the WAV, if anywhere.
    """

    audio: np.ndarray
    sample_rate: int
    meta: dict[str, Any] = field(default_factory=dict)
    path: Path | None = None
    #: The audio laid out for the output device - (frames, channels) at ``playable_rate`` -
    #: prepared once when the clip enters a pool, so the callback only adds it.
    playable: np.ndarray | None = None
    playable_rate: int = 0

    def __post_init__(self) -> None:
        if self.audio.ndim != 2:
            raise ValueError(f"clip audio must be (channels, frames), got shape {self.audio.shape}")
        if self.audio.dtype != np.float32:
            self.audio = self.audio.astype(np.float32)

    @property
    def channels(self) -> int:
        return int(self.audio.shape[0])

    @property
    def frames(self) -> int:
        return int(self.audio.shape[1])

    @property
    def duration_s(self) -> float:
        return self.frames / self.sample_rate

    @property
    def instrument(self) -> str:
        return str(self.meta.get("instrument", "clip"))
