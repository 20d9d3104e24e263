"""Top-K ranking metrics: full ranking over the catalogue (the default) and sampled ranking (1 vs 99).

Protocol. For each evaluated user the candidates are all items except the user's excluded items
(training items, plus validation items when evaluating test); the positives are the held-out items.
A positive that is also excluded is dropped (counted in ``dropped_positives``). A user left with no
positive is skipped (counted in ``skipped_users``); every metric is a mean over evaluated users.

Tie rule. Ties in scores are broken uniformly at random, and every metric is the *exact expected
value* over that random tie-breaking, computed in closed form (nothing is sampled). A constant
scorer therefore gets exactly the metrics of a random ranking. The one exception is ``coverage@K``,
whose top-K lists break ties by item index (lower index first).

Metrics, for each K (rank 1 is the best):
  hr@K      1 if any positive is in the top K.
  ndcg@K    sum over positives in the top K of 1/log2(rank+1), divided by the ideal DCG of
            min(|P|, K) positives (binary gains).
  recall@K  positives in the top K divided by |P| (not by min(|P|, K)).
  mrr@K     1/rank of the best-ranked positive, 0 if it is beyond K.
  coverage@K  fraction of the whole catalogue in at least one evaluated user's top-K list.
  auc       fraction of (positive, candidate negative) pairs where the positive scores higher,
            ties counting 1/2; users without a candidate negative are left out of its mean.
A mean over no user is NaN. Scores must be finite on candidates (NaN or inf is an error naming
the users); excluded items may score anything.

Sampled ranking (for comparison with papers) ranks each user's first positive against sampled
non-interacted items (usually 99) with the same tie rule; its keys are prefixed ``sampled_``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from fedrec.data.dataset import Interactions
from fedrec.errors import FedrecError

# Positives per user up to which (strictly-greater, tied) counts come from direct comparisons
# against the score row; above it, one sort of the row plus binary searches is cheaper.
_COMPARE_MAX_POSITIVES = 16
# Score-matrix elements per user batch when ``batch_users`` is not given (64 MB of float32).
_BATCH_ELEMENTS = 1 << 24


@dataclass(frozen=True)
class RankingTask:
    """Per-user positives and excluded items of one evaluation split, as CSR lists.

    The positives of ``users[k]`` are ``positive_items[positive_offsets[k]:positive_offsets[k+1]]``
    (sorted, unique, never excluded); likewise for the excluded items.
    """

    users: np.ndarray  # (U,) int64 evaluated user indices, sorted
    positive_offsets: np.ndarray  # (U+1,) int64
    positive_items: np.ndarray  # (nnz,) int64
    exclude_offsets: np.ndarray  # (U+1,) int64
    exclude_items: np.ndarray  # (nnz,) int64
    num_items: int
    dropped_positives: int = 0  # held-out items dropped because they were also excluded

    @property
    def num_positives(self) -> np.ndarray:
        """Positives per user: (U,)."""
        return np.diff(self.positive_offsets)


def _unique(values: np.ndarray) -> np.ndarray:
    """Sorted unique int64 values (a plain sort: faster than np.unique's hashing here)."""
    values = np.sort(values.astype(np.int64))
    return values[np.r_[True, values[1:] != values[:-1]]] if len(values) else values


def _member(values: np.ndarray, sorted_set: np.ndarray) -> np.ndarray:
    """Boolean mask of the ``values`` present in the sorted unique array ``sorted_set``."""
    if not len(sorted_set):
        return np.zeros(len(values), dtype=bool)
    at = np.searchsorted(sorted_set, values).clip(max=len(sorted_set) - 1)
    return sorted_set[at] == values


def _csr(keys: np.ndarray, users: np.ndarray, num_items: int) -> tuple[np.ndarray, np.ndarray]:
    """CSR offsets and items per row of ``users`` from sorted unique keys user * num_items + item."""
    offsets = np.append(np.searchsorted(keys // num_items, users), len(keys)).astype(np.int64)
    return offsets, keys % num_items


def _check_items(part: Interactions, name: str, num_items: int) -> None:
    if len(part) and (part.items.min() < 0 or part.items.max() >= num_items):
        bad = int(part.items.max()) if part.items.max() >= num_items else int(part.items.min())
        raise FedrecError(f"{name} holds item index {bad} outside 0..{num_items - 1}: "
                          f"pass the dataset's num_items and interactions indexed by the same dataset")


def ranking_task(test: Interactions, exclude: list[Interactions], num_items: int) -> RankingTask:
    """The ranking task of every user in ``test``: held-out items minus the ``exclude`` parts."""
    if num_items < 1:
        raise FedrecError(f"num_items is {num_items}: ranking needs a catalogue of at least one item")
    _check_items(test, "the test interactions", num_items)
    for part in exclude:
        _check_items(part, "an excluded interaction set", num_items)
    users = _unique(test.users)
    test_keys = _unique(test.users.astype(np.int64) * num_items + test.items)
    ex_keys = np.zeros(0, dtype=np.int64)
    if exclude:
        ex_users = np.concatenate([p.users for p in exclude]).astype(np.int64)
        ex_items = np.concatenate([p.items for p in exclude]).astype(np.int64)
        keep = _member(ex_users, users)
        ex_keys = _unique(ex_users[keep] * num_items + ex_items[keep])
    excluded = _member(test_keys, ex_keys)
    pos_offsets, pos_items = _csr(test_keys[~excluded], users, num_items)
    ex_offsets, ex_items_csr = _csr(ex_keys, users, num_items)
    return RankingTask(users, pos_offsets, pos_items, ex_offsets, ex_items_csr, num_items, int(excluded.sum()))


def _check_ks(ks: Sequence[int], num_items: int) -> list[int]:
    ks = list(ks)
    if not ks:
        raise FedrecError("the list of K values is empty: pass at least one cut-off, e.g. ks=[10, 20]")
    for k in ks:
        if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
            raise FedrecError(f"K={k!r} is not a positive integer: use cut-offs such as 5, 10, 20")
        if k > num_items:
            raise FedrecError(f"K={k} is larger than the catalogue ({num_items} items): use K <= {num_items}")
    return sorted({int(k) for k in ks})


def _rows(offsets: np.ndarray, items: np.ndarray, begin: int, end: int) -> tuple[np.ndarray, np.ndarray]:
    """(row within the batch, item) of every CSR entry of rows begin..end-1."""
    lo, hi = offsets[begin], offsets[end]
    rows = np.repeat(np.arange(end - begin), np.diff(offsets[begin:end + 1]))
    return rows, items[lo:hi]


def _padded(offsets: np.ndarray, items: np.ndarray, begin: int, end: int) -> tuple[Tensor, Tensor]:
    """CSR rows begin..end-1 as a zero-padded (B, max_len) item matrix and its validity mask."""
    counts = np.diff(offsets[begin:end + 1])
    rows, values = _rows(offsets, items, begin, end)
    cols = np.arange(len(rows)) - np.repeat(offsets[begin:end] - offsets[begin], counts)
    width = max(int(counts.max(initial=0)), 1)
    padded = torch.zeros(end - begin, width, dtype=torch.int64)
    valid = torch.zeros(end - begin, width, dtype=torch.bool)
    padded[rows, cols] = torch.from_numpy(values)
    valid[rows, cols] = True
    return padded, valid


def _checked_scores(scores: Tensor, candidates: Tensor, users: np.ndarray, source: str) -> Tensor:
    """``scores`` as a float CPU tensor, after checking its shape and that candidate scores are finite."""
    if tuple(scores.shape) != tuple(candidates.shape):
        raise FedrecError(f"{source} returned scores of shape {tuple(scores.shape)}, expected "
                          f"{tuple(candidates.shape)}: return one score per (user, candidate) of the batch")
    scores = scores.detach().cpu()
    if not scores.is_floating_point():
        scores = scores.float()
    if math.isfinite(float(scores.sum())):
        return scores  # fast path: every score is finite (an overflowing sum takes the slow path)
    bad = (~torch.isfinite(scores) & candidates).any(dim=1)
    if bad.any():
        bad_users = users[bad.numpy()]
        shown = ", ".join(str(u) for u in bad_users[:5]) + (", ..." if len(bad_users) > 5 else "")
        raise FedrecError(f"{source} returned NaN or infinite scores for {len(bad_users)} users ({shown}): "
                          f"check the model for diverged parameters (e.g. lower the learning rate)")
    return scores


def _count(mask: Tensor) -> Tensor:
    """True entries per row of a (B, C) boolean mask: (B,) int32 (much faster than an int64 sum)."""
    return mask.sum(1, dtype=torch.int32)


def _greater_and_tied(masked: Tensor, pos_scores: Tensor) -> tuple[Tensor, Tensor]:
    """Candidates scoring strictly higher than, and equal to, each positive score: two (B, P) int tensors.

    ``masked`` holds -inf for non-candidates, so they are never counted for a finite positive score.
    """
    if pos_scores.shape[1] <= _COMPARE_MAX_POSITIVES:
        greater = torch.stack([_count(masked > pos_scores[:, j:j + 1]) for j in range(pos_scores.shape[1])], 1)
        tied = torch.stack([_count(masked == pos_scores[:, j:j + 1]) for j in range(pos_scores.shape[1])], 1)
        return greater, tied
    ascending = masked.sort(dim=1).values
    pos_scores = pos_scores.contiguous()
    right = torch.searchsorted(ascending, pos_scores, right=True)
    left = torch.searchsorted(ascending, pos_scores)
    return masked.shape[1] - right, right - left


def _user_metrics(masked: Tensor, n_cand: Tensor, positives: Tensor, valid: Tensor,
                  ks: list[int]) -> dict[str, Tensor]:
    """Expected metrics of each user of a batch under random tie-breaking: name -> (B,) float64.

    ``masked`` (B, C) holds finite scores on candidates and -inf elsewhere; ``n_cand`` (B,) counts
    the candidates; ``positives`` (B, P) are column indices, where ``valid`` marks real positives,
    all candidates. Rows without a valid positive get arbitrary values (the caller drops them).
    """
    pos_scores = masked.gather(1, positives).masked_fill(~valid, -math.inf)
    greater, tied = _greater_and_tied(masked, pos_scores)
    g, b = greater.double(), tied.double().clamp(min=1)
    n_pos = valid.sum(1).double()
    n_cand = n_cand.double()
    k_max = max(ks)
    # discount[r] = sum_{i=1}^{r} 1/log2(i+1): the DCG of r hits at the top.
    discount = torch.cat([torch.zeros(1, dtype=torch.float64),
                          torch.cumsum(1 / torch.log2(torch.arange(2, k_max + 2, dtype=torch.float64)), 0)])

    # The best-ranked positive lies in the top tied block holding positives: g0 strictly higher
    # candidates, b0 tied candidates, m0 of them positive. Its position j within the block has
    # P(j) = C(b0-j, m0-1) / C(b0, m0) = prod_{i<j-1} (b0-m0-i)/(b0-i) * m0/(b0-j+1).
    top = pos_scores.max(1, keepdim=True).values
    first = (pos_scores == top) & valid
    g0 = torch.where(first, g, math.inf).min(1).values.clamp(max=k_max)
    b0 = torch.where(first, b, 0.0).max(1).values.clamp(min=1)
    m0 = first.sum(1).double().clamp(min=1)
    i = torch.arange(k_max, dtype=torch.float64)
    ratio = (b0[:, None] - m0[:, None] - i).clamp(min=0) / (b0[:, None] - i).clamp(min=1)
    survive = torch.cat([torch.ones(len(b0), 1, dtype=torch.float64), torch.cumprod(ratio, 1)[:, :-1]], 1)
    p_first = survive * m0[:, None] / (b0[:, None] - i).clamp(min=1)  # column j-1 holds P(j)
    rank_first = g0[:, None] + i + 1

    out: dict[str, Tensor] = {}
    for k in ks:
        in_top = (rank_first <= k).double()
        out[f"hr@{k}"] = (p_first * in_top).sum(1)
        out[f"mrr@{k}"] = (p_first * in_top / rank_first).sum(1)
        hit = ((k - g) / b).clamp(0, 1) * valid
        gain = (discount[(g + b).clamp(max=k).long()] - discount[g.clamp(max=k).long()]) / b * valid
        out[f"ndcg@{k}"] = gain.sum(1) / discount[n_pos.clamp(1, k).long()]
        out[f"recall@{k}"] = hit.sum(1) / n_pos.clamp(min=1)
    # Mann-Whitney: sum over positives of (lower + (tied - 1)/2) counts every candidate pair;
    # subtracting the n(n-1)/2 positive-positive pairs leaves the (positive, negative) wins.
    lower = (n_cand[:, None] - g - b + (b - 1) / 2) * valid
    wins = lower.sum(1) - n_pos * (n_pos - 1) / 2
    out["auc"] = wins / (n_pos * (n_cand - n_pos)).clamp(min=1)
    return out


def _top_k_covered(masked: Tensor, ks: list[int]) -> Tensor:
    """(len(ks), C): whether each column is in some row's top k (ties broken by lower column index).

    ``masked`` holds -inf for non-candidates, which are never chosen.
    """
    top = masked.topk(min(max(ks) + 1, masked.shape[1]), dim=1)
    covered = torch.zeros(len(ks), masked.shape[1], dtype=torch.bool)
    for row, k in enumerate(ks):
        kth = top.values[:, k - 1]
        # Rows where candidates tied with the k-th score spill past position k need the index rule;
        # elsewhere the k highest scores are the top-k set whatever order topk returned them in.
        spill = (kth > -math.inf) & (top.values[:, min(k, top.values.shape[1] - 1)] == kth)
        if k == masked.shape[1]:
            spill[:] = False
        chosen = top.indices[~spill, :k][top.values[~spill, :k] > -math.inf]
        covered[row, chosen] = True
        if spill.any():
            scores, kth = masked[spill], kth[spill, None]
            above = scores > kth
            at = scores == kth
            at &= at.cumsum(1) <= k - _count(above)[:, None]
            covered[row] |= (above | at).any(0)
    return covered


class _Means:
    """Running sums of per-user metrics over evaluated users."""

    def __init__(self) -> None:
        self.sums: dict[str, float] = {}
        self.evaluated = 0
        self.auc_users = 0

    def add(self, values: dict[str, Tensor], evaluated: Tensor, has_negative: Tensor) -> None:
        self.evaluated += int(evaluated.sum())
        self.auc_users += int((evaluated & has_negative).sum())
        for name, value in values.items():
            keep = evaluated & has_negative if name == "auc" else evaluated
            self.sums[name] = self.sums.get(name, 0.0) + float(value[keep].sum())

    def result(self, prefix: str) -> dict[str, float]:
        out = {}
        for name, total in self.sums.items():
            count = self.auc_users if name == "auc" else self.evaluated
            out[prefix + name] = total / count if count else math.nan
        return out


@torch.no_grad()
def full_ranking_metrics(score_users: Callable[[Tensor], Tensor], task: RankingTask, ks: Sequence[int],
                         batch_users: int | None = None) -> dict[str, float]:
    """Full-ranking metrics over all non-excluded items; ``score_users(users (B,)) -> (B, num_items)``.

    Users are scored ``batch_users`` at a time (default: as many as fit 2**24 scores).
    """
    ks = _check_ks(ks, task.num_items)
    n = task.num_items
    if batch_users is None:
        batch_users = max(1, _BATCH_ELEMENTS // n)
    elif batch_users < 1:
        raise FedrecError(f"batch_users is {batch_users}: score at least one user per batch")
    means = _Means()
    covered = torch.zeros(len(ks), n, dtype=torch.bool)
    for begin in range(0, len(task.users), batch_users):
        end = min(begin + batch_users, len(task.users))
        users = task.users[begin:end]
        candidates = torch.ones(end - begin, n, dtype=torch.bool)
        rows, items = _rows(task.exclude_offsets, task.exclude_items, begin, end)
        candidates[torch.from_numpy(rows), torch.from_numpy(items)] = False
        scores = _checked_scores(score_users(torch.from_numpy(users)), candidates, users, "score_users")
        positives, valid = _padded(task.positive_offsets, task.positive_items, begin, end)
        valid &= candidates.gather(1, positives)  # an excluded positive is not a candidate
        masked = scores.masked_fill(~candidates, -math.inf)
        n_cand = _count(candidates)
        values = _user_metrics(masked, n_cand, positives, valid, ks)
        evaluated = valid.any(1)
        means.add(values, evaluated, n_cand > _count(valid))
        covered |= _top_k_covered(masked[evaluated], ks)
    out = means.result("")
    out.update({f"coverage@{k}": float(covered[j].double().mean()) for j, k in enumerate(ks)})
    return _ordered(out, ks, "", means, task)


def _ordered(values: dict[str, float], ks: list[int], prefix: str, means: _Means,
             task: RankingTask) -> dict[str, float]:
    """The result dict in a stable, readable key order."""
    names = ["hr", "ndcg", "recall", "mrr", "coverage"]
    out = {f"{prefix}{name}@{k}": values[f"{prefix}{name}@{k}"] for k in ks for name in names
           if f"{prefix}{name}@{k}" in values}
    out[f"{prefix}auc"] = values.get(f"{prefix}auc", math.nan)
    out["evaluated_users"] = means.evaluated
    out["skipped_users"] = len(task.users) - means.evaluated
    out["dropped_positives"] = task.dropped_positives
    return out


def sample_negatives(task: RankingTask, num_negatives: int = 99, seed: int = 0) -> np.ndarray:
    """``num_negatives`` items per user, uniform without replacement from items neither excluded nor positive.

    Returns (U, num_negatives) int64. A user with fewer available items gets all of them (in random
    order) and -1 in the remaining slots. User ``u``'s negatives depend only on (seed, u, its own
    items), not on which other users are in the task, so federated clients draw the same ones.
    """
    if num_negatives < 1:
        raise FedrecError(f"num_negatives is {num_negatives}: sample at least one negative (99 is usual)")
    out = np.full((len(task.users), num_negatives), -1, dtype=np.int64)
    for k, user in enumerate(task.users):
        used = np.union1d(task.exclude_items[task.exclude_offsets[k]:task.exclude_offsets[k + 1]],
                          task.positive_items[task.positive_offsets[k]:task.positive_offsets[k + 1]])
        available = task.num_items - len(used)
        take = min(num_negatives, available)
        if take == 0:
            continue
        ranks = np.random.default_rng([seed, int(user)]).choice(available, size=take, replace=False)
        # The r-th available item (0-based) is r plus the number of used items at or before it.
        shifted = used - np.arange(len(used))
        out[k, :take] = ranks + np.searchsorted(shifted, ranks, side="right")
    return out


@torch.no_grad()
def sampled_ranking_metrics(score_pairs: Callable[[Tensor, Tensor], Tensor], task: RankingTask,
                            negatives: np.ndarray, ks: Sequence[int], batch_users: int = 4096) -> dict[str, float]:
    """Metrics ranking each user's first positive against its sampled negatives; keys ``sampled_*``.

    ``score_pairs(users (B,), items (B, C)) -> (B, C)``. The first positive is the one with the
    smallest item index (leave-last-out has exactly one). Slots of -1 in ``negatives`` are ignored.
    """
    ks = _check_ks(ks, task.num_items)
    if negatives.ndim != 2 or len(negatives) != len(task.users):
        raise FedrecError(f"negatives has shape {negatives.shape}, expected ({len(task.users)}, num_negatives): "
                          f"build it with sample_negatives(task)")
    if negatives.size and (negatives.min() < -1 or negatives.max() >= task.num_items):
        raise FedrecError(f"negatives hold item indices outside -1..{task.num_items - 1}: "
                          f"build them with sample_negatives(task)")
    has_pos = task.num_positives > 0
    first_pos = np.zeros(len(task.users), dtype=np.int64)
    first_pos[has_pos] = task.positive_items[task.positive_offsets[:-1][has_pos]]
    means = _Means()
    for begin in range(0, len(task.users), batch_users):
        end = min(begin + batch_users, len(task.users))
        users = task.users[begin:end]
        items = np.concatenate([first_pos[begin:end, None], negatives[begin:end].astype(np.int64)], axis=1)
        candidates = torch.from_numpy(items >= 0)
        scores = score_pairs(torch.from_numpy(users), torch.from_numpy(np.maximum(items, 0)))
        scores = _checked_scores(scores, candidates, users, "score_pairs")
        evaluated = torch.from_numpy(has_pos[begin:end])
        positives = torch.zeros(end - begin, 1, dtype=torch.int64)
        masked = scores.masked_fill(~candidates, -math.inf)
        n_cand = _count(candidates)
        values = _user_metrics(masked, n_cand, positives, evaluated[:, None], ks)
        means.add(values, evaluated, n_cand > 1)
    return _ordered(means.result("sampled_"), ks, "sampled_", means, task)
