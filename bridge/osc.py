"""OSC over UDP: decode, validate against the address table, hand to the service, reply.

python-osc decodes packets and builds replies; we do not use its dispatcher, because with a
bundle whose timetag lies in the future it calls ``time.sleep()`` even in the asyncio server,
which would freeze every other client. Timetags are ours to schedule (the live-audio issue).

Replies go to the sender's host and port, unless a reply port was registered with
``/genbridge/client/reply_port`` (Max's ``[udpsend]`` sends from a random port and listens with
``[udpreceive PORT]`` on a fixed one). A registration holds for the socket that sent it (so two
patches on one machine, each with its own ``[udpsend]``, get their replies apart) and, for
sockets of that host that registered nothing (``oscsend`` uses a new port every time), the
host's latest registration applies.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
from typing import Any

from pythonosc.osc_message_builder import OscMessageBuilder
from pythonosc.osc_packet import OscPacket

from bridge import protocol
from bridge.protocol import ProtocolError
from bridge.service import ReplyFn, Service, error_reply, reply_with

log = logging.getLogger(__name__)

Address = tuple[str, int]


def build_message(address: str, args: list[Any]) -> bytes:
    builder = OscMessageBuilder(address=address)
    for arg in args:
        if isinstance(arg, bool):
            arg = int(arg)
        builder.add_arg(arg)
    return builder.build().dgram


#: Per-socket reply registrations kept (a flood of registrations from new ports cannot grow
#: the table without bound; the oldest go first).
MAX_SOCKET_REGISTRATIONS = 1024


class OscTransport(asyncio.DatagramProtocol):
    """The daemon's UDP endpoint."""

    def __init__(self, service: Service) -> None:
        self.service = service
        #: host -> its latest registered reply port; (host, sender port) -> that socket's.
        self.reply_ports: dict[str, int] = {}
        self.socket_reply_ports: dict[tuple[str, int], int] = {}
        self.transport: asyncio.DatagramTransport | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self.counters = {"packets": 0, "malformed": 0, "errors_sent": 0}

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def replier(self, sender: Address) -> ReplyFn:
        host, port = sender[0], sender[1]

        def reply(address: str, args: list[Any]) -> None:
            if address == protocol.REPLIES["error"].address:
                self.counters["errors_sent"] += 1
            target = self.socket_reply_ports.get((host, port)) or self.reply_ports.get(host, port)
            self.send((host, target), address, args)

        return reply

    def send(self, target: Address, address: str, args: list[Any]) -> None:
        if self.transport is None or self.transport.is_closing():
            return
        try:
            self.transport.sendto(build_message(address, args), target)
        except Exception as exc:  # unencodable argument, unreachable host: log, keep serving
            log.warning("cannot send %s to %s:%s: %s", address, target[0], target[1], exc)

    def datagram_received(self, data: bytes, addr: Address) -> None:
        self.counters["packets"] += 1
        reply = self.replier(addr)
        try:
            packet = OscPacket(data)
        except Exception as exc:  # ParseError, and more than that on junk (python-osc)
            self.counters["malformed"] += 1
            error_reply(reply, 0, "", f"malformed OSC packet ({len(data)} bytes): {exc}")
            return
        if not packet.messages and len(data) > 16:
            # python-osc skips bundle elements it cannot read (and logs a warning): an error here
            self.counters["malformed"] += 1
            error_reply(reply, 0, "", f"malformed OSC bundle ({len(data)} bytes): no readable message in it")
            return
        wall, mono = time.time(), time.monotonic()
        for timed in packet.messages:
            msg = timed.message
            # python-osc gives a bundle's timetag as epoch seconds ("now" when immediate or past);
            # a future one becomes a monotonic deadline the audio mixer meets sample-accurately.
            at = mono + (timed.time - wall) if timed.time > wall + 0.0005 else None
            self._handle(msg.address, list(msg.params), addr, reply, at)

    def _handle(self, address: str, args: list[Any], addr: Address, reply: ReplyFn, at: float | None = None) -> None:
        try:
            request = protocol.parse(address, args)
        except ProtocolError as exc:
            error_reply(reply, exc.request_id, address, str(exc))
            return
        if at is not None:
            request = dataclasses.replace(request, at=at)
        if request.name == "client.reply_port":
            self._register(addr[0], addr[1], request.values["port"], request.request_id, reply)
            return
        task = asyncio.ensure_future(self.service.handle(request, reply))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _register(self, host: str, sender_port: int, port: int, request_id: int | str, reply: ReplyFn) -> None:
        if port == 0:
            self.reply_ports.pop(host, None)
            self.socket_reply_ports.pop((host, sender_port), None)
        else:
            self.reply_ports[host] = port
            self.socket_reply_ports.pop((host, sender_port), None)
            self.socket_reply_ports[(host, sender_port)] = port
            while len(self.socket_reply_ports) > MAX_SOCKET_REGISTRATIONS:  # oldest first
                self.socket_reply_ports.pop(next(iter(self.socket_reply_ports)))
        log.info("replies for %s now go to port %s", host, port or "the sender's")
        reply_with(reply, "client/registered", request_id, port)

    def error_received(self, exc: Exception) -> None:
        log.debug("UDP error (a client's port closed?): %s", exc)

    async def drain(self) -> None:
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)


async def serve_osc(service: Service, host: str, port: int) -> tuple[asyncio.DatagramTransport, OscTransport]:
    loop = asyncio.get_running_loop()
    transport, proto = await loop.create_datagram_endpoint(lambda: OscTransport(service), local_addr=(host, port))
    return transport, proto  # type: ignore[return-value]
