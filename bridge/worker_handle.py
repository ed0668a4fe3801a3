"""The engine's handle on a model worker, and what a worker is started from.

Why this module exists: the engine schedules work for models; where a model runs is not its
business. It gets a :data:`WorkerFactory` when it is built and talks to whatever that returns
through :class:`WorkerHandle` (start, send, stop, pid, restarts) and two callbacks. The daemon
passes :func:`local_workers` (a supervised process on this machine); tests pass an in-process
fake; a remote worker (Ray) is another factory. See docs/ARCHITECTURE.md, "The seams".
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, Protocol

from bridge.config import Config
from bridge.liveness import WORKER_OOM_SCORE_ADJ, LivenessPolicy
from bridge.model_worker import worker_main
from bridge.supervisor import RestartPolicy, SupervisedChild
from models.runtime_env import configure_threads_env

log = logging.getLogger(__name__)


@dataclass
class WorkerSpec:
    """Everything a worker process needs to load its model (sent to it as a plain dict)."""

    model_name: str
    family: str
    model_path: str
    device: str = "auto"
    threads: int = 1
    #: Family-specific load options (precision, sdpa, compile, onnx_path, quantize...).
    options: dict[str, Any] = field(default_factory=dict)
    #: Drum finishing for one-shot families; None for families whose outputs are left as made.
    finishing: dict[str, Any] | None = None
    nice: int = 0
    #: Resident memory ceiling (MB) its supervisor enforces; 0: none.
    memory_limit_mb: float = 0.0
    #: GPU memory cap (MB) the worker sets on its CUDA device; 0: none.
    gpu_memory_limit_mb: float = 0.0
    #: Its OpenMP threads spin briefly before sleeping (models.runtime_env.configure_threads_env).
    spin: bool = False

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


class WorkerHandle(Protocol):
    """What the engine needs of a worker, wherever it runs."""

    @property
    def pid(self) -> int | None: ...

    @property
    def restarts(self) -> int: ...

    def start(self) -> None: ...

    def send(self, msg: dict[str, Any]) -> bool: ...

    def stop(self) -> None: ...

    def health(self) -> dict[str, Any]:
        """Heartbeat age, memory, restarts and why the last one ended (``last_exit``), for status."""
        ...


#: on_message(msg), on_exit(exit code, seconds until the restart or None when none follows).
OnMessage = Callable[[dict[str, Any]], None]
OnExit = Callable[[int | None, float | None], None]
WorkerFactory = Callable[[WorkerSpec, asyncio.AbstractEventLoop, OnMessage, OnExit], WorkerHandle]


class LocalWorker:
    """A worker process on this machine under a :class:`SupervisedChild`: a load failure
    ("fatal") is not restarted; any other death is, with the policy's backoff, and so is a hang
    or a worker over its memory ceiling (``liveness``; the spec's ceiling replaces its own)."""

    def __init__(self, spec: WorkerSpec, loop: asyncio.AbstractEventLoop, on_message: OnMessage, on_exit: OnExit,
                 policy: RestartPolicy, liveness: LivenessPolicy | None = None, *,
                 body: Callable[..., None] = worker_main, body_args: tuple[Any, ...] = (),
                 name: str = "worker") -> None:
        self.spec = spec
        self._on_message = on_message
        if liveness is not None:
            liveness = replace(liveness, memory_limit_mb=spec.memory_limit_mb)
        self.child = SupervisedChild(
            f"{name}-{spec.model_name}", body,
            (spec.to_json(), *body_args, logging.getLogger().getEffectiveLevel()),
            loop, on_message=self._message, on_exit=on_exit, policy=policy,
            before_spawn=self._before_spawn, liveness=liveness, oom_score_adj=WORKER_OOM_SCORE_ADJ)

    def _before_spawn(self) -> None:
        # the child inherits the environment at spawn: make its OpenMP passive before torch loads
        configure_threads_env(self.spec.threads, self.spec.spin)
        if self.child.restarts:  # a restart is starting: the owner's "restarting" becomes "starting"
            self._on_message({"op": "starting"})

    @property
    def pid(self) -> int | None:
        return self.child.pid

    @property
    def restarts(self) -> int:
        return self.child.restarts

    def start(self) -> None:
        self.child.start()
        log.info("started worker for model %r (%s, pid %s, %d threads, device %s)", self.spec.model_name,
                 self.spec.family, self.child.pid, self.spec.threads, self.spec.device)

    def send(self, msg: dict[str, Any]) -> bool:
        return self.child.send(msg)

    def stop(self) -> None:
        self.child.stop()

    def health(self) -> dict[str, Any]:
        return self.child.health()

    def _message(self, msg: dict[str, Any]) -> None:
        if msg.get("op") == "ready":
            self.child.healthy()
        elif msg.get("op") == "fatal":
            self.child.give_up()
        self._on_message(msg)


def local_workers(policy: RestartPolicy, liveness: LivenessPolicy | None = None) -> WorkerFactory:
    """The daemon's factory: every model in its own supervised process, watched by ``liveness``."""

    def make(spec: WorkerSpec, loop: asyncio.AbstractEventLoop, on_message: OnMessage, on_exit: OnExit) -> WorkerHandle:
        return LocalWorker(spec, loop, on_message, on_exit, policy, liveness)

    return make


def ray_workers(config: Config, policy: RestartPolicy, liveness: LivenessPolicy | None = None) -> WorkerFactory:
    """``[engine] backend = "ray"``: every model in Ray actors on the cluster at
    ``engine.ray_address``, reached through a supervised proxy process each (bridge/ray_workers.py;
    this process never imports Ray). The proxy's own ceiling is small: the model's memory lives
    in the actors, on the cluster."""
    from models.generator import get_family

    def make(spec: WorkerSpec, loop: asyncio.AbstractEventLoop, on_message: OnMessage, on_exit: OnExit) -> WorkerHandle:
        from bridge.ray_workers import ray_proxy_main

        model = config.models.get(spec.model_name)
        signature = get_family(spec.family).signature(spec.model_path)
        options = {"address": config.engine.ray_address, "signature": signature,
                   "replicas": model.replicas if model else 1, "num_gpus": model.num_gpus if model else 0.0,
                   # the actors' pulses are judged by the same rules (and the model's memory ceiling)
                   "liveness": None if liveness is None else asdict(replace(liveness,
                                                                            memory_limit_mb=spec.memory_limit_mb))}
        return LocalWorker(replace(spec, memory_limit_mb=0.0), loop, on_message, on_exit, policy,
                           None if liveness is None else replace(liveness, loading_after_s=0.0),
                           body=ray_proxy_main, body_args=(options,), name="ray-proxy")

    return make


def family_of(config: Config, model: str) -> str:
    """``[models.NAME] family``; "" picks by runtime (diffusion on torch or onnxruntime)."""
    mc = config.models[model]
    if mc.family:
        return mc.family
    return "diffusion-onnx" if mc.runtime == "onnx" else "diffusion"


def drum_worker_spec(config: Config, model: str) -> WorkerSpec:
    """The spec of a model that instruments (or kits) play: one-shots, finished as configured."""
    mc = config.models[model]
    return WorkerSpec(
        model_name=model, family=family_of(config, model), model_path=str(mc.resolved_path()),
        device=mc.device, threads=config.model_threads(model),
        options={"sdpa": mc.sdpa, "precision": mc.precision, "compile": mc.compile,
                 "onnx_path": str(Path(mc.onnx_path).expanduser()) if mc.onnx_path else "",
                 "steps": mc.steps, "warm_batches": list(range(1, config.engine.refill_batch + 1))},
        finishing=config.finishing.to_json(), nice=config.engine.worker_nice,
        memory_limit_mb=config.engine.worker_memory_limit_mb(mc.memory_limit_mb),
        gpu_memory_limit_mb=mc.gpu_memory_limit_mb)


def continuation_worker_spec(config: Config) -> WorkerSpec:
    """The spec of the ``[continuation]`` model: MusicGen, outputs not finished (they are music)."""
    c = config.continuation
    ceiling = config.engine.worker_memory_limit_mb(c.memory_limit_mb)
    return WorkerSpec(
        model_name="continuation", family="musicgen", model_path=c.model, device=c.device,
        threads=c.threads or config.engine.threads,
        options={"precision": c.precision, "quantize": c.quantize, "lm_weights": c.lm_weights,
                 "kv_cache": c.kv_cache, "cache_budget_mb": cache_budget_mb(ceiling)},
        finishing=None, nice=config.engine.worker_nice, spin=c.spin_wait,
        memory_limit_mb=ceiling, gpu_memory_limit_mb=c.gpu_memory_limit_mb)


def cache_budget_mb(ceiling_mb: float) -> float:
    """The most KV cache one MusicGen pass may hold: a quarter of the worker's memory ceiling
    (weights, T5, EnCodec and the prefill's activations need the rest), 256 MB to 2 GiB. More
    takes than fit go in further passes instead of past the ceiling, where the worker is killed."""
    return 2048.0 if not ceiling_mb else max(256.0, min(2048.0, ceiling_mb / 4))


def worker_liveness(config: Config) -> LivenessPolicy:
    """How the daemon watches its model workers ([engine] heartbeat_timeout_s, stall_timeout_s,
    load_timeout_s; each spec brings its memory ceiling)."""
    e = config.engine
    return LivenessPolicy(silent_after_s=e.heartbeat_timeout_s, stalled_after_s=e.stall_timeout_s,
                          loading_after_s=e.load_timeout_s)
