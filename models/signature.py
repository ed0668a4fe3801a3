"""A cheap fingerprint of a model's files, importable without torch.

It changes whenever the model's config or weights change (each file's name, size and mtime),
so the daemon can tell whether pooled clips or an ONNX export were made by the model it runs now.
"""

from __future__ import annotations

import hashlib
from pathlib import Path


def source_signature(model: str | Path) -> str:
    model = Path(model).expanduser().resolve()
    if model.is_dir():
        files = sorted(p for p in model.iterdir() if p.is_file() and p.suffix != ".onnx"
                       and not p.name.endswith(".onnx.json"))
    else:
        beside = (model.with_suffix(".yaml"), model.parent / "config.yaml", model.parent / "config.json")
        files = [model, *[p for p in beside if p.is_file()]]
    h = hashlib.sha256()
    for f in files:
        st = f.stat()
        h.update(f"{f.name}:{st.st_size}:{st.st_mtime_ns};".encode())
    return h.hexdigest()[:16]
