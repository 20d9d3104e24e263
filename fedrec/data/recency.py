"""Recency emphasis: each user's latest training interactions count more in local training.

A user's next interaction tends to resemble their latest ones (people rate or play in sessions). Without
changing a model, the client can weight its recent examples more by repeating them in every local epoch:
with ``window`` W and ``repeats`` R, each user's W latest training interactions appear 1 + R times.
The repetition uses the client's own timestamps and is applied to the training interactions before they
are grouped by client, so every runtime (the simulator's backends, centralised training, a Flower node)
trains on the same repeated examples. What the server can learn: the timestamps are never sent, but with
``train.row_weighting = "row_count"`` an upload's per-row example counts are 1 + R for the W latest items
(times the local epochs), so the server can tell which items a client interacted with most recently.
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


def repeat_latest(train: Interactions, window: int, repeats: int, within_tie: np.ndarray | None = None) -> Interactions:
    """The training interactions with each user's ``window`` latest ones repeated ``repeats`` more times.

    Equal timestamps are ordered as :func:`latest_rank` says. The original rows come first, in their
    order, then the copies (``repeats`` blocks in row order).
    """
    if window <= 0 or repeats <= 0 or len(train) == 0:
        return train
    recent = np.flatnonzero(latest_rank(train, within_tie) < window)
    return train.subset(np.concatenate([np.arange(len(train))] + [recent] * repeats))
