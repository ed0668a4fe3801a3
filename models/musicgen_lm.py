"""MusicGen's language model as a lean token-step engine: fixed KV cache, fused weights, one format.

Why this module exists: transformers' ``generate`` spends most of a CPU frame outside the
matrix products (generic logits processors, cache objects, mask building, the delay pattern
rebuilt every step): 98 ms per frame for musicgen-small in int8, while the products themselves
take 12 ms (bench/continuation.py). This runs the same network - the same weights, read from
transformers' modules, the same arithmetic - with

- the KV cache allocated once per window (``start``), never grown or copied;
- q, k and v fused into one product, the codebook heads into another;
- the cross-attention's keys and values computed once per request, and skipped for rows
  without text: transformers multiplies an absent description's memory by its zero mask, so
  those rows' cross-attention adds exactly zero;
- the LM heads run on the last position only;
- the weights in one of :mod:`models.linear_formats`' formats.

It knows nothing of the delay pattern, sampling or audio: :mod:`models.musicgen_loop` drives it.
A test checks its logits against transformers' own forward pass.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import torch
import torch.nn.functional as F

from models.linear_formats import Linear, activation_dtype, make_linear, weight_bytes


class ContextOverflow(RuntimeError):
    """More positions than the window (or the cache) holds: the caller must slide the window."""


@dataclass
class _Layer:
    ln1: tuple[torch.Tensor, torch.Tensor, float]
    qkv: Linear
    out: Linear
    ln_cross: tuple[torch.Tensor, torch.Tensor, float]
    cross_q: Linear
    cross_out: Linear
    cross_k: torch.Tensor  # (d, d) fp32: applied once per request to the text memory
    cross_v: torch.Tensor
    ln2: tuple[torch.Tensor, torch.Tensor, float]
    fc1: Linear
    fc2: Linear
    act: Callable[[torch.Tensor], torch.Tensor]


def _ln(module: torch.nn.LayerNorm, dtype: torch.dtype,
        device: torch.device) -> tuple[torch.Tensor, torch.Tensor, float]:
    return (module.weight.detach().to(device, dtype), module.bias.detach().to(device, dtype), float(module.eps))


def _norm(x: torch.Tensor, ln: tuple[torch.Tensor, torch.Tensor, float]) -> torch.Tensor:
    return F.layer_norm(x, (x.shape[-1],), ln[0], ln[1], ln[2])


def window_positions(model: Any, default: int | None = None) -> int:
    """Decoder positions the model was trained on: ``generation_config.max_length`` where the
    model sets it (facebook/musicgen-*: 1500 = 30 s), else ``default``, capped by the sinusoidal
    table's size. transformers' own default of 20 means "not set"."""
    limit = int(model.config.decoder.max_position_embeddings)
    length = getattr(model.generation_config, "max_length", None)
    if length and int(length) != 20:
        return min(int(length), limit)
    return min(int(default or limit), limit)


class MusicgenLM:
    """The decoder of a ``MusicgenForConditionalGeneration`` in weight format ``fmt``."""

    def __init__(self, model: Any, fmt: str = "fp32", device: torch.device | str = "cpu") -> None:
        self.fmt = fmt
        self.device = torch.device(device)
        self.dtype = activation_dtype(fmt) if self.device.type == "cpu" else _gpu_dtype(fmt)
        cfg = model.config.decoder
        self.codebooks = int(cfg.num_codebooks)
        self.vocab = int(cfg.vocab_size)
        self.hidden = int(cfg.hidden_size)
        self.heads = int(cfg.num_attention_heads)
        self.head_dim = self.hidden // self.heads
        self.scale = self.head_dim ** -0.5
        self.window = window_positions(model)
        decoder = model.decoder.model.decoder
        dev, dt = self.device, self.dtype
        # embeddings stay full precision (a lookup reads one row); positions as transformers makes them
        self.embed = [e.weight.detach().to(dev, dt) for e in decoder.embed_tokens]
        table = decoder.embed_positions.weights
        if table.shape[0] < self.window:
            table = decoder.embed_positions.get_embedding(self.window, self.hidden)
        self.positions = table[: self.window].detach().to(dev, dt)
        self.bytes = 0
        self.layers: list[_Layer] = []

        #: Bytes of LM weights one token step reads; the cross-attention's are read only for rows
        #: with text, so they are counted apart.
        self.cross_bytes = 0

        def lin(weight: torch.Tensor, cross: bool = False) -> Linear:
            if cross:
                self.cross_bytes += weight_bytes(weight, fmt)
            else:
                self.bytes += weight_bytes(weight, fmt)
            return make_linear(weight.to(dev), fmt)

        for layer in decoder.layers:
            sa, ca = layer.self_attn, layer.encoder_attn
            # the attention's 1/sqrt(head_dim) goes into q's weights (a power of two for
            # musicgen's 64-wide heads: exact), one multiply fewer per layer and step
            qkv = torch.cat([sa.q_proj.weight * self.scale, sa.k_proj.weight, sa.v_proj.weight]).detach()
            self.layers.append(_Layer(
                ln1=_ln(layer.self_attn_layer_norm, dt, dev), qkv=lin(qkv), out=lin(sa.out_proj.weight.detach()),
                ln_cross=_ln(layer.encoder_attn_layer_norm, dt, dev), cross_q=lin(ca.q_proj.weight.detach(), True),
                cross_out=lin(ca.out_proj.weight.detach(), True),
                cross_k=ca.k_proj.weight.detach().to(dev, torch.float32),
                cross_v=ca.v_proj.weight.detach().to(dev, torch.float32),
                ln2=_ln(layer.final_layer_norm, dt, dev), fc1=lin(layer.fc1.weight.detach()),
                fc2=lin(layer.fc2.weight.detach()), act=layer.activation_fn))
        self.final_ln = _ln(decoder.layer_norm, dt, dev)
        self.lm_heads = lin(torch.cat([h.weight.detach() for h in model.decoder.lm_heads]))
        self.rows = 0
        self.capacity = 0
        self.length = 0
        #: The most positions the cache held since :meth:`start` (what "the context never
        #: exceeded the window" is checked against).
        self.max_length = 0
        #: Per layer: keys stored transposed (rows, heads, head_dim, positions), so one query's
        #: scores are a plain product over a prefix of the last axis; values (rows, heads,
        #: positions, head_dim).
        self._kt: list[torch.Tensor] = []
        self._v: list[torch.Tensor] = []
        self._memory: list[tuple[torch.Tensor, torch.Tensor]] = []
        self._memory_mask: torch.Tensor | None = None
        self._text_rows = 0

    # ------------------------------------------------------------------ requests

    def cache_bytes(self, rows: int, positions: int) -> int:
        """Bytes of KV cache ``rows`` rows of ``positions`` positions take."""
        return 2 * len(self.layers) * rows * positions * self.hidden * torch.empty((), dtype=self.dtype).element_size()

    def start(self, rows: int, positions: int, memory: torch.Tensor | None = None,
              memory_mask: torch.Tensor | None = None) -> None:
        """Begin a window of at most ``positions`` positions for ``rows`` rows. ``memory`` (r, T,
        hidden) is the projected text for the first r rows (the others have none); ``memory_mask``
        (r, T) marks its real tokens. The cache is reused when the shape allows."""
        if positions > self.window:
            raise ContextOverflow(f"{positions} positions asked for, the model's window is {self.window}")
        if rows != self.rows or positions > self.capacity:
            self._kt, self._v = [], []  # the old cache goes before the new one is made
            shape = (rows, self.heads, positions, self.head_dim)
            self._kt = [torch.zeros(rows, self.heads, self.head_dim, positions, dtype=self.dtype, device=self.device)
                        for _ in self.layers]
            self._v = [torch.zeros(shape, dtype=self.dtype, device=self.device) for _ in self.layers]
            self.rows, self.capacity = rows, positions
        self.length = 0
        self.max_length = 0
        self._text_rows = 0 if memory is None else int(memory.shape[0])
        self._memory = []
        self._memory_mask = None
        if memory is not None:
            mem = memory.to(self.device, torch.float32)
            if memory_mask is not None:
                mem = mem * memory_mask.to(mem)[..., None]
                # additive mask over the memory's tokens, as transformers' bidirectional mask
                bias = torch.zeros(memory_mask.shape, dtype=self.dtype, device=self.device)
                bias.masked_fill_(memory_mask.to(self.device) == 0, torch.finfo(self.dtype).min)
                self._memory_mask = bias[:, None, None, :]
            r, t, _ = mem.shape
            for layer in self.layers:
                k = F.linear(mem, layer.cross_k).reshape(r, t, self.heads, self.head_dim).transpose(1, 2)
                v = F.linear(mem, layer.cross_v).reshape(r, t, self.heads, self.head_dim).transpose(1, 2)
                self._memory.append((k.to(self.dtype).contiguous(), v.to(self.dtype).contiguous()))

    def release(self) -> None:
        """Give back the cache and the text memory (a request's cache can be gigabytes)."""
        self._kt, self._v, self._memory, self._memory_mask = [], [], [], None
        self.rows = self.capacity = self.length = self._text_rows = 0

    def restart(self) -> None:
        """Empty the cache (a new window) and keep the text memory."""
        self.length = 0
        self.max_length = 0

    def step(self, tokens: torch.Tensor) -> torch.Tensor:
        """Feed (rows, codebooks, L) tokens at the next L positions; return the logits (rows,
        codebooks, vocab, fp32) that predict the position after the last. L > 1 only on an empty
        cache (a window's prefill)."""
        rows, k, n = tokens.shape
        if rows != self.rows or k != self.codebooks:
            raise ValueError(f"tokens {tuple(tokens.shape)} for a cache of {self.rows} rows x {self.codebooks}")
        start, end = self.length, self.length + n
        if end > self.capacity:
            raise ContextOverflow(f"position {end} is past the window's {self.capacity} positions")
        if n > 1 and start:
            raise ValueError("several positions at once only on an empty cache (a prefill)")
        tokens = tokens.to(self.device)
        h = self.positions[start:end].unsqueeze(0).expand(rows, n, self.hidden).clone()
        for c in range(k):
            h += self.embed[c][tokens[:, c]]
        d, heads, hd = self.hidden, self.heads, self.head_dim
        tr = self._text_rows
        for i, layer in enumerate(self.layers):
            x = _norm(h, layer.ln1).reshape(rows * n, d)
            qkv = layer.qkv(x).reshape(rows, n, 3, heads, hd).permute(2, 0, 3, 1, 4)
            q, kk, vv = qkv[0], qkv[1], qkv[2]
            kt, v = self._kt[i], self._v[i]
            kt[:, :, :, start:end] = kk.transpose(-1, -2)
            v[:, :, start:end] = vv
            if n == 1:  # one query: two small products beat SDPA's kernel set-up (150 us a call here)
                attn = torch.matmul(torch.matmul(q, kt[:, :, :, :end]).softmax(dim=-1), v[:, :, :end])
            else:
                attn = F.scaled_dot_product_attention(q, kt[:, :, :, :end].transpose(-1, -2), v[:, :, :end],
                                                      is_causal=True, scale=1.0)
            h = h + layer.out(attn.transpose(1, 2).reshape(rows * n, d)).reshape(rows, n, d)
            if tr:
                x = _norm(h[:tr], layer.ln_cross).reshape(tr * n, d)
                cq = layer.cross_q(x).reshape(tr, n, heads, hd).transpose(1, 2)
                mk, mv = self._memory[i]
                ca = F.scaled_dot_product_attention(cq, mk, mv, attn_mask=self._memory_mask)
                h[:tr] = h[:tr] + layer.cross_out(ca.transpose(1, 2).reshape(tr * n, d)).reshape(tr, n, d)
            x = _norm(h, layer.ln2).reshape(rows * n, d)
            h = h + layer.fc2(layer.act(layer.fc1(x))).reshape(rows, n, d)
        self.length = end
        self.max_length = max(self.max_length, end)
        last = _norm(h[:, -1], self.final_ln)
        return self.lm_heads(last).float().reshape(rows, k, self.vocab)


def _gpu_dtype(fmt: str) -> torch.dtype:
    if fmt in ("int8", "int8w", "int4"):
        raise ValueError(f"the {fmt} weight format runs on a CPU only; on a GPU use fp32, bf16 or fp16")
    return activation_dtype(fmt)
