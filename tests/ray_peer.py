"""A local Ray cluster for tests and benchmarks: ``ray start --head`` as the README's GPU box runs it."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from helpers import free_tcp_port

#: The ray command of this interpreter's environment (genbridge[ray] installs it).
RAY = str(Path(sys.executable).with_name("ray"))


class RayCluster:
    """``ray start --head`` on loopback with 2 CPUs, no dashboard, no usage reporting."""

    def __init__(self, num_cpus: int = 2) -> None:
        self.port = free_tcp_port()
        self.address = f"127.0.0.1:{self.port}"
        self.num_cpus = num_cpus
        self.start()

    def start(self) -> None:
        env = dict(os.environ, RAY_USAGE_STATS_ENABLED="0")
        run = subprocess.run([RAY, "start", "--head", f"--port={self.port}", "--node-ip-address=127.0.0.1",
                              f"--num-cpus={self.num_cpus}", "--include-dashboard=false", "--disable-usage-stats",
                              "--object-store-memory=100000000"], capture_output=True, text=True, env=env,
                             timeout=120)
        assert run.returncode == 0, run.stdout + run.stderr

    def stop(self) -> None:
        """``ray stop --force``: every Ray process of this machine goes (the tests own the machine)."""
        subprocess.run([RAY, "stop", "--force"], capture_output=True, timeout=120)
