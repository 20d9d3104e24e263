"""The centralised baseline: the same model and loss, trained on all training data in one place.

It shares the model's ``example_loss`` with the federated clients, so the gap between the two
runs on the same split is the price of federation and nothing else.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from fedrec.data.dataset import Interactions
from fedrec.federated import rng
from fedrec.models.base import ExampleBatch, RecModel, gather_rows


@dataclass(frozen=True)
class CentralSettings:
    optimizer: str = "adam"
    lr: float = 1e-3
    batch_size: int = 256


def make_optimizer(params: dict[str, Tensor], settings: CentralSettings) -> torch.optim.Optimizer:
    tensors = list(params.values())
    if settings.optimizer == "adam":
        return torch.optim.Adam(tensors, lr=settings.lr)
    return torch.optim.SGD(tensors, lr=settings.lr)


def train_epoch(model: RecModel, params: dict[str, Tensor], optimizer: torch.optim.Optimizer, train: Interactions,
                batch_size: int, seed: int, epoch: int) -> float:
    """One shuffled pass over the training interactions; ``params`` are leaf tensors updated in place.

    Returns the mean batch loss.
    """
    n = len(train)
    order = np.argsort(rng.hash64(seed, rng.STREAM_SHUFFLE, epoch, np.arange(n)), kind="stable")
    users = torch.from_numpy(train.users)
    items = torch.from_numpy(train.items)
    targets = torch.from_numpy(train.ratings)
    total = 0.0
    batches = 0
    for begin in range(0, n, batch_size):
        batch = torch.from_numpy(order[begin:begin + batch_size])
        rows = gather_rows(model, params, users[batch], items[batch].unsqueeze(1))
        loss = model.example_loss(rows, ExampleBatch(targets[batch])).mean()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        total += float(loss.detach())
        batches += 1
    return total / max(batches, 1)
