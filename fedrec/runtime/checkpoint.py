"""Crash-safe outputs: every file is written to a temporary name and renamed into place.

A checkpoint is one safetensors file: the tensors, plus a JSON string of metadata (round, the
resolved config, history-independent counters) in the safetensors header. No pickle.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any, Callable

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


def tensors_under(tensors: dict[str, Tensor], prefix: str) -> dict[str, Tensor]:
    """The checkpoint tensors saved under ``prefix`` (e.g. ``"server/"``), keyed by the rest of their name."""
    return {key[len(prefix):]: value for key, value in tensors.items() if key.startswith(prefix)}


def check_resumable(path: Path, meta: dict[str, Any], missing: bool, config_json: str,
                    comparable: Callable[[str], Any], rounds: int, what: str) -> None:
    """Refuse, in one line, to resume from a checkpoint that is not ``what`` (or lacks tensors), was made
    with a different config (as ``comparable`` sees it), or has already run more than ``rounds`` rounds."""
    if "config" not in meta or "round" not in meta or missing:
        raise FedrecError(f"{path} is not {what}; delete it or use a new --out")
    if comparable(meta["config"]) != comparable(config_json):
        raise FedrecError(f"the checkpoint in {path.parent} was made with a different config; resume with the same "
                          "config (only train.rounds may change) or use a new --out")
    if int(meta["round"]) > rounds:
        raise FedrecError(f"the run in {path.parent} has already finished {meta['round']} rounds; "
                          f"set train.rounds >= {meta['round']} to resume it")


def discard_stale_metrics(out_dir: Path, done_rounds: int, rounds: int) -> None:
    """Remove the metrics.json of an earlier finish when a resumed run still has rounds to go: it no longer
    describes the run, and an interruption must leave the run unfinished rather than finished with old figures."""
    if done_rounds < rounds:
        (out_dir / "metrics.json").unlink(missing_ok=True)


def finished_history(path: Path, last_round: int) -> list[dict[str, Any]]:
    """The records of a run's history.jsonl up to ``last_round`` (those a resumed run keeps); [] without the file."""
    if not path.exists():
        return []
    lines = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return [entry for entry in lines if entry["round"] <= last_round]
