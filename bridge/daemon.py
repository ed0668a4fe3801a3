"""Wiring for ``genbridge serve``: folder sink, engine, OSC endpoint, signals, shutdown."""

from __future__ import annotations

import asyncio
import logging
import signal

from bridge import __version__
from bridge.config import Config
from bridge.engine import Engine
from bridge.osc import serve_osc
from bridge.service import Service
from bridge.sinks.folder import FolderSink

log = logging.getLogger("genbridge")


class StartupError(RuntimeError):
    """The daemon cannot start (port taken, folder not writable); exit code 1."""


async def run_daemon(config: Config) -> None:
    sink = FolderSink(config.output.dir, config.output.subtype)
    engine = Engine(config, sink)
    service = Service(engine)
    try:
        transport, osc = await serve_osc(service, config.server.host, config.server.osc_port)
    except OSError as exc:
        raise StartupError(f"cannot listen for OSC on udp {config.server.host}:{config.server.osc_port}: "
                           f"{exc.strerror or exc}") from exc
    try:
        await engine.start()
    except OSError as exc:
        transport.close()
        raise StartupError(f"cannot use the output folder {config.output.dir}: {exc}") from exc
    if config.audio.device != "none":
        log.warning("audio.device=%r: audio-device output is not built yet; serving the shared folder only",
                    config.audio.device)
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
        await engine.stop()
        await asyncio.wait_for(osc.drain(), timeout=2)
        log.info("stopped")
