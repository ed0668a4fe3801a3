"""The web console: a page served by the daemon, and a JSON-over-WebSocket transport beside OSC.

Why in the daemon's own event loop (aiohttp): the page must show what the daemon is doing now
(pools, workers, jobs, clips as they land) and drive it with the same requests as OSC, without a
second process to keep in step. It is one more transport: a WebSocket message is parsed by
``bridge.protocol`` (either OSC form, or by endpoint name with named arguments), admitted by
``bridge.admission`` under the same rules as OSC, and served by the same service; replies come
back as JSON with the same arguments OSC carries. Pushed to every page: the status every second,
each clip that lands in the session folder, each clip the folder sweep removes.

Who may connect (the reasons are in docs/ARCHITECTURE.md, "The web console"):

- the allow-list of ``server.allow``, as for OSC: anyone else gets 403 and nothing more;
- on a loopback address, only a ``Host`` header naming loopback: a web page the musician has open
  that rebinds its own name to 127.0.0.1 (DNS rebinding) is refused;
- beyond loopback, the token of ``server.web_token`` (or a random one per start) in the URL;
- a WebSocket whose ``Origin`` is not the console's own page is refused, so that no other page
  open in the musician's browser can drive the daemon (cross-site WebSocket hijacking). Clients
  that are no browser send no Origin and are let in (the rules above still hold).
"""

from __future__ import annotations

import asyncio
import hmac
import ipaddress
import itertools
import json
import logging
import math
import re
import secrets
import socket
from importlib import resources
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence
from urllib.parse import quote, urlsplit

from aiohttp import WSMsgType, web

from bridge import __version__, protocol
from bridge.admission import Admission
from bridge.protocol import ProtocolError
from bridge.service import ReplyFn, error_reply
from bridge.tempo import GRIDS

log = logging.getLogger(__name__)

#: The page's files, served by name (nothing else of the package is reachable).
PAGE_FILES = {"index.html": "text/html", "console.js": "text/javascript", "console.css": "text/css"}
#: Messages queued for one page before it counts as stuck and is disconnected (a tab in the
#: background, a phone that lost the network): memory stays bounded whatever it does.
MAX_QUEUED = 2000
#: Clips the first message lists (the newest); the session folder's index.html has them all.
HELLO_CLIPS = 500
#: How often the status is pushed.
STATUS_EVERY_S = 1.0
#: aiohttp closes a socket whose frame is over its limit; that limit is this many times
#: ``server.max_packet_bytes``, so a message over the request limit (but under this) gets an
#: error reply on an open socket instead of a closed one.
FRAME_LIMIT_FACTOR = 4
#: Pages connected at once; more are refused (503): each may hold MAX_QUEUED messages.
MAX_PAGES = 64
#: How long closing waits for pages and requests at shutdown.
CLOSE_TIMEOUT_S = 2.0
_CLIP_NAME = re.compile(r"^[^./\\][^/\\]*\.wav$")
_LOOPBACK_NAMES = {"localhost", "127.0.0.1", "::1"}

#: Clips of the session, oldest first (the session index's list).
ClipLister = Callable[[], Sequence[tuple[Path, Mapping[str, Any]]]]


def is_loopback(host: str) -> bool:
    """Whether ``host`` (an address or a name) is this machine only."""
    if host in _LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def lan_address() -> str:
    """This machine's address on its network (what a phone on the stage types), for a console
    listening on every address: the source address of a route out, found without sending
    anything (a UDP socket's connect only picks the route); the host name when there is none."""
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
            probe.connect(("10.255.255.255", 1))
            return probe.getsockname()[0]
    except OSError:
        return socket.gethostname()


def clip_json(wav: Path, meta: Mapping[str, Any]) -> dict[str, Any]:
    """A clip as the page gets it: its name, its URL (relative to the page) and its sidecar."""
    return {"name": wav.name, "url": "clips/" + quote(wav.name), "instrument": meta.get("instrument"),
            "meta": dict(meta)}


class _Page:
    """One connected WebSocket: its queue of outgoing messages and its reply callable."""

    def __init__(self, ws: web.WebSocketResponse, host: str, number: int) -> None:
        self.ws = ws
        self.host = host
        self.key = ("web", number)
        self.queue: asyncio.Queue[str] = asyncio.Queue(MAX_QUEUED)
        #: Gone (closed) or stuck (too slow): nothing more is queued for it.
        self.gone = False
        self.stuck = False
        self.closing: asyncio.Future[Any] | None = None  # the close of a stuck page, held until done

    def push(self, message: dict[str, Any] | str) -> None:
        """Queue a message (on the event loop); a page too slow to take them is disconnected."""
        if self.gone:
            return
        text = message if isinstance(message, str) else to_json(message)
        try:
            self.queue.put_nowait(text)
        except asyncio.QueueFull:
            self.gone = self.stuck = True
            self.closing = asyncio.ensure_future(self.ws.close(code=1008, message=b"too slow: messages piled up"))
            self.closing.add_done_callback(lambda task: task.cancelled() or task.exception())

    async def send_all(self) -> None:
        """Write the queued messages in order (until cancelled when the socket closes)."""
        while True:
            text = await self.queue.get()
            try:
                await self.ws.send_str(text)
            except (ConnectionError, RuntimeError):  # closing under us: the handler ends it
                return


class WebConsole:
    """The aiohttp application: the page, the session's clips, and the WebSocket transport."""

    def __init__(self, admission: Admission, *, host: str, port: int, token: str = "",
                 max_message_bytes: int = 8192, status: Callable[[], dict[str, Any]],
                 session_dir: Path, clips: ClipLister, page_gone: Callable[[ReplyFn], None] | None = None) -> None:
        #: The same rules as OSC (bridge/admission.py): allow-list, rates, error budget, in flight.
        self.admission = admission
        self.host = host
        self.port = port
        self.loopback = is_loopback(host)
        #: The URL's secret: needed beyond loopback (a random one when none is configured).
        self.token = token or ("" if self.loopback else secrets.token_urlsafe(16))
        self.max_message_bytes = max_message_bytes
        self.status_source = status
        self.session_dir = session_dir
        self.clips = clips
        #: Told a closed page's reply callable, so registrations made with it go (tempo/listen).
        self.page_gone = page_gone
        self._pages: set[_Page] = set()
        self._numbers = itertools.count(1)
        self._runner: web.AppRunner | None = None
        self._pusher: asyncio.Task[None] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._closing = False
        self.counters = {"connections": 0, "refused": 0, "messages": 0, "malformed": 0, "dropped_stuck": 0}

    # ------------------------------------------------------------------ serving

    async def start(self) -> None:
        """Listen; raises OSError when the port is taken."""
        self._loop = asyncio.get_running_loop()
        app = web.Application(middlewares=[self._guard], client_max_size=64 * 1024)
        app.router.add_get("/", self._page_file)
        app.router.add_get("/ws", self._websocket)
        app.router.add_get("/clips/{name}", self._clip)
        for name in PAGE_FILES:
            app.router.add_get(f"/{name}", self._page_file)
        # shutdown_timeout: a page's WebSocket never ends by itself; closing must not wait 60 s for it
        self._runner = web.AppRunner(app, access_log=None, handle_signals=False, shutdown_timeout=CLOSE_TIMEOUT_S)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.host, self.port, reuse_address=True)
        try:
            await site.start()
        except OSError:
            await self._runner.cleanup()
            self._runner = None
            raise
        self._pusher = asyncio.ensure_future(self._push_status())

    @property
    def url(self) -> str:
        """The console's address as the log prints it (with the token when one is needed)."""
        host = lan_address() if self.host in ("0.0.0.0", "::", "") else self.host
        host = f"[{host}]" if ":" in host else host
        return f"http://{host}:{self.port}/" + (f"?token={self.token}" if self.token else "")

    async def close(self) -> None:
        """Stop listening and close every page, within about CLOSE_TIMEOUT_S whatever the pages
        do; requests still being served are :meth:`drain`'s (after the engine has stopped)."""
        self._closing = True
        if self._pusher is not None:
            self._pusher.cancel()
            await asyncio.gather(self._pusher, return_exceptions=True)
        closes = [page.ws.close(code=1001, message=b"the daemon is stopping") for page in list(self._pages)]
        if closes:
            try:
                await asyncio.wait_for(asyncio.gather(*closes, return_exceptions=True), CLOSE_TIMEOUT_S)
            except asyncio.TimeoutError:
                log.warning("web console: %d pages did not close in %.0f s", len(closes), CLOSE_TIMEOUT_S)
        if self._runner is not None:
            await self._runner.cleanup()

    async def drain(self) -> None:
        """Wait for the requests being served (at shutdown, once the engine has failed its waiters)."""
        await self.admission.drain()

    def status(self) -> dict[str, Any]:
        """The ``web`` section of status: the address (never the token), pages, counters."""
        return {"url": f"http://{self.host}:{self.port}/", "token_required": bool(self.token),
                "pages": len(self._pages), **self.counters, **self.admission.status()}

    # ------------------------------------------------------------------ who may come in

    def _refuse(self, why: str) -> web.Response:
        self.counters["refused"] += 1
        return web.Response(status=403, text=why + "\n")

    @property
    def cookie_name(self) -> str:
        """The token's cookie, per port (cookies are shared by every port of a host)."""
        return f"genbridge_token_{self.port}"

    @web.middleware
    async def _guard(self, request: web.Request, handler: Callable[[web.Request], Any]) -> web.StreamResponse:
        peer = request.remote or ""
        if not self.admission.is_allowed(peer):
            self.admission.counters["dropped_not_allowed"] += 1
            return self._refuse("not allowed")  # says no more than that, like OSC's silence
        if self.loopback:
            try:
                named = urlsplit("//" + request.host).hostname or ""
            except ValueError:  # a Host header that is no host ("[::1")
                named = ""
            if not is_loopback(named):
                return self._refuse(f"the console answers only as localhost / 127.0.0.1, not as {request.host!r}")
        given = ""
        if self.token:
            given = request.query.get("token", "")
            if not self._token_matches(given) and not self._token_matches(request.cookies.get(self.cookie_name, "")):
                return self._refuse("this console needs the token in the URL the daemon's log prints (?token=...)")
        response = await handler(request)
        if given and not response.prepared:
            # the URL's token becomes a cookie: the page drops it from the address bar, and no URL it
            # hands out (a dragged clip, a link) carries it
            response.set_cookie(self.cookie_name, self.token, httponly=True, samesite="Strict", path="/")
        return response

    def _token_matches(self, given: str) -> bool:
        return bool(given) and hmac.compare_digest(given.encode(), self.token.encode())

    def _same_origin(self, request: web.Request) -> bool:
        origin = request.headers.get("Origin")
        if origin is None:
            return True  # not a browser: nothing cross-site to guard against
        return origin == f"{request.scheme}://{request.host}"

    # ------------------------------------------------------------------ files

    async def _page_file(self, request: web.Request) -> web.Response:
        name = request.path.lstrip("/") or "index.html"
        data = resources.files("bridge").joinpath("web_console", name).read_bytes()
        return web.Response(body=data, content_type=PAGE_FILES[name], headers={"Cache-Control": "no-store"})

    async def _clip(self, request: web.Request) -> web.StreamResponse:
        """A WAV of this session (only those: a plain name inside the session folder)."""
        name = request.match_info["name"]
        path = self.session_dir / name
        if not _CLIP_NAME.match(name) or not path.is_file():
            raise web.HTTPNotFound(text=f"no clip {name!r} in this session\n")
        return web.FileResponse(path, headers={"Content-Disposition": f"inline; filename=\"{quote(name)}\""})

    # ------------------------------------------------------------------ the WebSocket transport

    async def _websocket(self, request: web.Request) -> web.StreamResponse:
        if not self._same_origin(request):
            return self._refuse(f"WebSocket from another origin ({request.headers.get('Origin')}) refused")
        if self._closing:
            return web.Response(status=503, text="the daemon is stopping\n")
        if len(self._pages) >= MAX_PAGES:
            self.counters["refused"] += 1
            return web.Response(status=503, text=f"{MAX_PAGES} pages are connected already\n")
        ws = web.WebSocketResponse(max_msg_size=self.max_message_bytes * FRAME_LIMIT_FACTOR, heartbeat=20)
        await ws.prepare(request)
        page = _Page(ws, request.remote or "", next(self._numbers))
        self._pages.add(page)
        self.counters["connections"] += 1
        sender = asyncio.ensure_future(page.send_all())
        reply = self.admission.limit_errors(page.host, self._replier(page))
        try:
            page.push(self._hello())
            status = self._status_message()
            if status is not None:
                page.push(status)
            async for msg in ws:
                if page.gone:
                    break  # stuck, being closed: what it still sends is not served
                if msg.type == WSMsgType.TEXT:
                    self._received(page, reply, msg.data)
                elif msg.type == WSMsgType.BINARY and self.admission.admit(page.host, page.key):
                    self.counters["malformed"] += 1
                    error_reply(reply, 0, "", "binary frame refused: send one JSON object per text frame")
        finally:
            page.gone = True
            self._pages.discard(page)
            if page.stuck:
                self.counters["dropped_stuck"] += 1
            sender.cancel()
            await asyncio.gather(sender, return_exceptions=True)
            if self.page_gone is not None:
                self.page_gone(reply)
        return ws

    def _replier(self, page: _Page) -> ReplyFn:
        """The page's reply callable: one per WebSocket, so registrations made with it
        (``tempo/listen``) are found again by the same page's next request."""

        def reply(address: str, args: list[Any]) -> None:
            name = protocol.REPLY_NAMES.get(address, "")
            names = protocol.REPLIES[name].args if name else ()
            page.push({"type": "reply", "reply": name, "address": address, "args": list(args),
                       "named": dict(zip(names, args))})

        return reply

    def _hello(self) -> dict[str, Any]:
        clips = list(self.clips())
        return {"type": "hello", "version": __version__, "session": self.session_dir.name,
                "clips": [clip_json(wav, meta) for wav, meta in clips[-HELLO_CLIPS:]], "clips_total": len(clips),
                "endpoints": [protocol.describe(e) for e in protocol.ENDPOINTS], "grids": list(GRIDS)}

    def _received(self, page: _Page, reply: ReplyFn, text: str) -> None:
        """One message from a page: admitted, parsed, handed to the service; never an exception."""
        self.counters["messages"] += 1
        if not self.admission.admit(page.host, page.key):
            return
        if self.admission.too_large(reply, len(text.encode()), self.max_message_bytes, "message") or \
                not self.admission.has_room(reply):
            return
        try:
            request = parse_message(text)
        except ProtocolError as exc:
            self.counters["malformed"] += 1
            error_reply(reply, exc.request_id, exc.address, str(exc))
            return
        if request.name == "client.reply_port":
            error_reply(reply, request.request_id, request.address,
                        "client/reply_port is for OSC: a WebSocket's replies come back on it")
            return
        self.admission.submit(request, reply)

    # ------------------------------------------------------------------ pushed events

    def _status_message(self) -> str | None:
        """The status as one message for every page, or None (logged) when building it failed."""
        try:
            return to_json({"type": "status", "status": self.status_source()})
        except Exception:  # a bug in a status section must not stop the console
            log.exception("cannot build the status for the web console")
            return None

    async def _push_status(self) -> None:
        while True:
            await asyncio.sleep(STATUS_EVERY_S)
            if not self._pages:
                continue
            text = self._status_message()
            for page in list(self._pages) if text is not None else []:
                page.push(text)

    def _broadcast(self, message: dict[str, Any]) -> None:
        if not self._pages:
            return
        text = to_json(message)
        for page in list(self._pages):
            page.push(text)

    def clip_added(self, wav: Path, meta: dict[str, Any]) -> None:
        """A clip landed in the session folder (any thread): every page hears of it."""
        if self._loop is not None and wav.parent == self.session_dir:
            self._loop.call_soon_threadsafe(self._broadcast, {"type": "clip", "clip": clip_json(wav, meta)})

    def clip_removed(self, wav: Path) -> None:
        if self._loop is not None and wav.parent == self.session_dir:
            self._loop.call_soon_threadsafe(self._broadcast, {"type": "clip_removed", "name": wav.name})


def _finite(value: Any) -> Any:
    """``value`` with NaN and infinities as None, in nested dicts and lists (JSON has none)."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v) for v in value]
    return value


def to_json(message: Mapping[str, Any]) -> str:
    """A message as strict JSON: a browser's JSON.parse refuses NaN, and one NaN in a status would
    break the page every second."""
    try:
        return json.dumps(message, default=str, allow_nan=False)
    except ValueError:
        return json.dumps(_finite(message), default=str, allow_nan=False)


def _scalar(value: Any) -> bool:
    return isinstance(value, (str, int, float)) and not isinstance(value, bool)


def parse_message(text: str) -> protocol.Request:
    """A WebSocket message as a Request, in one of its two forms (the README's protocol section):
    ``{"address": "/genbridge/...", "args": [...]}`` (an OSC message, either form) or
    ``{"request": "drum.play", "args": {...}, "id": 7}``. Raises ProtocolError with what is wrong."""
    try:
        message = json.loads(text)
    except (ValueError, RecursionError) as exc:
        raise ProtocolError(f"not JSON: {exc}") from None
    if not isinstance(message, dict):
        raise ProtocolError(f"expected a JSON object, got {type(message).__name__}")
    rid = protocol.as_request_id(message.get("id", 0))
    rid = 0 if rid is None else rid
    args = message.get("args", [] if "address" in message else {})
    if "address" in message:
        address = message["address"]
        if not isinstance(address, str) or not isinstance(args, list):
            raise ProtocolError('"address" must be a string and "args" a list', rid)
        if not all(_scalar(a) for a in args):
            raise ProtocolError("args must be strings and numbers (as OSC carries)", protocol.guess_request_id(
                [a for a in args if _scalar(a)]), address)
        return protocol.parse(address, args)
    if "request" in message:
        if not isinstance(args, dict) or not all(isinstance(k, str) and _scalar(v) for k, v in args.items()):
            raise ProtocolError('"args" must be an object of names to strings and numbers', rid,
                                str(message["request"]))
        return protocol.parse_named(message["request"], args, message.get("id", 0))
    raise ProtocolError('a message needs "address" (an OSC address) or "request" (an endpoint name)', rid)
