"""Import audio-diffusion-pytorch without torchaudio.

audio-diffusion-pytorch 0.1.3 does ``from torchaudio import transforms`` at import time, only
to build its MelSpectrogram helper, which genbridge never uses. No torchaudio wheel on PyPI
works with the torch 2.13 CPU build (the newest is linked against CUDA), and installing one
would pull a multi-GB CUDA torch. So when torchaudio cannot be imported we register a
stand-in module whose ``transforms.MelSpectrogram`` raises a clear error if anything ever
calls it; everything else in the library (UNetV0, VDiffusion, VSampler) is untouched.
"""

from __future__ import annotations

import importlib
import sys
import types
from typing import Any

_STAND_IN_NAME = "torchaudio"


class TorchaudioUnavailable(ImportError):
    """Raised when code reaches a torchaudio feature that genbridge stood in for."""


def _stand_in() -> types.ModuleType:
    module = types.ModuleType(_STAND_IN_NAME)
    module.__doc__ = "genbridge stand-in: torchaudio is not installed (see models/adp.py)."
    transforms = types.ModuleType(f"{_STAND_IN_NAME}.transforms")

    class MelSpectrogram:  # noqa: D401 - mirrors torchaudio's name
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            raise TorchaudioUnavailable(
                "torchaudio is not installed: audio-diffusion-pytorch's MelSpectrogram is "
                "unavailable in genbridge (only waveform U-Net models are supported)"
            )

    transforms.MelSpectrogram = MelSpectrogram  # type: ignore[attr-defined]
    module.transforms = transforms  # type: ignore[attr-defined]
    module.__genbridge_stand_in__ = True  # type: ignore[attr-defined]
    return module


def import_adp() -> types.ModuleType:
    """Return the ``audio_diffusion_pytorch`` module, standing in for torchaudio if needed."""
    if "audio_diffusion_pytorch" in sys.modules:
        return sys.modules["audio_diffusion_pytorch"]
    standing_in = False
    try:
        importlib.import_module("torchaudio")
    except Exception:  # ImportError, or OSError from a CUDA-linked build on a CPU machine
        sys.modules.pop(_STAND_IN_NAME, None)
        stand_in = _stand_in()
        sys.modules[_STAND_IN_NAME] = stand_in
        sys.modules[f"{_STAND_IN_NAME}.transforms"] = stand_in.transforms  # type: ignore[attr-defined]
        standing_in = True
    try:
        return importlib.import_module("audio_diffusion_pytorch")
    except ModuleNotFoundError as exc:
        if exc.name != "audio_diffusion_pytorch":
            raise
        raise ImportError(
            "audio-diffusion-pytorch is not installed; install it without its torchaudio "
            "requirement: pip install --no-deps -r requirements/no-deps.txt"
        ) from exc
    finally:
        if standing_in:
            # audio_diffusion_pytorch holds its own reference now. Out of sys.modules again, so
            # other libraries (transformers probes find_spec("torchaudio")) see that there is none.
            sys.modules.pop(_STAND_IN_NAME, None)
            sys.modules.pop(f"{_STAND_IN_NAME}.transforms", None)
