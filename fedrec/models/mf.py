"""Biased matrix factorisation (Koren et al. 2009) for explicit ratings.

prediction(u, i) = mu + b_u + b_i + <p_u, q_i>; loss = (r - prediction)^2 + l2 (|p_u|^2 + |q_i|^2 + b_u^2 + b_i^2).
User vector and bias are private to the client; item vectors, item biases and mu are shared.
mu starts at the mean training rating (one sum and one count over clients, which secure
aggregation can compute) and is then learned like any shared tensor.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from fedrec.models.base import ExampleBatch, ParamKind, ParamSpec, RecModel


@dataclass(frozen=True)
class MFConfig:
    dim: int = 64
    l2: float = 0.05
    init_std: float = 0.1
    global_mean: float = 0.0  # initial value of mu (set from the training ratings by the runner)


class BiasedMF(RecModel):

    def __init__(self, config: MFConfig, num_users: int, num_items: int) -> None:
        self.config = config
        self.num_users = num_users
        self.num_items = num_items

    def param_specs(self) -> list[ParamSpec]:
        d = self.config.dim
        return [
            ParamSpec("user_vec", ParamKind.PRIVATE_ROWS, (self.num_users, d)),
            ParamSpec("user_bias", ParamKind.PRIVATE_ROWS, (self.num_users, 1)),
            ParamSpec("item_vec", ParamKind.SHARED_ROWS, (self.num_items, d)),
            ParamSpec("item_bias", ParamKind.SHARED_ROWS, (self.num_items, 1)),
            ParamSpec("global_bias", ParamKind.SHARED_DENSE, (1,)),
        ]

    def init_params(self, generator: torch.Generator) -> dict[str, Tensor]:
        d, std = self.config.dim, self.config.init_std
        # shared tables first: their start does not depend on how many users (or injected fake users) exist
        item_vec = torch.randn(self.num_items, d, generator=generator) * std
        return {
            "user_vec": torch.randn(self.num_users, d, generator=generator) * std,
            "user_bias": torch.zeros(self.num_users, 1),
            "item_vec": item_vec,
            "item_bias": torch.zeros(self.num_items, 1),
            "global_bias": torch.full((1,), float(self.config.global_mean)),
        }

    def predict(self, rows: dict[str, Tensor]) -> Tensor:
        p = rows["user_vec"].unsqueeze(-2)  # (G, N, 1, d)
        q = rows["item_vec"]  # (G, N, S, d)
        dot = (p * q).sum(-1)  # (G, N, S)
        mu = rows["global_bias"].reshape(-1, 1, 1)  # (G, 1, 1)
        return mu + rows["user_bias"] + rows["item_bias"].squeeze(-1) + dot

    def example_loss(self, rows: dict[str, Tensor], batch: ExampleBatch) -> Tensor:
        error = self.predict(rows)[..., 0] - batch.targets  # (G, N)
        # x * x rather than x.pow(2): same values, cheaper backward (this loss is the simulator's inner loop)
        reg = (
            _squared_sum(rows["user_vec"], (-1,))
            + _squared_sum(rows["user_bias"], (-1,))
            + _squared_sum(rows["item_vec"], (-2, -1))
            + _squared_sum(rows["item_bias"], (-2, -1))
        )
        return error * error + self.config.l2 * reg

    def score_all(self, params: dict[str, Tensor], users: Tensor) -> Tensor:
        """Predicted rating of every item for each user: (B, I)."""
        user_part = params["global_bias"] + params["user_bias"][users]  # (B, 1)
        return user_part + params["user_vec"][users] @ params["item_vec"].T + params["item_bias"].T


def _squared_sum(x: Tensor, dims: tuple[int, ...]) -> Tensor:
    """Sum of squares of ``x`` over ``dims``."""
    return (x * x).sum(dims)
