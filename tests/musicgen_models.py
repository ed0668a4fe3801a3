"""Small MusicGen models the tests build: a transformers folder with its text encoder, its
tokenizer and a window of the test's choosing, so text-to-music, takes and sliding windows are
tested offline through the same loading code as a downloaded model.

Why a builder and not a fixture file: the window (``generation_config.max_length``) is what the
long-piece tests vary, and a folder written per test costs ~0.1 s.
"""

from __future__ import annotations

from pathlib import Path

import torch

#: Words the tiny tokenizer knows; anything else is <unk> (still a valid description).
WORDS = ("funky", "drums", "calm", "piano", "bass", "loud", "guitar", "slow", "fast", "techno", "ambient", "jazz")


def build_tiny_musicgen(folder: Path, *, window_seconds: float = 30.0, seed: int = 0, tokenizer: bool = True,
                        hidden: int = 32, layers: int = 2) -> Path:
    """Write a tiny MusicGen (T5 text encoder, EnCodec at 32 kHz / 50 frames/s, a 4-codebook LM)
    to ``folder`` as a transformers folder; its window is ``window_seconds`` (the LM's
    ``generation_config.max_length``, as facebook/musicgen-* set it to 1500 = 30 s)."""
    from transformers import (
        EncodecConfig,
        MusicgenConfig,
        MusicgenDecoderConfig,
        MusicgenForConditionalGeneration,
        T5Config,
    )

    torch.manual_seed(seed)
    config = MusicgenConfig(
        text_encoder=T5Config(vocab_size=len(WORDS) + 3, d_model=16, d_kv=8, d_ff=32, num_layers=1,
                              num_heads=2).to_dict(),
        audio_encoder=EncodecConfig(sampling_rate=32000, audio_channels=1, num_filters=4, hidden_size=16,
                                    codebook_dim=16, upsampling_ratios=[8, 5, 4, 4], codebook_size=16,
                                    target_bandwidths=[0.8], num_lstm_layers=1).to_dict(),
        decoder=MusicgenDecoderConfig(vocab_size=16, num_codebooks=4, hidden_size=hidden, num_hidden_layers=layers,
                                      num_attention_heads=2, ffn_dim=2 * hidden, pad_token_id=16,
                                      bos_token_id=16).to_dict(),
    )
    model = MusicgenForConditionalGeneration(config).eval()
    with torch.no_grad():
        for head in model.decoder.lm_heads:  # sharper logits than the 0.02 init: music with a character
            head.weight.mul_(20)
        for layer in model.audio_encoder.quantizer.layers:  # a fresh codebook is all zeros: every code one sound
            layer.codebook.embed.normal_()
    model.generation_config.decoder_start_token_id = 16
    model.generation_config.pad_token_id = 16
    model.generation_config.max_length = int(round(window_seconds * 50))
    model.save_pretrained(folder)
    if tokenizer:
        write_tokenizer(folder)
    return folder


def write_tokenizer(folder: Path) -> None:
    """A word-level tokenizer over :data:`WORDS` that AutoTokenizer loads offline from ``folder``
    (ids: 0 <pad>, 1 </s>, 2 <unk>, then the words; a description ends with </s>, as T5's does)."""
    from tokenizers import Tokenizer, pre_tokenizers, processors
    from tokenizers.models import WordLevel
    from transformers import PreTrainedTokenizerFast

    vocab = {"<pad>": 0, "</s>": 1, "<unk>": 2} | {w: i + 3 for i, w in enumerate(WORDS)}
    tok = Tokenizer(WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.post_processor = processors.TemplateProcessing(single="$A </s>", special_tokens=[("</s>", 1)])
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>", pad_token="<pad>", eos_token="</s>")
    fast.save_pretrained(folder)
