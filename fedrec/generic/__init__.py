"""Federated learning for any PyTorch model: the generic task API (see ``fedrec.generic.federated``).

A user supplies an ``nn.Module`` and per-client datasets and gets fedrec's federated machinery:
local SGD epochs, FedAvg weighting, the server optimisers, client sampling, FedProx and the
seeds' mixing step. ``fedrec.generic.data`` holds the seeds' demonstration tasks (MNIST / digits
MLP, ML-100K favourite genre) and ``fedrec.generic.runner`` the ``fedrec train`` runner for TOML
configs with ``[task] kind = "classification"``. This module stays import-light for the CLI.
"""

from __future__ import annotations

import tomllib
from pathlib import Path


def is_classification_config(path: Path) -> bool:
    """True when the TOML file at ``path`` has a ``[task]`` table with ``kind = "classification"``."""
    try:
        raw = tomllib.loads(Path(path).read_text())
    except (OSError, tomllib.TOMLDecodeError, UnicodeDecodeError):
        return False  # the recommender config loader reports the problem with its usual message
    task = raw.get("task")
    return isinstance(task, dict) and task.get("kind") == "classification"
