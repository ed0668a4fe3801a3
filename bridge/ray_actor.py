"""A model worker as a Ray actor: the same worker body, fed by queues instead of a pipe.

Why the same body (:func:`bridge.model_worker.worker_main`): a model on a GPU box must behave
exactly as it does in a local worker process - the same family, render, finishing, sidecar,
progress, chunks and cancel - so the actor only replaces the pipe with :class:`_QueueConnection`
and runs the body on a thread of its own, while Ray calls ``push`` and ``pull`` on others
(a threaded actor).

Why clients: the actor is *named* by model and checkpoint signature and outlives the daemons
that use it (``lifetime="detached"``), so several daemons (several musicians) on one cluster share
one warm copy. Each daemon joins as a client; its task ids are mapped to the actor's own (two
daemons both have a task 1), replies go back to whoever asked, and the next render is taken from
the clients in turn (round robin), so one musician's burst of refills cannot starve another's
play. A client leaving never stops the model: a ``stop`` from one daemon is dropped.

Arrays go back through Ray's object store: ``pull`` returns the worker's messages, numpy audio
included, and Ray serialises them (zero-copy for arrays), nothing is pickled by hand.
"""

from __future__ import annotations

import itertools
import logging
import multiprocessing
import os
import threading
import time
import uuid
from collections import Counter, deque
from typing import Any

from bridge import liveness

#: Ops that end a task (its mapping goes with them).
_FINAL_OPS = ("clip", "error", "cancelled")
#: A client that has not pulled for this long is gone (a daemon killed without leaving): its
#: renders are dropped and its replies no longer kept.
CLIENT_IDLE_S = 60.0


class _QueueConnection:
    """What :func:`worker_main` reads and writes, in place of a multiprocessing Connection."""

    def __init__(self, actor: "ModelActor") -> None:
        self.actor = actor

    def recv(self) -> dict[str, Any]:
        return self.actor._next_inbound()

    def poll(self) -> bool:
        """Only cancels are urgent: a render waits its turn in the clients' queues (fairness)."""
        with self.actor._cond:
            return bool(self.actor._cancels)

    def send(self, msg: dict[str, Any]) -> None:
        self.actor._from_worker(msg)


class ModelActor:
    """One model, loaded once, served to every daemon that joins (decorated with ``ray.remote`` by
    :mod:`bridge.ray_workers`)."""

    def __init__(self, spec: dict[str, Any], log_level: int = logging.INFO) -> None:
        self._cond = threading.Condition()
        self._inbound: dict[str, deque[dict[str, Any]]] = {}
        self._turns: deque[str] = deque()
        self._cancels: deque[dict[str, Any]] = deque()
        self._outbound: dict[str, list[dict[str, Any]]] = {}
        #: actor task id -> (client, the client's task id)
        self._tasks: dict[int, tuple[str, Any]] = {}
        self._ids = itertools.count(1)
        #: The worker's "ready" (or "fatal"), repeated to every client that joins later.
        self._announced: dict[str, Any] | None = None
        self._served: Counter[str] = Counter()
        self._labels: dict[str, str] = {}
        self._last_pull: dict[str, float] = {}
        self.spec = spec
        self.started = time.time()
        #: Which incarnation this is: a daemon that sees it change knows the actor was restarted.
        self.instance = uuid.uuid4().hex
        pulse = liveness.Pulse(multiprocessing.get_context("spawn"))
        liveness._pulse = pulse  # the body's marks and states land here; pull reports their ages
        pulse.start_beating(0.5)
        self._pulse = pulse
        from bridge.model_worker import worker_main

        def body() -> None:
            try:
                worker_main(_QueueConnection(self), spec, log_level)
            finally:  # the body ended (a bug, a stop): nothing will mark progress again
                self._from_worker({"op": "fatal", "error": "the worker body ended"})

        threading.Thread(target=body, name="worker", daemon=True).start()

    # ------------------------------------------------------------------ what daemons call

    def join(self, client: str, label: str = "") -> dict[str, Any]:
        """Register a daemon; it hears the model's "ready" at once if it is loaded already."""
        with self._cond:
            self._inbound.setdefault(client, deque())
            self._outbound.setdefault(client, [])
            self._labels[client] = label or client
            self._last_pull[client] = time.monotonic()
            if self._announced is not None:
                self._outbound[client].append(dict(self._announced))
                self._cond.notify_all()
        return {"pid": os.getpid(), "node": _node_address(), "started": self.started, "instance": self.instance}

    def leave(self, client: str) -> None:
        """A daemon is gone: its waiting renders are dropped, its running ones cancelled."""
        with self._cond:
            self._forget(client)
            self._cond.notify_all()

    def _forget(self, client: str) -> None:
        """(Under the lock.) Drop a client, its queued renders and their task ids; cancel its running ones."""
        queued = self._inbound.pop(client, deque())
        self._outbound.pop(client, None)
        self._last_pull.pop(client, None)
        self._labels.pop(client, None)
        for render in queued:
            for t in render["tasks"]:
                self._tasks.pop(t["task"], None)
        for task, (owner, _) in list(self._tasks.items()):
            if owner == client:
                self._cancels.append({"op": "cancel", "task": task})

    def _drop_idle(self) -> None:
        """(Under the lock.) Clients that stopped pulling long ago are gone (killed without leaving)."""
        now = time.monotonic()
        for client, last in list(self._last_pull.items()):
            if now - last > CLIENT_IDLE_S:
                self._forget(client)

    def push(self, client: str, msg: dict[str, Any]) -> None:
        """A message from a daemon's engine (render, cancel; stop is dropped: the model is shared)."""
        op = msg.get("op")
        with self._cond:
            if client not in self._inbound:  # sent to this incarnation before the daemon joined it again
                self._inbound[client] = deque()
                self._outbound.setdefault(client, [])
                self._last_pull[client] = time.monotonic()
            if op == "render":
                tasks = []
                for t in msg["tasks"]:
                    own = next(self._ids)
                    self._tasks[own] = (client, t["task"])
                    tasks.append(dict(t, task=own))
                self._inbound[client].append(dict(msg, tasks=tasks))
                self._served[client] += len(tasks)
            elif op == "cancel":
                own = next((k for k, v in self._tasks.items() if v == (client, msg.get("task"))), None)
                if own is None:
                    return
                if self._unqueue(client, own):  # still waiting its turn: cancelled here, never made
                    self._tasks.pop(own, None)
                    self._outbound[client].append({"op": "cancelled", "task": msg.get("task")})
                else:
                    self._cancels.append({"op": "cancel", "task": own})
            else:
                return
            self._cond.notify_all()

    def pull(self, client: str, timeout: float = 1.0) -> dict[str, Any]:
        """The messages for ``client`` (waiting up to ``timeout`` for the first), this incarnation's
        id, whether the client is joined here (a restarted actor knows nobody), and the worker's
        pulse: heartbeat and progress ages, state, resident memory."""
        deadline = time.monotonic() + timeout
        with self._cond:
            self._drop_idle()
            joined = client in self._outbound
            if joined:
                self._last_pull[client] = time.monotonic()
            while joined and not self._outbound.get(client) and time.monotonic() < deadline:
                self._cond.wait(max(0.0, deadline - time.monotonic()))
            messages = self._outbound.get(client, [])
            if client in self._outbound:
                self._outbound[client] = []
                self._last_pull[client] = time.monotonic()
        beat_age, mark_age, state = self._pulse.ages()
        return {"messages": messages, "instance": self.instance, "joined": joined,
                "heartbeat_age_s": round(beat_age, 3), "progress_age_s": round(mark_age, 3),
                "state": state, "rss_mb": round(liveness.rss_mb(os.getpid()), 1)}

    def _unqueue(self, client: str, task: int) -> bool:
        """(Under the lock.) Take a task out of the client's waiting renders; True if it was there."""
        for render in self._inbound.get(client, ()):
            kept = [t for t in render["tasks"] if t["task"] != task]
            if len(kept) < len(render["tasks"]):
                render["tasks"] = kept
                if not kept:
                    self._inbound[client].remove(render)
                return True
        return False

    def sharing(self) -> dict[str, Any]:
        """Who uses this actor: the clients joined now and the clips each asked for."""
        with self._cond:
            labels = self._labels
            return {"clients": [labels.get(c, c) for c in self._inbound],
                    "served": {labels.get(c, c): n for c, n in self._served.items()}}

    # ------------------------------------------------------------------ the worker's side

    def _next_inbound(self) -> dict[str, Any]:
        """Cancels first, then the next client's render in turn (blocks until there is one)."""
        with self._cond:
            while True:
                if self._cancels:
                    return self._cancels.popleft()
                for _ in range(len(self._turns) + len(self._inbound)):
                    for client in self._inbound:  # clients that joined since join the rotation
                        if client not in self._turns:
                            self._turns.append(client)
                    if not self._turns:
                        break
                    client = self._turns[0]
                    self._turns.rotate(-1)
                    queue = self._inbound.get(client)
                    if queue is None:
                        self._turns.remove(client)
                        continue
                    if queue:
                        return queue.popleft()
                self._cond.wait()

    def _from_worker(self, msg: dict[str, Any]) -> None:
        """A message of the worker body: a task's goes to the client that asked (with its own task
        id), "ready" and "fatal" to every client (and to those that join later)."""
        with self._cond:
            if "task" in msg:
                owner = (self._tasks.pop if msg.get("op") in _FINAL_OPS else self._tasks.get)(msg["task"], None)
                if owner is None:
                    return  # a task of a client that left
                client, task = owner
                if client in self._outbound:
                    self._outbound[client].append(dict(msg, task=task))
            else:
                if msg.get("op") in ("ready", "fatal"):
                    self._announced = msg
                for queue in self._outbound.values():
                    queue.append(dict(msg))
            self._cond.notify_all()


def _node_address() -> str:
    try:
        import ray

        return str(ray.util.get_node_ip_address())
    except Exception:  # not in a Ray worker (unit tests)
        return "local"
