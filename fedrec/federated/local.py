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
    """Client-side SGD: ``epochs`` passes over the client's examples in shuffled batches.

    ``prox_mu`` > 0 is FedProx (Li et al., 2020, "Federated Optimization in Heterogeneous Networks"):
    every local step minimises the batch loss + mu/2 ||w - w_start||^2 over the shared parameters the
    client trains (its copies of item rows and of dense tensors; ``w_start`` is the global model it
    received). Private rows are the client's own and are not pulled towards anything.

    ``clip_norm`` bounds every local step: the gradient of the client's batch loss over everything it
    trains (private rows, its copies of item rows, dense tensors) is scaled to L2 norm at most
    ``clip_norm``, as ``torch.nn.utils.clip_grad_norm_`` does (factor clip / (norm + 1e-6)); FedProx's
    pull is added after clipping. A stability guard, not differential privacy.
    """

    epochs: int = 1
    lr: float = 0.05
    batch_size: int = 32
    private_lr: float | None = None  # learning rate of the private rows (user vectors); None: same as lr
    prox_mu: float = 0.0  # FedProx proximal coefficient (0: plain local SGD)
    clip_norm: float | None = None  # per-step gradient norm bound of each client (None: no clipping)

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
    # When the backend was asked to record it: name -> (T + 1, U, *row_shape), the private rows before each
    # client's local step t (after its last step they stay as they are; entry T is the final value).
    private_path: dict[str, Tensor] | None = None


def pad_path(path: Tensor, length: int) -> Tensor:
    """A recorded path (k + 1, ...) of rows before steps 0..k, padded with its last entry to ``length``."""
    return torch.cat([path, path[-1:].expand(length - len(path), *path.shape[1:])])


def local_copies(model: RecModel, params: dict[str, Tensor], users: np.ndarray, row_items: np.ndarray,
                 num_clients: int) -> dict[str, Tensor]:
    """The values local training starts from: the cohort's private rows, one copy of each touched
    item row per (client, item), and one copy of every dense tensor per client, (C, *shape)."""
    start: dict[str, Tensor] = {}
    for spec in model.param_specs():
        if spec.kind is ParamKind.PRIVATE_ROWS:
            start[spec.name] = params[spec.name].index_select(0, torch.from_numpy(users))
        elif spec.kind is ParamKind.SHARED_ROWS:
            start[spec.name] = params[spec.name].index_select(0, torch.from_numpy(row_items))
        else:
            start[spec.name] = params[spec.name].unsqueeze(0).expand(num_clients, *spec.shape)
    return start


def uploaded_rows(model: RecModel, rows: int) -> slice:
    """Which of a cohort's ``rows`` touched item rows it uploads: all of them, or none when the model
    uploads no item table (a text tower's only item table is its constant text)."""
    return slice(None) if model.uploaded_specs(ParamKind.SHARED_ROWS) else slice(0, 0)


def proximal_term(local: dict[str, Tensor], start: dict[str, Tensor], shared_names: list[str], mu: float) -> Tensor:
    """FedProx's mu/2 * sum ||local - start||^2 over the shared tensors (a scalar to add to a loss)."""
    total = torch.zeros(())
    for name in shared_names:
        total = total + (local[name] - start[name]).pow(2).sum()
    return 0.5 * mu * total


def clip_factors(grads: list[Tensor], kinds: list[ParamKind], index: dict[ParamKind, Tensor], real: Tensor,
                 clip_norm: float) -> Tensor:
    """Per-client gradient scale factors min(1, clip / (norm + 1e-6)) for one lockstep step of G clients.

    ``grads`` are gradients of the step's gathered rows: (G, N, *row) for private rows, (G, N, S, *row)
    for item-row copies, (G, *shape) for dense copies; ``index`` maps each row kind to the table row
    of every gathered entry (flattened), and ``real`` (G, N) marks non-padding entries. A row gathered
    several times gets the sum of its entries' gradients, as in the table, before its norm is taken; a
    row belongs to one client (a private row to its user's client, an item-row copy to the client
    holding it), so each client's norm covers exactly what it trains.
    """
    groups, width = real.shape
    squares = torch.zeros(groups, dtype=torch.float64)
    for grad, kind in zip(grads, kinds):
        if kind is ParamKind.SHARED_DENSE:
            squares += grad.reshape(groups, -1).double().pow(2).sum(1)
            continue
        slots = grad.shape[2] if kind is ParamKind.SHARED_ROWS else 1
        flat = grad.reshape(groups * width * slots, -1)
        mask = real.unsqueeze(-1).expand(groups, width, slots).reshape(-1)
        owner = torch.arange(groups).repeat_interleave(width * slots)[mask]
        rows, inverse = torch.unique(index[kind][mask], return_inverse=True)
        summed = torch.zeros(len(rows), flat.shape[1], dtype=torch.float64).index_add_(0, inverse, flat[mask].double())
        row_owner = torch.zeros(len(rows), dtype=torch.int64).scatter_(0, inverse, owner)
        squares.index_add_(0, row_owner, summed.pow(2).sum(1))
    return (clip_norm / (squares.sqrt() + 1e-6)).clamp(max=1.0).float()


def proximal_step(model: RecModel, tables: dict[str, Tensor], start: dict[str, Tensor], clients: Tensor,
                  row_clients: Tensor, step: float) -> None:
    """FedProx's gradient step in place, for a cohort trained in lockstep (step = lr * mu).

    Every shared copy held by one of ``clients`` (cohort positions taking a local step now) moves by
    ``-step * (copy - start)``: all its item-row copies (``row_clients`` (R,) names each row's client)
    and its dense copies ((C, *shape) tables). Private rows are left alone.
    """
    rows = {ParamKind.SHARED_ROWS: torch.nonzero(torch.isin(row_clients, clients)).reshape(-1),
            ParamKind.SHARED_DENSE: clients}
    for spec in model.param_specs():
        if spec.kind in rows and spec.trainable:
            index = rows[spec.kind]
            tables[spec.name].index_add_(0, index, tables[spec.name][index] - start[spec.name][index], alpha=-step)
