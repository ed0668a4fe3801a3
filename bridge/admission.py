"""Who may ask, how often, and how much at once: the admission rules every transport applies.

Why one place: a request that OSC refuses must be refused the same way when it comes over the
web console's WebSocket (and any later transport), with the same counters in status. The rules,
all from ``[server]``:

- **allow-list** (``server.allow``): clients outside it are not answered at all (an outsider
  learns nothing, not even that a daemon is there);
- **rate per client** (``server.max_rate_per_client``, a token bucket per client socket or
  connection): more is dropped unread, since answering is what costs;
- **error replies per host** (``server.error_replies_per_s``): a flood of bad requests cannot
  make the daemon flood back; the rest are counted, not sent;
- **in flight** (``server.max_in_flight``): requests being served at once; more get a "busy"
  error reply until some finish.

Each transport holds its own :class:`Admission` (its own counters and in-flight set, so a flood
on one cannot starve the other) built from the same configuration by :func:`from_server`.
"""

from __future__ import annotations

import asyncio
import ipaddress
import time
from typing import Any, Hashable

from bridge import protocol
from bridge.protocol import Request
from bridge.service import ReplyFn, RequestHandler, error_reply

#: Keys a bucket or cache remembers before it starts again (a flood of new senders cannot grow them).
MAX_KEYS = 4096


class TokenBucket:
    """Token bucket per key (a client host for error replies, a client socket for requests)."""

    def __init__(self, rate: float) -> None:
        self.rate = rate
        self.tokens: dict[Hashable, tuple[float, float]] = {}

    def take(self, key: Hashable) -> bool:
        now = time.monotonic()
        tokens, last = self.tokens.get(key, (self.rate, now))
        tokens = min(self.rate, tokens + (now - last) * self.rate)
        if len(self.tokens) > MAX_KEYS:
            self.tokens.clear()
        if tokens < 1.0:
            self.tokens[key] = (tokens, now)
            return False
        self.tokens[key] = (tokens - 1.0, now)
        return True


class Admission:
    """The allow-list, the per-client rate, the error-reply budget and the in-flight cap of one
    transport, with the counters status reports under that transport's name."""

    def __init__(self, handle: RequestHandler, *, allow: list[str] | None = None, error_replies_per_s: float = 20.0,
                 max_in_flight: int = 256, max_rate_per_client: float = 1000.0) -> None:
        #: Serves a parsed request (bridge.service.Service.handle in the daemon).
        self.handle_request = handle
        self.allow = [ipaddress.ip_network(n, strict=False) for n in allow or []]
        self.max_in_flight = max_in_flight
        self.error_budget = TokenBucket(error_replies_per_s)
        self.request_budget = TokenBucket(max_rate_per_client)
        self._allowed: dict[str, bool] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self.counters = {"errors_sent": 0, "errors_suppressed": 0, "dropped_not_allowed": 0,
                         "dropped_oversize": 0, "dropped_busy": 0, "dropped_rate": 0}

    def is_allowed(self, host: str) -> bool:
        """Whether ``host`` (an IP address as text) is inside ``server.allow`` (everyone when it is empty)."""
        if not self.allow:
            return True
        allowed = self._allowed.get(host)
        if allowed is None:
            try:
                ip = ipaddress.ip_address(host)
                allowed = any(ip in net for net in self.allow)
            except ValueError:
                allowed = False
            if len(self._allowed) > MAX_KEYS:
                self._allowed.clear()
            self._allowed[host] = allowed
        return allowed

    def admit(self, host: str, client: Hashable) -> bool:
        """Whether a request from ``host`` (on ``client``, its socket or connection) is read at all:
        inside the allow-list and within the client's rate. Counts what it refuses; the caller
        sends nothing back for a refused one."""
        if not self.is_allowed(host):
            self.counters["dropped_not_allowed"] += 1
            return False
        if not self.request_budget.take(client):
            self.counters["dropped_rate"] += 1
            return False
        return True

    def limit_errors(self, host: str, reply: ReplyFn) -> ReplyFn:
        """``reply``, with its error replies taken from ``host``'s error budget (the rest counted)."""
        error_address = protocol.REPLIES["error"].address

        def limited(address: str, args: list[Any]) -> None:
            if address == error_address:
                if not self.error_budget.take(host):
                    self.counters["errors_suppressed"] += 1
                    return
                self.counters["errors_sent"] += 1
            reply(address, args)

        return limited

    def too_large(self, reply: ReplyFn, size: int, limit: int, what: str) -> bool:
        """Whether a message of ``size`` bytes is over ``limit`` (``server.max_packet_bytes``); if
        so, says so (an error reply) and counts it."""
        if size <= limit:
            return False
        self.counters["dropped_oversize"] += 1
        error_reply(reply, 0, "", f"{what} of {size} bytes refused (server.max_packet_bytes = {limit})")
        return True

    @property
    def in_flight(self) -> int:
        return len(self._tasks)

    def has_room(self, reply: ReplyFn) -> bool:
        """Whether another request may be served now; if not, says "busy" (an error reply) and counts it."""
        if len(self._tasks) < self.max_in_flight:
            return True
        self.counters["dropped_busy"] += 1
        error_reply(reply, 0, "", f"busy: {len(self._tasks)} requests in flight (server.max_in_flight)")
        return False

    def submit(self, request: Request, reply: ReplyFn) -> None:
        """Serve ``request`` in a task of its own, counted in flight until it finishes."""
        task = asyncio.ensure_future(self.handle_request(request, reply))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def status(self) -> dict[str, Any]:
        return {**self.counters, "in_flight": len(self._tasks), "allow": [str(n) for n in self.allow] or None}

    async def drain(self) -> None:
        """Wait for the requests being served (at shutdown)."""
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)


def from_server(handle: RequestHandler, server: Any) -> Admission:
    """An :class:`Admission` with ``[server]``'s rules (a :class:`bridge.config.ServerConfig`)."""
    return Admission(handle, allow=server.allow, error_replies_per_s=server.error_replies_per_s,
                     max_in_flight=server.max_in_flight, max_rate_per_client=server.max_rate_per_client)
