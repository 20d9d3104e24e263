"""The in-memory form every loader produces: contiguous indices plus the raw-id maps."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


@dataclass(frozen=True)
class Interactions:
    """Parallel arrays of (user, item, rating, timestamp), one entry per interaction.

    ``users`` and ``items`` are contiguous indices (0..num_users-1, 0..num_items-1).
    ``ratings`` holds the explicit rating, or the implicit weight (e.g. play count).
    ``timestamps`` is unix seconds, or all zeros when the source has no time.
    """

    users: np.ndarray  # (n,) int64
    items: np.ndarray  # (n,) int64
    ratings: np.ndarray  # (n,) float32
    timestamps: np.ndarray  # (n,) int64

    def __post_init__(self) -> None:
        n = len(self.users)
        for name in ("items", "ratings", "timestamps"):
            if len(getattr(self, name)) != n:
                raise ValueError(f"Interactions.{name} has length {len(getattr(self, name))}, expected {n}")

    def __len__(self) -> int:
        return len(self.users)

    def subset(self, index: np.ndarray) -> Interactions:
        """The interactions selected by a boolean mask or an integer index array."""
        return Interactions(self.users[index], self.items[index], self.ratings[index], self.timestamps[index])

    @staticmethod
    def concat(parts: list[Interactions]) -> Interactions:
        return Interactions(
            np.concatenate([p.users for p in parts]),
            np.concatenate([p.items for p in parts]),
            np.concatenate([p.ratings for p in parts]),
            np.concatenate([p.timestamps for p in parts]),
        )


@dataclass(frozen=True)
class Split:
    """A train/test split of one dataset, with an optional validation part carved from train."""

    train: Interactions
    test: Interactions
    validation: Interactions | None = None
    name: str = ""


@dataclass(frozen=True)
class Dataset:
    """A loaded dataset: all interactions, the id maps, item metadata and any official folds.

    ``user_ids[u]`` / ``item_ids[i]`` are the raw identifiers of index ``u`` / ``i`` (as strings).
    ``item_titles`` and ``item_texts`` have one entry per item ("" when unknown);
    ``item_texts`` is a short description used by text models (title, year, genres, tags).
    ``rating_range`` is (min, max) for explicit ratings, None for implicit feedback.
    ``official_splits`` maps a fold name ("u1".."u5", "ua", "ub") to its Split.
    """

    name: str
    interactions: Interactions
    user_ids: np.ndarray  # (num_users,) str
    item_ids: np.ndarray  # (num_items,) str
    item_titles: list[str]
    item_texts: list[str]
    rating_range: tuple[float, float] | None
    official_splits: dict[str, Split] = field(default_factory=dict)
    user_features: dict[str, np.ndarray] = field(default_factory=dict)  # e.g. "occupation" -> (num_users,)

    @property
    def num_users(self) -> int:
        return len(self.user_ids)

    @property
    def num_items(self) -> int:
        return len(self.item_ids)

    @property
    def implicit(self) -> bool:
        return self.rating_range is None
