"""Threads for a model process: passive OpenMP waits and explicit counts, set before torch loads.

Why: on two shared cores, OpenMP threads that spin while they wait starve the audio process and
the OSC server (torch with 2 spinning threads ran 15-25x slower under load from another process;
docs/ARCHITECTURE.md, "Measured reasons"). Every process that runs a model calls these.
"""

from __future__ import annotations

import os

#: GOMP_SPINCOUNT of a worker that may spin (``[continuation] spin_wait``): about 0.1 ms of
#: spinning after each parallel region before the thread sleeps (libgomp's own default is 3x that).
SPIN_COUNT = 100_000


def configure_threads_env(threads: int, spin: bool = False) -> None:
    """Set before torch is imported (a spawned child inherits it): passive waits, ``threads`` threads.

    ``spin``: the threads spin briefly (:data:`SPIN_COUNT`) before they sleep, overriding the
    passive policy. MusicGen's token steps wake a second thread ~100 times a step: on an
    otherwise idle 2-core machine that takes them from RTF 0.8-0.9 to 1.0-1.1, but with another
    process busy on the other core a step took 3-5x longer (bench/continuation.py, README), so
    it is only for a machine that does nothing else meanwhile."""
    os.environ["OMP_WAIT_POLICY"] = "PASSIVE"
    os.environ["OMP_NUM_THREADS"] = str(threads)
    os.environ["MKL_NUM_THREADS"] = str(threads)
    if spin:
        os.environ["GOMP_SPINCOUNT"] = str(SPIN_COUNT)
    else:  # one worker's setting must not reach the next one spawned from this process
        os.environ.pop("GOMP_SPINCOUNT", None)


def spinning() -> bool:
    """Whether this process's OpenMP threads were set to spin (:func:`configure_threads_env`)."""
    return bool(os.environ.get("GOMP_SPINCOUNT"))


def configure_torch_threads(threads: int) -> None:
    """torch's own intra-op count, and one inter-op thread (the worker runs one model)."""
    import torch

    torch.set_num_threads(max(1, int(threads)))
    try:
        torch.set_num_interop_threads(1)
    except RuntimeError:  # already set once in this process
        pass
