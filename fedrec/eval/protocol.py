"""Evaluation protocols: what "the model's metrics" means for a run.

Rating models (explicit feedback): RMSE and MAE on the held-out ratings, predictions clipped to the
rating range. Implicit-feedback models: top-K ranking of each held-out interaction among all items
the user has not interacted with (full ranking, the default), and, next to it, among 99 sampled
non-interacted items (sampled ranking, keys ``sampled_*``, only for comparison with papers).
Validation metrics carry the prefix ``val_``. A popularity ranker (training-set counts) is scored
in the same protocol as a baseline (keys ``popularity_*``).

Cold-start protocol (:func:`fedrec.data.splits.hold_out_items`): items W..N-1 never appear in
training. Warm metrics then rank among the warm items only. Each interaction with a held-out item
is ranked among all held-out items its user has not interacted with (keys ``cold_*``; one ranking
per interaction, so ``cold_hr@K`` is the fraction of them in the top K), next to the exact
expected value of a random ranking of the same candidates (``cold_random_*``) and the popularity
ranker (``cold_popularity_*``; held-out items have no training interactions, so it ties them all
and equals random). A model that scores items by ID only cannot rank items it never saw: it gets
``cold_start = "not supported by model X"`` and no cold number.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import Tensor

from fedrec.data.dataset import Interactions, Split
from fedrec.errors import FedrecError
from fedrec.eval.exposure import ExposureTask, exposure_ratio, exposure_task
from fedrec.eval.ranking import RankingTask, full_ranking_metrics, ranking_task, sample_negatives, sampled_ranking_metrics
from fedrec.eval.rating import rating_metrics
from fedrec.federated.personalize import Personalization, personal_rows, personal_scores
from fedrec.models.base import RecModel, gather_rows, num_catalogue_items, score_all_items


@dataclass(frozen=True)
class ColdStartTask:
    """One ranking per held-out interaction: pseudo-user q ranks its item among the held-out items.

    ``task`` indexes held-out items locally (item - first_cold) and its users are the pseudo-users
    0..Q-1; ``users[q]`` is the real user of pseudo-user q. Each pseudo-user's excluded items are the
    other held-out items its user has interacted with.
    """

    task: RankingTask
    users: np.ndarray  # (Q,) real user of each pseudo-user
    first_cold: int  # W: held-out items are W..num_items-1


def cold_start_task(cold: Interactions, first_cold: int, num_items: int) -> ColdStartTask:
    """The cold-start ranking task of the held-out interactions ``cold`` (items >= first_cold)."""
    num_cold = num_items - first_cold
    if len(cold) and (cold.items.min() < first_cold or cold.items.max() >= num_items):
        raise FedrecError(f"held-out interactions must have items in {first_cold}..{num_items - 1}")
    keys = np.unique(cold.users.astype(np.int64) * num_cold + (cold.items - first_cold))
    users, local = keys // num_cold, keys % num_cold
    pseudo = np.arange(len(keys))
    starts = np.flatnonzero(np.r_[True, users[1:] != users[:-1]]) if len(keys) else np.zeros(0, np.int64)
    sizes = np.diff(np.r_[starts, len(keys)])
    ex_pseudo, ex_items = [], []
    for start, size in zip(starts, sizes):  # every pair (q, j) of one user's held-out items, j != q
        group = np.arange(start, start + size)
        q, j = np.repeat(group, size), np.tile(group, size)
        keep = q != j
        ex_pseudo.append(q[keep])
        ex_items.append(local[j[keep]])
    ex_pseudo_all = np.concatenate(ex_pseudo) if ex_pseudo else np.zeros(0, np.int64)
    ex_items_all = np.concatenate(ex_items) if ex_items else np.zeros(0, np.int64)
    zeros = lambda n: np.zeros(n, dtype=np.float32)  # noqa: E731
    test = Interactions(pseudo, local, zeros(len(pseudo)), np.zeros(len(pseudo), np.int64))
    exclude = Interactions(ex_pseudo_all, ex_items_all, zeros(len(ex_items_all)), np.zeros(len(ex_items_all), np.int64))
    return ColdStartTask(ranking_task(test, [exclude], num_cold), users, first_cold)


def cold_start_metrics(score_users: Callable[[Tensor], Tensor], cold: ColdStartTask, ks: list[int],
                       prefix: str = "cold_") -> dict[str, float]:
    """Ranking metrics of every held-out interaction among the held-out items (see the module doc)."""
    num_cold = cold.task.num_items
    real_users = np.unique(cold.users)
    scores = score_users(torch.from_numpy(real_users))[:, cold.first_cold:]  # (U, C)
    row = torch.from_numpy(np.searchsorted(real_users, cold.users))
    ks = [k for k in ks if k <= num_cold] or [num_cold]
    metrics = full_ranking_metrics(lambda pseudo: scores[row[pseudo]], cold.task, ks)
    out = {}
    for key, value in metrics.items():
        if key == "evaluated_users":
            key = "interactions"
        elif key.endswith("_users") or key == "dropped_positives":
            continue
        out[f"{prefix}{key}"] = value
    return out


@dataclass
class _Part:
    task: RankingTask
    negatives: np.ndarray | None


@dataclass
class Evaluator:
    """Scores a model on a split's validation and test parts; built once per run."""

    model: RecModel
    split: Split
    ranking: bool
    rating_range: tuple[float, float] | None
    ks: list[int]
    sampled_negatives: int = 99
    seed: int = 0
    #: cold-start protocol: items >= warm_items were held out of training (None: no cold start)
    warm_items: int | None = None
    cold: Interactions | None = None  # the held-out interactions (all of them are test data)
    cold_unsupported: str | None = None  # why the model cannot score held-out items (then no cold numbers)
    _parts: dict[str, _Part] = field(default_factory=dict)
    _cold_task: ColdStartTask | None = None
    exposure_targets: np.ndarray | None = None  # target items of an attack: er@5, er@10 (fedrec/eval/exposure.py)
    _exposure: ExposureTask | None = None

    def __post_init__(self) -> None:
        if not self.ranking:
            return
        num_items = num_catalogue_items(self.model)
        train = [self.split.train]
        parts: dict[str, tuple[Interactions, list[Interactions]]] = {"test": (self.split.test, train)}
        if self.split.validation is not None and len(self.split.validation):
            parts["test"] = (self.split.test, train + [self.split.validation])
            parts["val"] = (self.split.validation, train)
        if self.warm_items is not None:
            if self.cold is not None:
                self._cold_task = cold_start_task(self.cold, self.warm_items, num_items)
            held_out_users = np.unique(np.concatenate([p[0].users for p in parts.values()]))
            cold_items = np.arange(self.warm_items, num_items)
            users = np.repeat(held_out_users, len(cold_items))  # warm rankings exclude every held-out item
            items = np.tile(cold_items, len(held_out_users))
            never = Interactions(users, items, np.zeros(len(users), np.float32), np.zeros(len(users), np.int64))
            parts = {name: (held_out, exclude + [never]) for name, (held_out, exclude) in parts.items()}
        for name, (held_out, exclude) in parts.items():
            task = ranking_task(held_out, exclude, num_items)
            negatives = sample_negatives(task, self.sampled_negatives, self.seed) if self.sampled_negatives else None
            self._parts[name] = _Part(task, negatives)
        if self.exposure_targets is not None:  # benign users, ranked as in the test ranking
            exclude = [self.split.train] + ([self.split.validation] if self.split.validation is not None else [])
            self._exposure = exposure_task(np.unique(self.split.train.users), self.exposure_targets, exclude,
                                           [self.split.test], num_items)

    def _ranking(self, score_users, score_pairs, part: _Part, prefix: str) -> dict[str, float]:
        metrics = full_ranking_metrics(score_users, part.task, self.ks)
        if part.negatives is not None:
            metrics.update(sampled_ranking_metrics(score_pairs, part.task, part.negatives, self.ks))
        return {f"{prefix}{k}": v for k, v in metrics.items()}

    @torch.no_grad()
    def __call__(self, params: dict[str, Tensor], personal: Personalization | None = None,
                 prefix: str = "", validation: bool = True) -> dict[str, float]:
        """Metrics of the global model, or of every client's fine-tuned copy when ``personal`` is given."""
        model = self.model

        def gather(users: Tensor, items: Tensor) -> dict[str, Tensor]:
            if personal is None:
                return gather_rows(model, params, users, items)
            return personal_rows(model, params, personal, users, items)

        def score_users(users: Tensor) -> Tensor:
            if personal is None:
                return score_all_items(model, params, users)
            return personal_scores(model, params, personal, users)

        def score_pairs(users: Tensor, items: Tensor) -> Tensor:
            return model.predict(gather(users, items)).reshape(len(users), -1)

        metrics: dict[str, float] = {}
        has_validation = validation and self.split.validation is not None and len(self.split.validation) > 0
        if not self.ranking:
            if has_validation:
                metrics.update(rating_metrics(model, params, self.split.validation, self.rating_range,
                                              f"{prefix}val_", gather))
            metrics.update(rating_metrics(model, params, self.split.test, self.rating_range, prefix, gather))
            return metrics
        if has_validation and "val" in self._parts:
            metrics.update(self._ranking(score_users, score_pairs, self._parts["val"], f"{prefix}val_"))
        metrics.update(self._ranking(score_users, score_pairs, self._parts["test"], prefix))
        if personal is None:
            metrics.update(self.cold_start(score_users))
            if self._exposure is not None:
                metrics.update(exposure_ratio(score_users, self._exposure))
        return metrics

    def cold_start(self, score_users: Callable[[Tensor], Tensor]) -> dict[str, Any]:
        """Cold-start metrics for a scorer (empty without the cold-start protocol)."""
        if self._cold_task is None:
            return {}
        if self.cold_unsupported is not None:
            return {"cold_start": self.cold_unsupported}
        return cold_start_metrics(score_users, self._cold_task, self.ks)

    def cold_random_baseline(self) -> dict[str, float]:
        """The exact expected cold-start metrics of a random ranking (a constant scorer, random ties)."""
        if self._cold_task is None:
            return {}
        num_items = num_catalogue_items(self.model)
        return cold_start_metrics(lambda users: torch.zeros(len(users), num_items), self._cold_task, self.ks,
                                  "cold_random_")

    @torch.no_grad()
    def popularity_baseline(self) -> dict[str, float]:
        """The same ranking protocol for a recommender that ranks items by training-set popularity."""
        if not self.ranking:
            return {}
        num_items = num_catalogue_items(self.model)
        counts = torch.from_numpy(np.bincount(self.split.train.items, minlength=num_items).astype(np.float32))

        def score_users(users: Tensor) -> Tensor:
            return counts.expand(len(users), -1)

        def score_pairs(users: Tensor, items: Tensor) -> Tensor:
            return counts[items]  # (B, C)

        metrics = self._ranking(score_users, score_pairs, self._parts["test"], "popularity_")
        if self._cold_task is not None:
            metrics.update(cold_start_metrics(score_users, self._cold_task, self.ks, "cold_popularity_"))
            metrics.update(self.cold_random_baseline())
        return {k: v for k, v in metrics.items() if not k.endswith("_users") and not k.endswith("_interactions")}
