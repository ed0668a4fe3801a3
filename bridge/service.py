"""What each request does, independent of the transport that carried it.

The OSC transport (and later MIDI) parse a message into a :class:`~bridge.protocol.Request`
and hand it here with a ``reply`` callable; this module turns it into engine calls and
replies named in ``protocol.REPLIES``. Transport-level requests (``client/reply_port``) stay
in the transport, because only it knows hosts and ports.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from typing import Any, Awaitable, Callable, Mapping

from bridge import __version__
from bridge.bar_shape import BarShape
from bridge.clip import Clip
from bridge.continuations import ContinuationJob, Continuations
from bridge.engine import Engine
from bridge.folder_writer import FolderWriter
from bridge.jobs import EngineError, Job
from bridge.protocol import REPLIES, Request
from bridge.sinks.audio import AudioOutput, AudioUnavailable
from bridge.tempo import FixedTimeline, TempoError, Timeline, safe_stream_start
from bridge.tempo_listeners import TempoListeners, send_tempo

log = logging.getLogger(__name__)

#: reply(address, args): the transport sends one message back to whoever asked.
ReplyFn = Callable[[str, list[Any]], None]
#: What a transport hands each parsed request to (Service.handle in the daemon).
RequestHandler = Callable[[Request, ReplyFn], Awaitable[None]]


def reply_with(reply: ReplyFn, name: str, request_id: int | str, *args: Any) -> None:
    spec = REPLIES[name]
    assert len(spec.args) == len(args) + 1, f"{name} takes {spec.args}"
    reply(spec.address, [request_id, *args])


def error_reply(reply: ReplyFn, request_id: int | str, address: str, message: str) -> None:
    reply_with(reply, "error", request_id, address, message)


class Service:
    """Serves every request the protocol table lists (but the transport's own), through one
    explicit address -> handler map; built with all its collaborators, changed by none later."""

    def __init__(self, engine: Engine, writer: FolderWriter, *, audio: AudioOutput | None = None,
                 continuations: Continuations | None = None, timeline: Timeline | None = None,
                 tempo_listeners: TempoListeners | None = None,
                 status_sections: Mapping[str, Callable[[], dict[str, Any]]] | None = None) -> None:
        self.engine = engine
        self.writer = writer
        self.audio = audio
        #: MusicGen continuation jobs, when [continuation] names a model.
        self.continuations = continuations
        #: Where the beat is: quantised starts, lengths in bars, the tempo replies.
        #: (The daemon passes its configured source; the default is [tempo]'s own default.)
        self.timeline: Timeline = timeline or FixedTimeline(120.0, 4.0)
        self.tempo_listeners = tempo_listeners or TempoListeners(self.timeline)
        #: Continuation jobs whose chunks are playing (the job id is the mixer's chain).
        self._streams: set[int] = set()
        #: More sections for /genbridge/status (transports, continuation), by name.
        self.status_sections = dict(status_sections or {})
        #: endpoint name (bridge.protocol.ENDPOINTS) -> handler.
        self.handlers: dict[str, RequestHandler] = {
            "ping": self._ping,
            "status": self._status,
            "drum.play": self._drum_play,
            "drum.generate": self._drum_generate,
            "drum.vary": self._drum_vary,
            "continue": self._continue,
            "continue.bars": self._continue_bars,
            "music.generate": self._music_generate,
            "tempo": self._tempo,
            "tempo.set": self._tempo_set,
            "tempo.listen": self._tempo_listen,
            "job.cancel": self._job_cancel,
            "capture.save": self._capture_save,
            "kit.select": self._kit_select,
        }

    async def handle(self, request: Request, reply: ReplyFn) -> None:
        """Serve one request; every failure becomes an error reply, never an exception."""
        rid = request.request_id
        try:
            handler = self.handlers.get(request.name)
            if handler is None:
                raise EngineError(f"{request.address} is not served here")
            await handler(request, reply)
        except (EngineError, AudioUnavailable, TempoError) as exc:
            error_reply(reply, rid, request.address, str(exc))
        except OSError as exc:  # the folder or a device refused (a FolderError names the folder): no traceback
            log.warning("%s: %s", request.address, exc)
            error_reply(reply, rid, request.address, str(exc))
        except Exception as exc:  # a bug must cost one reply, not the set
            log.exception("internal error serving %s", request.address)
            error_reply(reply, rid, request.address, f"internal error: {type(exc).__name__}: {exc}")

    async def _ping(self, request: Request, reply: ReplyFn) -> None:
        reply_with(reply, "pong", request.request_id, __version__)

    async def _status(self, request: Request, reply: ReplyFn) -> None:
        reply_with(reply, "status/reply", request.request_id, json.dumps(self.status()))

    def status(self) -> dict[str, Any]:
        """Everything /genbridge/status reports, as a dict (the web console pushes it every second)."""
        status = self.engine.status()
        status["audio"] = self.audio.status() if self.audio else {"state": "off", "reason": "audio.device = none"}
        status["output"] = self.writer.status()
        status["tempo"] = self.timeline.read().as_dict() | self.timeline.status() | self.tempo_listeners.status()
        for name, section in self.status_sections.items():
            status[name] = section()
        return status

    async def _drum_play(self, request: Request, reply: ReplyFn) -> None:
        v = request.values
        # the velocity 0-1 (protocol.velocity_to_gain is linear): it picks the pool's band, the
        # audio handle makes it a gain (audio.velocity_exponent)
        result = await self.engine.play(v["instrument"], v["velocity"])
        if self.audio is not None:
            inst = self.engine.config.instruments.get(result.instrument)
            grid = v.get("quantize") or (inst.quantize if inst else "off")
            self.audio.play(result.clip, result.instrument, result.velocity, self._start_time(grid, request.at))
        reply_with(reply, "drum/played", request.request_id, result.instrument, str(result.path),
                   int(result.fresh))

    async def _drum_generate(self, request: Request, reply: ReplyFn) -> None:
        v = request.values
        rid = request.request_id
        address = request.address

        def on_clip(clip: Clip) -> None:
            reply_with(reply, "drum/ready", rid, clip.instrument, str(clip.path))

        def on_done(job: Job) -> None:
            reply_with(reply, "job/done", rid, job.id, job.delivered, str(job.last_path or ""))

        def on_error(job: Job, message: str) -> None:
            error_reply(reply, rid, address, f"job {job.id}: {message}")

        seed = None if v["seed"] is None or v["seed"] < 0 else v["seed"]
        job = self.engine.generate(v["instrument"], v["count"], seed, {"steps": v["steps"]},
                                   velocity=v.get("velocity"), on_clip=on_clip, on_done=on_done, on_error=on_error)
        reply_with(reply, "job/started", rid, job.id, job.instrument, job.total)

    async def _drum_vary(self, request: Request, reply: ReplyFn) -> None:
        v = request.values
        rid = request.request_id
        address = request.address
        seed = None if v["seed"] is None or v["seed"] < 0 else v["seed"]
        job = self.engine.vary(
            v["instrument"], v["source"], v["strength"], seed, {"steps": v["steps"]}, velocity=v.get("velocity"),
            on_clip=lambda clip: reply_with(reply, "drum/ready", rid, clip.instrument, str(clip.path)),
            on_done=lambda job: reply_with(reply, "job/done", rid, job.id, job.delivered, str(job.last_path or "")),
            on_error=lambda job, message: error_reply(reply, rid, address, f"job {job.id}: {message}"),
        )
        reply_with(reply, "job/started", rid, job.id, job.instrument, job.total)

    def _start_time(self, grid: str, at: float | None) -> float | None:
        """When a sound asked for at ``at`` (None: now) on ``grid`` starts: the first grid point the
        audio device can still reach (its output latency ahead), or ``at`` itself when not quantised."""
        if grid in ("", "off") or self.audio is None:
            return at
        earliest = time.monotonic() + self.audio.lead_s()
        return self.timeline.read().next_grid_time(grid, max(at or earliest, earliest))

    def _play_mode(self, requested: str) -> str:
        """'chunks', 'done' or 'off' for a continuation (its ``play``, else continuation.play_chunks)."""
        if requested:
            return requested
        conts = self.continuations
        return "chunks" if conts is not None and conts.config.play_chunks else "off"

    def _chunk_ready(self, reply: ReplyFn, rid: int | str, job: ContinuationJob, index: int, clip: Clip,
                     play: str) -> None:
        """Announce a chunk; when its job plays chunks, schedule it right after the one before.

        The first chunk starts on the next continuation.play_quantize point from which playback
        will not run dry (bridge.tempo.safe_stream_start: generation slower than real time,
        measured from this job's first chunk, pushes the start as many bars later as it needs);
        every later chunk is chained behind it in the mixer, gap-free to the sample (or plays at
        once, late, if it comes after its slot)."""
        reply_with(reply, "job/chunk", rid, job.id, index, str(clip.path))
        if play != "chunks" or self.audio is None or self.continuations is None:
            return
        if job.id in self._streams:  # the mixer starts it where the chunk before ends
            self.audio.play(clip, "continue", 1.0, chain=job.id)
            return
        now = time.monotonic()
        start = safe_stream_start(now, clip.duration_s, now - (job.started_at or now),
                                  float(job.params.get("seconds", clip.duration_s)), now + self.audio.lead_s(),
                                  self.timeline.read(), self.continuations.config.play_quantize)
        self._streams.add(job.id)
        self.audio.play(clip, "continue", 1.0, start, chain=job.id)

    def _stop_stream(self, job: ContinuationJob) -> None:
        """A cancelled job's chunks stop sounding too (a fade), not only being made."""
        if job.id in self._streams and self.audio is not None:
            self.audio.stop_chain(job.id)
        self._streams.discard(job.id)

    def _played_done(self, job: ContinuationJob, clip: Clip, play: str) -> None:
        """A continuation that plays its result does so from the next continuation.play_quantize point."""
        self._streams.discard(job.id)
        if play == "done" and self.audio is not None and self.continuations is not None:
            self.audio.play(clip, "continue", 1.0, self._start_time(self.continuations.config.play_quantize, None))

    async def _capture_save(self, request: Request, reply: ReplyFn) -> None:
        if self.audio is None:
            raise AudioUnavailable("input capture needs an audio device (audio.device = none)")
        seconds = request.values["seconds"]
        audio = await self.audio.capture(seconds)
        clip = Clip(audio, self.audio.sample_rate,
                    {"instrument": "capture", "kind": "input capture", "device": self.audio.device_name,
                     "requested_s": seconds, "created": time.time()})
        path = await self.writer.save(clip)
        reply_with(reply, "capture/saved", request.request_id, str(path), round(clip.duration_s, 6))

    async def _kit_select(self, request: Request, reply: ReplyFn) -> None:
        self.engine.select_kit(request.values["kit"])
        reply_with(reply, "kit/selected", request.request_id, request.values["kit"])

    async def _job_cancel(self, request: Request, reply: ReplyFn) -> None:
        job_id = request.values["job_id"]
        stopped = self.continuations.cancel(job_id) if self.continuations is not None else []
        if stopped:
            # a running take stops the takes made with it: each is told, the one asked for first
            for job in sorted(stopped, key=lambda j: j.id != job_id):
                reply_with(reply, "job/cancelled", request.request_id, job.id)
            return
        job = self.engine.cancel(job_id)
        reply_with(reply, "job/cancelled", request.request_id, job.id)

    async def _tempo(self, request: Request, reply: ReplyFn) -> None:
        send_tempo(reply, "tempo/reply", request.request_id, self.timeline.read())

    async def _tempo_set(self, request: Request, reply: ReplyFn) -> None:
        self.timeline.set_tempo(request.values["bpm"])
        send_tempo(reply, "tempo/reply", request.request_id, self.timeline.read())

    async def _tempo_listen(self, request: Request, reply: ReplyFn) -> None:
        self.tempo_listeners.listen(reply, request.request_id, request.values["bars"])
        send_tempo(reply, "tempo/reply", request.request_id, self.timeline.read())

    async def _continue_bars(self, request: Request, reply: ReplyFn) -> None:
        reading = self.timeline.read()
        v = request.values
        bar_shape = BarShape(v["bars"], reading.bpm, reading.quantum, bool(v["loop"]))
        await self._continue(request, reply, bar_shape)

    async def _continue(self, request: Request, reply: ReplyFn, bar_shape: BarShape | None = None) -> None:
        from bridge.sources import SourceError, read_tail, resolve_inside

        conts = self._continuations()
        v = request.values
        source = v["source"]
        prompt_s = conts.config.prompt_seconds
        if source == "capture":
            if self.audio is None:
                raise AudioUnavailable("'capture' needs an audio device with input (audio.device = none)")
            audio, rate, name = await self.audio.capture(prompt_s), self.audio.sample_rate, "capture"
        elif source == "last":
            if conts.last is None:
                raise EngineError("no continuation has been made yet ('last' needs one)")
            audio, rate, name = conts.last.audio, conts.last.sample_rate, str(conts.last.path)
        else:
            try:
                path = resolve_inside(self.engine.sink.root, source)
                # off the event loop: a long file on a slow disk must not hold up other triggers
                audio, rate = await asyncio.to_thread(read_tail, path, prompt_s)
            except SourceError as exc:
                raise EngineError(str(exc)) from None
            name = str(path)
        self._submit(request, reply, audio, rate, name, v.get("seconds", 0.0), bar_shape)

    async def _music_generate(self, request: Request, reply: ReplyFn) -> None:
        """Text to music: the continuation queue without a prompt (a fresh piece per take)."""
        self._submit(request, reply, None, None, "text", request.values["seconds"], None)

    def _continuations(self) -> Continuations:
        if self.continuations is None:
            raise EngineError("continuation is off: set [continuation] model = ... in the config")
        return self.continuations

    def _submit(self, request: Request, reply: ReplyFn, audio: Any, rate: int | None, name: str, seconds: float,
                bar_shape: BarShape | None) -> None:
        """Queue a continuation (or, without audio, a text-to-music request) of ``takes`` takes
        and answer one job/queued per take; a refusal (bad takes, seconds, a description the
        model cannot read) raises, so the sender gets the error and nothing is queued."""
        conts = self._continuations()
        v = request.values
        rid, address = request.request_id, request.address
        play = self._play_mode(v["play"])

        def take_play(job: ContinuationJob) -> str:
            return play if job.take == 0 else "off"  # one take plays: the first

        def on_done(job: ContinuationJob, clip: Clip) -> None:
            self._played_done(job, clip, take_play(job))
            reply_with(reply, "job/done", rid, job.id, job.chunks, str(clip.path))

        def on_error(job: ContinuationJob, message: str) -> None:
            self._streams.discard(job.id)
            error_reply(reply, rid, address, f"job {job.id}: {message}")

        jobs, position = conts.submit(
            audio, rate, name, seconds, description=v["description"], seed=v["seed"], shape=bar_shape,
            takes=int(v.get("takes") or 1),
            on_progress=lambda job, f: reply_with(reply, "job/progress", rid, job.id, round(f, 4)),
            on_chunk=lambda job, i, clip: self._chunk_ready(reply, rid, job, i, clip, take_play(job)),
            on_done=on_done, on_error=on_error,
            on_cancelled=self._stop_stream,
        )
        for job in jobs:
            reply_with(reply, "job/queued", rid, job.id, position)
