"""Compressed uploads: top-k sparsification, 8-bit quantisation and error feedback.

Each client's upload (its touched item rows and its dense deltas) is seen as one flat vector
laid out row by row (every shared row table's columns side by side, rows in item order) and then
its dense tensors. On it, in this order:

- **Top-k** (``topk = f``): keep the ``ceil(f * n)`` coordinates of largest magnitude of the
  client's ``n`` (ties go to the earlier coordinate). Rows left with no kept coordinate are not
  sent at all; a sent row travels with its number of values, each value with its column.
- **8-bit** (``bits = 8``): symmetric linear quantisation to int8 in [-127, 127] with one float32
  scale ``max|v| / 127`` per group: per sent row of each row table wider than one value, and
  per client for one-value tables (biases) and dense tensors (``scale = "row"``); or per client
  and table (``scale = "tensor"``). Rounding is stochastic by default (``floor(v / s + u)``,
  u uniform: unbiased, error < s) or deterministic (round to nearest: error <= s / 2). The uniform draws are counter-based (seed, round, client,
  coordinate), so a client rounds identically in the simulator and on a Flower node.
- **Error feedback** (Seide et al. 2014, "1-bit SGD"; Karimireddy et al. 2019, "Error Feedback
  Fixes SignSGD"): a client adds the residual of what it did not send to its next upload and keeps
  the new residual. A residual row waits on the client until that client uploads the row again
  (MF clients touch the same items every round; BPR's sampled negatives may wait). Residuals are
  the clients' own state, stored sparsely: one row per (client, item) with a non-zero residual
  and one dense row per client (see :func:`empty_residuals`).

The encoded form (:class:`EncodedUpload`) is the arrays that travel: int8 or float32 values,
float32 scales, item ids, positions and per-client counts. Its byte count is what ``bytes_up``
reports (the simulator); a Flower node sends the same arrays and the server counts the serialised
message. Residual memory: W float32 values per (client, item) held back, e.g. 41 MB for ML-100K
MF with dim 128 (80k rows); at 10^5+ clients it grows with the rows they hold, not with the
population. :func:`decode_upload` turns it back into a :class:`CohortUpdate` for ``server_update``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields
from typing import Literal

import numpy as np
import torch
from torch import Tensor

from fedrec.errors import FedrecError
from fedrec.federated import rng
from fedrec.federated.aggregation import CohortUpdate
from fedrec.federated.participation import Participation, decide_arrivals
from fedrec.models.base import ParamKind, RecModel, num_catalogue_items

STREAM_ROUNDING = 11  # rng stream of the stochastic rounding draws
QMAX = 127  # int8 levels used: -127..127 (symmetric, so zero is exact)
ROW_KEYS, ROW_VALUES, DENSE_CLIENTS, DENSE_VALUES = (
    "residual/row_keys", "residual/row_values", "residual/dense_clients", "residual/dense_values")

Rounding = Literal["stochastic", "deterministic"]
ScaleGroup = Literal["row", "tensor"]


@dataclass(frozen=True)
class Compression:
    """How clients compress their uploads (at least one of ``topk`` and ``bits`` is set)."""

    topk: float | None = None  # fraction of each client's upload coordinates it sends
    bits: int | None = None  # 8: int8 values with float32 scales
    error_feedback: bool = True
    rounding: Rounding = "stochastic"
    scale: ScaleGroup = "row"

    def __post_init__(self) -> None:
        if self.topk is None and self.bits is None:
            raise FedrecError("compression needs compression.topk (fraction kept) or compression.bits = 8")
        if self.topk is not None and not 0.0 < self.topk <= 1.0:
            raise FedrecError(f"compression.topk={self.topk} must be in (0, 1]; e.g. 0.1 keeps 10% of each upload")
        if self.bits is not None and self.bits != 8:
            raise FedrecError(f"compression.bits={self.bits} is not supported; use 8 (int8 values, float32 scales)")


@dataclass(frozen=True)
class UploadLayout:
    """Column layout of a client's flat upload: row tables side by side, then dense tensors."""

    row_names: tuple[str, ...]
    row_shapes: tuple[tuple[int, ...], ...]  # shape of one row of each table
    dense_names: tuple[str, ...]
    dense_shapes: tuple[tuple[int, ...], ...]
    num_items: int

    @staticmethod
    def of(model: RecModel) -> UploadLayout:
        rows = model.uploaded_specs(ParamKind.SHARED_ROWS)
        dense = model.uploaded_specs(ParamKind.SHARED_DENSE)
        return UploadLayout(tuple(s.name for s in rows), tuple(tuple(s.row_shape) for s in rows),
                            tuple(s.name for s in dense), tuple(tuple(s.shape) for s in dense),
                            num_catalogue_items(model))

    @property
    def row_widths(self) -> list[int]:
        return [math.prod(shape) for shape in self.row_shapes]

    @property
    def dense_sizes(self) -> list[int]:
        return [math.prod(shape) for shape in self.dense_shapes]

    @property
    def row_width(self) -> int:
        """W: values per uploaded row, all row tables together."""
        return sum(self.row_widths)

    @property
    def dense_width(self) -> int:
        """D: values of one client's dense tensors together."""
        return sum(self.dense_sizes)


@dataclass(frozen=True)
class EncodedUpload:
    """A cohort's compressed uploads: exactly the arrays that travel, in two sections.

    Rows: client ``c`` sends ``client_rows[c]`` rows (their items and example counts, clients in
    order); their values are all of each sent row's W values, or with top-k ``row_values[r]`` values
    of row ``r`` at columns ``value_column``. Dense: every client's D values, or with top-k
    ``client_dense_values[c]`` of them at ``dense_index``. Cutting the arrays at the per-client
    counts gives each client's own message. Positions and counts use the smallest unsigned type
    that holds W (or D): uint8 up to 255, uint16 up to 65,535, else int32.
    """

    client_sizes: np.ndarray  # (C,) float32 examples per client
    client_rows: np.ndarray  # (C,) int32 rows each client sends
    row_items: np.ndarray  # (R,) int32
    row_counts: np.ndarray  # (R,) float32 examples that touched the row
    values: np.ndarray  # (K,) row values: float32, or int8 with bits = 8
    dense_values: np.ndarray  # (K_d,) dense values, same dtype
    scales: np.ndarray | None = None  # (groups,) float32 with bits = 8
    row_values: np.ndarray | None = None  # (R,) values sent of each row, with top-k
    value_column: np.ndarray | None = None  # (K,) column of each value in its row, with top-k
    client_dense_values: np.ndarray | None = None  # (C,) dense values per client, with top-k
    dense_index: np.ndarray | None = None  # (K_d,) position in the client's D dense values, with top-k

    def arrays(self) -> dict[str, np.ndarray]:
        """The arrays that travel, by name (absent ones left out)."""
        return {f.name: getattr(self, f.name) for f in fields(self) if getattr(self, f.name) is not None}

    @property
    def nbytes(self) -> int:
        """Bytes of the payload: the sum of its arrays' sizes."""
        return sum(array.nbytes for array in self.arrays().values())

    def to_bytes(self) -> bytes:
        """The payload as raw bytes (arrays back to back, in field order)."""
        return b"".join(np.ascontiguousarray(array).tobytes() for array in self.arrays().values())

    @staticmethod
    def from_arrays(arrays: dict[str, np.ndarray]) -> EncodedUpload:
        names = {f.name for f in fields(EncodedUpload)}
        unknown = set(arrays) - names
        if unknown:
            raise ValueError(f"unknown arrays in a compressed upload: {sorted(unknown)}")
        return EncodedUpload(**arrays)


def index_dtype(limit: int) -> np.dtype:
    """The smallest unsigned type holding 0..limit (int32 past 65,535)."""
    return np.dtype(np.uint8 if limit <= 0xFF else np.uint16 if limit <= 0xFFFF else np.int32)


def kept_count(size: np.ndarray | int, fraction: float) -> np.ndarray:
    """How many of ``size`` coordinates top-k keeps: ceil(fraction * size), at least one of a non-empty upload."""
    size = np.asarray(size, dtype=np.int64)
    k = np.ceil(fraction * size.astype(np.float64) - 1e-9).astype(np.int64)
    return np.minimum(np.maximum(k, (size > 0).astype(np.int64)), size)


def topk_mask(magnitudes: Tensor, owner: Tensor, num_owners: int, fraction: float) -> Tensor:
    """Which entries are among the ``kept_count`` largest of their owner (ties: the earlier entry).

    ``magnitudes`` (N,) float32 >= 0 and ``owner`` (N,) int64 in [0, num_owners); one stable sort.
    """
    if magnitudes.numel() == 0:
        return torch.zeros(0, dtype=torch.bool)
    bits = magnitudes.contiguous().view(torch.int32).to(torch.int64)  # order-preserving for floats >= 0
    key = (owner << 31) | (0x7FFFFFFF - bits)  # by owner, then largest magnitude first
    order = torch.sort(key, stable=True).indices
    sizes = torch.bincount(owner, minlength=num_owners)
    first = torch.cumsum(sizes, 0) - sizes
    sorted_owner = owner[order]
    rank = torch.arange(len(order)) - first[sorted_owner]
    keep_count = torch.from_numpy(kept_count(sizes.numpy(), fraction))
    mask = torch.zeros(len(order), dtype=torch.bool)
    mask[order] = rank < keep_count[sorted_owner]
    return mask


def quantize(values: Tensor, group: Tensor, num_groups: int, rounding: Rounding,
             uniform: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """int8 codes and float32 scales (max |v| / 127 per group) of ``values`` (N,) float32.

    Stochastic rounding takes ``uniform`` (N,) draws in [0, 1): floor(v / s + u), unbiased.
    """
    magnitude = values.abs()
    scales = torch.zeros(num_groups, dtype=torch.float32).scatter_reduce(0, group, magnitude, "amax") / QMAX
    scale = scales[group]
    ratio = values / torch.where(scale > 0, scale, torch.ones_like(scale))
    if rounding == "stochastic":
        if uniform is None:
            raise ValueError("stochastic rounding needs uniform draws")
        codes = torch.floor(ratio + uniform)
    else:
        codes = torch.round(ratio)
    return codes.clamp_(-QMAX, QMAX).to(torch.int8), scales


def dequantize(codes: Tensor, scales: Tensor, group: Tensor) -> Tensor:
    """Values of int8 codes: code x scale of its group."""
    return codes.to(torch.float32) * scales[group]


# -- layouts ------------------------------------------------------------------------------------


def _repeat_index(counts: Tensor) -> Tensor:
    """``k`` repeated ``counts[k]`` times (numpy's repeat: torch's tensor-count repeat_interleave is slow on CPU)."""
    return torch.from_numpy(np.repeat(np.arange(len(counts), dtype=np.int64), counts.numpy()))


def _column_tables(widths: list[int]) -> Tensor:
    """Table index of each column of a row laid out as tables side by side."""
    return _repeat_index(torch.tensor(widths, dtype=torch.int64))


@dataclass(frozen=True)
class _Coordinates:
    """Where each sent value sits: row section (sent row, column) and dense section (client, column)."""

    row: Tensor  # (K,) index among the sent rows
    column: Tensor  # (K,) column in the row's W values
    client: Tensor  # (K_d,) cohort position
    dense_column: Tensor  # (K_d,) column in the client's D values


def _scale_groups(layout: UploadLayout, at: _Coordinates, row_client: Tensor, num_clients: int,
                  scale: ScaleGroup) -> tuple[Tensor, Tensor, int]:
    """Quantisation group of each sent row value and dense value, and the number of groups.

    ``row``: one scale per sent row of each row table wider than one value; one-value tables (biases)
    and dense tensors get one scale per client and table. ``tensor``: one per client and table.
    """
    rows = len(row_client)
    per_row = [scale == "row" and width > 1 for width in layout.row_widths]
    row_rank = torch.tensor(np.cumsum(per_row) - 1, dtype=torch.int64)  # index among the per-row tables
    client_tables = [not flag for flag in per_row] + [True] * len(layout.dense_names)
    client_rank = torch.tensor(np.cumsum(client_tables) - 1, dtype=torch.int64)  # index among per-client tables
    num_per_row, num_per_client = sum(per_row), sum(client_tables)
    table = _column_tables(layout.row_widths)[at.column]
    row_groups = torch.where(torch.tensor(per_row, dtype=torch.bool)[table], at.row * num_per_row + row_rank[table],
                             rows * num_per_row + row_client[at.row] * num_per_client + client_rank[table])
    dense_table = _column_tables(layout.dense_sizes)[at.dense_column] + len(layout.row_names)
    dense_groups = rows * num_per_row + at.client * num_per_client + client_rank[dense_table]
    return row_groups, dense_groups, rows * num_per_row + num_clients * num_per_client


def flatten_rows(update: CohortUpdate, layout: UploadLayout) -> tuple[Tensor, Tensor]:
    """The update's row deltas (R, W) and dense deltas (C, D) as flat float32 blocks."""
    rows = int(update.row_items.shape[0])
    clients = update.num_clients
    row_block = torch.cat([update.row_deltas[n].reshape(rows, w) for n, w in zip(layout.row_names, layout.row_widths)]
                          + [torch.zeros(rows, 0)], 1)
    dense_block = torch.cat([update.dense_deltas[n].reshape(clients, w)
                             for n, w in zip(layout.dense_names, layout.dense_sizes)] + [torch.zeros(clients, 0)], 1)
    return row_block.to(torch.float32), dense_block.to(torch.float32)


def _split(block: Tensor, names: tuple[str, ...], widths: list[int],
           shapes: tuple[tuple[int, ...], ...]) -> dict[str, Tensor]:
    parts = torch.split(block, widths, dim=1) if names else []
    return {name: part.reshape(block.shape[0], *shape) for name, part, shape in zip(names, parts, shapes)}


def _sorted_by_client_and_item(update: CohortUpdate, num_items: int) -> CohortUpdate:
    """The update with rows ordered by (cohort position, item), as the vectorised backend lays them out."""
    key = update.row_clients * num_items + update.row_items
    if len(key) < 2 or bool((key[1:] > key[:-1]).all()):
        return update
    order = torch.argsort(key, stable=True)
    return CohortUpdate(update.row_items[order], update.row_clients[order], update.row_counts[order],
                        {n: v[order] for n, v in update.row_deltas.items()}, update.dense_deltas, update.client_sizes)


# -- residuals (error feedback) -----------------------------------------------------------------


def empty_residuals(layout: UploadLayout) -> dict[str, Tensor]:
    """No residual yet: sorted (client, item) keys with (M, W) rows, sorted clients with (M, D) dense rows."""
    return {ROW_KEYS: torch.zeros(0, dtype=torch.int64), ROW_VALUES: torch.zeros(0, layout.row_width),
            DENSE_CLIENTS: torch.zeros(0, dtype=torch.int64), DENSE_VALUES: torch.zeros(0, layout.dense_width)}


def _lookup(keys: Tensor, values: Tensor, wanted: Tensor) -> tuple[Tensor, Tensor]:
    """Rows of ``values`` at sorted ``keys`` equal to ``wanted`` (zeros where absent), and the hit mask."""
    out = torch.zeros(len(wanted), values.shape[1])
    if len(keys) == 0 or len(wanted) == 0:
        return out, torch.zeros(len(wanted), dtype=torch.bool)
    position = torch.searchsorted(keys, wanted).clamp_(max=len(keys) - 1)
    hit = keys[position] == wanted
    out[hit] = values[position[hit]]
    return out, hit


def _replace(keys: Tensor, values: Tensor, new_keys: Tensor, new_values: Tensor) -> tuple[Tensor, Tensor]:
    """The store with the entries of (sorted) ``new_keys`` replaced by ``new_values``, all-zero rows dropped."""
    keep_old = ~_lookup(new_keys, torch.zeros(len(new_keys), 0), keys)[1]
    nonzero = (new_values != 0).any(1)
    merged_keys = torch.cat([keys[keep_old], new_keys[nonzero]])
    merged_values = torch.cat([values[keep_old], new_values[nonzero]])
    order = torch.argsort(merged_keys, stable=True)
    return merged_keys[order], merged_values[order]


def residuals_of(client_state: dict[str, Tensor], layout: UploadLayout) -> dict[str, Tensor]:
    """The error-feedback entries of a clients' state (empty ones when there are none yet)."""
    empty = empty_residuals(layout)
    return {name: client_state.get(name, value) for name, value in empty.items()}


# -- encode / decode ----------------------------------------------------------------------------


@dataclass(frozen=True)
class CompressedUpload:
    """What compressing a cohort's uploads gives: the payload and the clients' next residuals."""

    encoded: EncodedUpload
    residuals: dict[str, Tensor]


def encode_upload(update: CohortUpdate, clients: np.ndarray, layout: UploadLayout, settings: Compression,
                  residuals: dict[str, Tensor], seed: int, round_index: int) -> CompressedUpload:
    """Compress the uploads of ``clients`` (global ids, ascending, one per cohort position).

    ``residuals`` are these clients' error-feedback state (others' entries pass through untouched).
    """
    if len(clients) != update.num_clients or bool(np.any(np.diff(clients) <= 0)):
        raise ValueError(f"need {update.num_clients} ascending client ids, got {len(clients)}")
    update = _sorted_by_client_and_item(update, layout.num_items)
    client_ids = torch.as_tensor(np.asarray(clients, dtype=np.int64))
    row_block, dense_block = flatten_rows(update, layout)
    row_keys = client_ids[update.row_clients] * layout.num_items + update.row_items
    if settings.error_feedback:
        residuals = residuals_of(residuals, layout)
        row_block = row_block + _lookup(residuals[ROW_KEYS], residuals[ROW_VALUES], row_keys)[0]
        dense_block = dense_block + _lookup(residuals[DENSE_CLIENTS], residuals[DENSE_VALUES], client_ids)[0]
    num_clients, width = update.num_clients, layout.row_width

    if settings.topk is not None:
        owner = torch.cat([_repeat_index(torch.bincount(update.row_clients, minlength=num_clients) * width),
                           _repeat_index(torch.full((num_clients,), layout.dense_width, dtype=torch.int64))])
        keep = topk_mask(torch.cat([row_block.reshape(-1), dense_block.reshape(-1)]).abs(), owner, num_clients,
                         settings.topk)
        keep_rows = keep[:row_block.numel()].reshape(row_block.shape)
        keep_dense = keep[row_block.numel():].reshape(dense_block.shape)
        sent = keep_rows.any(1)
        sent_rows = sent.nonzero().reshape(-1)
        row, column = keep_rows[sent_rows].nonzero(as_tuple=True)  # by row, then column
        client, dense_column = keep_dense.nonzero(as_tuple=True)
    else:
        sent = torch.ones(len(row_keys), dtype=torch.bool)
        sent_rows = torch.arange(len(row_keys))
        row = _repeat_index(torch.full((len(row_keys),), width, dtype=torch.int64))
        column = torch.arange(width).repeat(len(row_keys))
        client = _repeat_index(torch.full((num_clients,), layout.dense_width, dtype=torch.int64))
        dense_column = torch.arange(layout.dense_width).repeat(num_clients)
    at = _Coordinates(row, column, client, dense_column)
    row_client = update.row_clients[sent_rows]
    row_items = update.row_items[sent_rows]
    client_rows = torch.bincount(row_client, minlength=num_clients)
    values = row_block[sent_rows[row], column]
    dense_values = dense_block[client, dense_column]

    scales = None
    if settings.bits is not None:
        row_groups, dense_groups, num_groups = _scale_groups(layout, at, row_client, num_clients, settings.scale)
        uniform = None
        if settings.rounding == "stochastic":
            owners = torch.cat([client_ids[row_client[row]], client_ids[client]]).numpy()
            coordinate = torch.cat([row_items[row] * width + column,
                                    layout.num_items * width + dense_column]).numpy()  # the same id in any cohort
            uniform = torch.from_numpy(rng.uniform01(seed, STREAM_ROUNDING, round_index, owners, coordinate)
                                       .astype(np.float32))
        codes, scales = quantize(torch.cat([values, dense_values]), torch.cat([row_groups, dense_groups]), num_groups,
                                 settings.rounding, uniform)
        payload, dense_payload = codes[:len(values)].numpy(), codes[len(values):].numpy()
        received = dequantize(codes, scales, torch.cat([row_groups, dense_groups]))
        values, dense_values = received[:len(values)], received[len(values):]
    else:
        payload, dense_payload = values.numpy(), dense_values.numpy()

    topk_arrays: dict[str, np.ndarray] = {}
    if settings.topk is not None:
        row_type, dense_type = index_dtype(width), index_dtype(layout.dense_width)
        topk_arrays = dict(
            row_values=torch.bincount(row, minlength=len(sent_rows)).numpy().astype(row_type),
            value_column=column.numpy().astype(row_type),
            client_dense_values=torch.bincount(client, minlength=num_clients).numpy().astype(dense_type),
            dense_index=dense_column.numpy().astype(dense_type),
        )
    encoded = EncodedUpload(
        client_sizes=update.client_sizes.to(torch.float32).numpy(),
        client_rows=client_rows.to(torch.int32).numpy(),
        row_items=row_items.to(torch.int32).numpy(),
        row_counts=update.row_counts[sent_rows].to(torch.float32).numpy(),
        values=payload,
        dense_values=dense_payload,
        scales=scales.numpy() if scales is not None else None,
        **topk_arrays,
    )
    if settings.error_feedback:
        row_block[sent_rows[row], column] -= values  # what stays behind
        dense_block[client, dense_column] -= dense_values
        keys, kept_values = _replace(residuals[ROW_KEYS], residuals[ROW_VALUES], row_keys, row_block)
        dense_keys, dense_kept = _replace(residuals[DENSE_CLIENTS], residuals[DENSE_VALUES], client_ids, dense_block)
        residuals = {ROW_KEYS: keys, ROW_VALUES: kept_values, DENSE_CLIENTS: dense_keys, DENSE_VALUES: dense_kept}
    return CompressedUpload(encoded, residuals)


def _mismatch(what: str) -> FedrecError:
    return FedrecError(f"a compressed upload {what}; give the nodes and the server the same [compression] settings "
                       "and model")


def decode_upload(encoded: EncodedUpload, layout: UploadLayout, settings: Compression) -> CohortUpdate:
    """The CohortUpdate the server aggregates: what the clients sent, zeros where they sent nothing."""
    client_rows = torch.from_numpy(np.asarray(encoded.client_rows, dtype=np.int64))
    num_clients, width, dense_width = len(client_rows), layout.row_width, layout.dense_width
    row_items = torch.from_numpy(np.asarray(encoded.row_items, dtype=np.int64))
    row_client = _repeat_index(client_rows)
    if len(row_items) != len(row_client) or len(encoded.row_counts) != len(row_items):
        raise _mismatch("has row arrays of different lengths")
    if settings.topk is not None:
        if encoded.row_values is None or encoded.value_column is None or encoded.dense_index is None \
                or encoded.client_dense_values is None:
            raise _mismatch("has no value positions but compression.topk is set")
        if len(encoded.row_values) != len(row_items):
            raise _mismatch("has a different number of value counts than rows")
        row = _repeat_index(torch.from_numpy(np.asarray(encoded.row_values, dtype=np.int64)))
        column = torch.from_numpy(np.asarray(encoded.value_column, dtype=np.int64))
        if len(column) != len(row) or bool((column >= width).any()) or bool((column < 0).any()):
            raise _mismatch("has value positions outside its rows")
        client = _repeat_index(torch.from_numpy(np.asarray(encoded.client_dense_values, dtype=np.int64)))
        dense_column = torch.from_numpy(np.asarray(encoded.dense_index, dtype=np.int64))
        if len(dense_column) != len(client) or bool((dense_column >= dense_width).any()) \
                or bool((dense_column < 0).any()):
            raise _mismatch("has dense positions outside its tensors")
    else:
        row = _repeat_index(torch.full((len(row_items),), width, dtype=torch.int64))
        column = torch.arange(width).repeat(len(row_items))
        client = _repeat_index(torch.full((num_clients,), dense_width, dtype=torch.int64))
        dense_column = torch.arange(dense_width).repeat(num_clients)
    if len(encoded.values) != len(row) or len(encoded.dense_values) != len(client):
        raise _mismatch("has a different number of values than positions")
    values = torch.from_numpy(np.asarray(encoded.values))
    dense_values = torch.from_numpy(np.asarray(encoded.dense_values))
    if settings.bits is not None:
        if encoded.scales is None:
            raise _mismatch("has no scales but compression.bits is set")
        row_groups, dense_groups, num_groups = _scale_groups(layout, _Coordinates(row, column, client, dense_column),
                                                             row_client, num_clients, settings.scale)
        if len(encoded.scales) != num_groups:
            raise _mismatch("has a different number of scales than groups")
        scales = torch.from_numpy(np.asarray(encoded.scales))
        values, dense_values = dequantize(values, scales, row_groups), dequantize(dense_values, scales, dense_groups)
    row_block = torch.zeros(len(row_items), width)
    row_block[row, column] = values.to(torch.float32)
    dense_block = torch.zeros(num_clients, dense_width)
    dense_block[client, dense_column] = dense_values.to(torch.float32)
    return CohortUpdate(
        row_items=row_items,
        row_clients=row_client,
        row_counts=torch.from_numpy(np.asarray(encoded.row_counts, dtype=np.float32)),
        row_deltas=_split(row_block, layout.row_names, layout.row_widths, layout.row_shapes),
        dense_deltas=_split(dense_block, layout.dense_names, layout.dense_sizes, layout.dense_shapes),
        client_sizes=torch.from_numpy(np.asarray(encoded.client_sizes, dtype=np.float32)),
    )


def compress_round(model: RecModel, update: CohortUpdate, clients: np.ndarray, settings: Compression | None,
                   client_state: dict[str, Tensor], seed: int, round_index: int
                   ) -> tuple[CohortUpdate, dict[str, Tensor], int | None]:
    """The simulator's wire: encode every client's upload, decode it as the server would.

    Returns the decoded update, the clients' next state and the payload's bytes (None when
    compression is off: then the update passes through untouched).
    """
    if settings is None or update.num_clients == 0:
        return update, client_state, None
    layout = UploadLayout.of(model)
    compressed = encode_upload(update, clients, layout, settings, client_state, seed, round_index)
    state = {**client_state, **compressed.residuals} if settings.error_feedback else client_state
    return decode_upload(compressed.encoded, layout, settings), state, compressed.encoded.nbytes


def senders(cohort: np.ndarray, sizes: np.ndarray, participation: Participation | None, epochs: int, seed: int,
            round_index: int) -> np.ndarray:
    """Global ids of the cohort clients whose upload reaches the server (all, unless some drop out or are late)."""
    if participation is None or not participation.active or len(cohort) == 0:
        return cohort
    return cohort[decide_arrivals(cohort, sizes[cohort], participation, epochs, seed, round_index).used]
