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


def test_chunks_decoded_before_a_stop_are_not_handed_out_after_it(loaded) -> None:
    """On a loaded machine the decode thread lags and then several chunks finish between two
    token steps: a stream cancelled after the first of them must not play the others."""
    from models.musicgen_loop import GenerationCancelled, LoopSettings, Timings, _Chunker

    k = loaded.model.config.decoder.num_codebooks
    codes = [torch.randint(0, loaded.model.config.audio_encoder.codebook_size, (k, 60))]
    settings = LoopSettings(frames=60, seeds=[0], chunk_frames=20, first_chunk_frames=20)

    def two_pending(stop_after: int | None) -> tuple[_Chunker, list[int]]:
        out: list[int] = []
        stop = None if stop_after is None else (lambda: len(out) >= stop_after)
        chunker = _Chunker(loaded, codes, 0, 60, settings, lambda take, i, c: out.append(i), Timings(), 0.0,
                           background=False, should_stop=stop)
        chunker.emit(20)
        chunker.emit(40)  # both decoded, neither handed out yet
        return chunker, out

    chunker, out = two_pending(None)
    chunker.deliver(block=False)
    assert out == [0, 1]
    chunker, out = two_pending(1)  # the stop is asked while the first chunk goes out
    with pytest.raises(GenerationCancelled):
        chunker.deliver(block=False)
    assert out == [0], "nothing after the stop"


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


def _teacher_forced(lm, tokens: torch.Tensor, memory, mask, prefill: int) -> torch.Tensor:
    """The lean LM's logits for positions prefill.. of ``tokens``: one prefill, then one step each."""
    with torch.no_grad():
        lm.start(tokens.shape[0], tokens.shape[2], memory=memory, memory_mask=mask)
        outs = [lm.step(tokens[:, :, :prefill])]
        outs += [lm.step(tokens[:, :, p: p + 1]) for p in range(prefill, tokens.shape[2])]
    return torch.stack(outs, 2)


def test_the_lean_lm_computes_transformers_logits(tmp_path: Path) -> None:
    """The token loop's LM (fused weights, a fixed cache, cross-attention only for rows with text)
    gives transformers' own logits in fp32, for a row with a description and rows without; the
    smaller weight formats agree on the most likely token almost always."""
    from musicgen_models import build_tiny_musicgen

    from models.continuation import lean_lm, text_memory

    loaded = load_musicgen(build_tiny_musicgen(tmp_path / "tiny"))
    model = loaded.model
    torch.manual_seed(1)
    tokens = torch.randint(0, 16, (3, 4, 24))
    tokens[:, :, 0] = 16
    memory, mask = text_memory(loaded, "funky drums")
    rows_memory = torch.cat([memory, torch.zeros(2, *memory.shape[1:])])
    rows_mask = torch.cat([mask, torch.zeros(2, mask.shape[1], dtype=mask.dtype)])
    with torch.no_grad():
        reference = model.decoder(input_ids=tokens.reshape(12, 24), encoder_hidden_states=rows_memory,
                                  encoder_attention_mask=rows_mask).logits.reshape(3, 4, 24, -1)[:, :, 7:]
    got = _teacher_forced(lean_lm(loaded, "fp32"), tokens, memory, mask, 8)
    assert float((got - reference).abs().max()) < 1e-4
    assert not torch.allclose(got[0], got[1], atol=1e-3), "the description changes the first row"
    for fmt in ("bf16", "int8", "int8w", "int4"):
        got = _teacher_forced(lean_lm(loaded, fmt), tokens, memory, mask, 8)
        agree = float((got.argmax(-1) == reference.argmax(-1)).float().mean())
        assert agree >= (0.85 if fmt == "int4" else 0.95), f"{fmt}: top-1 agreement {agree:.3f}"


def test_two_takes_of_one_description_are_two_pieces_of_the_asked_length(tmp_path: Path) -> None:
    from musicgen_models import build_tiny_musicgen

    from models.continuation import generate

    loaded = load_musicgen(build_tiny_musicgen(tmp_path / "tiny"))
    chunks: dict[int, list[np.ndarray]] = {0: [], 1: []}
    result = generate(loaded, ContinuationSettings(seconds=2.0, description="calm piano", top_k=8), seeds=[7, 8],
                      on_chunk=lambda take, i, c: chunks[take].append(c))
    a, b = result.audio
    assert a.shape == b.shape == (1, 64000)
    assert not np.array_equal(a, b), "two takes, two pieces"
    for take, audio in enumerate((a, b)):
        assert float(np.sqrt(np.mean(audio ** 2))) > 1e-3, "not silence"
        assert np.array_equal(np.concatenate(chunks[take], axis=1), audio)
    again = generate(loaded, ContinuationSettings(seconds=2.0, description="calm piano", top_k=8), seeds=[7, 8])
    assert all(np.array_equal(x, y) for x, y in zip(again.audio, result.audio)), "same seeds, same takes"
    other = generate(loaded, ContinuationSettings(seconds=2.0, description="loud techno", top_k=8), seeds=[7])
    assert not np.array_equal(other.audio[0], a), "the description conditions the music"


def test_a_continuation_longer_than_the_window_slides_it_and_never_exceeds_it(tmp_path: Path) -> None:
    """A 40 s continuation of a model trained on 5 s windows: 40 s long, made in windows that each
    keep the last seconds before them as context, the LM never holding more than 5 s."""
    from musicgen_models import build_tiny_musicgen

    from models.continuation import generate, lean_lm

    loaded = load_musicgen(build_tiny_musicgen(tmp_path / "tiny", window_seconds=5.0))
    lm = lean_lm(loaded, "fp32")
    assert lm.window == 250
    held: list[int] = []
    step = lm.step

    def watched(tokens: torch.Tensor) -> torch.Tensor:
        out = step(tokens)
        held.append(lm.length)
        return out

    lm.step = watched
    chunks: list[np.ndarray] = []
    settings = ContinuationSettings(seconds=40.0, prompt_seconds=1.0, top_k=8, window_stride_seconds=3.0)
    result = generate(loaded, settings, audio=_prompt(), rate=44100, on_chunk=lambda take, i, c: chunks.append(c))
    assert result.audio[0].shape == (1, 40 * 32000)
    assert np.array_equal(np.concatenate(chunks, axis=1), result.audio[0])
    assert max(held) <= 250 and result.max_context_positions == max(held)
    windows = result.windows
    assert len(windows) >= 12 and sum(w["new_s"] for w in windows) == pytest.approx(40.0)
    for before, after in zip(windows, windows[1:]):
        end = before["start_s"] + before["context_s"] + before["new_s"]
        assert after["start_s"] + after["context_s"] == pytest.approx(end), "a window continues where the last ended"
        assert after["context_s"] == pytest.approx(5.0 - 3 / 50 - 3.0), "the rest of the window is context"
    assert float(np.sqrt(np.mean(result.audio[0][:, -32000:] ** 2))) > 1e-3, "the last second is not silence"


def test_cancel_works_in_a_later_window(tmp_path: Path) -> None:
    from musicgen_models import build_tiny_musicgen

    from models.continuation import generate

    loaded = load_musicgen(build_tiny_musicgen(tmp_path / "tiny", window_seconds=5.0))
    made: list[int] = []
    settings = ContinuationSettings(seconds=60.0, prompt_seconds=1.0, top_k=8, chunk_seconds=0.5)
    with pytest.raises(ContinuationCancelled):
        generate(loaded, settings, audio=_prompt(), rate=44100,
                 on_chunk=lambda take, i, c: made.append(c.shape[1]),
                 should_stop=lambda: sum(made) > 8 * 32000)  # past the first 5 s window
    assert 8 * 32000 < sum(made) < 9 * 32000, "stopped within a chunk of being asked"


def test_a_description_needs_the_tokenizer_beside_the_model(tmp_path: Path) -> None:
    from musicgen_models import build_tiny_musicgen

    from models.continuation import generate

    loaded = load_musicgen(build_tiny_musicgen(tmp_path / "tiny", tokenizer=False))
    with pytest.raises(ContinuationError, match="no tokenizer"):
        generate(loaded, ContinuationSettings(seconds=1.0, description="funky drums"))
    with pytest.raises(ContinuationError, match="takes must be 1-8"):
        generate(loaded, ContinuationSettings(seconds=1.0), seeds=list(range(9)))
    with pytest.raises(ContinuationError, match="kv_cache"):
        generate(loaded, ContinuationSettings(seconds=1.0, kv_cache="paged"))


def test_takes_beyond_the_cache_budget_run_in_passes_that_each_stream(tmp_path: Path) -> None:
    """Takes the KV cache budget cannot hold at once run in further passes: each pass hands out
    its own chunks as it goes (the first take sounds before the last is begun), every take is
    whole, and the process keeps its thread count."""
    from musicgen_models import build_tiny_musicgen

    from models.continuation import lean_lm
    from models.musicgen_loop import LoopSettings, run_loop

    loaded = load_musicgen(build_tiny_musicgen(tmp_path / "tiny"))
    arrivals: list[tuple[int, int]] = []
    threads = torch.get_num_threads()
    settings = LoopSettings(frames=100, seeds=[3, 4], cache_budget_bytes=1, chunk_frames=25, first_chunk_frames=10)
    result = run_loop(lean_lm(loaded, "fp32"), loaded, None, settings,
                      on_chunk=lambda take, i, c: arrivals.append((take, c.shape[1])))
    assert result.passes == 2
    assert [t for t, _ in arrivals] == sorted(t for t, _ in arrivals), "take 0 streamed in its own pass"
    assert len({t for t, _ in arrivals}) == 2
    for take, audio in enumerate(result.audio):
        assert audio.shape == (1, 100 * 640)
        assert sum(n for t, n in arrivals if t == take) == audio.shape[1]
    assert not np.array_equal(result.audio[0], result.audio[1])
    assert torch.get_num_threads() == threads
