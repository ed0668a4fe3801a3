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
from bridge.admission import Admission, from_server
from bridge.config import ServerConfig
from bridge.protocol import ProtocolError
from bridge.service import ReplyFn, RequestHandler, error_reply, reply_with

log = logging.getLogger(__name__)

Address = tuple[str, int]


def build_message(address: str, args: list[Any]) -> bytes:
    builder = OscMessageBuilder(address=address)
    for arg in args:
        if isinstance(arg, bool):
            arg = int(arg)
        builder.add_arg(arg)
    return builder.build().dgram


#: Bundles nested deeper than this are refused (python-osc would recurse into any depth).
MAX_BUNDLE_DEPTH = 4
#: Kernel receive buffer asked for (Linux caps it at net.core.rmem_max).
RECEIVE_BUFFER_BYTES = 4 * 1024 * 1024
#: Messages one packet may carry.
MAX_MESSAGES_PER_PACKET = 64


class PacketRefused(ValueError):
    """A packet refused before parsing (too deep, too many elements, inconsistent sizes)."""


def check_bundle(data: bytes, depth: int = 1, budget: list[int] | None = None) -> None:
    """Walk a bundle's structure without decoding messages: nesting depth, element count and
    element sizes must be sane before python-osc is let loose on it."""
    budget = budget if budget is not None else [MAX_MESSAGES_PER_PACKET]
    if not data.startswith(b"#bundle\0"):
        budget[0] -= 1
        if budget[0] < 0:
            raise PacketRefused(f"more than {MAX_MESSAGES_PER_PACKET} messages in one packet")
        return
    if depth > MAX_BUNDLE_DEPTH:
        raise PacketRefused(f"bundle nested deeper than {MAX_BUNDLE_DEPTH}")
    pos = 16
    while pos < len(data):
        if pos + 4 > len(data):
            raise PacketRefused("truncated bundle element size")
        size = int.from_bytes(data[pos:pos + 4], "big")
        pos += 4
        if size <= 0 or size % 4 or pos + size > len(data):
            raise PacketRefused(f"bundle element of {size} bytes does not fit the packet")
        check_bundle(data[pos:pos + size], depth + 1, budget)
        pos += size


#: Per-socket reply registrations kept (a flood of registrations from new ports cannot grow
#: the table without bound; the oldest go first).
MAX_SOCKET_REGISTRATIONS = 1024
#: Endpoints this transport serves itself (only it knows hosts and ports); the service serves the rest.
TRANSPORT_ENDPOINTS = ("client.reply_port",)


class OscTransport(asyncio.DatagramProtocol):
    """The daemon's UDP endpoint."""

    def __init__(self, admission: Admission, *, max_packet_bytes: int = 8192) -> None:
        #: The allow-list, rates, error budget and in-flight cap (bridge/admission.py, shared
        #: with every transport); it hands admitted requests to the service.
        self.admission = admission
        self.max_packet_bytes = max_packet_bytes
        #: host -> its latest registered reply port; (host, sender port) -> that socket's.
        self.reply_ports: dict[str, int] = {}
        self.socket_reply_ports: dict[tuple[str, int], int] = {}
        self._repliers: dict[tuple[str, int], ReplyFn] = {}
        self.transport: asyncio.DatagramTransport | None = None
        self.counters = {"packets": 0, "malformed": 0}

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def replier(self, sender: Address) -> ReplyFn:
        """The reply callable of one client socket: the same object for every packet it sends, so
        a registration made with it (``tempo/listen``) is found again by that socket's next request."""
        key = (sender[0], sender[1])
        reply = self._repliers.pop(key, None) or self._make_replier(key)
        self._repliers[key] = reply  # last: the dict's order is recency, a busy patch stays
        while len(self._repliers) > MAX_SOCKET_REGISTRATIONS:  # the least recent goes
            self._repliers.pop(next(iter(self._repliers)))
        return reply

    def _make_replier(self, sender: tuple[str, int]) -> ReplyFn:
        host, port = sender

        def reply(address: str, args: list[Any]) -> None:
            target = self.socket_reply_ports.get((host, port)) or self.reply_ports.get(host, port)
            self.send((host, target), address, args)

        return self.admission.limit_errors(host, reply)

    def send(self, target: Address, address: str, args: list[Any]) -> None:
        if self.transport is None or self.transport.is_closing():
            return
        try:
            self.transport.sendto(build_message(address, args), target)
        except Exception as exc:  # unencodable argument, unreachable host: log, keep serving
            log.warning("cannot send %s to %s:%s: %s", address, target[0], target[1], exc)

    def datagram_received(self, data: bytes, addr: Address) -> None:
        self.counters["packets"] += 1
        if not self.admission.admit(addr[0], (addr[0], addr[1])):
            return  # unread and unanswered: an outsider learns nothing, and answering is what costs
        reply = self.replier(addr)
        if self.admission.too_large(reply, len(data), self.max_packet_bytes, "packet") or \
                not self.admission.has_room(reply):
            return
        try:
            check_bundle(data)
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
        self.admission.submit(request, reply)

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

    def status(self) -> dict[str, Any]:
        return {**self.counters, **self.admission.status(), "registered_reply_ports": len(self.socket_reply_ports)}

    async def drain(self) -> None:
        await self.admission.drain()


async def serve_osc(handle: RequestHandler, server: ServerConfig) -> tuple[asyncio.DatagramTransport, OscTransport]:
    loop = asyncio.get_running_loop()
    transport, proto = await loop.create_datagram_endpoint(
        lambda: OscTransport(from_server(handle, server), max_packet_bytes=server.max_packet_bytes),
        local_addr=(server.host, server.osc_port))
    sock = transport.get_extra_info("socket")
    if sock is not None:
        import socket

        try:  # a burst of packets waits in the kernel instead of being dropped there
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, RECEIVE_BUFFER_BYTES)
        except OSError:
            pass
    return transport, proto  # type: ignore[return-value]
