"""The project's lint rules ([tool.ruff] in pyproject.toml: pyflakes, pycodestyle, import order)
hold for every Python file we ship: unused imports and undefined names are bugs waiting."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

from helpers import REPO


def _ruff() -> list[str]:
    beside = Path(sys.executable).with_name("ruff")  # the test extra installs it into the venv
    return [str(beside)] if beside.is_file() else [shutil.which("ruff") or "ruff"]


def test_ruff_finds_nothing() -> None:
    result = subprocess.run([*_ruff(), "check", "bridge", "models", "export", "bench", "tests", "max_patches"],
                            cwd=REPO, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
