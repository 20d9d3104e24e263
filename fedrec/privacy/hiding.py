"""Hiding which items a client touched: transforms of a cohort's upload before the server sees it.

A sparse upload (:class:`~fedrec.federated.aggregation.CohortUpdate`) names every item row a client
trained, so the server learns each client's item set. Two transforms, both pure functions of the
upload and counter-based seeds, change what the server sees:

- **dense upload** (:func:`dense_upload`): every client sends a row for *every* item, zeros where
  it touched nothing. Aggregation gives the same result as the sparse upload (tested). On its own
  it hides nothing -- an untouched row is exactly zero -- it is the fixed-shape vector that secure
  aggregation and dense DP noise need.
- **pseudo-items** (:func:`add_pseudo_items`; FedRec, Lin et al. 2020; FedGNN, Wu et al. 2021):
  each client adds rows for ``n`` randomly chosen items it did not touch, with fake deltas, in one
  of two ways (``pseudo_values``):

  * ``virtual`` (the default, FedRec): the SGD step the client would take on a *virtual example*,
    its pseudo-item with a virtual rating whose error matches the client's error on one of its own
    examples (:func:`virtual_example_values`). A real row of a one-step client has exactly
    this form, so even a server that knows the model cannot tell them apart by shape.
  * ``bootstrap`` (model-agnostic): coordinate ``k`` of a fake row of table ``t`` is coordinate
    ``k`` of a uniformly chosen real row of ``t`` (drawn independently per coordinate), its count
    the count of a uniformly chosen real row: every coordinate has exactly the empirical
    distribution of that coordinate over the client's real rows. The audit shows that a
    model-aware server still separates these fakes (real MF item deltas all point along the user
    vector; bootstrap rows do not).

  The fakes do enter the aggregate: that is the accuracy cost.

The item choice of client ``c`` is seeded by ``(seed, STREAM_PSEUDO_ITEMS, round, c)`` (or round 0
for every round when ``per_round`` is off: one fixed set per client, so intersecting rounds does not
expose the real items), the fake values by ``(seed, STREAM_PSEUDO_VALUES, round, c)``.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
from torch import Tensor

from fedrec.errors import FedrecError
from fedrec.federated import rng
from fedrec.federated.aggregation import CohortUpdate, RowWeighting, keep_clients
from fedrec.federated.cohort import ClientData
from fedrec.federated.local import CohortResult, LocalTraining
from fedrec.federated.server import INDEX_BYTES, upload_bytes
from fedrec.privacy.hiding_settings import HIDING_MODES, HidingMode, HidingSettings  # noqa: F401 (re-exported)
from fedrec.models.base import ExampleBatch, ParamKind, RecModel

# Stream identifiers of the draws made here (kept clear of the ones in fedrec/federated/rng.py).
STREAM_PSEUDO_ITEMS = 101
STREAM_PSEUDO_VALUES = 102
STREAM_PSEUDO_TARGETS = 104

ROW_BUDGET = 1 << 16  # rows per chunk of clients when hiding (bounds the memory of dense and pseudo uploads)

def select_clients(update: CohortUpdate, positions: np.ndarray) -> CohortUpdate:
    """The upload of the clients at these (sorted, distinct) cohort positions, renumbered 0..len(positions)-1."""
    positions = np.asarray(positions, dtype=np.int64)
    if np.any(np.diff(positions) <= 0):
        raise ValueError("select_clients needs sorted, distinct cohort positions")
    keep = torch.zeros(update.num_clients, dtype=torch.bool)
    keep[torch.from_numpy(positions)] = True
    return keep_clients(update, keep)


def client_chunks(update: CohortUpdate, num_items: int, hiding: HidingSettings) -> list[np.ndarray]:
    """Cohort positions in chunks small enough that a chunk's hidden upload stays near ROW_BUDGET rows."""
    real = max(1, int(update.row_items.shape[0]) // max(update.num_clients, 1))
    per_client = num_items if hiding.mode != "none" else real
    size = max(1, ROW_BUDGET // per_client)
    return [np.arange(lo, min(lo + size, update.num_clients)) for lo in range(0, update.num_clients, size)]


def _client_major(update: CohortUpdate, order: Tensor, items: Tensor, clients: Tensor, counts: Tensor,
                  deltas: dict[str, Tensor]) -> CohortUpdate:
    """An update from rows given in any order, reordered by ``order``."""
    return CohortUpdate(row_items=items[order], row_clients=clients[order], row_counts=counts[order],
                        row_deltas={name: value[order] for name, value in deltas.items()},
                        dense_deltas=update.dense_deltas, client_sizes=update.client_sizes)


def dense_upload(update: CohortUpdate, num_items: int, weighting: RowWeighting) -> tuple[CohortUpdate, RowWeighting]:
    """Every client sends one row per item (zero delta where it trained nothing), client-major.

    Returns the dense upload and the weighting that aggregates it exactly like ``weighting``
    aggregates the sparse one: a zero row must carry zero weight, so under ``client_size`` the
    rows carry their client's size as their count and are aggregated with ``row_count``.
    """
    num_clients = update.num_clients
    counts = update.row_counts
    if weighting == "client_size":
        counts, weighting = update.client_sizes[update.row_clients], "row_count"
    position = update.row_clients * num_items + update.row_items
    dense_counts = torch.zeros(num_clients * num_items, dtype=counts.dtype).index_copy_(0, position, counts)
    deltas = {}
    for name, value in update.row_deltas.items():
        full = torch.zeros(num_clients * num_items, *value.shape[1:], dtype=value.dtype)
        deltas[name] = full.index_copy_(0, position, value)
    dense = CohortUpdate(
        row_items=torch.arange(num_items).repeat(num_clients),
        row_clients=torch.arange(num_clients).repeat_interleave(num_items),
        row_counts=dense_counts,
        row_deltas=deltas,
        dense_deltas=update.dense_deltas,
        client_sizes=update.client_sizes,
    )
    return dense, weighting


FakeValues = Callable[[np.ndarray, np.ndarray], tuple[dict[str, Tensor], Tensor]]


def add_pseudo_items(update: CohortUpdate, num_items: int, settings: HidingSettings, seed: int, round_index: int,
                     clients: np.ndarray, fake_values: FakeValues | None = None) -> CohortUpdate:
    """The upload with each client's fake rows added (rows sorted by client, then item).

    ``clients`` are the cohort's client indices (position ``k`` of the upload is client
    ``clients[k]``); they key the draws, so a client's fakes do not depend on who else takes part.
    ``fake_values(positions, items)`` gives the fake rows' deltas and counts (e.g.
    :func:`virtual_example_values`); without it they are the per-coordinate bootstrap.
    """
    clients = np.asarray(clients, dtype=np.int64)
    row_clients = update.row_clients.numpy()
    order = np.argsort(row_clients, kind="stable")
    real = np.bincount(row_clients, minlength=update.num_clients)
    starts = np.r_[0, np.cumsum(real)]
    fake_count = settings.pseudo_count(real, num_items)
    item_round = round_index if settings.per_round else 0
    fake_items, fake_clients, fake_source_count, fake_sources = [], [], [], {n: [] for n in update.row_deltas}
    for position in np.flatnonzero((fake_count > 0) & (real > 0)):
        rows = torch.from_numpy(order[starts[position]:starts[position + 1]])  # this client's real rows
        n, k = int(fake_count[position]), len(rows)
        touched = torch.zeros(num_items, dtype=torch.bool)
        touched[update.row_items[rows]] = True
        untouched = torch.nonzero(~touched).reshape(-1)
        item_gen = torch.Generator().manual_seed(
            int(rng.hash64(seed, STREAM_PSEUDO_ITEMS, item_round, clients[position])) & ((1 << 63) - 1))
        fake_items.append(untouched[torch.randperm(len(untouched), generator=item_gen)[:n]])
        fake_clients.append(torch.full((n,), int(position), dtype=torch.int64))
        if fake_values is not None:
            continue
        value_gen = torch.Generator().manual_seed(
            int(rng.hash64(seed, STREAM_PSEUDO_VALUES, round_index, clients[position])) & ((1 << 63) - 1))
        fake_source_count.append(update.row_counts[rows[torch.randint(k, (n,), generator=value_gen)]])
        for name, value in update.row_deltas.items():
            width = int(np.prod(value.shape[1:]))
            source = rows[torch.randint(k, (n, width), generator=value_gen)]  # (n, width): a real row per coordinate
            flat = value.reshape(len(value), width)
            fake_sources[name].append(flat[source, torch.arange(width)].reshape(n, *value.shape[1:]))
    if not fake_items:
        return update
    if fake_values is not None:
        fake_deltas, fake_counts = fake_values(torch.cat(fake_clients).numpy(), torch.cat(fake_items).numpy())
        fake_sources = {name: [fake_deltas[name]] for name in update.row_deltas}
        fake_source_count = [fake_counts]
    items = torch.cat([update.row_items, *fake_items])
    owners = torch.cat([update.row_clients, *fake_clients])
    counts = torch.cat([update.row_counts, *fake_source_count])
    deltas = {name: torch.cat([value, *fake_sources[name]]) for name, value in update.row_deltas.items()}
    by_client_item = torch.from_numpy(np.lexsort((items.numpy(), owners.numpy())))
    return _client_major(update, by_client_item, items, owners, counts, deltas)


def virtual_example_values(model: RecModel, params: dict[str, Tensor], data: ClientData, clients: np.ndarray,
                           local: LocalTraining, seed: int, round_index: int,
                           trained: CohortResult | None = None) -> FakeValues:
    """FedRec-style fake rows: the SGD step each client takes on a virtual example.

    The example pairs the client's user with the pseudo-item and a virtual rating chosen so that the
    client's error on it equals its error on one of its own training examples, drawn uniformly
    (FedRec fills in predicted ratings; matching the error distribution keeps the fake rows' norms
    like the real ones'); its deltas are one SGD step, ``-lr / B * gradient`` of
    the model's loss, B the length of the client's batch at that step (its last batch of an epoch may
    be short), rounded as a real row is ((q + step) - q in float32). A real row is trained at some
    local step k of S with the private rows as they were before that step: the fake uses the
    client's private rows before step k of a uniformly drawn example copy of its own (so fakes
    spread over steps as real rows do), read from ``trained.private_path`` (local training run with
    ``record_path=True``; omitted: the round's start, exact for one-step clients). An earlier version interpolated linearly
    between the start and the end of local training; the audit's direction scorer told those fakes
    apart (they fit the client's mean user vector better than real rows, which follow the curved SGD
    path), so the path is now recorded. Draws are seeded by (seed, round, client, item).
    ``clients`` maps cohort positions to client indices. For rating models (no sampled negatives) only.
    """
    if model.negatives:
        raise FedrecError("pseudo-item values 'virtual' need a rating model (no sampled negatives); "
                          "use pseudo_values='bootstrap'")
    clients = np.asarray(clients, dtype=np.int64)
    sizes = data.sizes
    if trained is not None:
        if trained.private_path is None:
            raise ValueError("virtual pseudo-item values need local training run with record_path=True")
        row_of_user = torch.full((int(trained.users.max()) + 1,), -1, dtype=torch.int64)  # user -> row of the path
        row_of_user[trained.users] = torch.arange(len(trained.users))

    def values(positions: np.ndarray, items: np.ndarray) -> tuple[dict[str, Tensor], Tensor]:
        owner = clients[positions]
        pick = np.floor(rng.uniform01(seed, STREAM_PSEUDO_TARGETS, round_index, owner, items, 0) * sizes[owner])
        example = data.offsets[owner] + pick.astype(np.int64)
        users, targets = torch.from_numpy(data.users[example]), torch.from_numpy(data.targets[example])
        # the step of a uniformly drawn example copy (epoch, position in the epoch's shuffle), so fakes fall
        # on steps as real rows do: a short last batch holds few of them
        per_epoch = -(-sizes[owner] // local.batch_size)
        copy = np.floor(rng.uniform01(seed, STREAM_PSEUDO_TARGETS, round_index, owner, items, 1)
                        * (local.epochs * sizes[owner])).astype(np.int64)
        step = (copy // sizes[owner]) * per_epoch + (copy % sizes[owner]) // local.batch_size
        item_index = torch.from_numpy(items)
        private = {}
        for spec in model.specs_by_kind(ParamKind.PRIVATE_ROWS):
            private[spec.name] = (trained.private_path[spec.name][torch.from_numpy(step), row_of_user[users]]
                                  if trained is not None else params[spec.name][users]).unsqueeze(0)

        def rows_for(item_rows: Callable[[str], Tensor]) -> dict[str, Tensor]:
            rows = dict(private)
            for spec in model.param_specs():
                if spec.kind is ParamKind.SHARED_ROWS:
                    rows[spec.name] = item_rows(spec.name).unsqueeze(0).unsqueeze(2)  # (1, F, 1, ...)
                elif spec.kind is ParamKind.SHARED_DENSE:
                    rows[spec.name] = params[spec.name].unsqueeze(0)
            return rows

        real_items = torch.from_numpy(data.items[example])
        with torch.no_grad():  # the error the client makes on the real example drawn above
            real_error = model.predict(rows_for(lambda name: params[name][real_items]))[0, :, 0] - targets
        leaves = {spec.name: params[spec.name][item_index].detach().clone().requires_grad_(spec.trainable)
                  for spec in model.specs_by_kind(ParamKind.SHARED_ROWS)}
        uploaded = [spec.name for spec in model.uploaded_specs(ParamKind.SHARED_ROWS)]
        rows = rows_for(lambda name: leaves[name])
        with torch.no_grad():  # virtual rating: the fake item's prediction minus that error
            virtual = model.predict(rows)[0, :, 0] - real_error
        # the length of the batch at that step (a client's last batch of an epoch may be short), as a real row has
        batch_len = np.minimum(local.batch_size, sizes[owner] - (step % per_epoch) * local.batch_size)
        batch = torch.from_numpy(batch_len.astype(np.float32))
        loss = (model.example_loss(rows, ExampleBatch(virtual.unsqueeze(0)))[0] / batch).sum()
        grads = torch.autograd.grad(loss, [leaves[name] for name in uploaded])
        deltas = {name: leaves[name].detach().add(grad, alpha=-local.lr) - leaves[name].detach()
                  for name, grad in zip(uploaded, grads)}
        return deltas, torch.full((len(items),), float(local.epochs))

    return values


def apply_hiding(update: CohortUpdate, num_items: int, settings: HidingSettings, weighting: RowWeighting, seed: int,
                 round_index: int, clients: np.ndarray, fake_values: FakeValues | None = None
                 ) -> tuple[CohortUpdate, RowWeighting]:
    """What the server receives under ``settings``, and the weighting that aggregates it.

    ``fake_values`` is required when ``settings.pseudo_values == "virtual"`` (see :func:`virtual_example_values`).
    """
    if settings.mode == "dense":
        return dense_upload(update, num_items, weighting)
    if settings.mode == "pseudo":
        if settings.pseudo_values == "virtual" and fake_values is None:
            raise ValueError("pseudo_values='virtual' needs fake_values=virtual_example_values(...)")
        values = fake_values if settings.pseudo_values == "virtual" else None
        return add_pseudo_items(update, num_items, settings, seed, round_index, clients, values), weighting
    return update, weighting


def hidden_upload_bytes(model: RecModel, update: CohortUpdate, mode: HidingMode) -> int:
    """Bytes of an upload as sent under ``mode``: a dense upload needs no row indices."""
    if mode == "dense":
        return upload_bytes(model, update) - INDEX_BYTES * int(update.row_items.shape[0])
    return upload_bytes(model, update)

