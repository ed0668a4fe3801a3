"""Shared fixtures: small real models built on the fly, configs, and running daemons."""

from __future__ import annotations

import fcntl
import os
import sys
import tempfile
from contextlib import ExitStack
from pathlib import Path
from typing import Any, Callable, Iterator

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
os.environ.setdefault("HF_HUB_OFFLINE", "1")  # as the daemon's workers run: never a hub request

from helpers import Daemon, OscClient  # noqa: E402


@pytest.fixture(autouse=True)
def machine_wide(request: pytest.FixtureRequest) -> Iterator[None]:
    """A test marked ``machine_wide("ray")`` holds an exclusive lock named so from before its
    fixtures start until after they stop, so no two such tests run at once on this machine,
    whichever pytest-xdist process runs them: a Ray cluster, an Ableton Link session and the
    patches' fixed ports are the machine's, not a test's. (xdist's own ``xdist_group`` does not
    group under pytest 9: it renames ``item._nodeid``, which pytest 9 no longer reads.)"""
    names = sorted({str(mark.args[0]) for mark in request.node.iter_markers("machine_wide")})
    with ExitStack() as held:
        for name in names:
            lock = held.enter_context(open(Path(tempfile.gettempdir()) / f"genbridge-tests-{name}.lock", "w"))
            fcntl.flock(lock, fcntl.LOCK_EX)  # waits for the other process's test to end
        yield


#: A U-Net small enough to sample in milliseconds, but with every block type the public
#: tiny-audio-diffusion architecture uses (resnets, downsampling, attention).
TINY_UNET: dict[str, Any] = {
    "in_channels": 1,
    "channels": [8, 16, 32],
    "factors": [1, 4, 4],
    "items": [1, 1, 1],
    "attentions": [0, 0, 1],
    "attention_heads": 2,
    "attention_features": 16,
}
TINY_RATE = 22050
#: An instrument on model "m" whose clips take seconds: something to cancel, kill or queue behind.
SLOW = """
[instruments.slow]
model = "m"
pool = 0
steps = 1000
"""
TINY_LENGTH = 4096


def tiny_arch(in_channels: int = 1, length: int = TINY_LENGTH) -> Any:
    from models.diffusion import UNetArch

    return UNetArch.from_mapping(dict(TINY_UNET, in_channels=in_channels),
                                 sample_rate=TINY_RATE, length=length)


def build_tiny_model(folder: Path, seed: int = 1, default_steps: int = 4, in_channels: int = 1,
                     length: int = TINY_LENGTH) -> Path:
    """A genbridge model folder with (random but fixed) weights stored as safetensors."""
    from models.diffusion import build_network, save_model_folder

    arch = tiny_arch(in_channels, length)
    net = build_network(arch, init_seed=seed)
    return save_model_folder(folder, net, arch, default_steps=default_steps)


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_model(tmp_path_factory.mktemp("models") / "tiny")


def build_tiny_velocity_model(folder: Path, classes: tuple[str, ...] = ("kick", "snare", "hat"), seed: int = 3,
                              default_steps: int = 4) -> Path:
    """A class- and velocity-conditioned genbridge model folder, written as ``genbridge train``
    writes one. Its embeddings are random and large (as training makes them in time), so another
    class or velocity is clearly another clip."""
    import torch

    from models.diffusion import (
        CLASS_EMBEDDING_KEY,
        VELOCITY_EMBEDDING_KEY,
        ConditionedUNet,
        build_network,
        save_model_folder,
    )

    arch = tiny_arch()
    model = ConditionedUNet(build_network(arch, init_seed=seed), len(classes), velocity_knots=4)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        model.class_embedding.weight.copy_(torch.randn(model.class_embedding.weight.shape, generator=gen) * 3)
        model.velocity_embedding.copy_(torch.randn(model.velocity_embedding.shape, generator=gen) * 3)
    return save_model_folder(folder, model.net, arch, default_steps=default_steps,
                             extra_config={"classes": list(classes)},
                             extra_tensors={CLASS_EMBEDDING_KEY: model.class_embedding.weight.detach(),
                                            VELOCITY_EMBEDDING_KEY: model.velocity_embedding.detach()})


@pytest.fixture(scope="session")
def tiny_velocity_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_velocity_model(tmp_path_factory.mktemp("models") / "tiny-velocity")


def write_config(path: Path, model_path: Path | str, *, pool: int = 3, steps: int = 0, dry_policy: str = "replay",
                 instruments: tuple[str, ...] = ("kick", "snare", "hat"), subtype: str = "PCM_24",
                 extra: str = "", audio: str = 'device = "none"', engine: str = "", model: str = "") -> Path:
    """A daemon config for tests; no audio device unless ``audio`` names one (hermetic tests).
    ``engine`` and ``model`` are more TOML lines for the [engine] and [models.m] tables."""
    lines = [
        "[audio]", audio, "",
        "[engine]", f'dry_policy = "{dry_policy}"', "threads = 1", "wait_timeout_s = 60", engine, "",
        "[output]", f'subtype = "{subtype}"', "",
        "[models.m]", f'path = "{model_path}"', f"steps = {steps}", model, "",
    ]
    for name in instruments:
        lines += [f"[instruments.{name}]", 'model = "m"', f"pool = {pool}", ""]
    path.write_text("\n".join(lines) + extra)
    return path


@pytest.fixture
def start_daemon(tmp_path: Path) -> Iterator[Callable[..., tuple[Daemon, OscClient]]]:
    """Start ``genbridge serve`` with a config; yields (daemon, client) and cleans both up."""
    started: list[tuple[Daemon, OscClient]] = []

    def start(config: Path | None = None, extra: list[str] | None = None,
              env: dict[str, str] | None = None) -> tuple[Daemon, OscClient]:
        out = tmp_path / f"out{len(started)}"
        daemon = Daemon(out, config, extra=extra, env=env)
        daemon.wait_for_ping()
        client = OscClient(daemon.port)
        started.append((daemon, client))
        return daemon, client

    yield start
    for daemon, client in started:
        client.close()
        daemon.stop()


def pools_full(*names: str) -> Callable[[dict[str, Any]], bool]:
    def check(status: dict[str, Any]) -> bool:
        inst = status["instruments"]
        return all(inst[n]["ready"] >= inst[n]["target"] for n in (names or inst))

    return check


@pytest.fixture
def jack_server() -> Iterator[Any]:
    """A fresh ``jackd -d dummy`` (48 kHz, 256 frames) of this test's own."""
    from jack_peer import JackServer

    server = JackServer()
    yield server
    server.kill()
