"""Wiring for ``genbridge serve``: folder sink, engine, OSC endpoint, signals, shutdown."""

from __future__ import annotations

import asyncio
import logging
import signal

from bridge import __version__
from bridge.config import Config
from bridge.engine import Engine
from bridge.midi import MidiInput
from bridge.osc import serve_osc
from bridge.service import Service
from bridge.sinks.audio import AudioOutput
from bridge.sinks.folder import FolderSink

log = logging.getLogger("genbridge")


class StartupError(RuntimeError):
    """The daemon cannot start (port taken, folder not writable); exit code 1."""


async def open_audio(config: Config) -> AudioOutput | None:
    """The audio device process, or None for folder-only. A missing device is logged, never
    fatal: "default" with no device at all serves the folder; a named device is waited for."""
    if config.audio.device == "none":
        log.info("audio.device = none: serving the shared folder only")
        return None
    audio = AudioOutput(config.audio, config.instruments)
    audio.start(asyncio.get_running_loop())
    await audio.wait_settled()
    return audio


async def run_daemon(config: Config) -> None:
    """Serve until SIGINT or SIGTERM."""
    sink = FolderSink(config.output.dir, config.output.subtype)
    audio = await open_audio(config)
    engine = Engine(config, sink, prepare=audio.prepare if audio else None)
    service = Service(engine, audio)
    try:
        transport, osc = await serve_osc(service, config.server)
    except OSError as exc:
        raise StartupError(f"cannot listen for OSC on udp {config.server.host}:{config.server.osc_port}: "
                           f"{exc.strerror or exc}") from exc
    try:
        await engine.start()
    except OSError as exc:
        transport.close()
        raise StartupError(f"cannot use the output folder {config.output.dir}: {exc}") from exc
    if config.continuation.model:
        from bridge.continuations import Continuations

        service.continuations = Continuations(config.continuation, engine, config.engine.threads,
                                              config.engine.worker_nice)
        service.continuations.start()
        engine.protected_paths.append(service.continuations.protected_paths)
        service.status_sections["continuation"] = service.continuations.status
    service.status_sections["osc"] = osc.status
    midi = MidiInput(config, service)
    service.status_sections["midi"] = midi.status
    await midi.start()
    for name, inst in config.instruments.items():
        log.info("instrument %-8s model=%s pool=%d", name, inst.model, inst.pool)
    log.info("genbridge %s listening for OSC on udp://%s:%d; clips go to %s",
             __version__, config.server.host, config.server.osc_port, sink.session_dir)

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    try:
        await stop.wait()
    finally:
        log.info("shutting down")
        transport.close()
        midi.close()
        if audio is not None:
            audio.close()
        if service.continuations is not None:
            service.continuations.stop()
        await engine.stop()
        await asyncio.wait_for(osc.drain(), timeout=2)
        log.info("stopped")
