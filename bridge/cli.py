"""The ``genbridge`` command: serve, generate, continue, music, devices, protocol, --version.

Exit codes: 0 done, 1 could not run (port taken, model failed), 2 bad config or arguments.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import subprocess
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from bridge import __version__
from bridge.config import SAMPLER_NAMES, Config, ConfigError, apply_overrides, load_config
from bridge.protocol import MAX_MUSIC_SECONDS, MAX_TAKES

#: Kept in sync with models.drum_data.DEFAULT_HELD_OUT (imported lazily: it pulls numpy only,
#: but the CLI's startup should not depend on the model packages).
DEFAULT_HELD_OUT_KITS = ("Millo_MultiLayered3", "VariBreaks", "timgm6mb-soundfont", "hydrogen-data",
                         "avldrums.lv2-soundfont")

log = logging.getLogger("genbridge")

if TYPE_CHECKING:
    from bridge.worker_handle import WorkerSpec


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="genbridge", description=__doc__.splitlines()[0])
    p.add_argument("--version", action="version", version=f"genbridge {__version__}")
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = p.add_subparsers(dest="command", required=True)

    s = sub.add_parser("serve", help="run the daemon")
    s.add_argument("--config", help="TOML config file (every option has a default)")
    s.add_argument("--host", help="address to listen on (default 127.0.0.1)")
    s.add_argument("--osc-port", type=int, help="UDP port for OSC (default 9000)")
    s.add_argument("--web-port", type=int, help="TCP port of the web console (default 9080; 0 = off)")
    s.add_argument("--out", help="shared folder for generated clips")
    s.add_argument("--audio-device", help="audio output device name or index, or 'none'")
    s.add_argument("--midi-port", action="append", metavar="NAME",
                   help="MIDI input to open, by name or part of one (repeatable; replaces midi.ports)")
    s.add_argument("--midi-virtual", action="store_true", help="open a virtual MIDI input named genbridge")
    s.add_argument("--link", action="store_true", help="follow an Ableton Link session ([tempo] source = \"link\")")
    s.add_argument("--device", help="run every model on this device: auto, cpu, cuda or cuda:N "
                   "(replaces [models.*] device and continuation.device)")

    g = sub.add_parser("generate", help="generate one-shots into a folder, without the daemon")
    g.add_argument("instrument")
    g.add_argument("-n", "--count", type=int, default=1)
    g.add_argument("--seed", type=int, help="first seed (clip k uses seed + k); random if absent")
    g.add_argument("--steps", type=int, help="sampling steps (default: the model's)")
    g.add_argument("--sampler", choices=SAMPLER_NAMES[1:], help="default: the instrument's, then the model's")
    g.add_argument("--velocity", type=int, help="MIDI velocity 0-127 the clips are made at, for a model "
                   "conditioned on velocity (a soft hit is a darker, shorter sound); default: the model's")
    g.add_argument("-o", "--out", required=True, help="folder to write WAV + JSON sidecars into")
    g.add_argument("--config", help="TOML config file (for instruments, models, finishing)")
    g.add_argument("--threads", type=int, default=0, help="torch threads (default: engine.threads)")
    g.add_argument("--device", help="auto, cpu, cuda or cuda:N (default: the model's [models.*] device)")

    e = sub.add_parser("export", help="export a model for another runtime")
    e.add_argument("format", choices=["onnx"])
    e.add_argument("model", help="a model folder, .ckpt or weights file, or builtin:NAME")
    e.add_argument("-o", "--out", help="output file (default: beside the model)")
    e.add_argument("--opset", type=int, default=17)

    t = sub.add_parser("train", help="train or fine-tune a drum model on sample folders or Hydrogen kits")
    t.add_argument("data", nargs="+", help="Hydrogen kit folders, a folder of kits, or sample folders "
                   "(files labelled by sub-folder or file name: kick/, Snare 02.wav...)")
    t.add_argument("-o", "--out", required=True,
                   help="run folder: checkpoint.pt (resumed when present) and model/ at the end")
    t.add_argument("--steps", type=int, default=2000, help="total optimiser steps (a resumed run goes on to this)")
    t.add_argument("--batch", type=int, default=8)
    t.add_argument("--lr", type=float, default=2e-4)
    t.add_argument("--init", help="fine-tune this model (a genbridge folder or a tiny-audio-diffusion .ckpt)")
    t.add_argument("--transfer", metavar="MODEL", help="start a new network (the default shape or --arch) from "
                   "this model's weights where they fit, instruments by name (how the shipped default grew)")
    t.add_argument("--amplitude-power", type=float, default=1.0, metavar="P",
                   help="train on companded audio, sign(x)*|x|**P (0 < P <= 1; the default model: 0.5): the "
                   "network's noise floor comes out lower under a decayed hit")
    t.add_argument("--emphasis", type=float, default=0.0, metavar="W",
                   help="weigh high-frequency error more: the loss adds W times the error's first difference "
                   "squared (for 4: error at 8 kHz counts x14, at 500 Hz x1.08; the default model: 4 after its first "
                   "6000 steps): hiss under a kick is a tiny part of a plain loss")
    t.add_argument("--arch", help="JSON file with sample_rate, length and unet (a genbridge config.json "
                   "works) for a model from scratch (default: the shipped default's shape)")
    t.add_argument("--instrument", help="train one instrument, unconditionally (needed to fine-tune an "
                   "unconditional checkpoint)")
    t.add_argument("--classes", help="comma-separated instruments for a class-conditioned model "
                   "(default: every instrument found)")
    t.add_argument("--hold-out", default=",".join(DEFAULT_HELD_OUT_KITS),
                   help="comma-separated kit names kept out of training, for evaluation ('' for none)")
    t.add_argument("--threads", type=int, default=0, help="torch threads (default: up to 4)")
    t.add_argument("--fp32", action="store_true",
                   help="train in fp32 (default: bf16 autocast where the GPU or CPU has native bf16, "
                   "1.3x faster there; fp32 on a CPU without it, where emulated bf16 is 10x slower)")
    t.add_argument("--device", default="auto", help="where the network trains: auto (a CUDA GPU when torch "
                   "sees one, else the CPU), cpu, cuda or cuda:N")
    t.add_argument("--balance", type=float, default=0.0, metavar="0..1",
                   help="draw instruments equally often (1) or as often as the data holds them (0, default); "
                   "helps rare instruments (few kicks among many percussion clips)")
    t.add_argument("--default-steps", type=int, default=25,
                   help="sampling steps the model folder asks for by default")
    t.add_argument("--lowpass", action="append", default=[], metavar="INSTRUMENT=HZ",
                   help="a high-cut the model folder applies to that instrument's clips (repeatable; '*' for "
                   "every clip), for a model that leaves hiss above the hit (the default's kicks: kick=8000); "
                   "default: what the --init model had, none from scratch")
    t.add_argument("--checkpoint-minutes", type=float, default=5.0)
    t.add_argument("--snapshot-every", type=int, default=0, metavar="STEPS",
                   help="also write a model folder every STEPS steps to OUT/snapshots/ (pick the best one "
                   "with bench/drum_quality.py)")
    t.add_argument("--snapshot", metavar="DIR", help="write a model folder from the run's last checkpoint "
                   "to DIR and exit (listen to a run while it trains; give the run's own arguments)")
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--name", default="drums", help="model name in its card")

    c = sub.add_parser("continue", help="continue a clip with MusicGen, offline, several takes")
    c.add_argument("prompt", help="WAV (or FLAC/AIFF) whose last seconds are continued")
    c.add_argument("--model", required=True, help="a transformers or audiocraft MusicGen folder, or a model id "
                   "in the local Hugging Face cache")
    c.add_argument("--lm-weights", help="a fine-tuned LM state dict (torch.save(model.lm.state_dict())) over --model")
    c.add_argument("--seconds", type=float, required=True, help="new audio per take")
    c.add_argument("--description", default="", help="text (needs the model's text encoder)")
    c.add_argument("--takes", type=int, default=1, help="how many continuations, made together in one pass "
                   "(1-8; seeds seed, seed+1, ...)")
    c.add_argument("--seed", type=int, help="first seed (random if absent)")
    c.add_argument("--prompt-seconds", type=float, default=3.0)
    c.add_argument("--temperature", type=float, default=1.0)
    c.add_argument("--top-k", type=int, default=250)
    _musicgen_options(c)

    m = sub.add_parser("music", help="text to music with MusicGen, offline, several takes in one pass")
    m.add_argument("description", help="what to make, in words ('' for unconditional music)")
    m.add_argument("--model", required=True, help="a transformers MusicGen folder (with its text encoder and "
                   "tokenizer), an audiocraft folder, or a model id in the local Hugging Face cache")
    m.add_argument("--lm-weights", help="a fine-tuned LM state dict (torch.save(model.lm.state_dict())) over --model")
    m.add_argument("--seconds", type=float, required=True, help=f"length of each take (up to {MAX_MUSIC_SECONDS:g})")
    m.add_argument("--takes", type=int, default=1, help=f"how many pieces, made together in one pass (1-{MAX_TAKES}; "
                   "seeds seed, seed+1, ...)")
    m.add_argument("--seed", type=int, help="first seed (random if absent)")
    m.add_argument("--temperature", type=float, default=1.0)
    m.add_argument("--top-k", type=int, default=250)
    m.add_argument("--top-p", type=float, default=0.0)
    m.add_argument("--guidance-scale", type=float, default=3.0, help="classifier-free guidance (with a description)")
    _musicgen_options(m)

    d = sub.add_parser("data", help="prepare the default model's training data from Debian's drum packages "
                       "(lmms-common, sonic-pi-samples, the GM soundfonts rendered with fluidsynth)")
    d.add_argument("-o", "--out", default="data/drums", help="folder for the manifests and soundfont renders")

    r = sub.add_parser("render", help="draw WAV clips (files or folders) as a PNG sheet: waveform over "
                       "spectrogram, one column per instrument")
    r.add_argument("clips", nargs="+", help="WAV files or folders of them (the daemon's session folders work)")
    r.add_argument("-o", "--out", required=True, help="PNG file to write")
    r.add_argument("--per-column", type=int, default=4, help="clips per instrument (default 4)")
    r.add_argument("--title", default="")

    sub.add_parser("devices", help="list audio devices and MIDI ports")
    sub.add_parser("protocol", help="print the OSC address table (Markdown)")
    return p


def _musicgen_options(p: argparse.ArgumentParser) -> None:
    """What ``genbridge continue`` and ``genbridge music`` share: windows, where it runs, the output."""
    p.add_argument("--window-stride", type=float, metavar="S", help="past the model's window, each further "
                   "window makes S seconds of new audio (default: the model's, 18)")
    p.add_argument("--int8", action="store_true", help="the LM in int8 (fbgemm dynamic quantisation: real time on "
                   "a 2-core CPU; CPU only); the same as --quantize int8")
    p.add_argument("--quantize", choices=("none", "int8", "int8w", "int4"), default="none",
                   help="the LM's weights on a CPU (bench/continuation.py compares them)")
    p.add_argument("--threads", type=int, default=0, help="torch threads (default: all cores up to 4)")
    p.add_argument("--spin", action="store_true", help="token steps on every thread, spinning between them: "
                   "faster on a machine doing nothing else ([continuation] spin_wait)")
    p.add_argument("--device", default="auto", help="auto (a CUDA GPU when torch sees one), cpu, cuda or cuda:N")
    p.add_argument("-o", "--out", required=True, help="folder for the takes (WAV + JSON sidecar each)")


def _setup_logging(verbose: bool) -> None:
    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO,
                        format="%(asctime)s %(name)s %(levelname)s %(message)s", stream=sys.stderr)


def _serve(args: argparse.Namespace, config: Config) -> int:
    from bridge.daemon import StartupError, run_daemon

    try:
        asyncio.run(run_daemon(config))
    except StartupError as exc:
        log.error("%s", exc)
        return 1
    return 0


def _generate(args: argparse.Namespace, config: Config) -> int:
    """Offline one-shots through the same family, render and sidecar code the daemon's workers run."""
    from bridge.worker_handle import drum_worker_spec

    if args.instrument not in config.instruments:
        raise ConfigError("", f"unknown instrument {args.instrument!r} (known: {', '.join(config.instruments)})")
    if args.count < 1:
        raise ConfigError("", f"--count must be at least 1, got {args.count}")
    if args.velocity is not None and not 0 <= args.velocity <= 127:
        raise ConfigError("", f"--velocity must be 0-127, got {args.velocity}")
    model = config.instruments[args.instrument].model
    if args.device:
        apply_overrides(config, device=args.device)
    spec = drum_worker_spec(config, model)
    spec.threads = args.threads or spec.threads
    params = config.instrument_params(args.instrument) | {k: v for k, v in (("steps", args.steps),
                                                                            ("sampler", args.sampler)) if v}
    first = args.seed if args.seed is not None else _random_seed(args.count)
    return _render_offline(spec, params, [(first + k, args.instrument) for k in range(args.count)], args.out,
                           config.output.subtype, desc=f"{args.instrument} x{args.count}",
                           velocity=None if args.velocity is None else args.velocity / 127)


def _random_seed(count: int) -> int:
    import random

    return random.randint(0, 2**31 - 1 - count)


def _render_offline(spec: "WorkerSpec", params: dict, requests: list[tuple[int, str | None]], out: str,
                    subtype: str, *, desc: str, name_of: Any = None, one_call: bool = False,
                    velocity: float | None = None) -> int:
    """Load ``spec``'s model here, render each (seed, instrument) with a progress bar, write WAV + sidecar.
    ``one_call``: every request in one render (MusicGen's takes: one batched pass), else one each.
    ``velocity``: 0-1 for every request (None: the model's default)."""
    from models.runtime_env import configure_threads_env

    configure_threads_env(spec.threads, spec.spin)
    from tqdm import tqdm

    from bridge.finishing import FinishingSettings
    from bridge.rendering import generator_info, render_clips
    from bridge.sinks.folder import FolderSink
    from models.diffusion import ModelLoadError
    from models.generator import GeneratorError, LoadSpec, Progress, RenderRequest, get_family
    from models.musicgen import MusicgenLoadError
    from models.terminal import unsized_terminal_bar

    family = get_family(spec.family)
    try:
        params = family.check_params(params, None)
        generator = family.load(LoadSpec(spec.model_name, spec.model_path, spec.device, spec.threads, spec.options))
    except (GeneratorError, ModelLoadError, MusicgenLoadError, OSError) as exc:
        log.error("%s", exc)
        return 1
    info = generator_info(generator, family, spec.model_path)
    finishing = FinishingSettings(**spec.finishing) if spec.finishing is not None else None
    sink = FolderSink(out, subtype, session="")
    log.info("%s on %s (%s, %s)", spec.model_name, info["device"], info["device_name"], info["precision"])
    numbered = [RenderRequest(k, seed, instrument, velocity) for k, (seed, instrument) in enumerate(requests)]
    batches = [numbered] if one_call else [[r] for r in numbered]
    # One bar for the whole run: network steps where the family counts them (k clips x steps),
    # else percent of each render (a continuation reports fractions, one for all its takes).
    with tqdm(total=len(batches), desc=desc, unit="step", **unsized_terminal_bar()) as bar:
        for b, batch in enumerate(batches):
            def step(done: int, total: int) -> bool:
                if total:
                    if bar.total != len(batches) * total:
                        bar.total = len(batches) * total
                        bar.refresh()
                    bar.update(1)
                return True

            def fraction(f: float, b: int = b) -> None:
                if bar.total != 100 * len(batches):
                    bar.unit, bar.total = "%", 100 * len(batches)
                bar.update(int(100 * (b + f)) - bar.n)

            progress = Progress(step=step, fraction=fraction)
            try:
                clips = render_clips(generator, spec.model_name, info, batch, params, finishing=finishing,
                                     progress=progress)
            except GeneratorError as exc:
                log.error("%s", exc)
                return 1
            for clip in clips:
                if name_of is not None:
                    clip.meta |= name_of(clip)
                try:
                    path = sink.write_to_session(clip)
                except OSError as exc:  # a FolderError: the folder and why (disk full, read-only)
                    log.error("%s", exc)
                    return 1
                rtf = clip.meta.get("realtime_factor")
                if rtf is None and one_call and clip.meta.get("generation_s"):
                    # the pass made every take at once: this take's seconds per second of the pass
                    rtf = clip.duration_s / (clip.meta["generation_s"] * len(batch))
                bar.write(f"{path}" + (f" ({clip.duration_s:g} s, real-time factor {rtf:.2f})" if rtf else ""))
    return 0


def _export(args: argparse.Namespace) -> int:
    from bridge.config import ModelConfig
    from models.runtime_env import configure_threads_env

    configure_threads_env(2)
    from tqdm import tqdm

    from export.onnx import default_onnx_path, export_denoiser
    from models.diffusion import ModelLoadError
    from models.terminal import unsized_terminal_bar

    model = ModelConfig(path=args.model).resolved_path()
    out = Path(args.out) if args.out else default_onnx_path(model)
    with tqdm(total=4, desc="export onnx", bar_format="{desc}: {n}/{total} {postfix}", **unsized_terminal_bar()) as bar:
        def progress(msg: str) -> None:
            bar.set_postfix_str(msg)
            bar.update(1)

        try:
            meta = export_denoiser(model, out, opset=args.opset, progress=progress)
        except (ModelLoadError, RuntimeError) as exc:
            log.error("%s", exc)
            return 1
    parity = meta["parity"]
    print(f"{out}: max abs error {parity['max_abs']:.3e}, max rel error {parity['max_rel']:.3e} "
          f"(batches {parity['batches']}), {meta['export_s']} s")
    return 0


def _musicgen_spec(args: argparse.Namespace) -> "WorkerSpec | int":
    """The musicgen worker spec of ``genbridge continue`` / ``genbridge music``, or the exit code
    of arguments that are wrong (2)."""
    import os

    from bridge.worker_handle import WorkerSpec

    if not 1 <= args.takes <= MAX_TAKES or not 0 < args.seconds <= MAX_MUSIC_SECONDS:
        log.error("--takes must be 1-%d and --seconds above 0 and at most %g", MAX_TAKES, MAX_MUSIC_SECONDS)
        return 2
    if args.window_stride is not None and not args.window_stride > 0:
        log.error("--window-stride must be above 0")
        return 2
    from models.devices import DeviceError, check_available

    try:
        check_available(args.device)
    except DeviceError as exc:
        print(f"genbridge: --device: {exc}", file=sys.stderr)
        return 2
    threads = args.threads or max(1, min(4, os.cpu_count() or 1))
    return WorkerSpec(model_name="continuation", family="musicgen", model_path=args.model, device=args.device,
                      threads=threads, spin=args.spin,
                      options={"quantize": "int8" if args.int8 else args.quantize,
                               "lm_weights": args.lm_weights or "", "precision": "fp32"})


def _takes(args: argparse.Namespace, spec: "WorkerSpec", params: dict, instrument: str, name_of: Any) -> int:
    """Render ``args.takes`` takes of ``params`` in one call (one batched pass, seeds seed, seed+1, ...)."""
    if args.window_stride is not None:
        params = params | {"window_stride_seconds": args.window_stride}
    first = args.seed if args.seed is not None else _random_seed(args.takes)
    return _render_offline(spec, params, [(first + k, instrument) for k in range(args.takes)], args.out, "PCM_24",
                           desc=f"{args.takes} take{'s' if args.takes > 1 else ''}", name_of=name_of, one_call=True)


def _continue(args: argparse.Namespace) -> int:
    """MusicGen takes offline, through the musicgen family and the daemon's render path."""
    from bridge.sources import SourceError, read_tail

    spec = _musicgen_spec(args)
    if isinstance(spec, int):
        return spec
    try:
        audio, rate = read_tail(Path(args.prompt).expanduser(), args.prompt_seconds)
    except (SourceError, OSError) as exc:
        log.error("%s", exc)
        return 1
    params = {"audio": audio, "rate": rate, "seconds": args.seconds, "prompt_seconds": args.prompt_seconds,
              "temperature": args.temperature, "top_k": args.top_k, "description": args.description or None}
    return _takes(args, spec, params, "continue",
                  lambda clip: {"source": str(args.prompt), "model": clip.meta.get("checkpoint")})


def _music(args: argparse.Namespace) -> int:
    """Text to music offline: no prompt audio, ``args.takes`` pieces of one description in one pass."""
    spec = _musicgen_spec(args)
    if isinstance(spec, int):
        return spec
    params = {"seconds": args.seconds, "temperature": args.temperature, "top_k": args.top_k, "top_p": args.top_p,
              "guidance_scale": args.guidance_scale, "description": args.description or None}
    return _takes(args, spec, params, "music",
                  lambda clip: {"source": "text", "model": clip.meta.get("checkpoint"),
                                "kind": "musicgen text-to-music", "description": args.description})


def _render(args: argparse.Namespace) -> int:
    try:
        from bridge.clip_sheet import clips_from_paths, render_sheet
    except ImportError as exc:  # matplotlib is an extra
        log.error("genbridge render needs matplotlib: pip install 'genbridge[tools]' (%s)", exc)
        return 1
    try:
        clips = clips_from_paths(args.clips)
        out = render_sheet(clips, args.out, per_column=args.per_column, title=args.title)
    except (OSError, RuntimeError, ValueError) as exc:
        log.error("%s", exc)
        return 1
    print(f"{out}: {len(clips)} clips")
    return 0


def _read_arch(path: str) -> dict:
    import json

    data = json.loads(Path(path).expanduser().read_text())
    return {"sample_rate": data["sample_rate"], "length": data["length"], "unet": data["unet"]}


def _train(args: argparse.Namespace) -> int:
    from models.runtime_env import configure_threads_env

    configure_threads_env(args.threads or 4)
    from models.diffusion import ModelLoadError
    from models.training import TrainingStopped, TrainSettings, train

    try:
        arch = _read_arch(args.arch) if args.arch else None
    except (OSError, ValueError, KeyError) as exc:
        log.error("cannot read the architecture file %s: %s", args.arch, exc)
        return 2
    from models.output_filter import OutputFilterError, parse_lowpass_args

    try:
        lowpass = parse_lowpass_args(args.lowpass) if args.lowpass else None
    except OutputFilterError as exc:
        log.error("%s", exc)
        return 2
    settings = TrainSettings(
        data=[str(Path(d).expanduser()) for d in args.data], out=args.out, steps=args.steps,
        batch=args.batch, lr=args.lr, init=args.init, transfer=args.transfer, instrument=args.instrument,
        amplitude_power=args.amplitude_power, emphasis=args.emphasis,
        classes=[c.strip() for c in args.classes.split(",") if c.strip()] if args.classes else None,
        held_out=[k.strip() for k in args.hold_out.split(",") if k.strip()],
        arch=arch, threads=args.threads, bf16=not args.fp32, checkpoint_minutes=args.checkpoint_minutes,
        device=args.device, balance=args.balance, default_steps=args.default_steps,
        snapshot_every=args.snapshot_every, output_lowpass=lowpass,
        seed=args.seed, name=args.name,
        command="genbridge " + " ".join(sys.argv[1:]) if sys.argv and "train" in sys.argv else "",
    )
    try:
        result = train(settings, snapshot_to=Path(args.snapshot) if args.snapshot else None)
    except (ModelLoadError, ValueError, FileNotFoundError) as exc:
        log.error("%s", exc)
        return 1
    except TrainingStopped as stopped:
        log.warning("%s: run the same command again to go on", stopped)
        return 128 + stopped.signal  # the shell's code for a command its signal ended
    except KeyboardInterrupt:
        log.warning("interrupted; the last checkpoint in %s resumes the run", args.out)
        return 130
    print(f"{result.model_dir}: {result.steps} steps, final loss {result.final_loss:.4f}, "
          f"{result.wall_s / 60:.1f} min")
    return 0


def _data(args: argparse.Namespace) -> int:
    from models.drum_sources import prepare_all

    try:
        manifests = prepare_all(Path(args.out), progress=lambda what: print(f"rendering {what}", flush=True))
    except (RuntimeError, OSError, subprocess.SubprocessError) as exc:
        log.error("%s", exc)
        return 1
    print(f"{args.out}: {len(manifests)} sample manifests")
    return 0


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    _setup_logging(args.verbose)
    if args.command == "devices":
        from bridge.devices import report
        from models.devices import compute_report

        print(report())
        print(compute_report())
        return 0
    if args.command == "export":
        return _export(args)
    if args.command == "train":
        return _train(args)
    if args.command == "render":
        return _render(args)
    if args.command == "data":
        return _data(args)
    if args.command == "continue":
        return _continue(args)
    if args.command == "music":
        return _music(args)
    if args.command == "protocol":
        from bridge.protocol import markdown_table

        print(markdown_table())
        return 0
    try:
        config = load_config(args.config)
        if args.command == "serve":
            apply_overrides(config, host=args.host, osc_port=args.osc_port, web_port=args.web_port, out=args.out,
                            audio_device=args.audio_device, midi_ports=args.midi_port,
                            midi_virtual=args.midi_virtual, device=args.device, link=args.link)
            return _serve(args, config)
        return _generate(args, config)
    except ConfigError as exc:
        print(f"genbridge: config error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
