"""MusicGen models in the three forms users hold, loaded offline into transformers' runtime.

Why this module exists: the continuation runtime is Hugging Face transformers'
``MusicgenForConditionalGeneration`` (audiocraft's own runtime does not install with torch 2.13,
see docs/ARCHITECTURE.md, "Measured reasons"), but users hold MusicGen as

(a) transformers folders (config.json + model.safetensors, T5 and EnCodec inside);
(b) audiocraft folders: ``state_dict.bin`` = {'xp.cfg': YAML, 'best_state': LM state dict} and
    ``compression_state_dict.bin`` = a full EnCodec {'xp.cfg', 'best_state'} or
    {'pretrained': 'facebook/encodec_32khz'};
(c) an LM state dict saved by the popular fine-tuning trainer (``torch.save(model.lm.state_dict())``),
    which needs a base model of form (a) or (b) for everything but the LM.

(b) and (c) become (a) by renaming keys (audiocraft's names -> transformers' names, the fused
attention projection split into q/k/v); nothing here imports audiocraft. Nothing is downloaded:
a hub name is looked up in the local Hugging Face cache only, and a miss is an error that says
how to fetch it.
"""

from __future__ import annotations

import logging
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import torch

log = logging.getLogger(__name__)


class MusicgenLoadError(RuntimeError):
    """A MusicGen source that cannot be loaded; the message says what to do."""


@dataclass
class LoadedMusicgen:
    model: Any  # MusicgenForConditionalGeneration
    source: str
    kind: str  # "transformers", "audiocraft", "audiocraft+trainer", "transformers+trainer"
    #: False when the text encoder's weights were not available offline: text-free use only.
    text_encoder_loaded: bool
    #: The LM's weight format for jobs that name none (models.linear_formats).
    weights: str = "fp32"
    #: Lean LMs built from the model, by weight format (models.continuation.lean_lm).
    lms: dict[str, Any] = field(default_factory=dict)
    #: The description's tokenizer, loaded on first use.
    tokenizer: Any = None

    @property
    def sample_rate(self) -> int:
        return int(self.model.config.audio_encoder.sampling_rate)

    @property
    def channels(self) -> int:
        return int(self.model.config.audio_encoder.audio_channels)

    @property
    def device(self) -> torch.device:
        return next(self.model.audio_encoder.parameters()).device

    @property
    def frame_rate(self) -> float:
        return self.sample_rate / math.prod(self.model.config.audio_encoder.upsampling_ratios)


# --------------------------------------------------------------------------- key conversion


def convert_lm_state(state: Mapping[str, torch.Tensor],
                     hidden: int) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """audiocraft LM keys -> (MusicgenForCausalLM state dict, enc_to_dec_proj state dict).

    emb.k -> embed_tokens.k; linear1/2 -> fc1/2; norm1 -> self_attn_layer_norm, norm_cross ->
    encoder_attn_layer_norm, norm2 -> final_layer_norm, out_norm -> layer_norm; linears.k ->
    lm_heads.k; each fused ``in_proj_weight`` (3*hidden, hidden) is split into q, k and v.
    The description conditioner's output projection becomes ``enc_to_dec_proj``.
    """
    decoder: dict[str, torch.Tensor] = {}
    proj: dict[str, torch.Tensor] = {}
    renames = (
        (r"^emb\.(\d+)\.", r"model.decoder.embed_tokens.\1."),
        (r"^transformer\.layers\.(\d+)\.self_attn\.out_proj\.", r"model.decoder.layers.\1.self_attn.out_proj."),
        (r"^transformer\.layers\.(\d+)\.cross_attention\.out_proj\.",
         r"model.decoder.layers.\1.encoder_attn.out_proj."),
        (r"^transformer\.layers\.(\d+)\.linear1\.", r"model.decoder.layers.\1.fc1."),
        (r"^transformer\.layers\.(\d+)\.linear2\.", r"model.decoder.layers.\1.fc2."),
        (r"^transformer\.layers\.(\d+)\.norm1\.", r"model.decoder.layers.\1.self_attn_layer_norm."),
        (r"^transformer\.layers\.(\d+)\.norm_cross\.", r"model.decoder.layers.\1.encoder_attn_layer_norm."),
        (r"^transformer\.layers\.(\d+)\.norm2\.", r"model.decoder.layers.\1.final_layer_norm."),
        (r"^out_norm\.", "model.decoder.layer_norm."),
        (r"^linears\.(\d+)\.", r"lm_heads.\1."),
    )
    for key, value in state.items():
        m = re.match(r"^transformer\.layers\.(\d+)\.(self_attn|cross_attention)\.in_proj_weight$", key)
        if m:
            attn = "self_attn" if m.group(2) == "self_attn" else "encoder_attn"
            q, k, v = value.reshape(3, hidden, -1).unbind(0)
            for name, part in (("q_proj", q), ("k_proj", k), ("v_proj", v)):
                decoder[f"model.decoder.layers.{m.group(1)}.{attn}.{name}.weight"] = part.contiguous()
            continue
        if key.startswith("condition_provider.conditioners.description.output_proj."):
            proj[key.rsplit(".", 1)[1]] = value
            continue
        if key.startswith("condition_provider."):
            continue  # other conditioners (chroma, CLAP) have no transformers counterpart here
        for pattern, repl in renames:
            new, n = re.subn(pattern, repl, key)
            if n:
                decoder[new] = value
                break
        else:
            raise MusicgenLoadError(f"unexpected key in the LM state dict: {key}")
    return decoder, proj


def convert_encodec_state(state: Mapping[str, torch.Tensor], target_keys: set[str]) -> dict[str, torch.Tensor]:
    """audiocraft EnCodec keys -> transformers ``EncodecModel`` keys (same layer indices):
    ``encoder.model.i.conv.conv.*`` -> ``encoder.layers.i.conv.*``, ``decoder.model.i.convtr.convtr.*``
    -> ``decoder.layers.i.conv.*``, ``quantizer.vq.layers.q._codebook.*`` ->
    ``quantizer.layers.q.codebook.*``; weight-norm ``weight_g``/``weight_v`` become the
    parametrization's ``original0``/``original1`` when the target model uses parametrizations."""
    out: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        new = re.sub(r"^(encoder|decoder)\.model\.", r"\1.layers.", key)
        new = new.replace(".conv.conv.", ".conv.").replace(".convtr.convtr.", ".conv.")
        new = re.sub(r"^quantizer\.vq\.layers\.(\d+)\._codebook\.", r"quantizer.layers.\1.codebook.", new)
        if new.endswith((".weight_g", ".weight_v")) and new not in target_keys:
            new = new[: -len("weight_g")] + ("parametrizations.weight.original0" if new.endswith("_g")
                                            else "parametrizations.weight.original1")
        out[new] = value
    return out


# --------------------------------------------------------------------------- configs


def _yaml(text: str) -> dict[str, Any]:
    import yaml

    data = yaml.safe_load(text)
    if not isinstance(data, dict):
        raise MusicgenLoadError("xp.cfg is not a YAML mapping")
    return data


def decoder_config_from_audiocraft(cfg: Mapping[str, Any]) -> Any:
    from transformers import MusicgenDecoderConfig

    lm = cfg.get("transformer_lm") or {}
    unsupported = {k: lm.get(k) for k, ok in (("positional_embedding", "sin"), ("norm", "layer_norm"),
                                               ("norm_first", True), ("bias_ff", False), ("bias_attn", False),
                                               ("kv_repeat", 1)) if lm.get(k, ok) != ok}
    if unsupported:
        raise MusicgenLoadError(f"this audiocraft LM uses settings transformers' MusicGen does not have: {unsupported}")
    card = int(lm["card"])
    return MusicgenDecoderConfig(
        vocab_size=card, num_codebooks=int(lm["n_q"]), hidden_size=int(lm["dim"]),
        num_hidden_layers=int(lm["num_layers"]), num_attention_heads=int(lm["num_heads"]),
        ffn_dim=int(lm["dim"] * lm.get("hidden_scale", 4)), activation_function=str(lm.get("activation", "gelu")),
        audio_channels=int(cfg.get("channels", 1)), pad_token_id=card, bos_token_id=card,
        tie_word_embeddings=False, dropout=0.0, layerdrop=0.0,
    )


def encodec_config_from_audiocraft(cfg: Mapping[str, Any]) -> Any:
    from transformers import EncodecConfig

    seanet, rvq, enc = cfg["seanet"], cfg["rvq"], cfg.get("encodec", {})
    ratios = [int(r) for r in seanet["ratios"]]
    rate = int(enc.get("sample_rate", cfg.get("sample_rate")))
    frame_rate = rate / math.prod(ratios)
    return EncodecConfig(
        sampling_rate=rate, audio_channels=int(enc.get("channels", cfg.get("channels", 1))),
        num_filters=int(seanet["n_filters"]), num_residual_layers=int(seanet.get("n_residual_layers", 1)),
        upsampling_ratios=ratios, hidden_size=int(seanet["dimension"]), codebook_dim=int(seanet["dimension"]),
        codebook_size=int(rvq["bins"]), num_lstm_layers=int(seanet.get("lstm", 2)),
        norm_type=str(seanet.get("norm", "weight_norm")), pad_mode=str(seanet.get("pad_mode", "reflect")),
        use_causal_conv=bool(seanet.get("causal", False)), compress=int(seanet.get("compress", 2)),
        residual_kernel_size=int(seanet.get("residual_kernel_size", 3)), kernel_size=int(seanet.get("kernel_size", 7)),
        last_kernel_size=int(seanet.get("last_kernel_size", 7)),
        dilation_growth_rate=int(seanet.get("dilation_base", 2)),
        use_conv_shortcut=not bool(seanet.get("true_skip", True)),
        trim_right_ratio=float((seanet.get("decoder") or {}).get("trim_right_ratio", 1.0)),
        normalize=bool(enc.get("renormalize", False)),
        target_bandwidths=[int(rvq["n_q"]) * math.log2(int(rvq["bins"])) * frame_rate / 1000],
    )


T5_NAMES = {"t5-small": "google-t5/t5-small", "t5-base": "google-t5/t5-base", "t5-large": "google-t5/t5-large",
            "t5-3b": "google-t5/t5-3b", "t5-11b": "google-t5/t5-11b"}


def _from_cache(cls: Any, name: str, what: str) -> Any:
    """``cls.from_pretrained`` from the local Hugging Face cache only (a hub id or its alias)."""
    last: Exception | None = None
    for candidate in dict.fromkeys((name, T5_NAMES.get(name, name))):
        try:
            return cls.from_pretrained(candidate, local_files_only=True)
        except (OSError, ValueError) as exc:
            last = exc
    raise MusicgenLoadError(
        f"{what} {name!r} is not in the local Hugging Face cache and genbridge never downloads at run time. "
        f"Fetch it once with: huggingface-cli download {T5_NAMES.get(name, name)}  ({last})")


# --------------------------------------------------------------------------- loading


def _torch_load(path: Path) -> Any:
    try:
        return torch.load(path, map_location="cpu", weights_only=False, mmap=True)
    except RuntimeError:
        return torch.load(path, map_location="cpu", weights_only=False)
    except OSError as exc:
        raise MusicgenLoadError(f"cannot read {path}: {exc}") from exc


def _load_audiocraft(folder: Path) -> LoadedMusicgen:
    from transformers import (
        EncodecModel,
        GenerationConfig,
        MusicgenConfig,
        MusicgenForConditionalGeneration,
        T5Config,
        T5EncoderModel,
    )

    lm_pkg = _torch_load(folder / "state_dict.bin")
    if not isinstance(lm_pkg, Mapping) or "best_state" not in lm_pkg or "xp.cfg" not in lm_pkg:
        raise MusicgenLoadError(f"{folder / 'state_dict.bin'} is not an audiocraft export ({{'xp.cfg', 'best_state'}})")
    cfg = _yaml(lm_pkg["xp.cfg"])
    decoder_cfg = decoder_config_from_audiocraft(cfg)
    decoder_state, proj_state = convert_lm_state(lm_pkg["best_state"], decoder_cfg.hidden_size)

    comp_path = folder / "compression_state_dict.bin"
    if not comp_path.is_file():
        raise MusicgenLoadError(f"{folder} has no compression_state_dict.bin")
    comp_pkg = _torch_load(comp_path)
    audio_encoder = None
    if isinstance(comp_pkg, Mapping) and "pretrained" in comp_pkg:
        name = str(comp_pkg["pretrained"]).removeprefix("//pretrained/")
        audio_encoder = _from_cache(EncodecModel, name, "the compression model")
        encodec_cfg = audio_encoder.config
    elif isinstance(comp_pkg, Mapping) and "best_state" in comp_pkg:
        comp_cfg = _yaml(comp_pkg["xp.cfg"])
        if comp_cfg.get("compression_model", "encodec") != "encodec":
            raise MusicgenLoadError(f"compression model {comp_cfg.get('compression_model')!r} is not EnCodec")
        encodec_cfg = encodec_config_from_audiocraft(comp_cfg)
    else:
        raise MusicgenLoadError(f"{comp_path} holds neither a compression model nor a 'pretrained' name")

    t5_cfg = ((cfg.get("conditioners") or {}).get("description") or {}).get("t5") or {}
    t5_name = str(t5_cfg.get("name", "t5-base"))
    text_encoder = None
    try:
        text_encoder = _from_cache(T5EncoderModel, t5_name, "the text encoder")
        text_cfg = text_encoder.config
    except MusicgenLoadError as exc:
        in_features = int(proj_state["weight"].shape[1]) if "weight" in proj_state else 768
        log.warning("%s. Text descriptions are off for this model; text-free continuation works.", exc)
        text_cfg = T5Config(vocab_size=32, d_model=in_features, d_kv=8, d_ff=16, num_layers=1, num_heads=1)

    config = MusicgenConfig(text_encoder=text_cfg.to_dict(), audio_encoder=encodec_cfg.to_dict(),
                            decoder=decoder_cfg.to_dict())
    model = MusicgenForConditionalGeneration(config).eval()
    _load_into(model.decoder, decoder_state, "LM (state_dict.bin)")
    if proj_state:
        _load_into(model.enc_to_dec_proj, proj_state, "description projection")
    if audio_encoder is not None:
        model.audio_encoder.load_state_dict(audio_encoder.state_dict())
    else:
        target = set(model.audio_encoder.state_dict())
        _load_into(model.audio_encoder, convert_encodec_state(comp_pkg["best_state"], target), "EnCodec")
    if text_encoder is not None:
        model.text_encoder.load_state_dict(text_encoder.state_dict())
    card = decoder_cfg.vocab_size
    model.generation_config = GenerationConfig(decoder_start_token_id=card, pad_token_id=card, bos_token_id=card,
                                               do_sample=True, guidance_scale=1.0, max_length=1500)
    return LoadedMusicgen(model, str(folder), "audiocraft", text_encoder is not None)


def _load_into(module: torch.nn.Module, state: Mapping[str, torch.Tensor], what: str) -> None:
    expected = module.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    if missing or unexpected:
        raise MusicgenLoadError(f"{what}: {len(missing)} missing keys (e.g. {missing[:3]}), "
                                f"{len(unexpected)} unexpected (e.g. {unexpected[:3]})")
    bad = [k for k, v in state.items() if tuple(v.shape) != tuple(expected[k].shape)]
    if bad:
        raise MusicgenLoadError(f"{what}: shapes differ for {bad[:3]} (e.g. {tuple(state[bad[0]].shape)} vs "
                                f"{tuple(expected[bad[0]].shape)}): a state dict for another model size?")
    module.load_state_dict({k: v.to(expected[k].dtype) for k, v in state.items()}, strict=True)


def _load_transformers(folder: Path) -> LoadedMusicgen:
    from transformers import MusicgenForConditionalGeneration

    try:
        model = MusicgenForConditionalGeneration.from_pretrained(str(folder), local_files_only=True).eval()
    except (OSError, ValueError) as exc:
        raise MusicgenLoadError(f"cannot load the transformers MusicGen folder {folder}: {exc}") from exc
    return LoadedMusicgen(model, str(folder), "transformers", True)


def load_musicgen(source: str | Path, *, lm_weights: str | Path | None = None) -> LoadedMusicgen:
    """Load ``source`` (a transformers folder, an audiocraft folder, or a model id found in the
    local Hugging Face cache) and optionally put a trainer's LM state dict on top of it."""
    path = Path(source).expanduser()
    if path.is_dir() and (path / "state_dict.bin").is_file():
        loaded = _load_audiocraft(path)
    elif path.is_dir() and (path / "config.json").is_file():
        loaded = _load_transformers(path)
    elif path.exists():
        raise MusicgenLoadError(f"{path} is neither a transformers folder (config.json) nor an audiocraft "
                                "folder (state_dict.bin + compression_state_dict.bin)")
    else:
        from transformers import MusicgenForConditionalGeneration

        loaded = LoadedMusicgen(_from_cache(MusicgenForConditionalGeneration, str(source), "the model").eval(),
                                str(source), "transformers", True)
    if lm_weights is not None:
        apply_lm_state(loaded, Path(lm_weights).expanduser())
    return loaded


def bake_weight_norm(module: torch.nn.Module) -> int:
    """Replace weight-norm parametrizations (EnCodec's convolutions) by the weights they compute:
    the same values, without recomputing every weight on every decode (4 % of a chunk's decode
    on this CPU). Returns how many were baked; for a model that only runs, never trains."""
    from torch.nn.utils import parametrize

    baked = 0
    for sub in module.modules():
        if parametrize.is_parametrized(sub, "weight"):
            parametrize.remove_parametrizations(sub, "weight", leave_parametrized=True)
            baked += 1
    return baked


def apply_lm_state(loaded: LoadedMusicgen, path: Path) -> None:
    """Load a trainer's ``torch.save(model.lm.state_dict())`` (audiocraft key names) over the
    base model's LM: every LM weight must be there with the base's shapes."""
    state = _torch_load(path)
    if isinstance(state, Mapping) and "best_state" in state:
        state = state["best_state"]  # an audiocraft export of the LM works too
    if not isinstance(state, Mapping) or not any(k.startswith("transformer.layers.") for k in state):
        raise MusicgenLoadError(f"{path} is not an audiocraft LM state dict (no transformer.layers.* keys)")
    decoder_state, proj_state = convert_lm_state(state, loaded.model.config.decoder.hidden_size)
    _load_into(loaded.model.decoder, decoder_state, f"LM weights {path.name}")
    if proj_state:
        _load_into(loaded.model.enc_to_dec_proj, proj_state, f"description projection in {path.name}")
    loaded.kind += "+trainer"
    loaded.source += f" + {path}"
