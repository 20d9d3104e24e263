"""Evaluation protocols: what "the model's metrics" means for a run.

Rating models (explicit feedback): RMSE and MAE on the held-out ratings, predictions clipped to the
rating range. Implicit-feedback models: top-K ranking of each held-out interaction among all items
the user has not interacted with (full ranking, the default), and, next to it, among 99 sampled
non-interacted items (sampled ranking, keys ``sampled_*``, only for comparison with papers).
Validation metrics carry the prefix ``val_``. A popularity ranker (training-set counts) is scored
in the same protocol as a baseline (keys ``popularity_*``).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch
from torch import Tensor

from fedrec.data.dataset import Interactions, Split
from fedrec.eval.ranking import RankingTask, full_ranking_metrics, ranking_task, sample_negatives, sampled_ranking_metrics
from fedrec.eval.rating import rating_metrics
from fedrec.federated.personalize import Personalization, personal_rows, personal_scores
from fedrec.models.base import RecModel, gather_rows, num_catalogue_items, score_all_items


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
    _parts: dict[str, _Part] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not self.ranking:
            return
        num_items = num_catalogue_items(self.model)
        train = [self.split.train]
        parts: dict[str, tuple[Interactions, list[Interactions]]] = {"test": (self.split.test, train)}
        if self.split.validation is not None and len(self.split.validation):
            parts["test"] = (self.split.test, train + [self.split.validation])
            parts["val"] = (self.split.validation, train)
        for name, (held_out, exclude) in parts.items():
            task = ranking_task(held_out, exclude, num_items)
            negatives = sample_negatives(task, self.sampled_negatives, self.seed) if self.sampled_negatives else None
            self._parts[name] = _Part(task, negatives)

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
        return metrics

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
        return {k: v for k, v in metrics.items() if not k.endswith("_users")}
