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
from typing import TYPE_CHECKING, Callable, Literal

import numpy as np
import torch
from torch import Tensor

from fedrec.federated.aggregation import ClientWeighting, CohortUpdate, RowWeighting, aggregate, weigh_clients
from fedrec.federated.attacks import Adversary
from fedrec.federated.cohort import ClientData, Sampling, sample_cohort
from fedrec.federated.compression import Compression, compress_round, senders
from fedrec.federated.local import CohortResult, LocalTraining
from fedrec.federated.participation import Participation, arrive
from fedrec.federated.reference import train_cohort_reference
from fedrec.federated.rng import seeded_torch
from fedrec.federated.robust import DefenceSettings, defended_aggregate
from fedrec.federated.server_opt import ServerOptimizer
from fedrec.federated.vectorized import train_cohort_vectorized
from fedrec.models.base import ParamKind, RecModel, num_catalogue_items, parameter_bytes
from fedrec.privacy.dp import CentralDP, SharedShapes, add_gaussian_noise, clip_update, noise_generator, private_mean, sum_update
from fedrec.privacy.ldp import LocalDP, summed_noise_stddev
from fedrec.privacy.cohort_sum import CohortSum, SecureAggregation, aggregate_sum
from fedrec.privacy.hiding_settings import HidingSettings
from fedrec.errors import FedrecError

if TYPE_CHECKING:
    from fedrec.privacy.upload import UploadReport

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
    attack: Adversary | None = None  # simulated malicious clients that craft their uploads (attacks.py)
    client_weighting: ClientWeighting = "examples"  # imbalance: a client weighs n, 1 or sqrt(n) (aggregation.py)
    participation: Participation | None = None  # stragglers and dropouts (participation.py)
    hiding: HidingSettings | None = None  # item hiding applied by the clients (fedrec/privacy/hiding.py)
    secure_aggregation: SecureAggregation | None = None  # the server learns only the cohort's sum (privacy/upload.py)
    compression: Compression | None = None  # top-k / 8-bit uploads with error feedback (compression.py)
    # Write the trained private rows into the user tables of the state passed in (which is then used up)
    # instead of copying every table each round: for runtimes that own their state (the trainer).
    private_rows_in_place: bool = False


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
    client_state: dict[str, Tensor] = field(default_factory=dict)  # simulated clients' own state (compression residuals)


@dataclass(frozen=True)
class RoundStats:
    clients: int
    examples: int
    train_loss: float
    bytes_up: int
    bytes_down: int
    seconds: float
    rejected: dict[str, int] = field(default_factory=dict)  # clients whose upload the defence rejected, by reason
    dropped: int = 0  # sampled clients that dropped out before uploading
    late: int = 0  # clients that missed the round's deadline (update dropped or down-weighted)
    secagg_seconds: float = 0.0  # wall time of the secure-aggregation protocol (all simulated parties)


def upload_bytes(model: RecModel, update: CohortUpdate) -> int:
    """Bytes the cohort sends: each touched item's rows with one index, and every dense tensor."""
    rows = int(update.row_items.shape[0])
    total = rows * INDEX_BYTES
    for spec in model.uploaded_specs(ParamKind.SHARED_ROWS):
        total += parameter_bytes(spec, rows=rows)
    for spec in model.uploaded_specs(ParamKind.SHARED_DENSE):
        total += parameter_bytes(spec) * update.num_clients
    return total


def download_bytes(model: RecModel, num_clients: int) -> int:
    """Bytes the server sends: the full shared model to every client (downloading only the rows a
    client needs would tell the server which items it holds). Constant tables (``trainable=False``, the
    text models' item embeddings) are not sent: clients build them from the public item data, as the
    deployment's nodes do."""
    return num_clients * sum(parameter_bytes(spec) for spec in model.param_specs() if spec.is_uploaded)


def full_upload_bytes(model: RecModel, num_clients: int) -> int:
    """Bytes a cohort sends when every client uploads every trained shared tensor in full (no indices)."""
    return num_clients * sum(parameter_bytes(spec) for spec in model.param_specs() if spec.is_uploaded)


def write_private_rows(params: dict[str, Tensor], result: CohortResult, in_place: bool = False) -> dict[str, Tensor]:
    """Parameters with the clients' freshly trained private rows in place.

    ``in_place`` overwrites the rows in ``params``' own tables (cost: the cohort's rows) instead of
    copying each table (cost: every user's row, each round).
    """
    new = dict(params)
    for name, rows in result.private_rows.items():
        new[name] = params[name].index_copy_(0, result.users, rows) if in_place else params[name].index_copy(
            0, result.users, rows)
    return new


def shared_shapes(model: RecModel) -> SharedShapes:
    """Full shapes of the shared row tables and dense tensors the clients upload (constant tables left out)."""
    return SharedShapes(
        rows={spec.name: tuple(spec.shape) for spec in model.uploaded_specs(ParamKind.SHARED_ROWS)},
        dense={spec.name: tuple(spec.shape) for spec in model.uploaded_specs(ParamKind.SHARED_DENSE)},
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


def sum_server_update(state: ServerState, cohort_sum: CohortSum, settings: FedAvgSettings, seed: int) -> ServerState:
    """:func:`server_update` from the cohort's sum alone (clients clipped and weighted before encoding)."""
    if settings.defence is not None:
        raise FedrecError("defence.* needs each client's upload, but the server received only the cohort's sum; "
                          "switch off privacy.secure_aggregation / privacy.hiding='pseudo' or the defence")
    privacy_state = state.privacy_state
    clip_norm = clip_norm_of(state, settings.privacy) if isinstance(settings.privacy, CentralDP) else None
    deltas, next_clip = aggregate_sum(cohort_sum, settings.row_weighting, settings.privacy, clip_norm,
                                      noise_generator(seed, state.round))
    if next_clip is not None:
        privacy_state = {"clip_norm": torch.tensor(next_clip, dtype=torch.float64)}
    params, optimizer_state = settings.server.step(state.params, deltas, state.optimizer_state)
    return ServerState(state.round + 1, params, optimizer_state, privacy_state)


def server_update(model: RecModel, state: ServerState, update: CohortUpdate | CohortSum, settings: FedAvgSettings,
                  seed: int, client_weights: Tensor | None = None) -> tuple[ServerState, dict[str, int]]:
    """The server's half of a round: aggregate the cohort's uploads and step the shared parameters.

    Plain, defended (validation + robust aggregation) or private (central or local DP) aggregation,
    then the server optimiser. The simulator and the Flower deployment both call this, so a round
    is the same function in either runtime. ``state.params`` needs only the shared tensors (private
    rows, when present, pass through untouched). Returns the next state (round advanced) and the
    defence's rejection counts. ``client_weights`` (C,) further weight the clients (late arrivals).
    """
    if isinstance(update, CohortSum):  # secure aggregation or streamed hidden uploads: only the sums reach the server
        return sum_server_update(state, update, settings, seed), {}
    update = weigh_clients(update, settings.client_weighting, client_weights)  # imbalance handling, stragglers
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


def privacy_upload(model: RecModel, state: ServerState, data: ClientData, cohort: np.ndarray,
                   result: CohortResult | None, update: CohortUpdate, settings: FedAvgSettings, seed: int,
                   client_weights: Tensor | None = None) -> tuple[CohortUpdate | CohortSum, UploadReport | None]:
    """Client-side item hiding and secure aggregation (privacy/upload.py): what the server receives
    instead of ``update``, and what it cost (None when both are off: ``update`` as it is)."""
    hiding = settings.hiding is not None and settings.hiding.mode != "none"
    if result is None or not (hiding or settings.secure_aggregation is not None):
        return update, None
    from fedrec.privacy.upload import cohort_upload

    weighted = weigh_clients(update, settings.client_weighting, client_weights)  # clients weigh before encoding
    clip_norm = clip_norm_of(state, settings.privacy) if isinstance(settings.privacy, CentralDP) else (
        settings.privacy.clip_norm if isinstance(settings.privacy, LocalDP) else None)
    received, report = cohort_upload(model, state.params, data, cohort, result, weighted, settings, seed, state.round,
                                     clip_norm)
    return (received if isinstance(received, CohortSum) else update), report


def run_round(model: RecModel, state: ServerState, data: ClientData, settings: FedAvgSettings, seed: int,
              eligible: np.ndarray | None = None) -> tuple[ServerState, RoundStats]:
    """One FedAvg round (sample, train locally, :func:`server_update`); the round's randomness is a
    pure function of (seed, round)."""
    began = time.perf_counter()
    round_index = state.round
    cohort = sample_cohort(data.num_clients, settings.client_fraction, seed, round_index, eligible, settings.sampling)
    train = BACKENDS[settings.backend]
    result = None
    if len(cohort):
        with seeded_torch(seed, round_index):
            result = train(model, state.params, data, cohort, settings.local, seed, round_index,
                           record_path=settings.hiding is not None and settings.hiding.needs_private_path)
    if settings.attack is not None and result is not None:  # the malicious clients replace their uploads
        result.update = settings.attack.poison(model, state.params, result.update, cohort, seed, round_index)
    arrived = arrive(result, data, cohort, settings.participation, settings.local.epochs, seed, round_index)
    result = arrived.result  # the clients the server hears from (stragglers, dropouts: participation.py)
    update = result.update if result is not None else empty_update(shared_shapes(model))
    update, client_state, sent_bytes = compress_round(  # the wire: encode each upload, decode it on the server
        model, update, senders(cohort, data.sizes, settings.participation, settings.local.epochs, seed, round_index),
        settings.compression, state.client_state, seed, round_index)
    received, upload = privacy_upload(model, state, data, cohort, result, update, settings, seed, arrived.weights)
    next_state, rejected = server_update(model, state, received, settings, seed, arrived.weights)
    next_state.client_state = client_state
    if result is not None:
        next_state.params = write_private_rows(next_state.params, result, settings.private_rows_in_place)
    dense_upload = isinstance(settings.privacy, LocalDP)  # noise on every coordinate: the whole shared model travels
    stats = RoundStats(
        clients=len(cohort),
        examples=int(data.sizes[cohort].sum()),
        train_loss=result.loss_sum / max(result.steps, 1) if result is not None else 0.0,
        bytes_up=(upload.bytes_up if upload is not None else sent_bytes if sent_bytes is not None
                  else full_upload_bytes(model, len(cohort)) if dense_upload else upload_bytes(model, update)),
        bytes_down=download_bytes(model, len(cohort)),
        seconds=time.perf_counter() - began,
        rejected=rejected,
        dropped=arrived.dropped,
        late=arrived.late,
        secagg_seconds=upload.secagg.seconds if upload is not None and upload.secagg is not None else 0.0,
    )
    return next_state, stats
