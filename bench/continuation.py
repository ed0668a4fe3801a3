"""MusicGen continuation speed on this CPU: the musicgen-small architecture with random weights.

Variants side by side in one run (each takes turns, --rounds times): fp32, bf16 autocast and
dynamic int8 (the LM's Linear layers), each with classifier-free guidance off (text-free, what
genbridge does without a description) and on (what a description costs). Prompt --prompt
seconds, --seconds of new audio, chunks every 1.5 s. Prints the real-time factor (seconds of
audio per second of work), time to first chunk and ms per frame, and the bytes of LM weights
read per frame (every frame reads every LM weight once: the memory-bound limit).

Usage: python bench/continuation.py [--seconds 2] [--prompt 3] [--rounds 1] [--threads 2]
       [--variants fp32,bf16,int8]
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import numpy as np  # noqa: E402
import torch  # noqa: E402
from _common import median, save, table  # noqa: E402

from models.continuation import ContinuationSettings, continue_audio  # noqa: E402
from models.musicgen import LoadedMusicgen  # noqa: E402


def musicgen_small(seed: int = 0):
    """facebook/musicgen-small's architecture (T5-base, EnCodec 32 kHz, 24-layer 1024-wide LM)."""
    from transformers import (
        EncodecConfig,
        MusicgenConfig,
        MusicgenDecoderConfig,
        MusicgenForConditionalGeneration,
        T5Config,
    )

    torch.manual_seed(seed)
    config = MusicgenConfig(
        text_encoder=T5Config(vocab_size=32128, d_model=768, d_kv=64, d_ff=3072, num_layers=12, num_heads=12).to_dict(),
        audio_encoder=EncodecConfig(sampling_rate=32000, audio_channels=1, num_filters=64, hidden_size=128,
                                    upsampling_ratios=[8, 5, 4, 4], codebook_size=2048, target_bandwidths=[2.2],
                                    num_lstm_layers=2, pad_mode="reflect", use_causal_conv=False, normalize=False,
                                    compress=2, residual_kernel_size=3, norm_type="weight_norm").to_dict(),
        decoder=MusicgenDecoderConfig(vocab_size=2048, num_codebooks=4, hidden_size=1024, num_hidden_layers=24,
                                      num_attention_heads=16, ffn_dim=4096, pad_token_id=2048,
                                      bos_token_id=2048).to_dict(),
    )
    model = MusicgenForConditionalGeneration(config).eval()
    model.generation_config.decoder_start_token_id = 2048
    model.generation_config.pad_token_id = 2048
    return model


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=2.0)
    ap.add_argument("--prompt", type=float, default=3.0)
    ap.add_argument("--rounds", type=int, default=1)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--variants", default="fp32,bf16,int8")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    t0 = time.perf_counter()
    base = musicgen_small()
    print(f"musicgen-small architecture built in {time.perf_counter() - t0:.0f} s: "
          f"LM {sum(p.numel() for p in base.decoder.parameters()) / 1e6:.0f} M, EnCodec "
          f"{sum(p.numel() for p in base.audio_encoder.parameters()) / 1e6:.0f} M, T5 "
          f"{sum(p.numel() for p in base.text_encoder.parameters()) / 1e6:.0f} M parameters; "
          f"{args.threads} threads", flush=True)
    fp32_decoder = base.decoder
    int8_decoder = torch.ao.quantization.quantize_dynamic(fp32_decoder, {torch.nn.Linear}, dtype=torch.qint8)
    loaded = LoadedMusicgen(base, "random musicgen-small", "transformers", True)
    rate = 32000
    t = np.arange(int(rate * args.prompt)) / rate
    prompt = (0.3 * np.sin(2 * np.pi * 110 * t) * (np.sin(2 * np.pi * 2 * t) > 0)).astype(np.float32)[None]

    def lm_bytes(decoder: torch.nn.Module) -> int:
        total = sum(p.numel() * p.element_size() for p in decoder.parameters())
        for m in decoder.modules():  # quantized Linear weights are not parameters
            if isinstance(m, torch.ao.nn.quantized.dynamic.Linear):
                total += m.weight().numel()  # one byte each
        return total

    variants = [v for v in args.variants.split(",") if v]
    runs: dict[tuple[str, bool], list[tuple[float, float]]] = {}
    for r in range(args.rounds):
        for variant in variants:
            base.decoder = int8_decoder if variant == "int8" else fp32_decoder
            for guidance in (False, True):
                first = {}
                start = time.perf_counter()
                settings = ContinuationSettings(seconds=args.seconds, prompt_seconds=args.prompt, seed=r, top_k=250,
                                                guidance_scale=3.0, guidance_without_text=guidance)
                with torch.autocast("cpu", dtype=torch.bfloat16, enabled=variant == "bf16"):
                    continue_audio(loaded, prompt, rate, settings,
                                   on_chunk=lambda i, c: first.setdefault("t", time.perf_counter() - start))
                total = time.perf_counter() - start
                runs.setdefault((variant, guidance), []).append((total, first.get("t", total)))
                print(f"  round {r + 1} {variant:5s} guidance {'on ' if guidance else 'off'}: {total:.1f} s, "
                      f"first chunk {first.get('t', total):.1f} s", flush=True)
    frames = args.seconds * 50
    rows, results = [], {}
    for (variant, guidance), values in runs.items():
        total = median([v[0] for v in values])
        first = median([v[1] for v in values])
        decoder = int8_decoder if variant == "int8" else fp32_decoder
        weight_bytes = lm_bytes(decoder) // (2 if variant == "bf16" else 1)
        key = f"{variant}{'+cfg' if guidance else ''}"
        results[key] = {"total_s": total, "first_chunk_s": first, "rtf": args.seconds / total,
                        "ms_per_frame": 1000 * total / frames, "lm_weight_bytes_per_frame": weight_bytes,
                        "runs": values}
        rows.append([variant, "on" if guidance else "off", total, first, args.seconds / total, 1000 * total / frames,
                     f"{weight_bytes / 1e6:.0f} MB"])
    base_t = results.get("fp32+cfg", {}).get("total_s")
    print()
    print(table(["variant", "guidance", "total s", "first chunk s", "RTF", "ms/frame", "LM weights/frame"], rows))
    if base_t:
        ratios = ", ".join(f"{k} {base_t / v['total_s']:.2f}x" for k, v in results.items())
        print(f"speed vs fp32 with guidance: {ratios}")
    path = save("continuation", {"seconds": args.seconds, "prompt_s": args.prompt,
                                 "threads": args.threads,
                                 "rounds": args.rounds, "variants": results})
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
