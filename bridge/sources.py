"""Audio that a request names as its input: a file inside the shared folder, or a recent clip.

Why one module: every path that arrives in a network message is a way out of the folders the
daemon may touch. Resolving it (symlinks included) and checking that it stays inside the shared
folder happens here, once, before anything is opened; and a source clip is brought to the
shape a model wants (rate, channels, length) the same way for every request that takes one.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

#: A source for a one-shot variation is a short clip; anything bigger is refused unread.
MAX_SOURCE_BYTES = 64 * 1024 * 1024


class SourceError(ValueError):
    """The named source cannot be used; the message is meant for the musician."""


def resolve_inside(root: Path, name: str) -> Path:
    """``name`` (absolute, or relative to ``root``) as a real path inside ``root``.

    Resolves ``..`` and symlinks first, so neither can lead out; the file must exist.
    """
    if not name or "\x00" in name:
        raise SourceError("empty or invalid path")
    root = Path(root).resolve()
    candidate = Path(name).expanduser()
    if not candidate.is_absolute():
        candidate = root / candidate
    try:
        real = candidate.resolve(strict=True)
    except (OSError, RuntimeError):
        raise SourceError(f"no such file in the shared folder: {name}") from None
    if not real.is_relative_to(root):
        raise SourceError(f"{name} is outside the shared folder ({root}); only files inside it can be used")
    if not real.is_file():
        raise SourceError(f"{name} is not a file")
    return real


def fit_source(audio: np.ndarray, rate: int, *, sample_rate: int, channels: int, length: int) -> np.ndarray:
    """(channels, frames) at ``rate`` -> (channels, length) float32 at ``sample_rate``: resampled
    with soxr, downmixed or duplicated, cropped or zero-padded at the end."""
    import soxr

    if audio.ndim == 1:
        audio = audio[None, :]
    if rate != sample_rate and audio.shape[1]:
        audio = soxr.resample(np.ascontiguousarray(audio.T), rate, sample_rate, quality="HQ").T
    if channels == 1:
        audio = audio.mean(axis=0, keepdims=True)
    elif audio.shape[0] == 1:
        audio = np.repeat(audio, channels, axis=0)
    else:
        audio = audio[:channels]
    out = np.zeros((channels, length), dtype=np.float32)
    n = min(length, audio.shape[1])
    out[:, :n] = audio[:, :n]
    return out


def read_source(path: Path, *, sample_rate: int, channels: int, length: int) -> np.ndarray:
    """Read an audio file (already checked by :func:`resolve_inside`) in the model's shape."""
    import soundfile as sf

    if path.stat().st_size > MAX_SOURCE_BYTES:
        raise SourceError(f"{path.name} is larger than {MAX_SOURCE_BYTES // 2**20} MB")
    try:
        data, rate = sf.read(str(path), dtype="float32", always_2d=True, frames=length * 8)
    except (RuntimeError, sf.LibsndfileError) as exc:
        raise SourceError(f"cannot read {path.name} as audio: {exc}") from None
    if not len(data):  # a header and no audio: a variation of silence is not what was asked for
        raise SourceError(f"cannot read {path} as audio: it holds no frames")
    return fit_source(data.T, rate, sample_rate=sample_rate, channels=channels, length=length)


def read_tail(path: Path, seconds: float) -> tuple[np.ndarray, int]:
    """The last ``seconds`` of an audio file as (channels, frames) float32 and its rate: a
    prompt never needs more, and a long file is not read whole."""
    import soundfile as sf

    try:
        info = sf.info(str(path))
        start = max(0, info.frames - int(round(seconds * info.samplerate)))
        data, rate = sf.read(str(path), dtype="float32", always_2d=True, start=start)
    except (RuntimeError, sf.LibsndfileError) as exc:
        raise SourceError(f"cannot read {path.name} as audio: {exc}") from None
    if not len(data):
        raise SourceError(f"cannot read {path} as audio: it holds no frames")
    return np.ascontiguousarray(data.T), int(rate)
