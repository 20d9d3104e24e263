"""BPR-MF (Rendle et al. 2009, "BPR: Bayesian Personalized Ranking from Implicit Feedback").

score(u, i) = <p_u, q_i> + b_i. Each training example is an interacted item plus ``negatives``
items the client samples from those the user has not interacted with; the loss (``loss``) is BPR's
-log sigmoid(score(u, pos) - score(u, neg)), averaged over the negatives, or the sampled softmax of the
positive against its negatives (:func:`fedrec.models.base.ranking_loss`), plus L2 on the rows used.
The user vector is private; item vectors and biases are shared.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from fedrec.models.base import RANKING_LOSSES, ExampleBatch, ParamKind, ParamSpec, RecModel, ranking_loss


@dataclass(frozen=True)
class BPRConfig:
    dim: int = 64
    l2: float = 1e-4
    init_std: float = 0.1
    negatives: int = 1
    loss: str = "bpr"  # "bpr" (pairwise) or "softmax" (sampled softmax over the positive and its negatives)

    def __post_init__(self) -> None:
        if self.loss not in RANKING_LOSSES:
            raise ValueError(f"loss={self.loss!r} must be one of {', '.join(RANKING_LOSSES)}")


class BPRMF(RecModel):
    def __init__(self, config: BPRConfig, num_users: int, num_items: int) -> None:
        self.config = config
        self.num_users = num_users
        self.num_items = num_items
        self.negatives = config.negatives

    def param_specs(self) -> list[ParamSpec]:
        d = self.config.dim
        return [
            ParamSpec("user_vec", ParamKind.PRIVATE_ROWS, (self.num_users, d)),
            ParamSpec("item_vec", ParamKind.SHARED_ROWS, (self.num_items, d)),
            ParamSpec("item_bias", ParamKind.SHARED_ROWS, (self.num_items, 1)),
        ]

    def init_params(self, generator: torch.Generator) -> dict[str, Tensor]:
        d, std = self.config.dim, self.config.init_std
        # shared tables first: their start does not depend on how many users (or injected fake users) exist
        item_vec = torch.randn(self.num_items, d, generator=generator) * std
        return {
            "user_vec": torch.randn(self.num_users, d, generator=generator) * std,
            "item_vec": item_vec,
            "item_bias": torch.zeros(self.num_items, 1),
        }

    def predict(self, rows: dict[str, Tensor]) -> Tensor:
        dot = (rows["user_vec"].unsqueeze(-2) * rows["item_vec"]).sum(-1)  # (G, N, S)
        return dot + rows["item_bias"].squeeze(-1)

    def example_loss(self, rows: dict[str, Tensor], batch: ExampleBatch) -> Tensor:
        scores = self.predict(rows)  # (G, N, 1 + negatives)
        reg = rows["user_vec"].pow(2).sum(-1) + rows["item_vec"].pow(2).sum((-2, -1)) + rows["item_bias"].pow(2).sum((-2, -1))
        return ranking_loss(scores, self.config.loss) + self.config.l2 * reg

    def score_all(self, params: dict[str, Tensor], users: Tensor) -> Tensor:
        return params["user_vec"][users] @ params["item_vec"].T + params["item_bias"].T  # (B, I)
