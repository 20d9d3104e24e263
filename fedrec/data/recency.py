"""Recency emphasis: each user's latest training interactions count more in local training.

A user's next interaction tends to resemble their latest ones (people rate or play in sessions). Without
changing a model, the client can weight its recent examples more by repeating them in every local epoch:
with ``window`` W and ``repeats`` R, each user's W latest training interactions appear 1 + R times.
Everything happens on the client's own data (its timestamps never leave it); every runtime trains on the
same repeated examples because the repetition is applied to the training interactions before they are
grouped by client.
"""

from __future__ import annotations

import numpy as np

from fedrec.data.dataset import Interactions


def latest_rank(inter: Interactions, within_tie: np.ndarray | None = None) -> np.ndarray:
    """For each interaction, how many of its user's interactions are later (0 = the user's latest).

    Later means a larger timestamp; equal timestamps are ordered by ``within_tie`` (one key per row), by
    default by row (a later row counts as later), the default rule of the leave-last-out split.
    """
    n = len(inter)
    order = np.lexsort((np.arange(n) if within_tie is None else within_tie, inter.timestamps, inter.users))
    sorted_users = inter.users[order]
    starts = np.flatnonzero(np.r_[True, sorted_users[1:] != sorted_users[:-1]]) if n else np.zeros(0, np.int64)
    sizes = np.diff(np.r_[starts, n])
    rank = np.empty(n, dtype=np.int64)
    rank[order] = np.repeat(starts + sizes, sizes) - 1 - np.arange(n)
    return rank


def repeat_latest(train: Interactions, window: int, repeats: int) -> Interactions:
    """The training interactions with each user's ``window`` latest ones repeated ``repeats`` more times.

    The original rows come first, in their order, then the copies (``repeats`` blocks in row order).
    """
    if window <= 0 or repeats <= 0 or len(train) == 0:
        return train
    recent = np.flatnonzero(latest_rank(train) < window)
    return train.subset(np.concatenate([np.arange(len(train))] + [recent] * repeats))
