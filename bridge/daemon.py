"""Wiring for ``genbridge serve``: every part built once with its collaborators, then signals, shutdown.

The process model and the seams are in docs/ARCHITECTURE.md.
"""

from __future__ import annotations

import asyncio
import logging
import signal
from typing import TYPE_CHECKING, Any, Awaitable, Callable

from bridge import __version__
from bridge.config import Config
from bridge.continuations import Continuations
from bridge.engine import Engine
from bridge.folder_writer import FolderWriter
from bridge.housekeeping import FolderSweeper
from bridge.jobs import Counters, JobIds
from bridge.midi import MidiInput
from bridge.osc import serve_osc
from bridge.protocol import Request
from bridge.service import ReplyFn, RequestHandler, Service
from bridge.sinks.audio import AudioOutput
from bridge.sinks.folder import FolderSink
from bridge.supervisor import RestartPolicy
from bridge.tempo import MidiClock, make_timeline
from bridge.tempo_listeners import TempoListeners
from bridge.worker_handle import continuation_worker_spec, local_workers, ray_workers, worker_liveness

if TYPE_CHECKING:
    from bridge.web import WebConsole

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


def build_web_console(config: Config, handle: RequestHandler, status: Callable[[], dict[str, Any]],
                      writer: FolderWriter, tempo_listeners: TempoListeners) -> WebConsole | None:
    """The web console of ``server.web_port`` (None when it is 0), not listening yet."""
    server = config.server
    if not server.web_port:
        return None
    from bridge.admission import from_server
    from bridge.web import WebConsole  # noqa: F811 - aiohttp is imported only when the console is on

    return WebConsole(from_server(handle, server), host=server.host, port=server.web_port, token=server.web_token,
                      max_message_bytes=server.max_packet_bytes, status=status, session_dir=writer.sink.session_dir,
                      clips=writer.index.clips, page_gone=tempo_listeners.forget)


async def start_web_console(console: WebConsole, config: Config, writer: FolderWriter) -> None:
    """Listen before any model loads, as OSC does; a taken port refuses the start."""
    try:
        await console.start()
    except OSError as exc:
        raise StartupError(f"cannot serve the web console on tcp {config.server.host}:{config.server.web_port}: "
                           f"{exc.strerror or exc} (--web-port, or server.web_port = 0 for none)") from exc
    writer.sink.add_observer(console)


async def run_daemon(config: Config) -> None:
    """Serve until SIGINT or SIGTERM. Every part is built here with its collaborators, once."""
    sink = FolderSink(config.output.dir, config.output.subtype)
    writer = FolderWriter(sink)
    counters, job_ids = Counters(), JobIds()
    policy = RestartPolicy(first_delay_s=config.engine.restart_delay_s)
    workers = (ray_workers(config, policy, worker_liveness(config)) if config.engine.backend == "ray"
               else local_workers(policy, worker_liveness(config)))
    audio = await open_audio(config)
    engine = Engine(config, writer, workers=workers, job_ids=job_ids, counters=counters,
                    prepare=audio.prepare if audio else None)
    continuations = (Continuations(config.continuation, continuation_worker_spec(config), writer, job_ids,
                                   workers=workers) if config.continuation.model else None)

    # The transports hand requests to the service built below (they exist first: the OSC port
    # must be taken, or the start refused, before any model loads).
    def handle(request: Request, reply: ReplyFn) -> Awaitable[None]:
        return service.handle(request, reply)

    try:
        transport, osc = await serve_osc(handle, config.server)
    except OSError as exc:
        raise StartupError(f"cannot listen for OSC on udp {config.server.host}:{config.server.osc_port}: "
                           f"{exc.strerror or exc}") from exc
    midi_clock = MidiClock()
    midi = MidiInput(config, handle, clock=midi_clock)
    timeline = make_timeline(config.tempo.source, config.tempo.bpm, config.tempo.quantum, midi_clock)
    tempo_listeners = TempoListeners(timeline, config.tempo.max_listeners)
    sections: dict[str, Callable[[], dict[str, Any]]] = {"osc": osc.status, "midi": midi.status}
    web_console = build_web_console(config, handle, lambda: service.status(), writer, tempo_listeners)
    if web_console is not None:
        sections["web"] = web_console.status
    if continuations is not None:
        sections["continuation"] = continuations.status
    service = Service(engine, writer, audio=audio, continuations=continuations, timeline=timeline,
                      tempo_listeners=tempo_listeners, status_sections=sections)
    if web_console is not None:
        try:
            await start_web_console(web_console, config, writer)
        except StartupError:
            transport.close()
            raise
    sweeper = FolderSweeper(writer, config.output,
                            [engine.protected_paths] + ([continuations.protected_paths] if continuations else []),
                            counters)
    try:
        await engine.start()
    except OSError as exc:
        transport.close()
        if web_console is not None:
            await web_console.close()
        raise StartupError(f"cannot use the output folder {config.output.dir}: {exc}") from exc
    if continuations is not None:
        continuations.start()
    sweeper.start()
    await midi.start()
    try:
        await timeline.start()
    except Exception as exc:  # Link's library missing or its sockets refused: tempo falls back, serving goes on
        log.error("tempo source %r did not start (%s: %s); its beat is the fixed %.1f BPM until a restart",
                  config.tempo.source, type(exc).__name__, exc, config.tempo.bpm)
    tempo_listeners.start()
    for name, inst in config.instruments.items():
        log.info("instrument %-8s model=%s pool=%d", name, inst.model, inst.pool)
    if web_console is not None:
        log.info("web console on %s", web_console.url)
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
        if web_console is not None:
            try:  # whatever a page does, the rest of the shutdown runs
                await web_console.close()
            except Exception:
                log.exception("closing the web console failed")
        midi.close()
        tempo_listeners.close()
        timeline.close()
        if audio is not None:
            audio.close()
        if continuations is not None:
            continuations.stop()
            await continuations.drain()
        await sweeper.stop()
        await engine.stop()
        writer.shutdown()
        # the requests still being served (the engine has failed its waiters by now)
        drains = [osc.drain()] + ([web_console.drain()] if web_console is not None else [])
        try:
            await asyncio.wait_for(asyncio.gather(*drains, return_exceptions=True), timeout=2)
        except asyncio.TimeoutError:
            log.warning("requests still in flight after 2 s were dropped")
        log.info("stopped")
