"""Negative sampling on the client: uniform over the items the user has *not* interacted with.

Exact, not rejection-based: with the user's sorted training items P (m of them), the j-th item not
in P is ``j + #{k : P[k] - k <= j}``, so a uniform j in [0, num_items - m) gives a uniform
non-interacted item. Draws are counter-based (:mod:`fedrec.federated.rng`), keyed by
(seed, round, client, epoch, example position, slot), so every backend draws the same negatives.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from fedrec.data.dataset import Interactions
from fedrec.federated import rng


@dataclass(frozen=True)
class UserItems:
    """Each user's training items, sorted, in CSR form, with the offsets ``P[k] - k`` precomputed."""

    offsets: np.ndarray  # (num_users + 1,)
    items: np.ndarray  # (nnz,) sorted within each user
    shifted: np.ndarray  # (nnz,) items[k] - (k - offsets[user]) : nondecreasing within a user
    num_items: int
    search_keys: np.ndarray  # (nnz,) user * (num_items + 1) + shifted: globally sorted


    @staticmethod
    def from_interactions(train: Interactions, num_users: int, num_items: int) -> UserItems:
        keys = np.unique(train.users.astype(np.int64) * num_items + train.items)
        users, items = keys // num_items, keys % num_items
        offsets = np.zeros(num_users + 1, dtype=np.int64)
        np.cumsum(np.bincount(users, minlength=num_users), out=offsets[1:])
        shifted = items - (np.arange(len(items)) - offsets[users])
        return UserItems(offsets, items, shifted, num_items, users * (num_items + 1) + shifted)

    def counts(self, users: np.ndarray) -> np.ndarray:
        return self.offsets[users + 1] - self.offsets[users]


def nth_non_member(user_items: UserItems, users: np.ndarray, j: np.ndarray) -> np.ndarray:
    """The ``j``-th item (0-based) that user ``users[k]`` has not interacted with, for every k."""
    # Count entries of the user's segment with shifted <= j: search the key (user, j) in the
    # globally sorted (user, shifted) keys; shifted values stay within 0..num_items.
    span = np.int64(user_items.num_items + 1)
    position = np.searchsorted(user_items.search_keys, users.astype(np.int64) * span + j, side="right")
    return j + (position - user_items.offsets[users])


def sample_negatives(user_items: UserItems, users: np.ndarray, seed: int, round_index: int, clients: np.ndarray,
                     epochs: np.ndarray, positions: np.ndarray, count: int) -> np.ndarray:
    """``count`` negatives for each example: (n, count) item indices.

    ``users``, ``clients``, ``epochs``, ``positions`` are (n,) and identify each example copy.
    A user who has interacted with every item gets item 0 (no negative exists).
    """
    if count == 0:
        return np.zeros((len(users), 0), dtype=np.int64)
    available = user_items.num_items - user_items.counts(users)  # (n,)
    slots = np.arange(count)[None, :]
    u = rng.uniform01(seed, rng.STREAM_NEGATIVES, round_index, clients[:, None], epochs[:, None], positions[:, None], slots)
    j = np.minimum((u * available[:, None]).astype(np.int64), np.maximum(available[:, None] - 1, 0))
    flat_users = np.broadcast_to(users[:, None], j.shape).reshape(-1)
    items = nth_non_member(user_items, flat_users, j.reshape(-1)).reshape(j.shape)
    return np.where(available[:, None] > 0, items, 0)
