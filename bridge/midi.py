"""MIDI in (mido): pads and DAW tracks trigger drums, knobs set parameters, the clock gives tempo.

A transport like ``bridge.osc``: it knows no torch and no engine internals. A note-on becomes
the same ``drum.play`` Request an OSC message would, handled by the same Service; a CC changes
the configuration the engine and the audio sink read (steps, gains, dry policy); clock ticks
feed :class:`bridge.tempo.MidiClock` (the tempo source when ``[tempo] source = "midi"``, and the
estimate shown in the ``midi`` section of ``/genbridge/status``).

Ports: by exact name or substring (several at once), plus an optional virtual input named
``genbridge`` where the backend allows (JACK, ALSA, CoreMIDI). Ports that appear later are
opened by a watcher; a port that vanishes is closed and reopened if it returns. No MIDI system
at all is a logged state, never an error that stops the daemon.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from typing import Any, Callable

from bridge.config import Config, MidiConfig
from bridge.protocol import BY_ADDRESS, Request
from bridge.service import RequestHandler
from bridge.tempo import MidiClock

log = logging.getLogger(__name__)

VIRTUAL_NAME = "genbridge"
WATCH_S = 2.0


def _scale(value: int, low: float, high: float) -> float:
    return low + (high - low) * value / 127


class MidiInput:
    def __init__(self, config: Config, handle: RequestHandler, clock: MidiClock | None = None) -> None:
        self.config = config
        self.cfg: MidiConfig = config.midi
        #: Serves a parsed request (bridge.service.Service.handle in the daemon).
        self.handle_request = handle
        self.state = "off"  # off, running, unavailable
        self.reason = ""
        #: MIDI clock as it arrives; the tempo source reads it when [tempo] source = "midi".
        self.clock = clock or MidiClock()
        self.ports: dict[str, Any] = {}  # source name -> open mido port
        self.virtual: Any = None
        self.counters = {"messages": 0, "notes": 0, "unmapped_notes": 0, "filtered_channel": 0, "cc": 0,
                         "program_changes": 0, "errors": 0}
        self.last_note: dict[str, Any] | None = None
        self._backend: Any = None
        self._lister: Any = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._watcher: asyncio.Task[None] | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    # ------------------------------------------------------------------ lifecycle

    def _backend_name(self) -> str | None:
        return self.cfg.backend or os.environ.get("MIDO_BACKEND") or None

    async def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        if not self.cfg.enabled:
            self.state, self.reason = "off", "midi.enabled = false"
            return
        try:
            import mido

            self._backend = mido.Backend(self._backend_name()) if self._backend_name() else mido.backend
            self._backend.get_input_names()  # fails here when there is no MIDI system at all
        except Exception as exc:  # rtmidi raises SystemError (an OSError) without /dev/snd/seq
            self.state = "unavailable"
            self.reason = f"no MIDI system ({type(exc).__name__}: {exc})"
            log.warning("MIDI input off: %s. genbridge devices lists what is there.", self.reason)
            return
        self.state = "running"
        self._lister = self._port_lister()
        if self.cfg.virtual:
            try:
                self.virtual = self._backend.open_input(VIRTUAL_NAME, virtual=True, client_name=VIRTUAL_NAME,
                                                        callback=self._from_thread(VIRTUAL_NAME))
                log.info("MIDI: virtual input %r open", VIRTUAL_NAME)
            except Exception as exc:
                log.warning("MIDI: cannot open a virtual input here (%s)", exc)
        await self._connect_ports()
        self._watcher = asyncio.ensure_future(self._watch())

    def _port_lister(self) -> Any:
        """One persistent rtmidi client to list ports with.

        mido's ``get_input_names`` opens and closes a client per call; on JACK every client
        open/close re-sorts the graph, and polling that every 2 s made MIDI clock arrive late
        enough to read 118 BPM for 120. Other backends list the mido way.
        """
        name = self._backend_name() or getattr(self._backend, "name", "")
        if "rtmidi" not in name:
            return None
        try:
            import rtmidi

            api = name.partition("/")[2]
            rtapi = getattr(rtmidi, f"API_{api}", rtmidi.API_UNSPECIFIED) if api else rtmidi.API_UNSPECIFIED
            return rtmidi.MidiIn(rtapi=rtapi, name=f"{VIRTUAL_NAME}-ports")
        except Exception as exc:
            log.debug("MIDI: no persistent port lister (%s)", exc)
            return None

    def _input_names(self) -> list[str]:
        if self._lister is not None:
            return list(self._lister.get_ports())
        return list(self._backend.get_input_names())

    def close(self) -> None:
        if self._lister is not None:
            try:
                self._lister.delete()
            except Exception:
                pass
            self._lister = None
        if self._watcher is not None:
            self._watcher.cancel()
        for port in [*self.ports.values(), self.virtual]:
            if port is not None:
                try:
                    port.close()
                except Exception:
                    pass
        self.ports.clear()
        self.virtual = None

    def _wanted(self, name: str) -> bool:
        if name.split(":")[0] in (VIRTUAL_NAME, f"{VIRTUAL_NAME}-ports"):
            return False  # our own ports
        return any(w == "*" or w == name or w.lower() in name.lower() for w in self.cfg.ports)

    async def _connect_ports(self) -> None:
        if not self.cfg.ports:
            return
        assert self._loop is not None
        try:
            names = await self._loop.run_in_executor(None, self._input_names)
        except Exception as exc:
            log.debug("MIDI: cannot list ports: %s", exc)
            return
        for name in list(self.ports):
            if name not in names:  # vanished: close, reopen if it returns
                log.warning("MIDI: input %r went away", name)
                try:
                    self.ports.pop(name).close()
                except Exception:
                    pass
        for name in names:
            if name not in self.ports and self._wanted(name):
                try:
                    self.ports[name] = self._backend.open_input(name, callback=self._from_thread(name))
                    log.info("MIDI: input %r open", name)
                except Exception as exc:
                    log.warning("MIDI: cannot open %r: %s", name, exc)

    async def _watch(self) -> None:
        while True:
            await asyncio.sleep(WATCH_S)
            await self._connect_ports()

    # ------------------------------------------------------------------ messages

    def _from_thread(self, source: str) -> Callable[[Any], None]:
        """rtmidi calls back on its own thread: stamp the time there, act on the loop."""
        loop = self._loop
        assert loop is not None

        def callback(msg: Any) -> None:
            t = time.monotonic()
            try:
                loop.call_soon_threadsafe(self.handle, msg, t, source)
            except RuntimeError:
                pass

        return callback

    def handle(self, msg: Any, t: float, source: str = "") -> None:
        """Act on one MIDI message (on the event loop)."""
        self.counters["messages"] += 1
        kind = msg.type
        if kind == "clock":
            self.clock.tick(t)
            return
        if kind == "start":
            self.clock.start()
            return
        if kind == "continue":
            self.clock.resume()
            return
        if kind == "stop":
            self.clock.stop()
            return
        if kind == "songpos":
            self.clock.song_position(msg.pos)
            return
        channel = getattr(msg, "channel", None)
        if channel is not None and self.cfg.channel and channel + 1 != self.cfg.channel:
            self.counters["filtered_channel"] += 1
            return
        if kind == "note_on" and msg.velocity > 0:
            self._note(msg.note, msg.velocity)
        elif kind == "control_change":
            self._cc(msg.control, msg.value)
        elif kind == "program_change":
            self._program(msg.program)
        # note_off and note_on velocity 0: one-shots play to their end

    def _note(self, note: int, velocity: int) -> None:
        self.counters["notes"] += 1
        self.last_note = {"note": note, "velocity": velocity}
        instrument = self.cfg.notes.get(str(note))
        if instrument is None or instrument not in self.config.instruments:
            self.counters["unmapped_notes"] += 1
            return
        endpoint = BY_ADDRESS["/genbridge/drum/play"]
        request = Request(endpoint, {"instrument": instrument, "velocity": velocity / 127}, f"midi:{note}")
        task = asyncio.ensure_future(self.handle_request(request, self._reply))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _program(self, program: int) -> None:
        kit = self.cfg.programs.get(str(program))
        if kit is None:
            return
        self.counters["program_changes"] += 1
        request = Request(BY_ADDRESS["/genbridge/kit/select"], {"kit": kit}, f"midi:program:{program}")
        task = asyncio.ensure_future(self.handle_request(request, self._reply))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _reply(self, address: str, args: list[Any]) -> None:
        if address.endswith("/error"):
            self.counters["errors"] += 1
            log.warning("MIDI note %s: %s", args[0], args[-1])

    def _cc(self, control: int, value: int) -> None:
        target = self.cfg.cc.get(str(control))
        if target is None:
            return
        self.counters["cc"] += 1
        what, _, instrument = target.partition(":")
        names = [instrument] if instrument else list(self.config.instruments)
        if what == "steps":
            for name in names:
                self.config.instruments[name].steps = max(1, value)
        elif what == "gain":
            for name in names:
                self.config.instruments[name].gain_db = 0.0 if value == 127 else _scale(value, -60.0, 0.0)
        elif what == "policy":
            self.config.engine.dry_policy = "wait" if value >= 64 else "replay"
        log.info("MIDI CC %d = %d -> %s", control, value, target)

    def status(self) -> dict[str, Any]:
        bpm = self.clock.bpm()
        return {
            "state": self.state,
            "reason": self.reason or None,
            "backend": self._backend_name() or "mido default",
            "inputs": sorted(self.ports),
            "virtual": VIRTUAL_NAME if self.virtual is not None else None,
            "tempo_bpm": round(bpm, 3) if bpm else None,
            "transport": self.clock.transport,
            "clock_ticks": self.clock.ticks,
            "last_note": self.last_note,
            **self.counters,
        }
