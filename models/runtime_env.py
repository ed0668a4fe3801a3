"""Threads for a model process: passive OpenMP waits and explicit counts, set before torch loads.

Why: on two shared cores, OpenMP threads that spin while they wait starve the audio process and
the OSC server (torch with 2 spinning threads ran 15-25x slower under load from another process;
docs/ARCHITECTURE.md, "Measured reasons"). Every process that runs a model calls these.
"""

from __future__ import annotations

import os


def configure_threads_env(threads: int) -> None:
    """Set before torch is imported (a spawned child inherits it): passive waits, ``threads`` threads."""
    os.environ["OMP_WAIT_POLICY"] = "PASSIVE"
    os.environ["OMP_NUM_THREADS"] = str(threads)
    os.environ["MKL_NUM_THREADS"] = str(threads)


def configure_torch_threads(threads: int) -> None:
    """torch's own intra-op count, and one inter-op thread (the worker runs one model)."""
    import torch

    torch.set_num_threads(max(1, int(threads)))
    try:
        torch.set_num_interop_threads(1)
    except RuntimeError:  # already set once in this process
        pass
