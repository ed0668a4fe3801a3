"""A test peer for the web console's WebSocket, as a page (or any JSON client) uses it."""

from __future__ import annotations

import asyncio
import itertools
import json
import time
from typing import Any

import aiohttp


class WebPage:
    """One WebSocket to the daemon's console: sends requests, sorts what comes back by type."""

    def __init__(self, port: int, *, origin: str | None = None, token: str = "", host: str = "127.0.0.1") -> None:
        self.url = f"http://{host}:{port}/ws" + (f"?token={token}" if token else "")
        self.origin = origin
        self.session: aiohttp.ClientSession | None = None
        self.ws: aiohttp.ClientWebSocketResponse | None = None
        self.hello: dict[str, Any] = {}
        self.statuses: list[dict[str, Any]] = []
        self.clips: list[dict[str, Any]] = []
        self.replies: list[dict[str, Any]] = []
        self._ids = itertools.count(1000)
        self._inbox: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        self._reader: asyncio.Task[None] | None = None

    async def __aenter__(self) -> "WebPage":
        self.session = aiohttp.ClientSession()
        headers = {"Origin": self.origin} if self.origin else {}
        try:
            self.ws = await self.session.ws_connect(self.url, headers=headers)
        except BaseException:
            await self.session.close()
            raise
        self._reader = asyncio.ensure_future(self._read())
        self.hello = await self.next_of("hello", timeout=10)
        return self

    async def __aexit__(self, *exc: Any) -> None:
        if self.ws is not None:
            await self.ws.close()
        if self._reader is not None:
            await asyncio.gather(self._reader, return_exceptions=True)
        if self.session is not None:
            await self.session.close()

    async def _read(self) -> None:
        assert self.ws is not None
        async for msg in self.ws:
            if msg.type == aiohttp.WSMsgType.TEXT:
                data = json.loads(msg.data)
                data["received_at"] = time.perf_counter()  # for benchmarks: when it arrived
                {"status": self.statuses, "clip": self.clips, "reply": self.replies}.get(data["type"], []).append(data)
                await self._inbox.put(data)

    async def next_of(self, kind: str, timeout: float = 30.0, reply: str | None = None) -> dict[str, Any]:
        """The next message of this type (and reply name); others in between are kept, not failed on."""
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"no {kind} {reply or ''} within {timeout} s")
            data = await asyncio.wait_for(self._inbox.get(), left)
            if data["type"] == kind and (reply is None or data.get("reply") == reply):
                return data

    async def wait_closed(self, timeout: float) -> None:
        """Until the daemon has closed the socket (the reader ends with it)."""
        assert self._reader is not None
        await asyncio.wait_for(asyncio.shield(self._reader), timeout)

    async def send(self, message: dict[str, Any] | str) -> None:
        assert self.ws is not None
        await self.ws.send_str(message if isinstance(message, str) else json.dumps(message))

    async def osc(self, address: str, *args: Any) -> None:
        """Send an OSC message as JSON (the ``address`` form)."""
        await self.send({"address": address, "args": list(args)})

    async def request(self, name: str, reply: str, timeout: float = 30.0, **args: Any) -> dict[str, Any]:
        """Send a request by endpoint name with named arguments; returns its reply ``reply``."""
        rid = next(self._ids)
        await self.send({"request": name, "args": args, "id": rid})
        while True:
            data = await self.next_of("reply", timeout)
            if data["args"][0] == rid and data["reply"] in (reply, "error"):
                return data
