"""MusicGen in its three forms, loaded offline: audiocraft folders (checked against outputs that
audiocraft itself computed), transformers folders, and a trainer's LM state dict on a base."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from models.musicgen import MusicgenLoadError, load_musicgen

FIXTURES = Path(__file__).resolve().parent / "fixtures" / "musicgen"
AUDIOCRAFT = FIXTURES / "audiocraft"


@pytest.fixture(scope="module")
def reference() -> dict:
    return torch.load(FIXTURES / "audiocraft_reference.pt")


def text_free_logits(loaded, codes: torch.Tensor) -> torch.Tensor:
    """The LM's logits with an empty description (the cross-attention memory is zero)."""
    b, k, t = codes.shape
    memory = torch.zeros(b, 1, loaded.model.config.decoder.hidden_size)
    with torch.no_grad():
        out = loaded.model.decoder(input_ids=codes.reshape(b * k, t), encoder_hidden_states=memory)
    return out.logits.reshape(b, k, t, -1)


def test_audiocraft_folder_gives_audiocrafts_logits_and_audio(reference: dict) -> None:
    loaded = load_musicgen(AUDIOCRAFT)
    assert loaded.kind == "audiocraft" and loaded.sample_rate == 32000 and loaded.frame_rate == 50
    assert not loaded.text_encoder_loaded, "t5-base is not in this machine's cache: text-free only"
    logits = text_free_logits(loaded, reference["codes"])
    assert float((logits - reference["logits"]).abs().max()) < 1e-4
    with torch.no_grad():
        audio = loaded.model.audio_encoder.decode(reference["codes"][:1, :, :8][None], [None])[0]
        codes = loaded.model.audio_encoder.encode(reference["wav"]).audio_codes[0]
    assert float((audio - reference["decoded"]).abs().max()) < 1e-4
    assert torch.equal(codes, reference["encoded"])


def _tiny_transformers_model():
    from transformers import (
        EncodecConfig,
        MusicgenConfig,
        MusicgenDecoderConfig,
        MusicgenForConditionalGeneration,
        T5Config,
    )

    torch.manual_seed(0)
    config = MusicgenConfig(
        text_encoder=T5Config(vocab_size=32, d_model=16, d_kv=8, d_ff=32, num_layers=1, num_heads=2).to_dict(),
        audio_encoder=EncodecConfig(sampling_rate=32000, audio_channels=1, num_filters=4, hidden_size=16,
                                    codebook_dim=16, upsampling_ratios=[8, 5, 4, 4], codebook_size=16,
                                    target_bandwidths=[0.8], num_lstm_layers=1).to_dict(),
        decoder=MusicgenDecoderConfig(vocab_size=16, num_codebooks=4, hidden_size=32, num_hidden_layers=2,
                                      num_attention_heads=2, ffn_dim=64, pad_token_id=16, bos_token_id=16).to_dict(),
    )
    model = MusicgenForConditionalGeneration(config)
    model.generation_config.decoder_start_token_id = 16
    model.generation_config.pad_token_id = 16
    return model


def test_transformers_folder_loads_offline_and_continues(tmp_path: Path) -> None:
    model = _tiny_transformers_model()
    model.save_pretrained(tmp_path / "tiny")
    loaded = load_musicgen(tmp_path / "tiny")
    assert loaded.kind == "transformers" and loaded.text_encoder_loaded
    prompt = torch.randn(1, 1, 16000) * 0.1
    with torch.no_grad():
        out = loaded.model.generate(input_values=prompt, max_new_tokens=20, do_sample=False)
    assert out.shape[-1] > prompt.shape[-1], "the continuation is longer than the prompt"
    assert torch.isfinite(out).all()


def test_trainer_state_dict_changes_the_model_and_must_match_the_base(tmp_path: Path, reference: dict) -> None:
    lm = torch.load(AUDIOCRAFT / "state_dict.bin", weights_only=False)["best_state"]
    tuned = {k: v + 0.05 * torch.randn_like(v) for k, v in lm.items()}
    torch.save(tuned, tmp_path / "lm_final.pt")  # what the trainer's torch.save(model.lm.state_dict()) writes
    base = load_musicgen(AUDIOCRAFT)
    loaded = load_musicgen(AUDIOCRAFT, lm_weights=tmp_path / "lm_final.pt")
    assert loaded.kind == "audiocraft+trainer"
    codes = reference["codes"]
    assert float((text_free_logits(loaded, codes) - text_free_logits(base, codes)).abs().max()) > 1e-2
    wrong = dict(tuned)
    wrong["linears.0.weight"] = torch.zeros(7, 32)
    torch.save(wrong, tmp_path / "wrong.pt")
    with pytest.raises(MusicgenLoadError, match="shapes differ"):
        load_musicgen(AUDIOCRAFT, lm_weights=tmp_path / "wrong.pt")
    torch.save({"not": torch.zeros(1)}, tmp_path / "junk.pt")
    with pytest.raises(MusicgenLoadError, match="not an audiocraft LM state dict"):
        load_musicgen(AUDIOCRAFT, lm_weights=tmp_path / "junk.pt")


def test_a_model_id_not_in_the_cache_says_how_to_fetch_it(monkeypatch, tmp_path: Path) -> None:
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(MusicgenLoadError, match="huggingface-cli download facebook/musicgen-small"):
        load_musicgen("facebook/musicgen-small")
