"""Model workers on a Ray cluster (``[engine] backend = "ray"``): the daemon beside the DAW, the
models wherever the compute is.

How it fits the seam (docs/ARCHITECTURE.md, "Model workers on Ray"): the engine gets the same
:data:`~bridge.worker_handle.WorkerFactory` handle as for local workers and speaks the same worker
protocol. Each model's handle is a supervised child process on this machine, a *proxy*
(:func:`ray_proxy_main`), that connects to the cluster as a Ray driver and relays the protocol
to the model's actors (:class:`bridge.ray_actor.ModelActor`, the usual worker body on a Ray
worker). Why a proxy process and not Ray in the daemon: a Ray driver whose cluster goes away is
ended by Ray itself after a while, and Ray brings threads and a large import; in a child, losing
the cluster costs a restart of the proxy under the usual supervisor, never the daemon, which keeps
serving the folder and replays.

What the proxy does:

- finds or creates the model's actors by name (``genbridge/<model>/<checksum of the model's
  files and settings>/<replica>``, detached, restarted by Ray when they die), so a second daemon
  with the same model uses the same warm actors instead of loading a second copy;
- splits a render's tasks between the replicas that are ready (a refill batch of 4 over 2
  replicas is 2 + 2) and sends cancels to the replica that has the task;
- keeps one ``pull`` outstanding per replica (messages and the actor's pulse come back through
  Ray's object store), and forwards the worker's messages unchanged;
- an actor that dies (its process killed, its node gone): its tasks get error replies, Ray
  restarts it, the proxy joins it again and its "ready" resumes the model;
- the cluster unreachable: ``{"op": "unreachable"}`` (status says so, renders are refused with
  that reason, pools replay), and it tries again every ``RECONNECT_S``.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import queue
import socket
import threading
import time
import uuid
from multiprocessing.connection import Connection
from typing import Any

from bridge import liveness

log = logging.getLogger(__name__)

#: The namespace of every genbridge actor on a cluster (named actors are per namespace).
NAMESPACE = "genbridge"
#: Seconds between attempts to reach an unreachable cluster.
RECONNECT_S = 2.0
#: How long one pull waits on the actor for messages (it answers sooner when there are some).
PULL_WAIT_S = 1.0
#: A pull unanswered this long: the actor or the cluster is not answering.
PULL_SILENT_S = 15.0
#: The longest wait for an actor to be placed and answer its first call (a GPU box must have room).
JOIN_TIMEOUT_S = 60.0


def actor_key(spec: dict[str, Any], signature: str, num_gpus: float = 0.0) -> str:
    """What makes two daemons' actors the same: genbridge's version (an upgrade must not keep
    running old code), the model's files (its family's checkpoint signature) and every setting
    that changes what it makes or where it runs."""
    from bridge import __version__

    same = {k: spec.get(k) for k in ("family", "device", "options", "finishing", "threads", "nice",
                                     "gpu_memory_limit_mb")}
    digest = hashlib.sha256(json.dumps([__version__, signature, same, num_gpus], sort_keys=True,
                                       default=str).encode()).hexdigest()
    return digest[:16]


def actor_name(spec: dict[str, Any], signature: str, replica: int, num_gpus: float = 0.0) -> str:
    return f"genbridge/{spec['model_name']}/{actor_key(spec, signature, num_gpus)}/{replica}"


class _Replica:
    """One actor as the proxy sees it: its handle, its pending pull, whether it said ready."""

    def __init__(self, name: str, handle: Any) -> None:
        self.name = name
        self.handle = handle
        self.pull: Any = None
        self.pull_sent = 0.0
        #: When it last answered a pull (failed pulls of a blip do not count).
        self.answered = time.monotonic()
        self.ready = False
        self.fatal = False
        self.node = ""
        self.pid = 0
        self.restarts = 0
        self.instance = ""
        #: Why the proxy killed it (a hang, its memory), for the error replies of its tasks.
        self.killed_for = ""


def ray_proxy_main(conn: Connection, spec: dict[str, Any], ray_options: dict[str, Any],
                   log_level: int = logging.INFO) -> None:
    """The proxy's body (a supervised child): relay the worker protocol between ``conn`` (the
    engine) and the model's actors on the cluster at ``ray_options["address"]``."""
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")  # no usage reporting unless asked for
    name = spec["model_name"]
    logging.basicConfig(level=log_level, format=f"%(asctime)s ray-proxy[{name}] %(levelname)s %(message)s")
    Proxy(conn, spec, ray_options).run()


class Proxy:
    def __init__(self, conn: Connection, spec: dict[str, Any], ray_options: dict[str, Any]) -> None:
        self.conn = conn
        self.spec = spec
        self.address = str(ray_options.get("address") or "auto")
        self.replicas_wanted = int(ray_options.get("replicas", 1))
        self.num_gpus = float(ray_options.get("num_gpus", 0.0))
        self.signature = str(ray_options.get("signature", ""))
        #: How the actors' pulses are judged (the engine's heartbeat, stall and memory limits).
        self.policy = liveness.LivenessPolicy(**ray_options["liveness"]) if ray_options.get("liveness") else None
        self.client = f"{socket.gethostname()}-{os.getppid()}-{uuid.uuid4().hex[:6]}"
        self.label = str(ray_options.get("label") or f"{socket.gethostname()}:{os.getppid()}")
        self.inbox: queue.Queue[dict[str, Any] | None] = queue.Queue()
        self.replicas: list[_Replica] = []
        #: our task id -> index of the replica that has it
        self.owner: dict[Any, int] = {}
        self.connected = False
        self.said_unreachable = ""
        self.ray: Any = None
        self.next_sharing = 0.0
        #: replicas, owner and connected are shared by the main loop and the engine reader
        self.lock = threading.RLock()

    # ------------------------------------------------------------------ the loop

    def run(self) -> None:
        threading.Thread(target=self._read_engine, name="engine-reader", daemon=True).start()
        try:
            import ray
        except ImportError as exc:  # told once, not restarted: installing is the musician's step
            self._send({"op": "fatal",
                        "error": f'engine.backend = "ray" needs Ray: pip install "genbridge[ray]" ({exc})'})
            self.inbox.get()
            return
        self.ray = ray
        liveness.set_state(liveness.LOADING)
        while True:
            liveness.mark()
            if not self.connected and not self._connect():
                if not self._wait_unreachable():
                    return
                continue
            liveness.set_state(liveness.IDLE)
            try:
                if not self._relay_engine():
                    self._leave()
                    return
                self._relay_actors()
            except Exception as exc:  # the cluster went away under us (or a Ray error we do not know)
                self._lost(f"{type(exc).__name__}: {exc}")

    def _leave(self) -> None:
        """The engine stops: leave every actor (the models stay warm for the others), within a second."""
        try:
            refs = [r.handle.leave.remote(self.client) for r in self.replicas]
            self.ray.wait(refs, num_returns=len(refs), timeout=1.0)
            self.ray.shutdown()
        except Exception:  # stopping anyway
            pass

    def _read_engine(self) -> None:
        """The engine's messages, sent on to the actors from this thread as they arrive (a render
        must not wait for the main loop's next turn); the rest go to the main loop."""
        while True:
            try:
                msg = self.conn.recv()
            except (EOFError, OSError):
                self.inbox.put(None)
                return
            if msg.get("op") in ("render", "cancel"):
                with self.lock:
                    if self.connected:
                        try:
                            self._dispatch(msg)
                            continue
                        except Exception:  # the cluster is going: the main loop finds out and says so
                            pass
            self.inbox.put(msg)

    def _send(self, msg: dict[str, Any]) -> None:
        self.conn.send(msg)

    # ------------------------------------------------------------------ the cluster

    def _head_answers(self) -> str:
        """Why the cluster's head cannot be reached ("" when its port takes a connection): checked
        before ``ray.init``, which against a dead address retries for tens of seconds."""
        host, _, port = self.address.rpartition(":")
        if not host or not port.isdigit():
            return ""  # "auto": Ray finds it
        try:
            socket.create_connection((host, int(port)), timeout=2.0).close()
        except OSError as exc:
            return f"{host}:{port} does not answer ({exc.strerror or exc})"
        return ""

    def _connect(self) -> bool:
        ray = self.ray
        if not ray.is_initialized():
            why = self._head_answers()
            if why:
                self._lost(why)
                return False
        try:
            if not ray.is_initialized():
                ray.init(address=self.address, namespace=NAMESPACE, include_dashboard=False, log_to_driver=False,
                         logging_level=logging.WARNING, configure_logging=False)
            from bridge.ray_actor import ModelActor

            remote = ray.remote(ModelActor)
            self.replicas = []
            for i in range(self.replicas_wanted):
                name = actor_name(self.spec, self.signature, i, self.num_gpus)
                handle = remote.options(
                    name=name, namespace=NAMESPACE, lifetime="detached", get_if_exists=True,
                    max_restarts=-1, max_task_retries=0, max_concurrency=16,
                    num_cpus=max(1, int(self.spec.get("threads", 1))), num_gpus=self.num_gpus,
                ).remote(self.spec, logging.getLogger().getEffectiveLevel())
                replica = _Replica(name, handle)
                self._join(replica)
                self.replicas.append(replica)
        except Exception as exc:
            self._lost(f"{type(exc).__name__}: {exc}")
            return False
        self.connected = True
        self.said_unreachable = ""
        log.info("connected to the Ray cluster at %s: %d actor(s) for %s", self.address, len(self.replicas),
                 self.spec["model_name"])
        self._send({"op": "remote", "backend": "ray", "address": self.address, "state": "connected",
                    "actors": [{"name": r.name, "node": r.node, "pid": r.pid} for r in self.replicas]})
        self._send({"op": "starting"})  # until an actor says ready (at once when it is loaded already)
        return True

    def _join(self, replica: _Replica) -> None:
        """Join an actor (a new one, or a restarted one). Its "ready" comes with the next pulls."""
        joined = self.ray.get(replica.handle.join.remote(self.client, self.label), timeout=JOIN_TIMEOUT_S)
        replica.node, replica.pid, replica.instance = joined["node"], joined["pid"], joined["instance"]
        replica.pull = None
        replica.fatal = False
        now = time.monotonic()
        replica.answered = now
        for other in self.replicas:  # the time spent here was ours, not their silence
            other.pull_sent = max(other.pull_sent, now)
            other.answered = max(other.answered, now)

    def _lost(self, why: str) -> None:
        """The cluster is not answering: say so once per streak, fail what it had, drop the driver."""
        with self.lock:
            self.connected = False
            if self.said_unreachable != why:  # first: the engine sends nothing more while unreachable
                log.warning("the Ray cluster at %s is unreachable: %s", self.address, why)
                self._send({"op": "unreachable", "error": f"the Ray cluster at {self.address} is unreachable: {why}"})
                self._send({"op": "remote", "backend": "ray", "address": self.address, "state": "unreachable",
                            "error": why, "actors": []})
                self.said_unreachable = why
            for task in list(self.owner):
                self._send({"op": "error", "task": task, "kind": "model",
                            "error": f"the Ray cluster at {self.address} is unreachable ({why})"})
            self.owner.clear()
            self.replicas = []
        try:
            self.ray.shutdown()
        except Exception:  # the driver is half gone already
            pass

    def _wait_unreachable(self) -> bool:
        """Until the next try: renders are refused with the reason; False when the engine left."""
        deadline = time.monotonic() + RECONNECT_S
        while time.monotonic() < deadline:
            liveness.mark()
            try:
                msg = self.inbox.get(timeout=max(0.01, deadline - time.monotonic()))
            except queue.Empty:
                continue
            if msg is None or msg.get("op") == "stop":
                return False
            if msg.get("op") == "render":
                for t in msg["tasks"]:
                    self._send({"op": "error", "task": t["task"], "kind": "model",
                                "error": f"the Ray cluster at {self.address} is unreachable"})
        return True

    # ------------------------------------------------------------------ engine -> actors

    def _relay_engine(self) -> bool:
        while True:
            try:
                msg = self.inbox.get_nowait()
            except queue.Empty:
                return True
            if msg is None or msg.get("op") == "stop":
                return False
            with self.lock:
                self._dispatch(msg)

    def _dispatch(self, msg: dict[str, Any]) -> None:
        """A render split between the replicas, or a cancel sent to the one with the task (under the lock)."""
        if msg.get("op") == "render":
            self._render(msg)
        elif msg.get("op") == "cancel":
            index = self.owner.get(msg.get("task"))
            if index is not None and index < len(self.replicas):
                self.replicas[index].handle.push.remote(self.client, msg)

    def _render(self, msg: dict[str, Any]) -> None:
        """Split the tasks between the ready replicas, fewest tasks in hand first."""
        ready = [i for i, r in enumerate(self.replicas) if r.ready] or list(range(len(self.replicas)))
        load = {i: sum(1 for owner in self.owner.values() if owner == i) for i in ready}
        shares: dict[int, list[dict[str, Any]]] = {}
        for task in msg["tasks"]:
            i = min(ready, key=lambda k: (load[k], k))
            load[i] += 1
            shares.setdefault(i, []).append(task)
            self.owner[task["task"]] = i
        for i, tasks in shares.items():
            self.replicas[i].handle.push.remote(self.client, dict(msg, tasks=tasks))

    # ------------------------------------------------------------------ actors -> engine

    def _relay_actors(self) -> None:
        ray = self.ray
        now = time.monotonic()
        live = [r for r in self.replicas if not r.fatal]  # a replica that failed to load is not asked again
        for replica in live:
            if replica.pull is None:
                replica.pull = replica.handle.pull.remote(self.client, PULL_WAIT_S)
                replica.pull_sent = now
        pending = {r.pull: r for r in live}
        if not pending:
            time.sleep(0.25)  # nothing to relay (every replica failed to load): the engine has been told
            return
        done, rest = ray.wait(list(pending), num_returns=1, timeout=0.25)
        if done and rest:  # whatever else has answered meanwhile, in the same turn
            more, _ = ray.wait(rest, num_returns=len(rest), timeout=0)
            done += more
        for ref in done:
            replica = pending[ref]
            replica.pull = None
            try:
                answer = ray.get(ref)
            except ray.exceptions.ActorUnavailableError:
                continue  # a blip (the network, a restart under way): pull again; the silence limit decides
            except ray.exceptions.RayActorError as exc:
                self._actor_died(replica, replica.killed_for or f"{type(exc).__name__}")
                continue
            replica.answered = time.monotonic()
            if answer["instance"] != replica.instance or not answer["joined"]:
                self._actor_died(replica, "restarted by Ray")  # a new incarnation that has not met us
                continue
            with self.lock:
                for message in answer["messages"]:
                    self._forward(replica, message)
            self._judge(replica, answer)
        for replica in live:
            silent = now - max(replica.answered, replica.pull_sent if replica.pull is not None else replica.answered)
            if now - replica.answered > PULL_SILENT_S and silent > PULL_SILENT_S / 2:
                raise TimeoutError(f"actor {replica.name} has not answered for {now - replica.answered:.0f} s")
        if now >= self.next_sharing:  # who shares these actors, for status
            self.next_sharing = now + 5.0
            self._report_sharing()

    def _judge(self, replica: _Replica, answer: dict[str, Any]) -> None:
        """The engine's liveness rules on the actor's pulse: a hung or oversized worker is killed, and
        Ray restarts it (its tasks get error replies saying why)."""
        if self.policy is None or replica.killed_for:
            return
        ages = (float(answer["heartbeat_age_s"]), float(answer["progress_age_s"]), float(answer["state"]))
        found = liveness.verdict(ages, float(answer["rss_mb"]), self.policy)
        if found is not None:
            replica.killed_for = found[1]
            log.error("actor %s: %s; killing it (Ray restarts it)", replica.name, found[1])
            self.ray.kill(replica.handle, no_restart=False)

    def _report_sharing(self) -> None:
        actors: list[dict[str, Any]] = []
        clients: set[str] = set()
        served: dict[str, int] = {}
        for replica in self.replicas:
            try:
                share = self.ray.get(replica.handle.sharing.remote(), timeout=5)
            except Exception:  # restarting: reported next time
                share = {"clients": [], "served": {}}
            clients.update(share["clients"])
            for client, n in share["served"].items():
                served[client] = served.get(client, 0) + n
            actors.append({"name": replica.name, "node": replica.node, "pid": replica.pid,
                           "restarts": replica.restarts, "ready": replica.ready,
                           "clips_asked": sum(share["served"].values())})
        self._send({"op": "remote", "backend": "ray", "address": self.address, "state": "connected",
                    "actors": actors, "shared_by": sorted(clients), "served": served, "client": self.label})

    def _forward(self, replica: _Replica, msg: dict[str, Any]) -> None:
        op = msg.get("op")
        if op == "ready":
            first = not any(r.ready for r in self.replicas)
            replica.ready = True
            if not first:
                return  # the model is ready already (another replica said so)
            msg = dict(msg, info=dict(msg["info"], backend="ray", actor=replica.name, node=replica.node,
                                      replicas=len(self.replicas)))
        elif op == "fatal":
            replica.fatal, replica.ready = True, False
            # its name freed, so the next daemon (or this one, restarted) makes it again
            self.ray.kill(replica.handle, no_restart=True)
            if not all(r.fatal for r in self.replicas):
                log.error("actor %s failed to load: %s", replica.name, msg.get("error"))
                return
        elif op in ("clip", "error", "cancelled"):
            self.owner.pop(msg.get("task"), None)
        self._send(msg)

    def _actor_died(self, replica: _Replica, why: str) -> None:
        """Its tasks get error replies; Ray restarts it; we join the new one (its ready resumes it)."""
        with self.lock:
            index = self.replicas.index(replica)
            for task, owner in list(self.owner.items()):
                if owner == index:
                    self.owner.pop(task)
                    self._send({"op": "error", "task": task, "kind": "model",
                                "error": f"the Ray actor {replica.name} died ({why}); Ray is restarting it"})
            replica.ready = False
        replica.restarts += 1
        replica.killed_for = ""
        log.warning("actor %s died (%s); waiting for Ray to restart it", replica.name, why)
        if not any(r.ready for r in self.replicas):
            self._send({"op": "starting"})
        self._join(replica)  # blocks until the restarted actor answers (its model loads after)
