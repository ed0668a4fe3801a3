"""MusicGen continuation in chunks: seamless, equal to the whole, cancellable, reproducible."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from models.continuation import ContinuationCancelled, ContinuationError, ContinuationSettings, continue_audio
from models.musicgen import load_musicgen

AUDIOCRAFT = Path(__file__).resolve().parent / "fixtures" / "musicgen" / "audiocraft"


@pytest.fixture(scope="module")
def loaded():
    return load_musicgen(AUDIOCRAFT)


def _prompt(rate: int = 44100, seconds: float = 2.0) -> np.ndarray:
    t = np.arange(int(rate * seconds)) / rate
    left = 0.3 * np.sin(2 * np.pi * 220 * t) * (1 + np.sin(2 * np.pi * 2 * t)) / 2
    return np.stack([left, 0.5 * left]).astype(np.float32)  # stereo at 44.1 kHz: resampled and downmixed


def test_chunks_join_into_the_whole_and_match_a_plain_decode(loaded) -> None:
    chunks: list[tuple[int, np.ndarray]] = []
    progress: list[float] = []
    settings = ContinuationSettings(seconds=3.0, prompt_seconds=1.0, seed=5, chunk_seconds=1.0, top_k=8)
    codes: dict = {}
    whole = continue_audio(loaded, _prompt(), 44100, settings, on_chunk=lambda i, c: chunks.append((i, c)),
                           on_progress=progress.append, on_codes=lambda c, p: codes.update(c=c, p=p))
    assert whole.shape == (1, 3 * 32000)
    assert [i for i, _ in chunks] == list(range(len(chunks))) and len(chunks) >= 2
    assert np.array_equal(np.concatenate([c for _, c in chunks], axis=1), whole)
    assert progress == sorted(progress) and progress[-1] == 1.0
    # seamless: the chunks, each decoded from a window, equal one decode of all the codes
    with torch.no_grad():
        full = loaded.model.audio_encoder.decode(codes["c"][None, None], [None])[0][0].numpy()
    hop = 640
    assert float(np.abs(full[:, codes["p"] * hop:] - whole).max()) < 1e-4
    assert float(np.sqrt(np.mean(whole ** 2))) > 1e-4, "not silence"
    again = continue_audio(loaded, _prompt(), 44100, settings)
    assert np.array_equal(again, whole), "same seed, same continuation"
    other = continue_audio(loaded, _prompt(), 44100, ContinuationSettings(seconds=3.0, prompt_seconds=1.0, seed=6,
                                                                          top_k=8))
    assert not np.array_equal(other, whole)


def test_cancel_stops_within_one_chunk(loaded) -> None:
    chunks: list[int] = []
    steps = {"n": 0}

    def should_stop() -> bool:
        steps["n"] += 1
        return bool(chunks)  # cancel as soon as the first chunk is out

    settings = ContinuationSettings(seconds=20.0, prompt_seconds=1.0, chunk_seconds=1.0)
    with pytest.raises(ContinuationCancelled):
        continue_audio(loaded, _prompt(), 44100, settings,
                       on_chunk=lambda i, c: chunks.append(i), should_stop=should_stop)
    assert chunks == [0]
    assert steps["n"] < 50 + 2 * 10 + 10, f"stopped within one chunk of token steps ({steps['n']})"


def test_a_description_without_a_text_encoder_is_a_clear_error(loaded) -> None:
    with pytest.raises(ContinuationError, match="text encoder is not available offline"):
        continue_audio(loaded, _prompt(), 44100, ContinuationSettings(seconds=1.0, description="funky drums"))


def test_cli_continue_writes_takes(tmp_path) -> None:
    import json
    import subprocess

    import soundfile as sf
    from helpers import GENBRIDGE, REPO

    sf.write(tmp_path / "prompt.wav", _prompt().T, 44100)
    run = subprocess.run([*GENBRIDGE, "continue", str(tmp_path / "prompt.wav"), "--model", str(AUDIOCRAFT),
                          "--seconds", "1.5", "--takes", "2", "--seed", "3", "--threads", "1",
                          "-o", str(tmp_path / "out")],
                         cwd=REPO, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr
    takes = sorted((tmp_path / "out").glob("*.wav"))
    assert len(takes) == 2
    a, b = (sf.read(p, dtype="float32")[0] for p in takes)
    assert len(a) == len(b) == 48000 and not np.array_equal(a, b)
    assert json.loads(takes[0].with_suffix(".json").read_text())["seed"] == 3
    missing = subprocess.run([*GENBRIDGE, "continue", str(tmp_path / "prompt.wav"), "--model", str(tmp_path / "nope"),
                              "--seconds", "1", "-o", str(tmp_path / "o2")], cwd=REPO, capture_output=True, text=True,
                             timeout=300)
    assert missing.returncode == 1 and "huggingface-cli download" in missing.stderr


def test_the_prompt_is_prefilled_once_and_a_static_cache_continues_the_same(loaded) -> None:
    """transformers' MusicGen generate ran the prompt's prefill twice (models.continuation.prefill_once):
    once is the same continuation for less wait; a static KV cache (fixed shapes for a GPU's
    compiled step) gives the same tokens as the dynamic one."""
    settings = ContinuationSettings(seconds=1.0, prompt_seconds=1.0, seed=9, top_k=8)
    prefills: list[int] = []

    def count(module, args, kwargs) -> None:
        hidden = args[0] if args else kwargs["hidden_states"]
        if hidden.shape[1] > 1:
            prefills.append(int(hidden.shape[1]))

    hook = loaded.model.decoder.model.decoder.layers[0].register_forward_pre_hook(count, with_kwargs=True)
    try:
        dynamic = continue_audio(loaded, _prompt(), 44100, settings)
        assert len(prefills) == 1, f"prefill passes over the prompt: {prefills}"
        static = continue_audio(loaded, _prompt(), 44100, ContinuationSettings(**{**settings.__dict__,
                                                                                 "kv_cache": "static"}))
    finally:
        hook.remove()
    assert np.array_equal(static, dynamic)
    with pytest.raises(ContinuationError, match="kv_cache"):
        continue_audio(loaded, _prompt(), 44100, ContinuationSettings(seconds=1.0, kv_cache="paged"))
