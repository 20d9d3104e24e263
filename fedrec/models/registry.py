"""Model names used in configs, and how to build each from its config section."""

from __future__ import annotations

import dataclasses
from typing import Any

from fedrec.errors import FedrecError
from fedrec.models.base import RecModel
from fedrec.models.bpr import BPRConfig, BPRMF
from fedrec.models.mf import BiasedMF, MFConfig
from fedrec.models.ncf import NCF, NCFConfig

MODELS: dict[str, tuple[type, type]] = {
    "mf": (BiasedMF, MFConfig),
    "bpr": (BPRMF, BPRConfig),
    "ncf": (NCF, NCFConfig),
}
#: models trained on implicit feedback (interactions, ranking), as opposed to explicit ratings
IMPLICIT_MODELS = frozenset({"bpr", "ncf"})


def model_options(name: str) -> list[str]:
    """The option names model ``name`` takes."""
    return [field.name for field in dataclasses.fields(MODELS[name][1])]


def build_model(name: str, options: dict[str, Any], num_users: int, num_items: int) -> RecModel:
    """A model by its config name; ``options`` are the fields of its config dataclass."""
    if name not in MODELS:
        raise FedrecError(f"unknown model '{name}'; choose one of: {', '.join(sorted(MODELS))}")
    model_cls, config_cls = MODELS[name]
    known = set(model_options(name))
    unknown = sorted(set(options) - known)
    if unknown:
        raise FedrecError(f"model '{name}' does not take {', '.join('model.' + k for k in unknown)}; "
                          f"it takes: {', '.join(sorted(known))}")
    try:
        return model_cls(config_cls(**options), num_users, num_items)
    except ValueError as error:
        raise FedrecError(f"invalid model settings for '{name}': {error}") from None
