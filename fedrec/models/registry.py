"""Model names used in configs, and how to build each from its config section."""

from __future__ import annotations

from typing import Any

from fedrec.errors import FedrecError
from fedrec.models.base import RecModel
from fedrec.models.mf import BiasedMF, MFConfig

MODELS: dict[str, tuple[type, type]] = {
    "mf": (BiasedMF, MFConfig),
}


def build_model(name: str, options: dict[str, Any], num_users: int, num_items: int) -> RecModel:
    """A model by its config name; ``options`` are the fields of its config dataclass."""
    if name not in MODELS:
        raise FedrecError(f"unknown model '{name}'; choose one of: {', '.join(sorted(MODELS))}")
    model_cls, config_cls = MODELS[name]
    return model_cls(config_cls(**options), num_users, num_items)
