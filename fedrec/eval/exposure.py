"""Exposure of target items: how often items an attacker promotes reach benign users' top-K lists.

ER@K (exposure ratio, as in FedRecAttack, Rong et al. 2022, and PipAttack, Zhang et al. 2022) is
the fraction of (benign user, target item) pairs -- over every benign user and every target the
user has *not* interacted with (training, validation or test) -- where the target is in the user's
full-ranking top K. The ranking is the one the ranking metrics use: every item except the user's
excluded (training, and validation) items. Ties are broken uniformly at random and the exact
expected value is reported, as in :mod:`fedrec.eval.ranking`: with ``g`` candidates scoring higher
than the target and ``e`` others tied with it, the target's rank is uniform on g+1..g+e+1, so it is
in the top K with probability clamp(K - g, 0, e + 1) / (e + 1).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from fedrec.data.dataset import Interactions
from fedrec.errors import FedrecError

EXPOSURE_KS: tuple[int, ...] = (5, 10)


@dataclass(frozen=True)
class ExposureTask:
    """Who is measured and which items each user's ranking leaves out (CSR over ``users``)."""

    users: np.ndarray  # (U,) benign users, sorted
    targets: np.ndarray  # (T,) target items, sorted unique
    exclude_offsets: np.ndarray  # (U + 1,)
    exclude_items: np.ndarray  # items left out of each user's ranking (training, validation)
    counted: np.ndarray  # (U, T) bool: the user has not interacted with the target (the pair counts)
    num_items: int


def _keys(parts: Sequence[Interactions], num_items: int) -> np.ndarray:
    if not parts:
        return np.zeros(0, dtype=np.int64)
    users = np.concatenate([p.users for p in parts]).astype(np.int64)
    items = np.concatenate([p.items for p in parts]).astype(np.int64)
    return np.unique(users * num_items + items)


def exposure_task(users: np.ndarray, targets: np.ndarray, exclude: Sequence[Interactions],
                  interacted: Sequence[Interactions], num_items: int) -> ExposureTask:
    """The ER task of ``users`` for ``targets``: rankings leave out ``exclude``; pairs seen in ``interacted`` do not count."""
    targets = np.unique(np.asarray(targets, dtype=np.int64))
    if len(targets) == 0:
        raise FedrecError("exposure needs at least one target item; set attack.num_targets or attack.target_items")
    if targets.min() < 0 or targets.max() >= num_items:
        raise FedrecError(f"target item index {int(targets.max())} is outside the catalogue 0..{num_items - 1}")
    users = np.unique(np.asarray(users, dtype=np.int64))
    ex_keys = _keys(exclude, num_items)
    ex_users, ex_items = ex_keys // num_items, ex_keys % num_items
    keep = np.isin(ex_users, users)
    ex_users, ex_items = ex_users[keep], ex_items[keep]
    offsets = np.append(np.searchsorted(ex_users, users), len(ex_users)).astype(np.int64)
    seen = _keys([*exclude, *interacted], num_items)
    pair_keys = users[:, None] * num_items + targets[None, :]
    counted = ~np.isin(pair_keys, seen)
    return ExposureTask(users, targets, offsets, ex_items, counted, num_items)


def exposure_ratio(score_users: Callable[[Tensor], Tensor], task: ExposureTask, ks: Sequence[int] = EXPOSURE_KS,
                   max_elements: int = 1 << 22) -> dict[str, float]:
    """``er@K`` for each K: the expected fraction of counted (user, target) pairs with the target in the top K."""
    hits = {int(k): 0.0 for k in ks}
    pairs = int(task.counted.sum())
    targets = torch.from_numpy(task.targets)
    batch_users = max(1, max_elements // (task.num_items * len(task.targets)))
    for begin in range(0, len(task.users), batch_users):
        end = min(begin + batch_users, len(task.users))
        scores = score_users(torch.from_numpy(task.users[begin:end])).detach().to(torch.float64)
        lo, hi = task.exclude_offsets[begin], task.exclude_offsets[end]
        rows = np.repeat(np.arange(end - begin), np.diff(task.exclude_offsets[begin:end + 1]))
        counted = torch.from_numpy(task.counted[begin:end])
        target_scores = scores[:, targets]  # (B, T)
        if not torch.isfinite(target_scores[counted]).all():
            raise FedrecError("the model scores a target item NaN or infinite; check for diverged parameters")
        candidates = scores.index_put((torch.from_numpy(rows), torch.from_numpy(task.exclude_items[lo:hi])),
                                      torch.tensor(-torch.inf, dtype=torch.float64))
        # a counted target is never excluded, so it is among the candidates and ties with itself once
        greater = (candidates[:, None, :] > target_scores[:, :, None]).sum(2)  # (B, T)
        tied = ((candidates[:, None, :] == target_scores[:, :, None]).sum(2) - 1).clamp(min=0)
        for k in hits:
            inside = (k - greater).clamp(min=0).minimum(tied + 1).to(torch.float64) / (tied + 1)
            hits[k] += float(inside[counted].sum())
    return {f"er@{k}": (value / pairs if pairs else float("nan")) for k, value in hits.items()}
