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
from fedrec.federated.cohort import ClientData, Sampling, sample_cohort
from fedrec.federated.local import CohortResult, LocalTraining
from fedrec.federated.reference import train_cohort_reference
from fedrec.federated.robust import DefenceSettings, defended_aggregate
from fedrec.federated.server_opt import ServerOptimizer
from fedrec.federated.vectorized import train_cohort_vectorized
from fedrec.models.base import ParamKind, RecModel, num_catalogue_items, parameter_bytes
from fedrec.privacy.dp import CentralDP, SharedShapes, add_gaussian_noise, clip_update, noise_generator, private_mean, sum_update
from fedrec.privacy.ldp import LocalDP, summed_noise_stddev

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
    sampling: Sampling = "fixed"  # "poisson" with central DP (what the accountant assumes)
    privacy: CentralDP | LocalDP | None = None  # None: plain aggregation (no clipping, no noise)
    defence: DefenceSettings | None = None  # validation + robust aggregation of the uploads (not with privacy)


@dataclass
class ServerState:
    """Everything a run carries from one round to the next.

    ``params`` holds the shared tensors and, in simulation, the clients' private rows;
    ``privacy_state`` the adaptive clip norm (``clip_norm``) when DP clipping adapts.
    """

    round: int
    params: dict[str, Tensor]
    optimizer_state: dict[str, Tensor] = field(default_factory=dict)
    privacy_state: dict[str, Tensor] = field(default_factory=dict)


@dataclass(frozen=True)
class RoundStats:
    clients: int
    examples: int
    train_loss: float
    bytes_up: int
    bytes_down: int
    seconds: float
    rejected: dict[str, int] = field(default_factory=dict)  # clients whose upload the defence rejected, by reason


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


def shared_shapes(model: RecModel) -> SharedShapes:
    """Full shapes of the model's shared row tables and dense tensors."""
    return SharedShapes(
        rows={spec.name: tuple(spec.shape) for spec in model.specs_by_kind(ParamKind.SHARED_ROWS)},
        dense={spec.name: tuple(spec.shape) for spec in model.specs_by_kind(ParamKind.SHARED_DENSE)},
    )


def empty_update(shapes: SharedShapes) -> CohortUpdate:
    """What an empty cohort uploads (Poisson sampling can draw nobody)."""
    return CohortUpdate(
        row_items=torch.zeros(0, dtype=torch.int64), row_clients=torch.zeros(0, dtype=torch.int64),
        row_counts=torch.zeros(0), row_deltas={n: torch.zeros(0, *s[1:]) for n, s in shapes.rows.items()},
        dense_deltas={n: torch.zeros(0, *s) for n, s in shapes.dense.items()}, client_sizes=torch.zeros(0),
    )


def clip_norm_of(state: ServerState, privacy: CentralDP) -> float:
    """The clip norm of this round: the adapted one carried in the state, else the configured one."""
    carried = state.privacy_state.get("clip_norm")
    return float(carried) if carried is not None else privacy.clip_norm


def private_aggregate(update: CohortUpdate, shapes: SharedShapes, privacy: CentralDP | LocalDP, state: ServerState,
                      seed: int) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
    """Mean update under DP and the next privacy state.

    Central: clip -> sum -> dense Gaussian noise -> / expected cohort size (:func:`private_mean`).
    Local: each client clips and noises its own upload, the server averages the noisy uploads; the sum
    of the clients' independent noise is drawn here as one Gaussian of the summed variance, which
    has exactly the same distribution (and avoids materialising one dense noise tensor per client).
    """
    generator = noise_generator(seed, state.round)
    if isinstance(privacy, CentralDP):
        clip_norm = clip_norm_of(state, privacy)
        deltas, next_clip = private_mean(update, shapes, privacy, clip_norm, generator)
        carried = {"clip_norm": torch.tensor(next_clip, dtype=torch.float64)} if privacy.adaptive else {}
        return deltas, carried
    clipped, _ = clip_update(update, privacy.clip_norm)
    clients = max(update.num_clients, 1)
    noisy = add_gaussian_noise(sum_update(clipped, shapes), summed_noise_stddev(privacy.stddev, update.num_clients), generator)
    return {name: value / clients for name, value in noisy.items()}, {}


def server_update(model: RecModel, state: ServerState, update: CohortUpdate, settings: FedAvgSettings,
                  seed: int) -> tuple[ServerState, dict[str, int]]:
    """The server's half of a round: aggregate the cohort's uploads and step the shared parameters.

    Plain, defended (validation + robust aggregation) or private (central or local DP) aggregation,
    then the server optimiser. The simulator and the Flower deployment both call this, so a round
    is the same function in either runtime. ``state.params`` needs only the shared tensors (private
    rows, when present, pass through untouched). Returns the next state (round advanced) and the
    defence's rejection counts.
    """
    rejected: dict[str, int] = {}
    privacy_state = state.privacy_state
    num_items = num_catalogue_items(model)
    if settings.privacy is not None:
        deltas, privacy_state = private_aggregate(update, shared_shapes(model), settings.privacy, state, seed)
    elif update.num_clients == 0:  # nobody sampled or nobody answered: the model stays as it is
        deltas = {}
    elif settings.defence is not None:
        deltas, report = defended_aggregate(update, num_items, settings.row_weighting, settings.defence)
        rejected = report.rejected
    else:
        deltas = aggregate(update, num_items, settings.row_weighting)
    params, optimizer_state = settings.server.step(state.params, deltas, state.optimizer_state)
    return ServerState(state.round + 1, params, optimizer_state, privacy_state), rejected


def run_round(model: RecModel, state: ServerState, data: ClientData, settings: FedAvgSettings, seed: int,
              eligible: np.ndarray | None = None) -> tuple[ServerState, RoundStats]:
    """One FedAvg round (sample, train locally, :func:`server_update`); the round's randomness is a
    pure function of (seed, round)."""
    began = time.perf_counter()
    round_index = state.round
    cohort = sample_cohort(data.num_clients, settings.client_fraction, seed, round_index, eligible, settings.sampling)
    train = BACKENDS[settings.backend]
    result = train(model, state.params, data, cohort, settings.local, seed, round_index) if len(cohort) else None
    update = result.update if result is not None else empty_update(shared_shapes(model))
    next_state, rejected = server_update(model, state, update, settings, seed)
    if result is not None:
        next_state.params = write_private_rows(next_state.params, result)
    dense_upload = isinstance(settings.privacy, LocalDP)  # noise on every coordinate: the whole shared model travels
    stats = RoundStats(
        clients=len(cohort),
        examples=int(update.client_sizes.sum()),
        train_loss=result.loss_sum / max(result.steps, 1) if result is not None else 0.0,
        bytes_up=download_bytes(model, len(cohort)) if dense_upload else upload_bytes(model, update),
        bytes_down=download_bytes(model, len(cohort)),
        seconds=time.perf_counter() - began,
        rejected=rejected,
    )
    return next_state, stats
