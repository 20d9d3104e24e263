"""Settings of item hiding (what :mod:`fedrec.privacy.hiding` does to a client's upload), kept apart
from the transforms so that the round's settings (fedrec/federated/server.py) can name them."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np

from fedrec.errors import FedrecError

HidingMode = Literal["none", "dense", "pseudo"]
HIDING_MODES: tuple[str, ...] = ("none", "dense", "pseudo")


@dataclass(frozen=True)
class HidingSettings:
    """Which transform the clients apply to their upload.

    ``pseudo_items`` fake rows per client, or, when it is 0, ``pseudo_ratio`` times the client's
    real row count (rounded); capped at the number of items the client did not touch.
    """

    mode: HidingMode = "none"
    pseudo_items: int = 0
    pseudo_ratio: float = 0.0
    per_round: bool = False  # a new pseudo-item set every round (else one fixed set per client)
    pseudo_values: Literal["virtual", "bootstrap"] = "virtual"  # how fake rows get their values

    def __post_init__(self) -> None:
        if self.mode not in HIDING_MODES:
            raise FedrecError(f"unknown hiding mode {self.mode!r}; use one of {', '.join(HIDING_MODES)}")
        if self.pseudo_items < 0 or not np.isfinite(self.pseudo_ratio) or self.pseudo_ratio < 0:
            raise FedrecError("pseudo-items count and ratio must be >= 0; e.g. --pseudo-items 100")
        if self.pseudo_values not in ("virtual", "bootstrap"):
            raise FedrecError(f"unknown pseudo-item values {self.pseudo_values!r}; use virtual or bootstrap")
        if self.mode == "pseudo" and self.pseudo_items == 0 and self.pseudo_ratio == 0:
            raise FedrecError("hiding mode 'pseudo' needs a count of pseudo-items: --pseudo-items N or --pseudo-ratio R")

    @property
    def needs_private_path(self) -> bool:
        """Virtual fake rows read the client's private rows at each local step (local training records them)."""
        return self.mode == "pseudo" and self.pseudo_values == "virtual"

    def pseudo_count(self, real_rows: np.ndarray, num_items: int) -> np.ndarray:
        """Fake rows per client given its real row counts (capped at its untouched items)."""
        wanted = (np.full(len(real_rows), self.pseudo_items) if self.pseudo_items
                  else np.rint(self.pseudo_ratio * real_rows))
        return np.minimum(wanted.astype(np.int64), num_items - real_rows)
