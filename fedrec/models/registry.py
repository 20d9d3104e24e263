"""Model names used in configs, and how to build each from its config section."""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np
from torch import Tensor

from fedrec.errors import FedrecError
from fedrec.models.base import RecModel
from fedrec.models.bpr import BPRConfig, BPRMF
from fedrec.models.mf import BiasedMF, MFConfig
from fedrec.models.ncf import NCF, NCFConfig
from fedrec.models.sequence import SASRec, SASRecConfig
from fedrec.models.text import TextBPRConfig, TextMFConfig, TextRec, TowerBPRConfig, TowerMFConfig

MODELS: dict[str, tuple[type, type]] = {
    "mf": (BiasedMF, MFConfig),
    "bpr": (BPRMF, BPRConfig),
    "ncf": (NCF, NCFConfig),
}
#: text-aware models (fedrec/models/text.py): built with the item text embeddings (``item_text``)
TEXT_MODELS: dict[str, tuple[type, type]] = {
    "text_bpr": (TextRec, TextBPRConfig),  # ID + text item vectors, BPR loss
    "text_mf": (TextRec, TextMFConfig),  # ID + text item vectors, squared error on ratings
    "tower_bpr": (TextRec, TowerBPRConfig),  # text-only item tower (scores unseen items), BPR loss
    "tower_mf": (TextRec, TowerMFConfig),  # text-only item tower, squared error on ratings
}
#: sequence models (fedrec/models/sequence.py): built with each user's latest history (``histories``)
SEQUENCE_MODELS: dict[str, tuple[type, type]] = {
    "sasrec": (SASRec, SASRecConfig),  # causal self-attention over the user's recent items, next-item loss
}
#: models that can score an item never seen in training (from its text; ID residuals start at zero)
COLD_START_MODELS = frozenset(TEXT_MODELS)
#: models trained on implicit feedback (interactions, ranking), as opposed to explicit ratings
IMPLICIT_MODELS = frozenset({"bpr", "ncf", "text_bpr", "tower_bpr", "sasrec"})


def _entry(name: str) -> tuple[type, type]:
    if name in MODELS:
        return MODELS[name]
    if name in TEXT_MODELS:
        return TEXT_MODELS[name]
    if name in SEQUENCE_MODELS:
        return SEQUENCE_MODELS[name]
    raise FedrecError(f"unknown model '{name}'; choose one of: "
                      f"{', '.join(sorted({**MODELS, **TEXT_MODELS, **SEQUENCE_MODELS}))}")


def model_options(name: str) -> list[str]:
    """The option names model ``name`` takes."""
    return [field.name for field in dataclasses.fields(_entry(name)[1])]


def build_model(name: str, options: dict[str, Any], num_users: int, num_items: int,
                item_text: Tensor | None = None, histories: np.ndarray | None = None) -> RecModel:
    """A model by its config name; ``options`` are the fields of its config dataclass.

    Text models (:data:`TEXT_MODELS`) also take ``item_text``, the (num_items, text_dim) embeddings;
    sequence models (:data:`SEQUENCE_MODELS`) ``histories``, each user's latest items (num_users, L) for
    scoring, and ``item_text`` when their item embeddings start from the text.
    """
    model_cls, config_cls = _entry(name)
    if name in TEXT_MODELS and item_text is None:
        raise FedrecError(f"model '{name}' needs the items' text embeddings; build it with item_text "
                          "(fedrec train does this from model.text_encoder)")
    known = set(model_options(name))
    unknown = sorted(set(options) - known)
    if unknown:
        raise FedrecError(f"model '{name}' does not take {', '.join('model.' + k for k in unknown)}; "
                          f"it takes: {', '.join(sorted(known))}")
    try:
        if name in TEXT_MODELS:
            return model_cls(config_cls(**options), num_users, num_items, item_text=item_text)
        if name in SEQUENCE_MODELS:
            return model_cls(config_cls(**options), num_users, num_items, histories=histories, item_text=item_text)
        return model_cls(config_cls(**options), num_users, num_items)
    except ValueError as error:
        raise FedrecError(f"invalid model settings for '{name}': {error}") from None
