"""Local training settings and the result a cohort hands back, shared by both backends."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from fedrec.federated.aggregation import CohortUpdate
from fedrec.models.base import ParamKind, RecModel


@dataclass(frozen=True)
class LocalTraining:
    """Client-side SGD: ``epochs`` passes over the client's examples in shuffled batches."""

    epochs: int = 1
    lr: float = 0.05
    batch_size: int = 32
    private_lr: float | None = None  # learning rate of the private rows (user vectors); None: same as lr

    def lr_of(self, private: bool) -> float:
        return self.private_lr if private and self.private_lr is not None else self.lr


@dataclass
class CohortResult:
    """Uploads for the server plus the private rows that stay on the clients."""

    update: CohortUpdate
    users: Tensor  # (U,) users whose private rows were trained
    private_rows: dict[str, Tensor]  # name -> (U, *row_shape), new values
    loss_sum: float  # sum over local steps of each client's batch-mean loss
    steps: int  # number of (client, step) batch means in loss_sum


def local_copies(model: RecModel, params: dict[str, Tensor], users: np.ndarray, row_items: np.ndarray,
                 num_clients: int) -> dict[str, Tensor]:
    """The values local training starts from: the cohort's private rows, one copy of each touched
    item row per (client, item), and one copy of every dense tensor per client, (C, *shape)."""
    start: dict[str, Tensor] = {}
    for spec in model.param_specs():
        if spec.kind is ParamKind.PRIVATE_ROWS:
            start[spec.name] = params[spec.name][torch.from_numpy(users)]
        elif spec.kind is ParamKind.SHARED_ROWS:
            start[spec.name] = params[spec.name][torch.from_numpy(row_items)]
        else:
            start[spec.name] = params[spec.name].unsqueeze(0).expand(num_clients, *spec.shape)
    return start
