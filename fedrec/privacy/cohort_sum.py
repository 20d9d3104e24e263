"""The cohort's upload as one sum: what the server learns under secure aggregation, and how it steps from it.

Secure aggregation (:mod:`fedrec.privacy.secagg`) reveals to the server only the sum of the clients'
vectors, so each client lays out *everything the aggregation needs* as one fixed-length vector
(:class:`SumLayout`) and the server computes the round's update from the sum alone:

- plain aggregation: per shared row table, the client's weighted row deltas ``w_r * delta_r``
  scattered into a full (num_items, *row_shape) table (zero where it trained nothing); then, for
  ``row_count`` and ``client_size`` weighting, the row weights ``w_r`` per item; per dense tensor,
  ``size * delta``; last, the client's size (number of examples). Every weighting of
  :func:`fedrec.federated.aggregation.aggregate` follows: the per-row mean is
  ``sum(w delta) / sum(w)``, plain FedAvg ``sum(size delta) / sum(size)``, dense tensors
  ``sum(size delta) / sum(size)``. The server also learns the summed weights (how many of the
  cohort's examples touched each item) and the cohort's total size: aggregate statistics only.
- DP (central or local): the client clips its whole upload to the round's clip norm and sends the
  clipped, unweighted deltas (DP-FedAvg sums them with equal weight); with adaptive clipping one
  more coordinate, 1 when its norm was at most the clip norm. The server adds the Gaussian noise to
  the unmasked sum (:func:`aggregate_sum`).

:class:`CohortSum` is that sum, decoded; :meth:`CohortSum.add` computes the same sum in the clear
(used when the uploads are streamed in chunks without secure aggregation), :func:`secure_cohort_sum`
by running the real protocol over per-client vectors made on demand.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import torch
from torch import Tensor

from fedrec.federated import rng
from fedrec.federated.aggregation import CohortUpdate, RowWeighting, row_weights
from fedrec.privacy.dp import (CentralDP, SharedShapes, adaptive_clip_from_count, add_gaussian_noise, clip_update,
                               update_norms)
from fedrec.privacy.ldp import LocalDP, summed_noise_stddev

if TYPE_CHECKING:
    from fedrec.privacy.secagg import SecAggSettings

STREAM_SECAGG_KEYS = 105  # seeds the simulated clients' protocol randomness per round
STREAM_SECAGG_DROPOUT = 106  # which clients drop out of a round's protocol (simulation)


@dataclass(frozen=True)
class SecureAggregation:
    """Secure aggregation in training: the protocol's settings and the simulated dropout rate."""

    protocol: SecAggSettings
    dropout: float = 0.0  # fraction of each cohort that drops before sending its masked input (simulation)


@dataclass(frozen=True)
class SumLayout:
    """What one client's vector carries, in order: row tables, [row weights], dense tensors, [size], [unclipped]."""

    rows: dict[str, tuple[int, ...]]  # name -> full table shape (num_items, *row_shape)
    dense: dict[str, tuple[int, ...]]
    weighted: bool  # per-item row weights (row_count / client_size weighting)
    clipped: bool  # DP: clipped unweighted deltas, no sizes
    count_unclipped: bool  # adaptive clipping: 1 if the client's norm was <= the clip norm

    @property
    def num_items(self) -> int:
        return next(iter(self.rows.values()))[0] if self.rows else 0

    @property
    def length(self) -> int:
        """Values per client vector."""
        total = sum(math.prod(shape) for shape in self.rows.values()) + sum(math.prod(s) for s in self.dense.values())
        return total + self.num_items * self.weighted + (not self.clipped) + self.count_unclipped


def sum_layout(shapes: SharedShapes, weighting: RowWeighting, privacy: CentralDP | LocalDP | None) -> SumLayout:
    """The vector layout a round needs for this weighting and DP mechanism."""
    clipped = privacy is not None
    return SumLayout(dict(shapes.rows), dict(shapes.dense), weighted=not clipped and weighting != "fedavg" and bool(shapes.rows),
                     clipped=clipped, count_unclipped=isinstance(privacy, CentralDP) and privacy.adaptive)


@dataclass(frozen=True)
class Contributions:
    """Each client's additive share of the cohort sum (float64), before it is laid out as one vector."""

    items: Tensor  # (R,) item of each uploaded row
    clients: Tensor  # (R,) cohort position of its sender
    rows: dict[str, Tensor]  # name -> (R, width): w_r delta_r, or the clipped delta under DP
    weights: Tensor | None  # (R,) w_r (weighted layouts)
    dense: dict[str, Tensor]  # name -> (C, width): size * delta, or the clipped delta
    sizes: Tensor | None  # (C,) examples per client (plain layouts)
    unclipped: Tensor | None  # (C,) 1.0 where the norm was <= the clip norm (adaptive DP)
    num_clients: int


def contributions(update: CohortUpdate, layout: SumLayout, weighting: RowWeighting,
                  clip_norm: float | None = None) -> Contributions:
    """What each client of ``update`` adds to the sum under ``layout`` (clipping to ``clip_norm`` under DP)."""
    if layout.clipped:
        if clip_norm is None:
            raise ValueError("a clipped layout needs the round's clip norm")
        norms = update_norms(update)
        update, _ = clip_update(update, clip_norm)
        rows = {n: d.reshape(d.shape[0], -1).double() for n, d in update.row_deltas.items()}
        dense = {n: d.reshape(d.shape[0], -1).double() for n, d in update.dense_deltas.items()}
        unclipped = (norms <= clip_norm).double() if layout.count_unclipped else None
        return Contributions(update.row_items, update.row_clients, rows, None, dense, None, unclipped, update.num_clients)
    weights = row_weights(update, weighting).double()
    sizes = update.client_sizes.double()
    rows = {n: d.reshape(d.shape[0], -1).double() * weights[:, None] for n, d in update.row_deltas.items()}
    dense = {n: d.reshape(d.shape[0], -1).double() * sizes[:, None] for n, d in update.dense_deltas.items()}
    return Contributions(update.row_items, update.row_clients, rows, weights if layout.weighted else None, dense,
                         sizes, None, update.num_clients)


class ClientVectors:
    """Each client's flat vector under ``layout``, built when asked for (one client in memory at a time)."""

    def __init__(self, parts: Contributions, layout: SumLayout) -> None:
        self.parts, self.layout = parts, layout
        owners = parts.clients.numpy()
        self.order = np.argsort(owners, kind="stable")
        self.bounds = np.searchsorted(owners[self.order], np.arange(parts.num_clients + 1))
        self.shape = (parts.num_clients, layout.length)

    def __len__(self) -> int:
        return self.shape[0]

    def __getitem__(self, client: int) -> np.ndarray:
        layout, parts = self.layout, self.parts
        rows = torch.from_numpy(self.order[self.bounds[client]:self.bounds[client + 1]])
        items = parts.items[rows]
        out = torch.zeros(layout.length, dtype=torch.float64)
        offset = 0
        for name, shape in layout.rows.items():
            width = math.prod(shape[1:])
            table = out[offset:offset + shape[0] * width].view(shape[0], width)
            table.index_add_(0, items, parts.rows[name][rows])
            offset += shape[0] * width
        if layout.weighted:
            assert parts.weights is not None
            out[offset:offset + layout.num_items].index_add_(0, items, parts.weights[rows])
            offset += layout.num_items
        for name, shape in layout.dense.items():
            width = math.prod(shape)
            out[offset:offset + width] = parts.dense[name][client]
            offset += width
        if not layout.clipped:
            assert parts.sizes is not None
            out[offset] = parts.sizes[client]
            offset += 1
        if layout.count_unclipped:
            assert parts.unclipped is not None
            out[offset] = parts.unclipped[client]
        return out.numpy()


@dataclass
class CohortSum:
    """The cohort's summed contributions (float64), all the server sees under secure aggregation."""

    row_sums: dict[str, Tensor]  # name -> full table shape
    dense_sums: dict[str, Tensor]  # name -> full shape
    row_weights: Tensor | None  # (num_items,) summed row weights (weighted layouts)
    total_size: float  # summed client sizes (plain layouts; 0 under DP)
    unclipped: float  # clients whose norm was <= the clip norm (adaptive DP)
    num_clients: int  # clients whose input is in the sum

    @staticmethod
    def zeros(layout: SumLayout) -> CohortSum:
        return CohortSum({n: torch.zeros(s, dtype=torch.float64) for n, s in layout.rows.items()},
                         {n: torch.zeros(s, dtype=torch.float64) for n, s in layout.dense.items()},
                         torch.zeros(layout.num_items, dtype=torch.float64) if layout.weighted else None, 0.0, 0.0, 0)

    def add(self, parts: Contributions) -> None:
        """Add the contributions of some clients, in the clear (the sum a server streams up without secure aggregation)."""
        for name, total in self.row_sums.items():
            total.view(total.shape[0], -1).index_add_(0, parts.items, parts.rows[name])
        if self.row_weights is not None:
            assert parts.weights is not None
            self.row_weights.index_add_(0, parts.items, parts.weights)
        for name, total in self.dense_sums.items():
            total += parts.dense[name].sum(0).reshape(total.shape)
        if parts.sizes is not None:
            self.total_size += float(parts.sizes.sum())
        if parts.unclipped is not None:
            self.unclipped += float(parts.unclipped.sum())
        self.num_clients += parts.num_clients

    @staticmethod
    def from_vector(vector: np.ndarray, layout: SumLayout, num_clients: int) -> CohortSum:
        """Read a summed client vector back into named tensors."""
        flat = torch.from_numpy(np.asarray(vector, dtype=np.float64).copy())
        if flat.shape[0] != layout.length:
            raise ValueError(f"summed vector has {flat.shape[0]} values, the layout {layout.length}")
        offset = 0

        def take(count: int) -> Tensor:
            nonlocal offset
            offset += count
            return flat[offset - count:offset]

        rows = {name: take(math.prod(shape)).reshape(shape) for name, shape in layout.rows.items()}
        weights = take(layout.num_items) if layout.weighted else None
        dense = {name: take(math.prod(shape)).reshape(shape) for name, shape in layout.dense.items()}
        total_size = float(take(1)[0]) if not layout.clipped else 0.0
        unclipped = float(take(1)[0]) if layout.count_unclipped else 0.0
        return CohortSum(rows, dense, weights, total_size, unclipped, num_clients)


def mean_from_sum(cohort_sum: CohortSum, weighting: RowWeighting) -> dict[str, Tensor]:
    """The plain aggregate (as :func:`fedrec.federated.aggregation.aggregate` defines it) from the sums alone."""
    if cohort_sum.num_clients == 0:
        return {}
    result: dict[str, Tensor] = {}
    for name, total in cohort_sum.row_sums.items():
        if weighting == "fedavg":
            result[name] = (total / cohort_sum.total_size).float()
        else:
            assert cohort_sum.row_weights is not None
            scale = cohort_sum.row_weights.clamp_min(torch.finfo(torch.float32).tiny)
            result[name] = (total / scale.reshape(-1, *[1] * (total.dim() - 1))).float()
    for name, total in cohort_sum.dense_sums.items():
        result[name] = (total / cohort_sum.total_size).float()
    return result


def aggregate_sum(cohort_sum: CohortSum, weighting: RowWeighting, privacy: CentralDP | LocalDP | None,
                  clip_norm: float | None, generator: torch.Generator) -> tuple[dict[str, Tensor], float | None]:
    """The server's mean update from the sum, and the next clip norm (adaptive central DP, else None).

    Central DP: the Gaussian noise N(0, (z C)^2) is added to every coordinate of the summed clipped
    deltas, which are divided by the expected cohort size, exactly as
    :func:`fedrec.privacy.dp.private_mean` does with individual uploads (same draws from ``generator``).
    Local DP: the clients' independent noise, drawn as one Gaussian of the summed variance, over the
    number of clients in the sum.
    """
    if privacy is None:
        return mean_from_sum(cohort_sum, weighting), None
    sums = {name: value.float() for name, value in {**cohort_sum.row_sums, **cohort_sum.dense_sums}.items()}
    if isinstance(privacy, LocalDP):
        noisy = add_gaussian_noise(sums, summed_noise_stddev(privacy.stddev, cohort_sum.num_clients), generator)
        return {name: value / max(cohort_sum.num_clients, 1) for name, value in noisy.items()}, None
    assert clip_norm is not None
    noisy = add_gaussian_noise(sums, privacy.update_noise * clip_norm, generator)
    deltas = {name: value / privacy.expected_clients for name, value in noisy.items()}
    next_clip = None
    if privacy.adaptive:
        next_clip = adaptive_clip_from_count(clip_norm, round(cohort_sum.unclipped), privacy.target_quantile,
                                             privacy.clip_lr, privacy.count_noise, privacy.expected_clients, generator)
    return deltas, next_clip


@dataclass(frozen=True)
class SecureSumReport:
    """What one round of the protocol cost (measured) and who made it into the sum."""

    bytes_up: int  # every message the clients sent: keys, encrypted shares, masked vectors, unmasking shares
    bytes_down: int  # protocol messages the server routed to the clients (the model download is extra)
    seconds: float  # wall time of the whole protocol (all simulated parties, one process)
    survivors: int
    dropped: int
    degree: int
    threshold: int


def protocol_seed(seed: int, round_index: int) -> int:
    """The simulated parties' randomness of one round: fresh keys every round, reproducible runs."""
    return int(rng.hash64(seed, STREAM_SECAGG_KEYS, round_index)) & ((1 << 63) - 1)


def dropout_clients(num_clients: int, fraction: float, seed: int, round_index: int) -> np.ndarray:
    """Cohort positions that drop before sending their masked input: round(fraction * C), seeded by (seed, round)."""
    count = int(round(fraction * num_clients))
    if count == 0:
        return np.zeros(0, dtype=np.int64)
    keys = rng.hash64(seed, STREAM_SECAGG_DROPOUT, round_index, np.arange(num_clients))
    return np.sort(np.argsort(keys, kind="stable")[:count])


def secure_cohort_sum(vectors: ClientVectors | Callable[[int], np.ndarray], length: int, num_clients: int,
                      layout: SumLayout, settings: SecAggSettings, seed: int, round_index: int,
                      dropout: float = 0.0) -> tuple[CohortSum, SecureSumReport]:
    """Run the real protocol (:func:`fedrec.privacy.secagg.secure_sum`) over the clients' vectors and decode the sum.

    ``vectors[u]`` (or ``vectors(u)``) is client ``u``'s vector, made when the protocol asks for it.
    ``settings`` is a :class:`fedrec.privacy.secagg.SecAggSettings`; a seeded ``dropout`` fraction of
    the cohort drops before sending its masked input (their uploads are lost; the sum is over the rest).
    """
    from fedrec.privacy.secagg import RowsOnDemand, secure_sum

    make = vectors.__getitem__ if isinstance(vectors, ClientVectors) else vectors
    dropped = dropout_clients(num_clients, dropout, seed, round_index)
    began = time.perf_counter()
    result = secure_sum(RowsOnDemand(num_clients, length, make), settings, protocol_seed(seed, round_index),
                        drop_before_input=dropped.tolist())
    seconds = time.perf_counter() - began
    total = CohortSum.from_vector(result.sum, layout, len(result.survivors))
    return total, SecureSumReport(result.bytes_up_total, result.bytes_down_total, seconds, len(result.survivors),
                                  len(result.dropped), result.degree, result.threshold)
