"""Federated averaging for recommenders: one round = sample, train locally, aggregate, apply.

FedAvg (McMahan et al., 2017, "Communication-Efficient Learning of Deep Networks from
Decentralized Data") with a server learning rate (Reddi et al., 2021, "Adaptive Federated
Optimization"): shared <- shared + server_lr * aggregate(deltas). Private rows (user vectors)
are trained on the clients and never aggregated; the simulator keeps them in the state only as
its stand-in for the clients' own storage.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Callable, Literal

import numpy as np
import torch
from torch import Tensor

from fedrec.federated.aggregation import CohortUpdate, RowWeighting, aggregate
from fedrec.federated.cohort import ClientData, sample_cohort
from fedrec.federated.local import CohortResult, LocalTraining
from fedrec.federated.reference import train_cohort_reference
from fedrec.federated.server_opt import ServerOptimizer
from fedrec.federated.vectorized import train_cohort_vectorized
from fedrec.models.base import ParamKind, RecModel, num_catalogue_items, parameter_bytes

Backend = Literal["vectorized", "reference"]
BACKENDS: dict[str, Callable[..., CohortResult]] = {
    "vectorized": train_cohort_vectorized,
    "reference": train_cohort_reference,
}

INDEX_BYTES = 4  # an uploaded row travels with its int32 item index


@dataclass(frozen=True)
class FedAvgSettings:
    local: LocalTraining = field(default_factory=LocalTraining)
    client_fraction: float = 1.0
    server: ServerOptimizer = field(default_factory=ServerOptimizer)
    row_weighting: RowWeighting = "row_count"
    backend: Backend = "vectorized"


@dataclass
class ServerState:
    """Everything a run carries from one round to the next.

    ``params`` holds the shared tensors and, in simulation, the clients' private rows.
    """

    round: int
    params: dict[str, Tensor]
    optimizer_state: dict[str, Tensor] = field(default_factory=dict)


@dataclass(frozen=True)
class RoundStats:
    clients: int
    examples: int
    train_loss: float
    bytes_up: int
    bytes_down: int
    seconds: float


def upload_bytes(model: RecModel, update: CohortUpdate) -> int:
    """Bytes the cohort sends: each touched item's rows with one index, and every dense tensor."""
    rows = int(update.row_items.shape[0])
    total = rows * INDEX_BYTES
    for spec in model.specs_by_kind(ParamKind.SHARED_ROWS):
        total += parameter_bytes(spec, rows=rows)
    for spec in model.specs_by_kind(ParamKind.SHARED_DENSE):
        total += parameter_bytes(spec) * update.num_clients
    return total


def download_bytes(model: RecModel, num_clients: int) -> int:
    """Bytes the server sends: the full shared model to every client (downloading only the rows a
    client needs would tell the server which items it holds)."""
    return num_clients * sum(parameter_bytes(spec) for spec in model.param_specs() if spec.is_shared)


def write_private_rows(params: dict[str, Tensor], result: CohortResult) -> dict[str, Tensor]:
    """Parameters with the clients' freshly trained private rows in place."""
    new = dict(params)
    for name, rows in result.private_rows.items():
        new[name] = params[name].index_copy(0, result.users, rows)
    return new


def run_round(model: RecModel, state: ServerState, data: ClientData, settings: FedAvgSettings, seed: int,
              eligible: np.ndarray | None = None) -> tuple[ServerState, RoundStats]:
    """One FedAvg round; the round's randomness is a pure function of (seed, round)."""
    began = time.perf_counter()
    round_index = state.round
    cohort = sample_cohort(data.num_clients, settings.client_fraction, seed, round_index, eligible)
    train = BACKENDS[settings.backend]
    result = train(model, state.params, data, cohort, settings.local, seed, round_index)
    deltas = aggregate(result.update, num_catalogue_items(model), settings.row_weighting)
    params, optimizer_state = settings.server.step(state.params, deltas, state.optimizer_state)
    params = write_private_rows(params, result)
    stats = RoundStats(
        clients=len(cohort),
        examples=int(result.update.client_sizes.sum()),
        train_loss=result.loss_sum / max(result.steps, 1),
        bytes_up=upload_bytes(model, result.update),
        bytes_down=download_bytes(model, len(cohort)),
        seconds=time.perf_counter() - began,
    )
    return ServerState(round_index + 1, params, optimizer_state), stats
