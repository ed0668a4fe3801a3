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
from bridge.clip import Clip
from bridge.continuations import Continuations
from bridge.engine import Engine
from bridge.folder_writer import FolderWriter
from bridge.jobs import EngineError, Job
from bridge.protocol import REPLIES, Request
from bridge.sinks.audio import AudioOutput, AudioUnavailable

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
                 continuations: Continuations | None = None,
                 status_sections: Mapping[str, Callable[[], dict[str, Any]]] | None = None) -> None:
        self.engine = engine
        self.writer = writer
        self.audio = audio
        #: MusicGen continuation jobs, when [continuation] names a model.
        self.continuations = continuations
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
        except (EngineError, AudioUnavailable) as exc:
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
        status = self.engine.status()
        status["audio"] = self.audio.status() if self.audio else {"state": "off", "reason": "audio.device = none"}
        status["output"] = self.writer.status()
        for name, section in self.status_sections.items():
            status[name] = section()
        reply_with(reply, "status/reply", request.request_id, json.dumps(status))

    async def _drum_play(self, request: Request, reply: ReplyFn) -> None:
        v = request.values
        result = await self.engine.play(v["instrument"], v["velocity"])
        if self.audio is not None:
            self.audio.play(result.clip, result.instrument, result.velocity, request.at)
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
                                   on_clip=on_clip, on_done=on_done, on_error=on_error)
        reply_with(reply, "job/started", rid, job.id, job.instrument, job.total)

    async def _drum_vary(self, request: Request, reply: ReplyFn) -> None:
        v = request.values
        rid = request.request_id
        address = request.address
        seed = None if v["seed"] is None or v["seed"] < 0 else v["seed"]
        job = self.engine.vary(
            v["instrument"], v["source"], v["strength"], seed, {"steps": v["steps"]},
            on_clip=lambda clip: reply_with(reply, "drum/ready", rid, clip.instrument, str(clip.path)),
            on_done=lambda job: reply_with(reply, "job/done", rid, job.id, job.delivered, str(job.last_path or "")),
            on_error=lambda job, message: error_reply(reply, rid, address, f"job {job.id}: {message}"),
        )
        reply_with(reply, "job/started", rid, job.id, job.instrument, job.total)

    def _chunk_ready(self, reply: ReplyFn, rid: int | str, job_id: int, index: int, clip: Clip) -> None:
        """Announce a chunk; with continuation.play_chunks, also play it as it arrives."""
        reply_with(reply, "job/chunk", rid, job_id, index, str(clip.path))
        if self.continuations is not None and self.continuations.config.play_chunks and self.audio is not None:
            self.audio.play(clip, "continue", 1.0)

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
        if self.continuations is not None and self.continuations.cancel(job_id) is not None:
            reply_with(reply, "job/cancelled", request.request_id, job_id)
            return
        job = self.engine.cancel(job_id)
        reply_with(reply, "job/cancelled", request.request_id, job.id)

    async def _continue(self, request: Request, reply: ReplyFn) -> None:
        from bridge.sources import SourceError, read_tail, resolve_inside

        conts = self.continuations
        if conts is None:
            raise EngineError("continuation is off: set [continuation] model = ... in the config")
        v = request.values
        rid, address, source = request.request_id, request.address, v["source"]
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
        job, position = conts.submit(
            audio, rate, name, v["seconds"], description=v["description"], seed=v["seed"],
            on_progress=lambda job, f: reply_with(reply, "job/progress", rid, job.id, round(f, 4)),
            on_chunk=lambda job, i, clip: self._chunk_ready(reply, rid, job.id, i, clip),
            on_done=lambda job, clip: reply_with(reply, "job/done", rid, job.id, job.chunks, str(clip.path)),
            on_error=lambda job, message: error_reply(reply, rid, address, f"job {job.id}: {message}"),
        )
        reply_with(reply, "job/queued", rid, job.id, position)
