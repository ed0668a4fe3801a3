"""Configuration: one TOML file, every option with a default, errors that name the key.

Why dataclasses and a hand-rolled checker rather than a schema library: the config is small,
and a musician editing it on stage needs "instruments.kick.pool: expected an integer >= 0,
got 'four'" - one line naming the key - and exit code 2, not a validation-error dump.
"""

from __future__ import annotations

import dataclasses
import tomllib
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping

from bridge.finishing import FinishingSettings
from bridge.liveness import physical_memory_mb
from bridge.tempo import GRID_HINT, MAX_BPM, MIN_BPM, TEMPO_SOURCES, is_grid
from models.devices import DEVICE_HINT, is_device_name
from models.generator import FAMILIES, is_family_name

BUILTIN_PREFIX = "builtin:"
BUILTIN_MODELS_DIR = Path(__file__).resolve().parent.parent / "models"


class ConfigError(ValueError):
    """Invalid configuration; ``key`` is the dotted name of the offending option."""

    def __init__(self, key: str, message: str) -> None:
        super().__init__(f"{key}: {message}" if key else message)
        self.key = key


def _check(predicate: Callable[[Any], bool], hint: str) -> dict[str, Any]:
    return {"check": predicate, "hint": hint}


#: Sampler names a config may give ("" = the model's own); models.diffusion.SAMPLERS runs them.
SAMPLER_NAMES = ("", "ddim", "dpmpp2m", "dpmpp2m_logsnr")
#: How a config error lists them ("" is the model's own).
SAMPLER_CHOICES = "'', " + ", ".join(SAMPLER_NAMES[1:])
PRECISIONS = ("auto", "fp32", "bf16", "fp16")
PRECISION_HINT = "'auto', 'fp32', 'bf16' or 'fp16'"
FAMILY_HINT = "'' (by runtime), " + ", ".join(repr(f) for f in FAMILIES) + " or an import path module:Class"


@dataclass
class ServerConfig:
    host: str = "127.0.0.1"
    osc_port: int = field(default=9000, metadata=_check(lambda v: 1 <= v <= 65535, "a port 1-65535"))
    #: Largest ``count`` a single ``drum/generate`` may ask for.
    max_count: int = field(default=32, metadata=_check(lambda v: 1 <= v <= 10000, "1-10000"))
    #: Client networks allowed to talk to the daemon (e.g. ["192.168.1.0/24"]). Required when
    #: ``host`` is not a loopback address; packets from elsewhere are dropped and counted.
    allow: list[str] = field(default_factory=list)
    #: Packets larger than this are refused unread; OSC from a patch is a few hundred bytes.
    max_packet_bytes: int = field(default=8192, metadata=_check(lambda v: 64 <= v <= 65507, "64-65507"))
    #: Error replies per second per client host (burst as large); more are counted, not sent,
    #: so a flood of bad packets cannot make the daemon flood back.
    error_replies_per_s: float = field(default=20.0, metadata=_check(lambda v: 0 < v <= 100000, "> 0"))
    #: Packets per second one client socket may send (burst as large); more are dropped unread
    #: and counted, so one runaway sender cannot queue up everyone else's requests.
    max_rate_per_client: float = field(default=1000.0, metadata=_check(lambda v: v > 0, "> 0"))
    #: Requests being served at once; more are dropped (and counted) until some finish.
    max_in_flight: int = field(default=256, metadata=_check(lambda v: 1 <= v <= 100000, "1-100000"))
    #: TCP port of the web console (HTTP + WebSocket, on ``host`` like OSC); 0 turns it off.
    web_port: int = field(default=9080, metadata=_check(lambda v: 0 <= v <= 65535, "a port 1-65535, or 0 for off"))
    #: The secret a browser beyond this machine must put in the console's URL (``?token=``); the
    #: log prints the whole URL. "" = a new random one at every start. Loopback needs none.
    web_token: str = ""


@dataclass
class OutputConfig:
    dir: str = "~/genbridge-out"
    #: Size cap of the session folders in MB (the oldest clips go first); 0 = none.
    max_mb: float = field(default=0.0, metadata=_check(lambda v: v >= 0, ">= 0"))
    #: Clips older than this many hours are removed; 0 = keep.
    max_age_h: float = field(default=0.0, metadata=_check(lambda v: v >= 0, ">= 0"))
    #: Never remove a clip younger than this (a DAW may be loading it).
    min_age_s: float = field(default=600.0, metadata=_check(lambda v: v >= 0, ">= 0"))
    #: How often the caps are applied.
    sweep_every_s: float = field(default=60.0, metadata=_check(lambda v: v > 0, "> 0"))
    #: libsndfile subtype of written WAVs.
    subtype: str = field(default="PCM_24", metadata=_check(
        lambda v: v in ("PCM_16", "PCM_24", "PCM_32", "FLOAT"), "one of PCM_16, PCM_24, PCM_32, FLOAT"))


@dataclass
class AudioConfig:
    #: Output device: "default", a name (or part of one), an index, or "none" for the shared
    #: folder only. With no device at all the daemon logs why and serves the folder.
    device: str = "default"
    #: Frames per callback; smaller is less latency and more CPU.
    block_size: int = field(default=256, metadata=_check(lambda v: 16 <= v <= 8192, "16-8192"))
    #: PortAudio suggested latency in seconds; 0 asks for "low".
    latency: float = field(default=0.0, metadata=_check(lambda v: 0 <= v <= 1, "0-1 s"))
    #: Device sample rate; 0 takes the device's default.
    sample_rate: int = field(default=0, metadata=_check(lambda v: v == 0 or 8000 <= v <= 384000, "0 or 8000-384000"))
    #: Input channels to capture into the ring buffer (0 turns capture off).
    input_channels: int = field(default=2, metadata=_check(lambda v: 0 <= v <= 32, "0-32"))
    capture_seconds: float = field(default=30.0, metadata=_check(lambda v: 1 <= v <= 600, "1-600"))
    max_voices: int = field(default=32, metadata=_check(lambda v: 1 <= v <= 256, "1-256"))
    #: Fade used by choke groups and voice stealing.
    fade_ms: float = field(default=5.0, metadata=_check(lambda v: 0.1 <= v <= 500, "0.1-500"))
    #: gain = (velocity / 127) ** velocity_exponent; 1 is linear amplitude, 2 a wider dynamic.
    velocity_exponent: float = field(default=2.0, metadata=_check(lambda v: 0 <= v <= 8, "0-8"))
    master_gain_db: float = field(default=0.0, metadata=_check(lambda v: -60 <= v <= 24, "-60..24"))
    #: The master soft limiter leaves everything below this untouched.
    limiter_threshold_db: float = field(default=-0.5, metadata=_check(lambda v: -30 <= v <= 0, "-30..0"))


@dataclass
class EngineConfig:
    #: torch threads per model worker (intra-op); keep it at or below the free cores.
    threads: int = field(default=1, metadata=_check(lambda v: 1 <= v <= 256, "1-256"))
    #: Most requests waiting per model before new ones are refused as busy.
    queue_limit: int = field(default=64, metadata=_check(lambda v: 1 <= v <= 100000, "1-100000"))
    #: Pool refills made together in one batch (one network pass per step for all of them),
    #: across the instruments that share a model; 1 makes them one by one. Plays that wait and
    #: explicit generate requests are never batched: they want their one clip soonest.
    refill_batch: int = field(default=4, metadata=_check(lambda v: 1 <= v <= 64, "1-64"))
    #: MIDI velocities (1-127) at which an instrument's fresh clips are made when its model is
    #: conditioned on velocity (a soft hit is a darker, shorter sound, not only a quieter one):
    #: its pool is split into one band per velocity, each keeping ``instruments.NAME.pool`` clips,
    #: and a hit takes from the band nearest its velocity (a tie: the harder band; a dry band: the
    #: nearest band with a clip, still fresh, before the dry policy). A single value is one pool
    #: made at that velocity; [] one pool at the model's default velocity. A model that ignores
    #: velocity always has one pool. Why three: soft, medium and hard (the default model's four
    #: velocity knots span 0-127) with every hit from 20 up within 20 velocity steps of its band.
    #: Why ``pool`` per band: a run of hits at one velocity gets the cover a whole pool gave before;
    #: the price is 3x the clips to make at start-up - 108 for the 9 default instruments at pool 4,
    #: dealt so every band gets one clip (the model's default velocity's band first) before any gets
    #: a second. Measured (bench/fresh_ratio.py, 2 cores shared with a training run): every band
    #: had a clip at 12 s, all were full at 42 s, then 120 of 120 hits at 3 hits/s came fresh from
    #: their own band (docs/ARCHITECTURE.md, "Measured reasons").
    velocity_bands: list[int] = field(default_factory=lambda: list(DEFAULT_VELOCITY_BANDS))
    #: What ``drum/play`` does when an instrument's pool is empty: replay the last clip
    #: (instant, fresh=0) or wait for a new one.
    dry_policy: str = field(default="replay", metadata=_check(lambda v: v in ("replay", "wait"), "'replay' or 'wait'"))
    #: How long a play may wait for a clip before it gets an error reply.
    wait_timeout_s: float = field(default=30.0, metadata=_check(lambda v: v > 0, "> 0"))
    #: CPU niceness of model workers (0-19): generating is background work, so the audio
    #: callback and the OSC server get the CPU first when both want it.
    worker_nice: int = field(default=10, metadata=_check(lambda v: 0 <= v <= 19, "0-19"))
    #: First delay before restarting a crashed worker; doubles per crash up to 30 s.
    restart_delay_s: float = field(default=0.5, metadata=_check(lambda v: v >= 0, ">= 0"))
    #: A model worker whose heartbeat is silent this long is hung (stopped, frozen) and is
    #: killed and restarted; its pools keep their clips. 0 turns the check off. (The audio
    #: process has its own 5 s: its loop turns every 1/8 s.)
    heartbeat_timeout_s: float = field(default=10.0, metadata=_check(lambda v: v == 0 or v >= 1, "0 or >= 1"))
    #: A worker busy this long without a single step of progress is stuck and is restarted.
    stall_timeout_s: float = field(default=120.0, metadata=_check(lambda v: v == 0 or v >= 1, "0 or >= 1"))
    #: A model load with no milestone (a shape compiled, an export written) for this long is stuck.
    load_timeout_s: float = field(default=900.0, metadata=_check(lambda v: v == 0 or v >= 10, "0 or >= 10"))
    #: Resident memory ceiling of each model worker, in MB; 0: half of this machine's memory.
    #: Over it, the worker is restarted with an error reply for what it was making.
    memory_limit_mb: float = field(default=0.0, metadata=_check(lambda v: v == 0 or v >= 100, "0 or >= 100"))

    #: Where model workers run: "local" (a process each on this machine) or "ray" (Ray actors on a
    #: cluster, e.g. a GPU box; ``pip install "genbridge[ray]"``).
    backend: str = field(default="local", metadata=_check(lambda v: v in ("local", "ray"), '"local" or "ray"'))
    #: The Ray cluster: "HOST:PORT" of its head (``ray start --head`` prints it) or "auto".
    ray_address: str = "auto"

    def worker_memory_limit_mb(self, own: float = 0.0) -> float:
        """A worker's ceiling: its own setting, else this one, else half the machine."""
        return own or self.memory_limit_mb or round(physical_memory_mb() / 2)


@dataclass
class ModelConfig:
    #: A model folder, a tiny-audio-diffusion ``.ckpt`` (config.yaml beside it), a plain
    #: weights file with a genbridge config.json beside it, or ``builtin:NAME`` for a folder
    #: shipped under models/.
    path: str = "builtin:default"
    #: Sampling steps; 0 means the model's own default.
    steps: int = field(default=0, metadata=_check(lambda v: 0 <= v <= 1000, "0-1000"))
    #: "" uses the model's own (its config.json's "sampler", else "ddim"); "ddim" (the
    #: library's v-sampler) or "dpmpp2m" / "dpmpp2m_logsnr" (DPM-Solver++ 2M, steps even in time
    #: or in log-SNR: closer in fewer steps).
    sampler: str = field(default="", metadata=_check(lambda v: v in SAMPLER_NAMES, SAMPLER_CHOICES))
    sdpa: bool = True
    #: "auto": fp32 on a CPU, bf16 on a GPU; "fp32", "bf16" (autocast), "fp16" (GPU only).
    precision: str = field(default="auto", metadata=_check(lambda v: v in PRECISIONS, PRECISION_HINT))
    #: torch threads for this model's worker; 0 means engine.threads.
    threads: int = field(default=0, metadata=_check(lambda v: 0 <= v <= 256, "0-256"))
    #: "torch", or "onnx": the denoiser exported once (checked against torch) and run by
    #: onnxruntime; a missing or stale export is made on first use.
    runtime: str = field(default="torch", metadata=_check(lambda v: v in ("torch", "onnx"), "'torch' or 'onnx'"))
    #: The model family (models/generator.py): "" picks "diffusion" or, with runtime = "onnx",
    #: "diffusion-onnx"; another registered family, or an import path "package.module:Class".
    family: str = field(default="", metadata=_check(lambda v: v == "" or is_family_name(v), FAMILY_HINT))
    #: Where the model runs: "auto" (a CUDA GPU when torch sees one, else the CPU), "cpu", "cuda", "cuda:N".
    device: str = field(default="auto", metadata=_check(is_device_name, DEVICE_HINT))
    #: "off"; "compile" (torch.compile at the refill batch and batch 1, warmed up at load);
    #: "graphs" (the same with CUDA graphs, GPU only). Minutes of compiling on a CPU, for no gain there.
    compile: str = field(default="off", metadata=_check(lambda v: v in ("off", "compile", "graphs"),
                                                         "'off', 'compile' or 'graphs'"))
    #: Where the ONNX export lives; "" puts it beside the model (denoiser.onnx / <name>.onnx).
    onnx_path: str = ""
    #: This model's worker memory ceiling in MB (0: engine.memory_limit_mb).
    memory_limit_mb: float = field(default=0.0, metadata=_check(lambda v: v == 0 or v >= 100, "0 or >= 100"))
    #: On a GPU: the most GPU memory this worker may allocate, in MB (0: no cap); a request that
    #: needs more gets an out-of-memory error reply, and the other models keep theirs.
    gpu_memory_limit_mb: float = field(default=0.0, metadata=_check(lambda v: v == 0 or v >= 100, "0 or >= 100"))
    #: engine.backend = "ray": GPUs each actor of this model asks Ray for (fractions share a card).
    num_gpus: float = field(default=0.0, metadata=_check(lambda v: 0 <= v <= 64, "0-64"))
    #: engine.backend = "ray": actors serving this model (a refill batch is split between them).
    replicas: int = field(default=1, metadata=_check(lambda v: 1 <= v <= 64, "1-64"))

    def resolved_path(self) -> Path:
        if self.path.startswith(BUILTIN_PREFIX):
            return BUILTIN_MODELS_DIR / self.path[len(BUILTIN_PREFIX):]
        return Path(self.path).expanduser()


@dataclass
class InstrumentConfig:
    model: str = "default"
    #: How many never-played clips to keep ready: per velocity band when the model is conditioned
    #: on velocity (engine.velocity_bands), else for the instrument.
    pool: int = field(default=4, metadata=_check(lambda v: 0 <= v <= 1000, "0-1000"))
    #: Sampling steps for this instrument; 0 means the model's setting.
    steps: int = field(default=0, metadata=_check(lambda v: 0 <= v <= 1000, "0-1000"))
    #: "" uses the model's sampler; "ddim", "dpmpp2m" or "dpmpp2m_logsnr".
    sampler: str = field(default="", metadata=_check(lambda v: v in SAMPLER_NAMES, SAMPLER_CHOICES))
    gain_db: float = field(default=0.0, metadata=_check(lambda v: -60 <= v <= 24, "-60..24"))
    #: -1 left .. 1 right.
    pan: float = field(default=0.0, metadata=_check(lambda v: -1 <= v <= 1, "-1..1"))
    #: Instruments sharing a group cut each other off (closed hat chokes open hat); 0 = none.
    choke_group: int = field(default=0, metadata=_check(lambda v: 0 <= v <= 64, "0-64"))
    #: Start every hit of this instrument on the next point of this grid ("off", "1/16", "1/8",
    #: "beat", "bar", ...) of the tempo source; a request's own ``quantize`` wins.
    quantize: str = field(default="off", metadata=_check(is_grid, GRID_HINT))


#: General MIDI drum map (and Ableton Drum Rack's pads 36-51) for the default instruments and
#: the ones a kit usually adds; notes mapped to an instrument the config lacks play nothing.
#: Crash 2 (57) and ride 2 (59) play crash and ride; China (52), splash (55) and ride bell (53)
#: are sounds of their own that none of the default instruments is, so they stay unmapped.
GM_DRUM_NOTES = {
    "35": "kick", "36": "kick", "37": "rim", "38": "snare", "39": "clap", "40": "snare",
    "42": "hat", "44": "hat", "46": "open_hat", "49": "crash", "51": "ride", "57": "crash", "59": "ride",
    "41": "tom", "43": "tom", "45": "tom", "47": "tom", "48": "tom", "50": "tom",
}

#: The instruments a config without [instruments] serves: the default model's classes but
#: "perc" (a catch-all class, no pad of a kit).
DEFAULT_INSTRUMENTS = ("kick", "snare", "hat", "open_hat", "clap", "tom", "rim", "crash", "ride")
#: The choke group of the default hats: a closed hat cuts a ringing open hat (and an open hat the
#: closed one), as on a real hi-hat.
HAT_CHOKE_GROUP = 1
#: engine.velocity_bands' default (MIDI velocities).
DEFAULT_VELOCITY_BANDS = (40, 80, 120)

CC_TARGETS = ("steps", "gain", "policy")


@dataclass
class MidiConfig:
    enabled: bool = True
    #: Input ports to open, by exact name or case-insensitive substring; "*" opens all.
    ports: list[str] = field(default_factory=list)
    #: Also open a virtual input named "genbridge" (JACK, ALSA, CoreMIDI; not Windows MM).
    virtual: bool = True
    #: A mido backend, e.g. "mido.backends.rtmidi/UNIX_JACK"; "" uses MIDO_BACKEND or mido's default.
    backend: str = ""
    #: 1-16 listens to one channel; 0 to all.
    channel: int = field(default=0, metadata=_check(lambda v: 0 <= v <= 16, "0-16"))
    #: note number -> instrument.
    notes: dict[str, str] = field(default_factory=lambda: dict(GM_DRUM_NOTES))
    #: CC number -> "steps", "gain" or "policy", optionally ":instrument" (default: all).
    cc: dict[str, str] = field(default_factory=lambda: {"20": "steps", "7": "gain", "21": "policy"})
    #: Program change number -> kit name (see [kits]).
    programs: dict[str, str] = field(default_factory=dict)


@dataclass
class ContinuationConfig:
    """MusicGen continuation and text-to-music (``/genbridge/continue``, ``/genbridge/music/generate``,
    ``genbridge continue``, ``genbridge music``)."""

    #: A transformers folder, an audiocraft folder (state_dict.bin + compression_state_dict.bin),
    #: or a model id in the local Hugging Face cache; "" turns continuation off.
    model: str = ""
    #: A fine-tuned LM state dict (``torch.save(model.lm.state_dict())``) put over ``model``.
    lm_weights: str = ""
    threads: int = field(default=0, metadata=_check(lambda v: 0 <= v <= 256, "0-256"))
    precision: str = field(default="fp32", metadata=_check(lambda v: v in PRECISIONS, PRECISION_HINT))
    #: Where MusicGen runs: "auto", "cpu", "cuda" or "cuda:N" (as [models.NAME] device).
    device: str = field(default="auto", metadata=_check(is_device_name, DEVICE_HINT))
    #: Accepted from older configs: "dynamic" or "static". MusicGen's token loop allocates its
    #: cache once per window (fixed shapes) either way.
    kv_cache: str = field(default="static", metadata=_check(lambda v: v in ("dynamic", "static"),
                                                            "'dynamic' or 'static'"))
    #: The LM's weights on a CPU (models/linear_formats.py, bench/continuation.py): "int8"
    #: (fbgemm dynamic int8: real time on 2 cores), "int8w" (int8 weights, bf16 activations),
    #: "int4" (4-bit groups of 32), or "none" (the precision's: fp32 or bf16).
    quantize: str = field(default="none", metadata=_check(lambda v: v in ("none", "int8", "int8w", "int4"),
                                                          "'none', 'int8', 'int8w' or 'int4'"))
    #: The token steps on all ``threads`` with their OpenMP threads spinning briefly between steps,
    #: chunks decoded in between: real time on an otherwise idle 2-core CPU. Off (the default):
    #: token steps on one thread, chunks decoded on a second one, nothing spins - a step
    #: slowed 3-5x by spinning when another process (a drum model refilling) wanted the core.
    spin_wait: bool = False
    prompt_seconds: float = field(default=3.0, metadata=_check(lambda v: 0.1 <= v <= 30, "0.1-30"))
    #: The longest continuation or text-to-music take one request may ask for (past the model's
    #: window, MusicGen slides it: see window_stride_seconds).
    max_seconds: float = field(default=30.0, metadata=_check(lambda v: 1 <= v <= 300, "1-300"))
    #: A piece longer than the model's window: each further window keeps window - stride seconds as
    #: context and makes stride seconds of new audio (audiocraft's extend_stride).
    window_stride_seconds: float = field(default=18.0, metadata=_check(lambda v: 1 <= v <= 290, "1-290"))
    #: The most takes one request may ask for (``takes``; they are made together, in one pass).
    max_takes: int = field(default=8, metadata=_check(lambda v: 1 <= v <= 8, "1-8"))
    chunk_seconds: float = field(default=1.5, metadata=_check(lambda v: 0.2 <= v <= 10, "0.2-10"))
    #: The first chunk comes after this much new audio (sooner than chunk_seconds: less wait
    #: before anything sounds).
    first_chunk_seconds: float = field(default=0.5, metadata=_check(lambda v: 0.1 <= v <= 10, "0.1-10"))
    temperature: float = field(default=1.0, metadata=_check(lambda v: 0 < v <= 10, "0-10"))
    top_k: int = field(default=250, metadata=_check(lambda v: 0 <= v <= 100000, "0-100000"))
    top_p: float = field(default=0.0, metadata=_check(lambda v: 0 <= v <= 1, "0-1"))
    #: Classifier-free guidance, only when a description is given.
    guidance_scale: float = field(default=3.0, metadata=_check(lambda v: 0 <= v <= 20, "0-20"))
    #: Requests (continuations, text-to-music; all takes of one count once) waiting behind the
    #: running one before "busy" errors.
    queue_limit: int = field(default=8, metadata=_check(lambda v: 1 <= v <= 1000, "1-1000"))
    #: Play each chunk on the audio output as it arrives.
    play_chunks: bool = False
    #: Where played chunks (and a ``play`` on done) start: the next point of this grid of the
    #: tempo source, late enough that playback will not run dry; then gap-free. "off": at once.
    play_quantize: str = field(default="bar", metadata=_check(is_grid, GRID_HINT))
    #: The MusicGen worker's memory ceiling in MB (0: engine.memory_limit_mb).
    memory_limit_mb: float = field(default=0.0, metadata=_check(lambda v: v == 0 or v >= 100, "0 or >= 100"))
    #: On a GPU: the most GPU memory MusicGen may allocate, in MB (0: no cap).
    gpu_memory_limit_mb: float = field(default=0.0, metadata=_check(lambda v: v == 0 or v >= 100, "0 or >= 100"))


@dataclass
class TempoConfig:
    """Musical time: the tempo source quantised starts and lengths in bars follow."""

    #: "fixed" (bpm, the daemon's own beat), "midi" (MIDI clock in), "link" (Ableton Link).
    source: str = field(default="fixed", metadata=_check(lambda v: v in TEMPO_SOURCES,
                                                         " or ".join(repr(s) for s in TEMPO_SOURCES)))
    #: The fixed tempo, Link's start tempo (a session already running keeps its own), MIDI's
    #: stand-in before the first clock ticks.
    bpm: float = field(default=120.0, metadata=_check(lambda v: MIN_BPM <= v <= MAX_BPM, f"{MIN_BPM:g}-{MAX_BPM:g}"))
    #: Beats per bar (Link's quantum): what "bar" means for quantised starts and lengths in bars.
    quantum: float = field(default=4.0, metadata=_check(lambda v: 1 <= v <= 16 and float(v).is_integer(),
                                                        "a whole number of beats 1-16"))
    #: Tempo listeners kept (``/genbridge/tempo/listen``); the oldest go first.
    max_listeners: int = field(default=64, metadata=_check(lambda v: 1 <= v <= 4096, "1-4096"))


def _default_instruments() -> dict[str, InstrumentConfig]:
    """What a config without [instruments] serves. A config that lists instruments gets exactly
    those, with each option's default (choke_group 0: list it to choke hats)."""
    return {name: InstrumentConfig(choke_group=HAT_CHOKE_GROUP if name in ("hat", "open_hat") else 0)
            for name in DEFAULT_INSTRUMENTS}


@dataclass
class Config:
    server: ServerConfig = field(default_factory=ServerConfig)
    output: OutputConfig = field(default_factory=OutputConfig)
    audio: AudioConfig = field(default_factory=AudioConfig)
    engine: EngineConfig = field(default_factory=EngineConfig)
    finishing: FinishingSettings = field(default_factory=FinishingSettings)
    midi: MidiConfig = field(default_factory=MidiConfig)
    models: dict[str, ModelConfig] = field(default_factory=lambda: {"default": ModelConfig()})
    instruments: dict[str, InstrumentConfig] = field(default_factory=_default_instruments)
    #: Named sets of instrument -> model, switched by MIDI program change or /genbridge/kit/select.
    kits: dict[str, dict[str, str]] = field(default_factory=dict)
    continuation: ContinuationConfig = field(default_factory=ContinuationConfig)
    tempo: TempoConfig = field(default_factory=TempoConfig)

    def validate(self) -> None:
        import ipaddress

        networks = []
        for i, net in enumerate(self.server.allow):
            try:
                networks.append(ipaddress.ip_network(net, strict=False))
            except ValueError:
                raise ConfigError(f"server.allow[{i}]",
                                  f"expected a network like 192.168.1.0/24, got {net!r}") from None
        try:
            loopback = ipaddress.ip_address(self.server.host).is_loopback
        except ValueError:
            loopback = self.server.host == "localhost"
        if not loopback and not networks:
            raise ConfigError("server.allow", f"listening on {self.server.host} (beyond this machine) needs an "
                              "allow-list of client networks, e.g. allow = [\"192.168.1.0/24\"]")
        """Cross-field checks that a single option cannot express."""
        bands = self.engine.velocity_bands
        for i, v in enumerate(bands):
            if not 1 <= v <= 127:
                raise ConfigError(f"engine.velocity_bands[{i}]", f"expected a MIDI velocity 1-127, got {v!r}")
        if len(set(bands)) != len(bands):
            raise ConfigError("engine.velocity_bands", f"velocities repeat: {bands}")
        if len(bands) > 16:
            raise ConfigError("engine.velocity_bands", f"at most 16 bands, got {len(bands)}")
        if not self.instruments:
            raise ConfigError("instruments", "at least one instrument is needed")
        for name, inst in self.instruments.items():
            if not _is_name(name):
                raise ConfigError(f"instruments.{name}", "names use letters, digits, '-' and '_' only")
            if inst.model not in self.models:
                raise ConfigError(f"instruments.{name}.model",
                                  f"no model named {inst.model!r} (models: {', '.join(sorted(self.models))})")
        for kit, mapping in self.kits.items():
            for inst, model in mapping.items():
                if inst not in self.instruments:
                    raise ConfigError(f"kits.{kit}.{inst}", f"no instrument named {inst!r}")
                if model not in self.models:
                    raise ConfigError(f"kits.{kit}.{inst}", f"no model named {model!r}")
        for program, kit in self.midi.programs.items():
            if not program.isdigit() or not 0 <= int(program) <= 127:
                raise ConfigError(f"midi.programs.{program}", "keys are program numbers 0-127")
            if kit not in self.kits:
                raise ConfigError(f"midi.programs.{program}", f"no kit named {kit!r}")
        for note in self.midi.notes:
            if not note.isdigit() or not 0 <= int(note) <= 127:
                raise ConfigError(f"midi.notes.{note}", "keys are MIDI note numbers 0-127")
        for number, target in self.midi.cc.items():
            key = f"midi.cc.{number}"
            if not number.isdigit() or not 0 <= int(number) <= 127:
                raise ConfigError(key, "keys are CC numbers 0-127")
            what, _, inst = target.partition(":")
            if what not in CC_TARGETS:
                raise ConfigError(key, f"target must be one of {', '.join(CC_TARGETS)} (optionally :instrument)")
            if inst and inst not in self.instruments:
                raise ConfigError(key, f"no instrument named {inst!r}")
        for name, model in self.models.items():
            if not _is_name(name):
                raise ConfigError(f"models.{name}", "names use letters, digits, '-' and '_' only")
            if not model.resolved_path().exists():
                raise ConfigError(f"models.{name}.path", f"not found: {model.resolved_path()}")
        self.check_devices()

    def check_devices(self) -> None:
        """A GPU named explicitly must exist here: a config error at start, not a crash at the first
        trigger. "auto" always works (it falls back to the CPU). Asks a child Python, once, only when
        some device names CUDA (the daemon's own process never imports torch)."""
        from models.devices import DeviceError, check_available

        named = [(f"models.{n}.device", m.device) for n, m in self.models.items()]
        if self.continuation.model:
            named.append(("continuation.device", self.continuation.device))
        for key, device in named:
            try:
                check_available(device)
            except DeviceError as exc:
                raise ConfigError(key, str(exc)) from None

    def instrument_params(self, name: str) -> dict[str, Any]:
        """The render parameters an instrument's clips get from the config: its steps and sampler,
        else its model's (0 and "" leave the choice to the model folder)."""
        inst = self.instruments[name]
        model = self.models[inst.model]
        return {"steps": inst.steps or model.steps, "sampler": inst.sampler or model.sampler}

    def model_threads(self, name: str) -> int:
        return self.models[name].threads or self.engine.threads


def _is_name(name: str) -> bool:
    return bool(name) and len(name) <= 64 and all(c.isalnum() or c in "-_" for c in name)


def _convert(key: str, value: Any, typ: Any) -> Any:
    if typ is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(key, f"expected true or false, got {value!r}")
    if typ is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise ConfigError(key, f"expected an integer, got {value!r}")
    if typ is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        raise ConfigError(key, f"expected a number, got {value!r}")
    if typ is str:
        if isinstance(value, str):
            return value
        if isinstance(value, int) and not isinstance(value, bool):
            return str(value)  # e.g. audio.device = 3
        raise ConfigError(key, f"expected a string, got {value!r}")
    raise ConfigError(key, f"unsupported option type {typ}")


def _build(cls: type, data: Any, prefix: str) -> Any:
    if not isinstance(data, Mapping):
        raise ConfigError(prefix, f"expected a table, got {data!r}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise ConfigError(f"{prefix}.{unknown[0]}" if prefix else unknown[0],
                          f"unknown option (known: {', '.join(fields)})")
    kwargs: dict[str, Any] = {}
    for name, value in data.items():
        key = f"{prefix}.{name}" if prefix else name
        typ = hints[name]
        origin = typing.get_origin(typ)
        if origin is dict:
            item_type = typing.get_args(typ)[1]
            if not isinstance(value, Mapping):
                raise ConfigError(key, f"expected a table, got {value!r}")
            if dataclasses.is_dataclass(item_type):
                kwargs[name] = {k: _build(item_type, v, f"{key}.{k}") for k, v in value.items()}
            elif typing.get_origin(item_type) is dict:
                inner = typing.get_args(item_type)[1]
                kwargs[name] = {}
                for k, v in value.items():
                    if not isinstance(v, Mapping):
                        raise ConfigError(f"{key}.{k}", f"expected a table, got {v!r}")
                    kwargs[name][k] = {str(ik): _convert(f"{key}.{k}.{ik}", iv, inner) for ik, iv in v.items()}
            else:
                kwargs[name] = {str(k): _convert(f"{key}.{k}", v, item_type) for k, v in value.items()}
        elif origin is list:
            item_type = typing.get_args(typ)[0]
            if not isinstance(value, list):
                raise ConfigError(key, f"expected a list, got {value!r}")
            kwargs[name] = [_convert(f"{key}[{i}]", v, item_type) for i, v in enumerate(value)]
        elif dataclasses.is_dataclass(typ):
            kwargs[name] = _build(typ, value, key)
        else:
            converted = _convert(key, value, typ)
            meta = fields[name].metadata
            if "check" in meta and not meta["check"](converted):
                raise ConfigError(key, f"expected {meta['hint']}, got {value!r}")
            kwargs[name] = converted
    return cls(**kwargs)


def config_from_mapping(data: Mapping[str, Any]) -> Config:
    """Build and validate a Config from parsed TOML (missing options take their defaults)."""
    config = _build(Config, data, "")
    config.validate()
    return config


def load_config(path: str | Path | None) -> Config:
    """Read a TOML file (or the defaults when ``path`` is None)."""
    if path is None:
        return config_from_mapping({})
    p = Path(path).expanduser()
    try:
        data = tomllib.loads(p.read_text())
    except FileNotFoundError:
        raise ConfigError("", f"config file not found: {p}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError("", f"{p} is not valid TOML: {exc}") from None
    return config_from_mapping(data)


def apply_overrides(config: Config, *, host: str | None = None, osc_port: int | None = None,
                    web_port: int | None = None,
                    out: str | None = None, audio_device: str | None = None,
                    midi_ports: list[str] | None = None, midi_virtual: bool | None = None,
                    device: str | None = None, link: bool = False) -> Config:
    """Command-line flags win over the file; checked like file options. ``device`` puts every
    model (and the continuation model) on one device."""
    if host is not None:
        config.server.host = host
    if osc_port is not None:
        if not 1 <= osc_port <= 65535:
            raise ConfigError("server.osc_port", f"expected a port 1-65535, got {osc_port}")
        config.server.osc_port = osc_port
    if web_port is not None:
        if not 0 <= web_port <= 65535:
            raise ConfigError("server.web_port", f"expected a port 1-65535 or 0 (off), got {web_port}")
        config.server.web_port = web_port
    if out is not None:
        config.output.dir = out
    if audio_device is not None:
        config.audio.device = audio_device
    if midi_ports:
        config.midi.ports = list(midi_ports)
    if midi_virtual:
        config.midi.virtual = True
    if link:
        config.tempo.source = "link"
    if device is not None:
        from models.devices import DeviceError, check_available

        try:
            check_available(device)
        except DeviceError as exc:
            raise ConfigError("--device", str(exc)) from None
        for model in config.models.values():
            model.device = device
        config.continuation.device = device
    return config
