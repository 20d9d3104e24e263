"""The centralised baseline: the same model and loss, trained on all training data in one place.

It shares the model's ``example_loss`` with the federated clients, so the gap between the two
runs on the same split is the price of federation and nothing else.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from fedrec.federated import rng
from fedrec.federated.cohort import ClientData, slot_items
from fedrec.models.base import ExampleBatch, RecModel, gather_rows


@dataclass(frozen=True)
class CentralSettings:
    optimizer: str = "adam"
    lr: float = 1e-3
    batch_size: int = 256


def trained_leaves(model: RecModel, params: dict[str, Tensor]) -> dict[str, Tensor]:
    """Make ``params`` leaves that require grad exactly when trainable; returns the trainable ones
    (what the optimiser steps; constant tables such as ``item_text`` are read, never stepped)."""
    trainable = {spec.name for spec in model.param_specs() if spec.trainable}
    for name, value in params.items():
        value.requires_grad_(name in trainable)
    return {name: value for name, value in params.items() if name in trainable}


def make_optimizer(params: dict[str, Tensor], settings: CentralSettings) -> torch.optim.Optimizer:
    tensors = list(params.values())
    if settings.optimizer == "adam":
        return torch.optim.Adam(tensors, lr=settings.lr)
    return torch.optim.SGD(tensors, lr=settings.lr)


def train_epoch(model: RecModel, params: dict[str, Tensor], optimizer: torch.optim.Optimizer, train: ClientData,
                batch_size: int, seed: int, epoch: int) -> float:
    """One shuffled pass over all training examples; ``params`` are leaf tensors updated in place.

    Implicit models get the same client-side negative sampling as in federated training (keyed by
    the epoch and the example's position). Returns the mean batch loss.
    """
    n = len(train.users)
    order = np.argsort(rng.hash64(seed, rng.STREAM_SHUFFLE, epoch, np.arange(n)), kind="stable")
    index = np.arange(n)
    zeros = np.zeros(n, dtype=np.int64)
    items = torch.from_numpy(slot_items(train, index, model.negatives, seed, epoch, zeros, zeros, index))  # (n, S)
    users = torch.from_numpy(train.users)
    targets = torch.from_numpy(train.targets)
    total = 0.0
    batches = 0
    with rng.seeded_torch(seed, epoch):  # model dropout repeats in a resumed run
        for begin in range(0, n, batch_size):
            batch = torch.from_numpy(order[begin:begin + batch_size])
            rows = gather_rows(model, params, users[batch], items[batch])
            loss = model.example_loss(rows, ExampleBatch(targets[batch].unsqueeze(0))).mean()
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            total += float(loss.detach())
            batches += 1
    return total / max(batches, 1)
