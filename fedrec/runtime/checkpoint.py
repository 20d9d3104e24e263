"""Crash-safe outputs: every file is written to a temporary name and renamed into place.

A checkpoint is one safetensors file: the tensors, plus a JSON string of metadata (round, the
resolved config, history-independent counters) in the safetensors header. No pickle.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import Tensor

from fedrec.errors import FedrecError

CHECKPOINT_NAME = "checkpoint.safetensors"


def _temporary_beside(path: Path) -> Path:
    """An empty temporary file next to ``path`` with the permissions a plain open() would give."""
    handle, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(handle)
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(name, 0o666 & ~umask)
    return Path(name)


def atomic_write_text(path: Path, text: str) -> None:
    """Write ``text`` so that ``path`` holds either the old content or the new, never a part."""
    tmp = _temporary_beside(path)
    try:
        with open(tmp, "w") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def save_checkpoint(path: Path, tensors: dict[str, Tensor], meta: dict[str, Any]) -> None:
    """Atomically save tensors with JSON-serialisable metadata."""
    tmp = _temporary_beside(path)
    try:
        save_file({k: v.detach().contiguous() for k, v in tensors.items()}, str(tmp), metadata={"fedrec": json.dumps(meta)})
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def load_checkpoint(path: Path) -> tuple[dict[str, Tensor], dict[str, Any]]:
    """Tensors and metadata of a checkpoint written by :func:`save_checkpoint`."""
    try:
        from safetensors import safe_open

        with safe_open(str(path), framework="pt") as handle:
            meta = json.loads((handle.metadata() or {}).get("fedrec", "{}"))
        return load_file(str(path)), meta
    except (SafetensorError, OSError, json.JSONDecodeError, ValueError) as error:
        raise FedrecError(f"checkpoint {path} is unreadable ({error}); delete it to start the run over") from None
