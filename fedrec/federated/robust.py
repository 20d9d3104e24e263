"""Defences against poisoned uploads: update validation and robust aggregation per item row.

Two stages, both pure functions the round can call between local training and the server step:

1. **Validation** (:func:`validate_uploads`, :func:`validate_update`). A client's *whole* upload is
   rejected, counted by reason and never applied when any of it is malformed: a tensor missing,
   extra or of the wrong shape against the model's :meth:`~fedrec.models.base.RecModel.param_specs`
   (``shape``); a NaN or infinity anywhere, weights included (``non_finite``); an item index outside
   the catalogue (``item_range``); the same item row sent twice, or a negative or zero weight
   (``bad_weight``); or an update norm more than ``max_norm_ratio`` times the cohort's median norm
   (or above an absolute ``max_norm``) (``norm``). The norm test runs last, over the clients that
   passed the others, so a NaN cannot hide in the median. With ``norm_scaling="sqrt_size"`` the
   ratio test compares norm / sqrt(client size) instead: an honest client's update grows with its
   number of examples, so on ML-100K (943 clients, no attack) the raw test at ratio 3 rejects ~70
   honest heavy users per round, the size-aware one under one (BENCHMARKS.md, poison section).

2. **Robust aggregation** (:func:`robust_aggregate`), a drop-in for
   :func:`fedrec.federated.aggregation.aggregate` (same arguments, same output shapes). Each item
   row is aggregated over the clients that sent it (an item row is updated by a few clients only,
   so a cohort-wide statistic would be meaningless): coordinate-wise median, trimmed mean,
   Krum / Multi-Krum (Blanchard et al., 2017) or plain mean, optionally after norm bounding (each
   client's row delta clipped to ``clip_norm``; ``norm_bound`` is clipping followed by the usual
   weighted mean). A client's row is the concatenation of its deltas for that item over every row
   table (item vector, item bias...). Dense tensors are aggregated the same way over the whole
   cohort (their own ``dense_clip_norm``). Rows are grouped by item with sorts and scatters; the
   only Python loops are over the distinct numbers of senders per row (Krum) and over tensor names.

   Robust statistics are unweighted (every sender counts once: a client claiming many examples
   gains nothing); ``mean`` and ``norm_bound`` keep the configured FedAvg weighting.

Which defences can run under secure aggregation: **none of the server-side ones**. With secure
aggregation the server only learns the *sum* of the cohort's uploads, never an individual update,
so it can neither validate a client (shape aside, which the protocol itself fixes), nor compute
a cohort median norm, a coordinate-wise median, a trimmed mean or Krum's pairwise distances. What
still works is **norm bounding on the client side**: every honest client clips its own update
before masking it (as DP-FedAvg does anyway), and a zero-knowledge range proof would be needed to
*enforce* the bound on a malicious client; a plain secure-aggregation deployment can only trust it.
The validation and robust methods here therefore assume the server sees individual uploads (no
secure aggregation, or a trusted execution environment).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal

import torch
from torch import Tensor

from fedrec.errors import FedrecError
from fedrec.federated.aggregation import (CohortUpdate, RowWeighting, aggregate_dense, aggregate_rows, keep_clients,
                                         row_weights)
from fedrec.models.base import ParamKind, ParamSpec

REJECTION_REASONS: tuple[str, ...] = ("shape", "non_finite", "item_range", "bad_weight", "norm")
RobustMethod = Literal["mean", "median", "trimmed_mean", "krum", "multi_krum", "norm_bound"]
ROBUST_METHODS: tuple[str, ...] = ("mean", "median", "trimmed_mean", "krum", "multi_krum", "norm_bound")
NormScaling = Literal["none", "sqrt_size"]
NORM_SCALINGS: tuple[str, ...] = ("none", "sqrt_size")


# ----------------------------------------------------------------------------------- validation


@dataclass(frozen=True)
class ValidationSettings:
    """When a client's upload is rejected for its size (the structural checks always run)."""

    max_norm_ratio: float | None = 10.0  # reject norms > ratio x the cohort's median norm; None: off
    max_norm: float | None = None  # reject norms above this absolute bound; None: off
    # What max_norm_ratio compares: the raw norm ("none"), or the norm per sqrt(client size) ("sqrt_size"), so a
    # client with many examples (whose honest update is larger) is not mistaken for an outlier.
    norm_scaling: NormScaling = "none"

    def __post_init__(self) -> None:
        if self.norm_scaling not in NORM_SCALINGS:
            raise FedrecError(f"unknown norm_scaling {self.norm_scaling!r}; choose one of: {', '.join(NORM_SCALINGS)}")


@dataclass(frozen=True)
class ValidationReport:
    """Which clients were rejected (positions in the input cohort) and why (first failed check)."""

    rejected: dict[str, int]  # reason -> number of clients
    rejected_clients: Tensor  # (K,) int64, sorted cohort positions
    kept_clients: Tensor  # (C - K,) int64, sorted cohort positions (position k of the output = kept_clients[k])

    @property
    def num_rejected(self) -> int:
        return int(self.rejected_clients.numel())


@dataclass
class ClientUpload:
    """One client's upload as it arrives: touched items, their weights and deltas, dense deltas, size."""

    row_items: Tensor  # (R_k,) int64
    row_counts: Tensor  # (R_k,)
    row_deltas: dict[str, Tensor]  # name -> (R_k, *row_shape)
    dense_deltas: dict[str, Tensor]  # name -> (*shape)
    size: float = 1.0

    def as_update(self) -> CohortUpdate:
        """This upload as a one-client :class:`CohortUpdate` (call only once its shapes are checked)."""
        return CohortUpdate(
            row_items=self.row_items.to(torch.int64),
            row_clients=torch.zeros(self.row_items.shape[0], dtype=torch.int64),
            row_counts=self.row_counts.to(torch.float32),
            row_deltas={name: value.to(torch.float32) for name, value in self.row_deltas.items()},
            dense_deltas={name: value.to(torch.float32).unsqueeze(0) for name, value in self.dense_deltas.items()},
            client_sizes=torch.tensor([float(self.size)], dtype=torch.float32),
        )


def split_update(update: CohortUpdate) -> list[ClientUpload]:
    """The per-client uploads a flat :class:`CohortUpdate` was assembled from (for tests and tools)."""
    uploads = []
    for client in range(update.num_clients):
        mine = update.row_clients == client
        uploads.append(ClientUpload(
            row_items=update.row_items[mine], row_counts=update.row_counts[mine],
            row_deltas={name: value[mine] for name, value in update.row_deltas.items()},
            dense_deltas={name: value[client] for name, value in update.dense_deltas.items()},
            size=float(update.client_sizes[client]),
        ))
    return uploads


def shape_problem(upload: ClientUpload, specs: Sequence[ParamSpec]) -> str | None:
    """Why this upload does not fit the model's shared parameters, or None when it does."""
    rows = {s.name: s for s in specs if s.kind is ParamKind.SHARED_ROWS and s.is_uploaded}
    dense = {s.name: s for s in specs if s.kind is ParamKind.SHARED_DENSE and s.is_uploaded}
    if set(upload.row_deltas) != set(rows) or set(upload.dense_deltas) != set(dense):
        return "tensor names differ from the model's uploaded shared parameters"
    if upload.row_items.dim() != 1 or upload.row_counts.shape != upload.row_items.shape:
        return "row_items and row_counts must be 1-D and of equal length"
    if upload.row_items.is_floating_point() or upload.row_items.is_complex():
        return "row_items must be integers"
    count = upload.row_items.shape[0]
    for name, spec in rows.items():
        if tuple(upload.row_deltas[name].shape) != (count, *spec.row_shape):
            return f"{name} has shape {tuple(upload.row_deltas[name].shape)}, expected {(count, *spec.row_shape)}"
    for name, spec in dense.items():
        if tuple(upload.dense_deltas[name].shape) != spec.shape:
            return f"{name} has shape {tuple(upload.dense_deltas[name].shape)}, expected {spec.shape}"
    for value in (*upload.row_deltas.values(), *upload.dense_deltas.values(), upload.row_counts):
        if not (value.is_floating_point() or value.dtype in (torch.int32, torch.int64)):
            return f"a tensor has dtype {value.dtype}; expected real numbers"
    return None


def _empty_update(specs: Sequence[ParamSpec]) -> CohortUpdate:
    return CohortUpdate(
        row_items=torch.zeros(0, dtype=torch.int64), row_clients=torch.zeros(0, dtype=torch.int64),
        row_counts=torch.zeros(0),
        row_deltas={s.name: torch.zeros(0, *s.row_shape) for s in specs if s.kind is ParamKind.SHARED_ROWS and s.is_uploaded},
        dense_deltas={s.name: torch.zeros(0, *s.shape) for s in specs if s.kind is ParamKind.SHARED_DENSE and s.is_uploaded},
        client_sizes=torch.zeros(0),
    )


def validate_uploads(uploads: Sequence[ClientUpload], specs: Sequence[ParamSpec], num_rows: int,
                     settings: ValidationSettings = ValidationSettings()) -> tuple[CohortUpdate, ValidationReport]:
    """Check each client's upload against the model's specs, then as in :func:`validate_update`.

    Returns the accepted clients' uploads as one :class:`CohortUpdate` (cohort positions renumbered
    0..kept-1, in input order) and the report of rejections.
    """
    shaped = [k for k, upload in enumerate(uploads) if shape_problem(upload, specs) is None]
    bad_shape = len(uploads) - len(shaped)
    joined = CohortUpdate.concat([uploads[k].as_update() for k in shaped]) if shaped else _empty_update(specs)
    filtered, report = validate_update(joined, num_rows, settings)
    positions = torch.tensor(shaped, dtype=torch.int64)
    kept = positions[report.kept_clients]
    rejected = torch.tensor(sorted(set(range(len(uploads))) - set(kept.tolist())), dtype=torch.int64)
    reasons = dict(report.rejected, shape=report.rejected["shape"] + bad_shape)
    return filtered, ValidationReport(reasons, rejected, kept)


def _per_client_sum(values: Tensor, clients: Tensor, num_clients: int) -> Tensor:
    return torch.zeros(num_clients, dtype=values.dtype).index_add_(0, clients, values)


def update_norms(update: CohortUpdate) -> Tensor:
    """L2 norm of each client's whole upload (row deltas and dense deltas together): (C,)."""
    squares = torch.zeros(update.num_clients, dtype=torch.float64)
    for value in update.row_deltas.values():
        squares.index_add_(0, update.row_clients, value.reshape(value.shape[0], -1).double().square().sum(1))
    for value in update.dense_deltas.values():
        squares += value.reshape(value.shape[0], -1).double().square().sum(1)
    return squares.sqrt()


def relative_norms(norms: Tensor, client_sizes: Tensor, scaling: NormScaling) -> Tensor:
    """What the cohort-relative norm test compares: each client's norm, or its norm / sqrt(its size): (C,).

    An honest update's norm grows with the client's number of local steps, so under ``"sqrt_size"`` a
    heavy user is compared with what its size predicts, while a small fake profile uploading a
    several-times-larger crafted step still stands out. Sizes are clamped to >= 1. They are the sizes
    the aggregation sees: under ``train.client_weighting = "uniform"`` (every size 1) this is the raw test.
    """
    if scaling == "none":
        return norms
    return norms / client_sizes.to(norms.dtype).clamp_min(1.0).sqrt()


def validate_update(update: CohortUpdate, num_rows: int,
                    settings: ValidationSettings = ValidationSettings()) -> tuple[CohortUpdate, ValidationReport]:
    """Drop every client whose upload is non-finite, out of range, badly weighted or far too large.

    Structural shapes are those of the flat layout here (use :func:`validate_uploads` to check
    uploads as clients send them). A client is counted under the first check it fails, in the
    order of :data:`REJECTION_REASONS`.
    """
    clients = update.num_clients
    reason = torch.full((clients,), -1, dtype=torch.int64)  # index into REJECTION_REASONS, -1 = fine

    def mark(failed: Tensor, name: str) -> None:
        reason[(reason < 0) & failed] = REJECTION_REASONS.index(name)

    rc = update.row_clients
    if rc.numel() and (int(rc.min()) < 0 or int(rc.max()) >= clients):
        raise FedrecError("a CohortUpdate's row_clients point outside its cohort; build it with CohortUpdate.concat")
    not_finite = _per_client_sum((~torch.isfinite(update.row_counts)).to(torch.int64), rc, clients)
    not_finite += (~torch.isfinite(update.client_sizes)).to(torch.int64)
    for value in update.row_deltas.values():
        bad = (~torch.isfinite(value)).reshape(value.shape[0], -1).any(1).to(torch.int64)
        not_finite += _per_client_sum(bad, rc, clients)
    for value in update.dense_deltas.values():
        not_finite += (~torch.isfinite(value)).reshape(clients, -1).any(1).to(torch.int64)
    mark(not_finite > 0, "non_finite")
    outside = (update.row_items < 0) | (update.row_items >= num_rows)
    mark(_per_client_sum(outside.to(torch.int64), rc, clients) > 0, "item_range")
    bad_weight = _per_client_sum((update.row_counts <= 0).to(torch.int64), rc, clients) > 0
    bad_weight |= update.client_sizes <= 0
    if rc.numel():  # the same item twice from one client would count its vote twice
        key = rc * max(num_rows, 1) + update.row_items.clamp(0, max(num_rows - 1, 0))
        ordered, order = torch.sort(key)
        repeated = torch.zeros_like(ordered, dtype=torch.bool)
        repeated[1:] = ordered[1:] == ordered[:-1]
        bad_weight |= _per_client_sum(repeated.to(torch.int64), rc[order], clients) > 0
    mark(bad_weight, "bad_weight")
    healthy = reason < 0
    if healthy.any() and (settings.max_norm_ratio is not None or settings.max_norm is not None):
        norms = update_norms(update)
        too_big = torch.zeros(clients, dtype=torch.bool)
        if settings.max_norm is not None:
            too_big |= norms > settings.max_norm
        if settings.max_norm_ratio is not None:
            relative = relative_norms(norms, update.client_sizes, settings.norm_scaling)
            median = relative[healthy].median()
            if median > 0:
                too_big |= relative > settings.max_norm_ratio * median
        mark(too_big, "norm")
    keep = reason < 0
    counts = {name: int((reason == k).sum()) for k, name in enumerate(REJECTION_REASONS)}
    report = ValidationReport(counts, torch.nonzero(~keep).flatten(), torch.nonzero(keep).flatten())
    return keep_clients(update, keep), report


# ---------------------------------------------------------------------------- robust aggregation


@dataclass(frozen=True)
class RobustSettings:
    """How each item row (and the dense tensors) is aggregated over the clients that sent it."""

    method: RobustMethod = "median"
    trim_fraction: float = 0.1  # trimmed_mean: drop floor(f * n) smallest and largest values per coordinate
    byzantine_fraction: float = 0.2  # krum: assumed attackers among a row's n senders, f = floor(fraction * n)
    clip_norm: float | None = None  # norm bounding of each client's row delta (required by norm_bound)
    dense_clip_norm: float | None = None  # the same for each client's dense delta (all dense tensors together)

    def __post_init__(self) -> None:
        if self.method not in ROBUST_METHODS:
            raise FedrecError(f"unknown robust aggregation {self.method!r}; choose one of: {', '.join(ROBUST_METHODS)}")
        if not 0.0 <= self.trim_fraction < 0.5:
            raise FedrecError(f"trim_fraction={self.trim_fraction} must be in [0, 0.5)")
        if not 0.0 <= self.byzantine_fraction < 0.5:
            raise FedrecError(f"byzantine_fraction={self.byzantine_fraction} must be in [0, 0.5)")
        for name in ("clip_norm", "dense_clip_norm"):
            value = getattr(self, name)
            if value is not None and not value > 0:
                raise FedrecError(f"{name}={value} must be positive (or unset)")
        if self.method == "norm_bound" and self.clip_norm is None:
            raise FedrecError("robust method norm_bound needs clip_norm; set it (e.g. 1.0)")


def clip_rows(vectors: Tensor, bound: float) -> Tensor:
    """Each row of (R, D) scaled down to L2 norm at most ``bound``."""
    norms = vectors.norm(dim=1, keepdim=True)
    return vectors * torch.clamp(bound / norms.clamp_min(torch.finfo(vectors.dtype).tiny), max=1.0)


@dataclass(frozen=True)
class _Groups:
    """Rows sorted by group: ``order`` sorts them, ``counts``/``starts`` per group, ``rank`` in group."""

    order: Tensor  # (R,)
    sorted_groups: Tensor  # (R,)
    counts: Tensor  # (G,)
    starts: Tensor  # (G,)


def _groups(groups: Tensor, num_groups: int) -> _Groups:
    sorted_groups, order = torch.sort(groups, stable=True)
    counts = torch.bincount(groups, minlength=num_groups)
    starts = torch.cumsum(counts, 0) - counts
    return _Groups(order, sorted_groups, counts, starts)


def _sorted_within_groups(vectors: Tensor, groups: Tensor, layout: _Groups) -> tuple[Tensor, Tensor, Tensor]:
    """Each column of (R, D) sorted within its group: (values (R, D), group of each row, rank in group)."""
    # Sorting along the contiguous last dimension of the (D, R) transpose is several times faster than
    # sorting the strided columns of (R, D); the stable sorts give the same order either way.
    values, by_value = torch.sort(vectors.t().contiguous(), dim=1, stable=True)
    group_of = groups[by_value]
    _, by_group = torch.sort(group_of, dim=1, stable=True)
    values = values.gather(1, by_group).t()
    sorted_groups = layout.sorted_groups
    rank = torch.arange(len(sorted_groups)) - layout.starts[sorted_groups]
    return values, sorted_groups, rank


def group_median(vectors: Tensor, groups: Tensor, num_groups: int) -> Tensor:
    """Coordinate-wise median of the rows of each group (mean of the two middle values when even): (G, D)."""
    layout = _groups(groups, num_groups)
    values, group_of, rank = _sorted_within_groups(vectors, groups, layout)
    n = layout.counts[group_of]
    middle = ((rank == (n - 1) // 2).to(values.dtype) + (rank == n // 2).to(values.dtype)) * 0.5
    return torch.zeros(num_groups, vectors.shape[1], dtype=vectors.dtype).index_add_(0, group_of, values * middle[:, None])


def group_trimmed_mean(vectors: Tensor, groups: Tensor, num_groups: int, trim_fraction: float) -> Tensor:
    """Coordinate-wise mean of each group after dropping floor(f n) smallest and largest values: (G, D)."""
    layout = _groups(groups, num_groups)
    values, group_of, rank = _sorted_within_groups(vectors, groups, layout)
    n = layout.counts[group_of]
    cut = torch.floor(trim_fraction * n.to(torch.float64)).to(torch.int64)
    kept = ((rank >= cut) & (rank < n - cut)).to(values.dtype) / (n - 2 * cut).clamp_min(1).to(values.dtype)
    return torch.zeros(num_groups, vectors.shape[1], dtype=vectors.dtype).index_add_(0, group_of, values * kept[:, None])


def krum_neighbours(senders: int, byzantine_fraction: float) -> tuple[int, int]:
    """(f, k) for a row with ``senders`` clients: assumed attackers and neighbours Krum scores over."""
    f = math.floor(byzantine_fraction * senders)
    return f, senders - f - 2


def group_krum(vectors: Tensor, groups: Tensor, num_groups: int, byzantine_fraction: float, multi: bool,
               max_elements: int = 1 << 24) -> Tensor:
    """Krum (or Multi-Krum) per group: (G, D).

    In a group of n senders with f = floor(fraction * n) assumed attackers, each sender's score is
    the sum of squared distances to its k = n - f - 2 nearest other senders. Krum returns the
    lowest-scoring sender's vector; Multi-Krum the mean of the n - f lowest-scoring. Groups with
    k < 1 (too few senders to tell a cluster: n <= 2, or n = 3 with f = 1) fall back to the
    coordinate-wise median of their senders (for one sender, its own vector; for two, their mean).
    """
    layout = _groups(groups, num_groups)
    result = group_median(vectors, groups, num_groups)  # the fallback, overwritten where Krum applies
    sorted_vectors = vectors[layout.order]
    for n in torch.unique(layout.counts).tolist():
        f, k = krum_neighbours(n, byzantine_fraction)
        if n == 0 or k < 1:
            continue
        ids = torch.nonzero(layout.counts == n).flatten()
        chunk = max(1, max_elements // (n * n))
        for begin in range(0, len(ids), chunk):
            part = ids[begin:begin + chunk]
            members = sorted_vectors[layout.starts[part][:, None] + torch.arange(n)]  # (g, n, D)
            distances = torch.cdist(members, members, compute_mode="donot_use_mm_for_euclid_dist").square()
            distances.diagonal(dim1=1, dim2=2).fill_(float("inf"))
            scores = distances.topk(k, dim=2, largest=False).values.sum(2)  # (g, n)
            if multi:
                # Ties (mutual nearest neighbours score alike) go to the earlier sender, as in a stable sort.
                best = torch.sort(scores, dim=1, stable=True).indices[:, :n - f]  # (g, n - f)
                chosen = members.gather(1, best[:, :, None].expand(-1, -1, members.shape[2])).mean(1)
            else:
                chosen = members[torch.arange(len(part)), scores.argmin(1)]
            result[part] = chosen
    return result


def robust_combine(vectors: Tensor, groups: Tensor, num_groups: int, weights: Tensor, settings: RobustSettings,
                   clip: float | None) -> Tensor:
    """Combine rows (R, D) into one vector per group (G, D) with the configured method."""
    if clip is not None:
        vectors = clip_rows(vectors, clip)
    method = settings.method
    if method in ("mean", "norm_bound"):
        return aggregate_rows(vectors, groups, weights, num_groups)
    if method == "median":
        return group_median(vectors, groups, num_groups)
    if method == "trimmed_mean":
        return group_trimmed_mean(vectors, groups, num_groups, settings.trim_fraction)
    return group_krum(vectors, groups, num_groups, settings.byzantine_fraction, multi=method == "multi_krum")


def _flatten(tensors: dict[str, Tensor]) -> tuple[Tensor, list[tuple[str, tuple[int, ...], int]]]:
    """Concatenate (N, *shape) tensors along their trailing dims: (N, D) and how to split it back."""
    layout, parts = [], []
    for name, value in tensors.items():
        width = math.prod(value.shape[1:])
        layout.append((name, tuple(value.shape[1:]), width))
        parts.append(value.reshape(value.shape[0], width))
    return torch.cat(parts, dim=1), layout


def _unflatten(flat: Tensor, layout: list[tuple[str, tuple[int, ...], int]]) -> dict[str, Tensor]:
    out, begin = {}, 0
    for name, shape, width in layout:
        out[name] = flat[:, begin:begin + width].reshape(flat.shape[0], *shape)
        begin += width
    return out


def robust_aggregate(update: CohortUpdate, num_rows: int, weighting: RowWeighting = "row_count",
                     settings: RobustSettings = RobustSettings()) -> dict[str, Tensor]:
    """Robust counterpart of :func:`~fedrec.federated.aggregation.aggregate`: same inputs, same output shapes.

    ``weighting`` applies to ``mean`` and ``norm_bound`` only (``fedavg`` there divides by the
    cohort's total size as in ``aggregate``). Rows nobody sent get a zero delta; an empty cohort
    gives zero deltas everywhere.
    """
    result: dict[str, Tensor] = {}
    if update.row_deltas:
        flat, layout = _flatten(update.row_deltas)
        weights = row_weights(update, weighting)
        if flat.shape[0] == 0:
            combined = torch.zeros(num_rows, flat.shape[1], dtype=flat.dtype)
        elif settings.method in ("mean", "norm_bound") and weighting == "fedavg":
            clipped = clip_rows(flat, settings.clip_norm) if settings.clip_norm is not None else flat
            combined = aggregate_rows(clipped, update.row_items, weights, num_rows,
                                      update.client_sizes.sum().clamp_min(torch.finfo(flat.dtype).tiny))
        else:
            combined = robust_combine(flat, update.row_items, num_rows, weights, settings, settings.clip_norm)
        result.update(_unflatten(combined, layout))
    if update.dense_deltas:
        flat, layout = _flatten(update.dense_deltas)
        if update.num_clients == 0:
            combined = torch.zeros(1, flat.shape[1], dtype=flat.dtype)
        elif settings.method in ("mean", "norm_bound"):
            clipped = clip_rows(flat, settings.dense_clip_norm) if settings.dense_clip_norm is not None else flat
            combined = aggregate_dense(clipped, update.client_sizes)[None]
        else:
            groups = torch.zeros(update.num_clients, dtype=torch.int64)
            combined = robust_combine(flat, groups, 1, update.client_sizes, settings, settings.dense_clip_norm)
        result.update({name: value[0] for name, value in _unflatten(combined, layout).items()})
    return result


@dataclass(frozen=True)
class DefenceSettings:
    """Validation then robust aggregation: what a round applies to its cohort's uploads."""

    validation: ValidationSettings = field(default_factory=ValidationSettings)
    robust: RobustSettings = field(default_factory=lambda: RobustSettings(method="mean"))


def defended_aggregate(update: CohortUpdate, num_rows: int, weighting: RowWeighting,
                       defence: DefenceSettings) -> tuple[dict[str, Tensor], ValidationReport]:
    """Validate the cohort's uploads, then aggregate the accepted ones robustly (for ``run_round``)."""
    accepted, report = validate_update(update, num_rows, defence.validation)
    return robust_aggregate(accepted, num_rows, weighting, defence.robust), report
