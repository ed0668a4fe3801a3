"""MusicGen continuation speed on this machine: the musicgen-small architecture, every variant side by side.

Random weights with musicgen-small's shapes (T5-base, EnCodec 32 kHz, a 24-layer 1024-wide LM
over 4 codebooks of 2048): speed depends on the shapes, not the values. Each variant continues
the same --prompt seconds by --seconds (text-free, top-k 250, chunks as the daemon makes them),
taking turns for --rounds rounds:

- ``transformers fp32`` / ``transformers int8``: transformers' own ``generate`` (what genbridge
  ran before its token loop), LM only: no chunk decoding, so it is flattered;
- ``FORMAT``: genbridge's token loop (models/musicgen_loop.py) with the LM's weights in each of
  models/linear_formats.py's formats, as the daemon runs it by default: token steps on one
  thread, chunks decoded on the other, OpenMP waits passive; ``+cfg`` rows run guidance (what a
  description costs), ``x2`` rows two takes in one pass;
- ``FORMAT@spin``: ``[continuation] spin_wait = true``: token steps on --threads threads that
  spin briefly (GOMP_SPINCOUNT) between parallel regions, chunks decoded between steps. libgomp
  reads that at start, so these rows run in a child process of this benchmark.

Printed per row: real-time factor (seconds of audio per second of work), time to the first
chunk, ms per frame split into LM / sampling / decode, the LM's bytes read per frame, and the
fraction of this machine's memory-bandwidth limit the LM reaches (bytes per frame / measured
bandwidth, over the LM's ms per frame; the benchmark measures the bandwidth itself).

Agreement with fp32, on the same inputs: every format's LM is fed the tokens fp32 made
(teacher forcing, --agree-frames positions after the prompt) and its logits are compared with
fp32's: max and mean |logit error|, top-1 agreement, the overlap of the two top-250 sets (what
top-k sampling draws from) and the mean KL divergence of the variant's token distribution from
fp32's (what decides whether the music changes).

Usage: python bench/continuation.py [--seconds 6] [--prompt 3] [--rounds 1] [--threads 2]
       [--variants hf-fp32,hf-int8,fp32,bf16,int8,int8w,int4] [--agree-frames 150]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
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

from models.continuation import ContinuationSettings, generate, lean_lm, prompt_tensor  # noqa: E402
from models.musicgen import LoadedMusicgen, bake_weight_norm  # noqa: E402


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
    with torch.no_grad():  # a fresh codebook is all zeros (every code one sound); a trained one is not
        for layer in model.audio_encoder.quantizer.layers:
            layer.codebook.embed.normal_()
    model.generation_config.decoder_start_token_id = 2048
    model.generation_config.pad_token_id = 2048
    model.generation_config.max_length = 1500
    return model


def bandwidth_gbs(threads: int, mb: int = 1024) -> float:
    """Memory read bandwidth: the best of 5 sums over a buffer far larger than the caches."""
    torch.set_num_threads(threads)
    x = torch.ones(mb * (1 << 20) // 4)
    x.sum()
    best = float("inf")
    for _ in range(5):
        t = time.perf_counter()
        x.sum()
        best = min(best, time.perf_counter() - t)
    return x.numel() * 4 / best / 1e9


def hf_generate(model, prompt: torch.Tensor, frames: int, quantized) -> float:
    """transformers' generate, text-free, top-k 250: the seconds it takes (LM only)."""
    from transformers.modeling_outputs import BaseModelOutput

    decoder = model.decoder
    if quantized is not None:
        model.decoder = quantized
    k = model.config.decoder.num_codebooks
    try:
        t = time.perf_counter()
        with torch.no_grad():
            model.generate(input_values=prompt, max_new_tokens=frames + k - 1, do_sample=True, top_k=250,
                           encoder_outputs=BaseModelOutput(last_hidden_state=torch.zeros(1, 1, 768)),
                           attention_mask=torch.zeros(1, 1, dtype=torch.long), guidance_scale=None)
        return time.perf_counter() - t
    finally:
        model.decoder = decoder


def agreement(loaded: LoadedMusicgen, codes: torch.Tensor, prompt_frames: int, frames: int,
              formats: list[str]) -> dict[str, dict[str, float]]:
    """Teacher-forced logits of each format against fp32's on fp32's own tokens (K, F)."""
    k = codes.shape[0]
    n = min(codes.shape[1], prompt_frames + frames)
    length = n + k  # delay pattern: codebook c's frame f at position 1 + c + f
    tokens = torch.full((1, k, length), 2048, dtype=torch.long)
    for c in range(k):
        tokens[0, c, 1 + c: 1 + c + n] = codes[c, :n]
    start = prompt_frames + 1

    def logits(fmt: str) -> torch.Tensor:
        lm = lean_lm(loaded, fmt)
        with torch.no_grad():
            lm.start(1, length)
            outs = [lm.step(tokens[:, :, :start])]
            outs += [lm.step(tokens[:, :, p: p + 1]) for p in range(start, length - 1)]
        return torch.stack(outs, 2)[0]  # (K, positions, V)

    reference = logits("fp32")

    ref_lp = reference.log_softmax(-1)
    out = {}
    for fmt in formats:
        got = reference if fmt == "fp32" else logits(fmt)
        lp = got.log_softmax(-1)
        kl = (ref_lp.exp() * (ref_lp - lp)).sum(-1)  # nats per token, the whole distribution
        kth = torch.topk(reference, 250, dim=-1).indices
        overlap = torch.tensor([len(set(a.tolist()) & set(b.tolist())) / 250 for a, b in
                                zip(kth.reshape(-1, 250), torch.topk(got, 250, dim=-1).indices.reshape(-1, 250))])
        err = (got - reference).abs()
        out[fmt] = {"max_abs_logit_err": float(err.max()), "mean_abs_logit_err": float(err.mean()),
                    "logit_std": float(reference.std()),
                    "top1_agreement": float((got.argmax(-1) == reference.argmax(-1)).float().mean()),
                    "top250_overlap": float(overlap.mean()), "kl_nats": float(kl.mean())}
    return out


def _fmt(variant: str) -> str:
    """The weight format a variant's name starts with ("hf-int8", "int8+cfg", "int8x2", "int4@spin")."""
    return variant.removeprefix("hf-").split("+")[0].split("x")[0].split("@")[0]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=6.0)
    ap.add_argument("--prompt", type=float, default=3.0)
    ap.add_argument("--rounds", type=int, default=1)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--variants", default="hf-int8,fp32,bf16,int8,int8w,int4,int8+cfg,int8x2,int8@spin,int4@spin")
    ap.add_argument("--agree-frames", type=int, default=150)
    ap.add_argument("--child", help=argparse.SUPPRESS)  # run these variants only, print their runs as JSON
    args = ap.parse_args()
    if args.child:
        args.variants, args.agree_frames = args.child, 0
    torch.set_num_threads(args.threads)
    gbs = bandwidth_gbs(args.threads)
    print(f"memory read bandwidth with {args.threads} threads: {gbs:.1f} GB/s", flush=True)
    t0 = time.perf_counter()
    model = musicgen_small()
    lm_params = sum(p.numel() for p in model.decoder.parameters())
    print(f"musicgen-small architecture built in {time.perf_counter() - t0:.0f} s: LM {lm_params / 1e6:.0f} M, "
          f"EnCodec {sum(p.numel() for p in model.audio_encoder.parameters()) / 1e6:.0f} M, T5 "
          f"{sum(p.numel() for p in model.text_encoder.parameters()) / 1e6:.0f} M parameters", flush=True)
    loaded = LoadedMusicgen(model, "random musicgen-small", "transformers", True)
    bake_weight_norm(model.audio_encoder)  # as the musicgen family does at load
    rate = 32000
    t = np.arange(int(rate * args.prompt)) / rate
    prompt = (0.3 * np.sin(2 * np.pi * 110 * t) * (np.sin(2 * np.pi * 2 * t) > 0)).astype(np.float32)[None]
    variants = [v for v in args.variants.split(",") if v]
    spin = [v for v in variants if v.endswith("@spin")]
    if spin and not args.child:
        env = dict(os.environ, GOMP_SPINCOUNT="100000")
        print(f"  {', '.join(spin)} in a child process with GOMP_SPINCOUNT=100000 ...", flush=True)
        child = subprocess.run([sys.executable, __file__, "--child", ",".join(spin), "--seconds", str(args.seconds),
                                "--prompt", str(args.prompt), "--rounds", str(args.rounds), "--threads",
                                str(args.threads)], env=env, capture_output=True, text=True, check=True)
        spin_runs = json.loads(child.stdout.strip().splitlines()[-1])
        for line in child.stdout.strip().splitlines()[:-1]:
            if line.startswith("  round"):
                print(line, flush=True)
    else:
        spin_runs = {}
    variants = [v for v in variants if not v.endswith("@spin")] if not args.child else variants
    formats = sorted({_fmt(v) for v in variants + spin} | {"fp32"}, key=["fp32", "bf16", "int8", "int8w", "int4"].index)
    for fmt in formats:
        t = time.perf_counter()
        lean_lm(loaded, fmt)
        print(f"  LM in {fmt}: {lean_lm(loaded, fmt).bytes / 1e6:.0f} MB per frame, built in "
              f"{time.perf_counter() - t:.1f} s", flush=True)
    int8_hf = None
    if any(v == "hf-int8" for v in variants):
        import warnings

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            int8_hf = torch.ao.quantization.quantize_dynamic(model.decoder, {torch.nn.Linear}, dtype=torch.qint8)
    frames = int(round(args.seconds * loaded.frame_rate))
    runs: dict[str, list[dict]] = {}
    fp32_codes = None
    for r in range(args.rounds):
        for variant in variants:
            if variant.startswith("hf-"):
                with torch.no_grad():
                    pt = prompt_tensor(loaded, prompt, rate, args.prompt)
                total = hf_generate(model, pt, frames, int8_hf if variant == "hf-int8" else None)
                runs.setdefault(variant, []).append({"total_s": total, "first_chunk_s": None, "lm_s": total,
                                                     "sampling_s": 0.0, "decode_s": 0.0, "takes": 1})
                print(f"  round {r + 1} {variant:9s}: {total:.1f} s", flush=True)
                continue
            fmt = _fmt(variant)
            takes = int(variant.split("x")[1].split("@")[0]) if "x" in variant else 1
            spinning = variant.endswith("@spin")
            settings = ContinuationSettings(seconds=args.seconds, prompt_seconds=args.prompt, seed=r, top_k=250,
                                            guidance_without_text="+cfg" in variant, weights=fmt,
                                            step_threads=args.threads if spinning else 1,
                                            background_decode=not spinning)
            start = time.perf_counter()
            result = generate(loaded, settings, audio=prompt, rate=rate, seeds=list(range(r, r + takes)))
            total = time.perf_counter() - start
            if variant == "fp32" and fp32_codes is None:
                fp32_codes = result.codes[0]
            tm = result.timings
            runs.setdefault(variant, []).append({"total_s": total, "first_chunk_s": tm.first_chunk, "lm_s": tm.lm,
                                                 "sampling_s": tm.sampling, "decode_s": tm.decode, "takes": takes})
            print(f"  round {r + 1} {variant:9s}: {total:.1f} s, first chunk {tm.first_chunk:.2f} s, "
                  f"LM {tm.lm:.1f} s, sampling {tm.sampling:.2f} s, decode {tm.decode:.2f} s", flush=True)
    if args.child:
        print(json.dumps(runs))
        return
    runs |= spin_runs
    rows, results = [], {}
    for variant, values in runs.items():
        total = median([v["total_s"] for v in values])
        first = values[0]["first_chunk_s"]
        first = median([v["first_chunk_s"] for v in values]) if first is not None else None
        takes = values[0]["takes"]
        per = {k: 1000 * median([v[k] for v in values]) / frames for k in ("lm_s", "sampling_s", "decode_s")}
        fmt = _fmt(variant)
        lm_bytes = lean_lm(loaded, fmt).bytes
        limit_ms = lm_bytes / (gbs * 1e9) * 1000 if lm_bytes else None
        fraction = limit_ms / per["lm_s"] if limit_ms else None
        rtf = takes * args.seconds / total
        results[variant] = {"total_s": total, "first_chunk_s": first, "rtf": rtf, "takes": takes,
                            "ms_per_frame": {k.removesuffix("_s"): v for k, v in per.items()},
                            "lm_bytes_per_frame": lm_bytes, "bandwidth_fraction": fraction, "runs": values}
        rows.append([variant, f"{rtf:.2f}", "-" if first is None else f"{first:.2f}", f"{1000 * total / frames:.1f}",
                     f"{per['lm_s']:.1f}", f"{per['sampling_s']:.1f}", f"{per['decode_s']:.1f}",
                     "-" if lm_bytes is None else f"{lm_bytes / 1e6:.0f} MB",
                     "-" if fraction is None else f"{fraction:.0%}"])
    print()
    print(f"{args.seconds:g} s after a {args.prompt:g} s prompt, {args.threads} threads, {gbs:.1f} GB/s measured; "
          "RTF counts every take's audio")
    print(table(["variant", "RTF", "first chunk s", "ms/frame", "LM", "sampling", "decode", "LM weights/frame",
                 "of bandwidth"], rows))
    base = results.get("hf-int8", {}).get("total_s")
    if base:
        print("speed vs transformers int8: " + ", ".join(f"{k} {results[k]['rtf'] / results['hf-int8']['rtf']:.2f}x"
                                                       for k in results))
    agree = {}
    if fp32_codes is not None and args.agree_frames > 0:
        p = fp32_codes.shape[1] - frames
        agree = agreement(loaded, fp32_codes, p, min(frames, args.agree_frames), formats)
        print()
        print(f"agreement with fp32 on fp32's tokens ({min(frames, args.agree_frames)} frames after the prompt, "
              f"logit std {agree['fp32']['logit_std']:.3f}):")
        print(table(["format", "max |logit err|", "mean |logit err|", "top-1 agreement", "top-250 overlap",
                     "KL (nats/token)"],
                    [[f, f"{a['max_abs_logit_err']:.3g}", f"{a['mean_abs_logit_err']:.3g}",
                      f"{a['top1_agreement']:.3f}", f"{a['top250_overlap']:.3f}", f"{a['kl_nats']:.2e}"]
                     for f, a in agree.items()]))
    path = save("continuation", {"seconds": args.seconds, "prompt_s": args.prompt, "threads": args.threads,
                                 "rounds": args.rounds, "bandwidth_gbs": gbs, "variants": results,
                                 "agreement": agree})
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
