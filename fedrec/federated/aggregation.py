"""Combining a cohort's uploads into one update of the shared parameters.

Row tables (item vectors and biases) are aggregated row by row. The default takes, for each item
row, the weighted mean of the deltas of the clients that *updated* that row. Why: in one client per
user, any item is touched by a small fraction of the cohort; plain FedAvg divides each row's sum
by the whole cohort's weight, so the rows of all but the most popular items barely move (their
update is diluted by the many clients that sent an implicit zero). The per-row mean is the FedAvg
of the clients that hold data about that row. Plain FedAvg weighting stays available as
``row_weighting="fedavg"``.

Dense tensors are averaged over the cohort, weighted by each client's number of examples (FedAvg,
McMahan et al. 2017).

Imbalance handling (``client_weighting``): a client's influence can be its example count (FedAvg's
default), uniform (every client counts once), or sqrt of its count (in between). It is applied by
scaling each client's size and row counts by a factor (:func:`weigh_clients`), so every row
weighting above and every aggregator downstream sees the reweighted cohort. Late (straggling)
clients are down-weighted the same way (fedrec/federated/participation.py).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Literal

import torch
from torch import Tensor

RowWeighting = Literal["row_count", "client_size", "fedavg"]
ROW_WEIGHTINGS: tuple[str, ...] = ("row_count", "client_size", "fedavg")


@dataclass
class CohortUpdate:
    """What a cohort uploads, laid out flat: one entry per (client, touched row).

    ``row_clients[r]`` is the cohort position of the client that sent row ``r`` of item
    ``row_items[r]``; ``row_counts[r]`` how many of that client's examples touched the row.
    ``dense_deltas[name]`` is (C, *shape), one delta per client.
    """

    row_items: Tensor  # (R,) int64
    row_clients: Tensor  # (R,) int64
    row_counts: Tensor  # (R,) float32
    row_deltas: dict[str, Tensor]  # name -> (R, *row_shape)
    dense_deltas: dict[str, Tensor]  # name -> (C, *shape)
    client_sizes: Tensor  # (C,) float32

    @property
    def num_clients(self) -> int:
        return int(self.client_sizes.shape[0])

    @staticmethod
    def concat(parts: list[CohortUpdate]) -> CohortUpdate:
        """Join single-client updates (cohort position of part ``k`` becomes ``k``)."""
        offsets = [0]
        for part in parts:
            offsets.append(offsets[-1] + part.num_clients)
        return CohortUpdate(
            row_items=torch.cat([p.row_items for p in parts]),
            row_clients=torch.cat([p.row_clients + off for p, off in zip(parts, offsets)]),
            row_counts=torch.cat([p.row_counts for p in parts]),
            row_deltas={n: torch.cat([p.row_deltas[n] for p in parts]) for n in parts[0].row_deltas},
            dense_deltas={n: torch.cat([p.dense_deltas[n] for p in parts]) for n in parts[0].dense_deltas},
            client_sizes=torch.cat([p.client_sizes for p in parts]),
        )


def keep_clients(update: CohortUpdate, keep: Tensor) -> CohortUpdate:
    """The update restricted to the clients where ``keep`` (C,) is true, renumbered in order."""
    new_position = torch.cumsum(keep.to(torch.int64), 0) - 1
    rows = keep[update.row_clients]
    return CohortUpdate(
        row_items=update.row_items[rows],
        row_clients=new_position[update.row_clients[rows]],
        row_counts=update.row_counts[rows],
        row_deltas={name: value[rows] for name, value in update.row_deltas.items()},
        dense_deltas={name: value[keep] for name, value in update.dense_deltas.items()},
        client_sizes=update.client_sizes[keep],
    )


ClientWeighting = Literal["examples", "uniform", "sqrt"]


def client_factors(client_sizes: Tensor, weighting: ClientWeighting) -> Tensor:
    """Factor on each client's weight so its total weight becomes n (examples), 1 (uniform) or sqrt(n)."""
    sizes = client_sizes.clamp_min(torch.finfo(client_sizes.dtype).tiny)
    if weighting == "examples":
        return torch.ones_like(client_sizes)
    if weighting == "uniform":
        return 1.0 / sizes
    return sizes.rsqrt()


def weigh_clients(update: CohortUpdate, weighting: ClientWeighting = "examples",
                  extra: Tensor | None = None) -> CohortUpdate:
    """The update with client c's size and row counts scaled by its weighting factor times ``extra[c]``.

    ``extra`` (C,) are further per-client weights (e.g. stragglers' down-weighting). With the default
    weighting and no ``extra``, the update is returned as it is.
    """
    if weighting == "examples" and extra is None:
        return update
    factors = client_factors(update.client_sizes, weighting)
    if extra is not None:
        factors = factors * extra.to(factors.dtype)
    return replace(update, row_counts=update.row_counts * factors[update.row_clients],
                   client_sizes=update.client_sizes * factors)


def row_weights(update: CohortUpdate, weighting: RowWeighting) -> Tensor:
    """Weight of each uploaded row: examples touching it, or the client's size."""
    if weighting == "row_count":
        return update.row_counts
    return update.client_sizes[update.row_clients]


def aggregate_rows(deltas: Tensor, items: Tensor, weights: Tensor, num_rows: int, denominator: Tensor | float | None = None) -> Tensor:
    """Weighted mean of row deltas per row: sum_r w_r delta_r / (sum of w_r over rows of that item).

    With ``denominator`` given (plain FedAvg), every row's weighted sum is divided by it instead.
    Rows nobody updated get a zero delta. Returns (num_rows, *row_shape).
    """
    flat = deltas.reshape(deltas.shape[0], -1)
    total = torch.zeros(num_rows, flat.shape[1], dtype=flat.dtype).index_add_(0, items, flat * weights[:, None])
    if denominator is None:
        weight_sum = torch.zeros(num_rows, dtype=flat.dtype).index_add_(0, items, weights)
        total = total / weight_sum.clamp_min(torch.finfo(flat.dtype).tiny)[:, None]
    else:
        total = total / denominator
    return total.reshape(num_rows, *deltas.shape[1:])


def aggregate_dense(deltas: Tensor, client_weights: Tensor) -> Tensor:
    """FedAvg of per-client dense deltas (C, *shape) with weights (C,)."""
    w = client_weights / client_weights.sum()
    return torch.tensordot(w, deltas, dims=([0], [0]))


def aggregate(update: CohortUpdate, num_rows: int, weighting: RowWeighting = "row_count") -> dict[str, Tensor]:
    """The mean update of every shared parameter (full shapes) from a cohort's uploads."""
    weights = row_weights(update, weighting)
    denominator = update.client_sizes.sum() if weighting == "fedavg" else None
    result = {
        name: aggregate_rows(delta, update.row_items, weights, num_rows, denominator)
        for name, delta in update.row_deltas.items()
    }
    for name, delta in update.dense_deltas.items():
        result[name] = aggregate_dense(delta, update.client_sizes)
    return result
