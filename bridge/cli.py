"""The ``genbridge`` command: serve, generate, devices, protocol, --version.

Exit codes: 0 done, 1 could not run (port taken, model failed), 2 bad config or arguments.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
import time
from pathlib import Path

from bridge import __version__
from bridge.config import Config, ConfigError, apply_overrides, load_config

log = logging.getLogger("genbridge")


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="genbridge", description=__doc__.splitlines()[0])
    p.add_argument("--version", action="version", version=f"genbridge {__version__}")
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = p.add_subparsers(dest="command", required=True)

    s = sub.add_parser("serve", help="run the daemon")
    s.add_argument("--config", help="TOML config file (every option has a default)")
    s.add_argument("--host", help="address to listen on (default 127.0.0.1)")
    s.add_argument("--osc-port", type=int, help="UDP port for OSC (default 9000)")
    s.add_argument("--out", help="shared folder for generated clips")
    s.add_argument("--audio-device", help="audio output device name or index, or 'none'")
    s.add_argument("--midi-port", action="append", metavar="NAME",
                   help="MIDI input to open, by name or part of one (repeatable; replaces midi.ports)")
    s.add_argument("--midi-virtual", action="store_true", help="open a virtual MIDI input named genbridge")

    g = sub.add_parser("generate", help="generate one-shots into a folder, without the daemon")
    g.add_argument("instrument")
    g.add_argument("-n", "--count", type=int, default=1)
    g.add_argument("--seed", type=int, help="first seed (clip k uses seed + k); random if absent")
    g.add_argument("--steps", type=int, help="sampling steps (default: the model's)")
    g.add_argument("--sampler", choices=["ddim", "dpmpp2m"], help="default: the instrument's, then the model's")
    g.add_argument("-o", "--out", required=True, help="folder to write WAV + JSON sidecars into")
    g.add_argument("--config", help="TOML config file (for instruments, models, finishing)")
    g.add_argument("--threads", type=int, default=0, help="torch threads (default: engine.threads)")

    e = sub.add_parser("export", help="export a model for another runtime")
    e.add_argument("format", choices=["onnx"])
    e.add_argument("model", help="a model folder, .ckpt or weights file, or builtin:NAME")
    e.add_argument("-o", "--out", help="output file (default: beside the model)")
    e.add_argument("--opset", type=int, default=17)

    sub.add_parser("devices", help="list audio devices and MIDI ports")
    sub.add_parser("protocol", help="print the OSC address table (Markdown)")
    return p


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
    from bridge.model_worker import configure_threads_env

    if args.instrument not in config.instruments:
        raise ConfigError("", f"unknown instrument {args.instrument!r} (known: {', '.join(config.instruments)})")
    if args.count < 1:
        raise ConfigError("", f"--count must be at least 1, got {args.count}")
    inst = config.instruments[args.instrument]
    model_cfg = config.models[inst.model]
    threads = args.threads or config.model_threads(inst.model)
    configure_threads_env(threads)

    import random

    import torch
    from tqdm import tqdm

    from bridge.clip import Clip
    from bridge.finishing import finish_clip
    from bridge.sinks.folder import FolderSink
    from models.diffusion import ModelLoadError, load_generator

    torch.set_num_threads(threads)
    try:
        gen = load_generator(model_cfg.resolved_path(), name=inst.model, sdpa=model_cfg.sdpa,
                             precision=model_cfg.precision)
    except ModelLoadError as exc:
        log.error("%s", exc)
        return 1
    steps = args.steps or inst.steps or model_cfg.steps or gen.info.default_steps
    sampler = args.sampler or inst.sampler or model_cfg.sampler
    first = args.seed if args.seed is not None else random.randint(0, 2**31 - 1 - args.count)
    sink = FolderSink(args.out, config.output.subtype, session="")
    with tqdm(total=args.count * steps, unit="step", desc=f"{args.instrument} x{args.count}") as bar:
        for k in range(args.count):
            seed = first + k
            t0 = time.perf_counter()
            raw = gen.generate(seed, steps, lambda done, total: bar.update(1) or True, sampler)
            audio, report = finish_clip(raw, gen.sample_rate, config.finishing)
            meta = {"model": inst.model, "checkpoint": gen.info.source, "weights": gen.info.weights,
                    "trained": gen.info.trained, "instrument": args.instrument, "seed": seed,
                    "steps": steps, "sampler": sampler, "precision": gen.info.precision,
                    "generation_s": round(time.perf_counter() - t0, 4),
                    "finishing": {"settings": config.finishing.to_json(), "applied": report}}
            path = sink.write_to_session(Clip(audio, gen.sample_rate, meta))
            bar.write(str(path))
    return 0


def _export(args: argparse.Namespace) -> int:
    from bridge.config import ModelConfig
    from bridge.model_worker import configure_threads_env

    configure_threads_env(2)
    from tqdm import tqdm

    from export.onnx import default_onnx_path, export_denoiser
    from models.diffusion import ModelLoadError

    model = ModelConfig(path=args.model).resolved_path()
    out = Path(args.out) if args.out else default_onnx_path(model)
    with tqdm(total=4, desc="export onnx", bar_format="{desc}: {n}/{total} {postfix}") as bar:
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


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    _setup_logging(args.verbose)
    if args.command == "devices":
        from bridge.devices import report

        print(report())
        return 0
    if args.command == "export":
        return _export(args)
    if args.command == "protocol":
        from bridge.protocol import markdown_table

        print(markdown_table())
        return 0
    try:
        config = load_config(args.config)
        if args.command == "serve":
            apply_overrides(config, host=args.host, osc_port=args.osc_port, out=args.out,
                            audio_device=args.audio_device, midi_ports=args.midi_port,
                            midi_virtual=args.midi_virtual)
            return _serve(args, config)
        return _generate(args, config)
    except ConfigError as exc:
        print(f"genbridge: config error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
