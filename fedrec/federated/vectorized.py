"""Vectorised backend: a whole cohort's local training as batched tensor operations.

No Python loop over clients. The cohort's examples form one ragged batch; every (client, item)
pair a client touches (its items and the negatives it samples) gets its own local copy of the
item's rows; dense tensors get one copy per client, shape (C, ...). Local step ``s`` of every
client runs at once: gather the rows the step's examples need, compute each client's batch-mean
loss, and scatter the SGD update back with ``index_add_``. The loop is over step numbers (the
largest client's count), and the work is proportional to the cohort's examples. It computes
exactly what :mod:`fedrec.federated.reference` computes client by client (the equivalence test
guards this).
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from fedrec.federated.aggregation import CohortUpdate
from fedrec.federated.cohort import ClientData, cohort_examples, local_schedule, slot_items
from fedrec.federated.local import (CohortResult, LocalTraining, clip_factors, local_copies, proximal_step,
                                   uploaded_rows)
from fedrec.models.base import ExampleBatch, ParamKind, RecModel


def train_cohort_vectorized(model: RecModel, params: dict[str, Tensor], data: ClientData, cohort: np.ndarray,
                            local: LocalTraining, seed: int, round_index: int, record_path: bool = False) -> CohortResult:
    """Local training of every client in ``cohort`` (sorted client indices) in lockstep.

    ``record_path`` also returns the private rows before every local step (``CohortResult.private_path``).
    """
    num_items = max(spec.shape[0] for spec in model.specs_by_kind(ParamKind.SHARED_ROWS))
    examples = cohort_examples(data, cohort)
    schedule = local_schedule(examples, cohort, local.epochs, local.batch_size, seed, round_index)
    # Everything below is per example *copy* (one per epoch), in the order the steps run.
    copy_example = schedule.example  # (M,) index into the cohort's examples
    data_index = examples.example_index[copy_example]  # (M,) index into ClientData
    copy_client = examples.cohort_position[copy_example]  # (M,) cohort position
    items = slot_items(data, data_index, model.negatives, seed, round_index, cohort[copy_client], schedule.epoch,
                       examples.position_in_client[copy_example])  # (M, S)
    num_clients, slots = len(cohort), items.shape[1]

    own_users, user_row = np.unique(data.users[data_index], return_inverse=True)
    row_keys, item_row = np.unique(copy_client[:, None] * num_items + items, return_inverse=True)
    item_row = item_row.reshape(-1, slots)  # (M, S) local row of each slot
    row_items, row_clients = row_keys % num_items, row_keys // num_items

    start = local_copies(model, params, own_users, row_items, num_clients)
    tables = {name: value.clone() for name, value in start.items()}

    # Within a step, each client's copies are contiguous: lay every step out as (clients, batch),
    # padded, so that every client's dense tensors are used once per step, not copied per example.
    # The layout of all steps is built once; a step is a slice of it. Padding points at copy 0 with
    # weight 0, so it contributes nothing (its gradient is zero and adds nothing to copy 0's rows).
    new_group = np.r_[True, (np.diff(copy_client) != 0) | (np.diff(_step_of(schedule.step_bounds)) != 0)]
    group_of_copy = np.cumsum(new_group) - 1  # (M,)
    group_first = np.flatnonzero(new_group)
    slot_of_copy = np.arange(len(copy_client)) - group_first[group_of_copy]  # (M,) position in its group
    width = int(slot_of_copy.max()) + 1 if len(slot_of_copy) else 1
    padded_copy = np.zeros((len(group_first), width), dtype=np.int64)  # (groups, width)
    padded_copy[group_of_copy, slot_of_copy] = np.arange(len(copy_client))
    group_width = np.bincount(group_of_copy)  # (groups,) copies in each group
    layout_index = {
        ParamKind.PRIVATE_ROWS: torch.from_numpy(user_row[padded_copy]),  # (groups, width)
        ParamKind.SHARED_ROWS: torch.from_numpy(item_row[padded_copy]),  # (groups, width, S)
        ParamKind.SHARED_DENSE: torch.from_numpy(copy_client[group_first]),  # (groups,)
    }
    # Weight 1 / size of the client's batch per copy, 0 on padding; the copies' targets.
    layout_weight = torch.zeros(padded_copy.shape, dtype=torch.float32)
    layout_weight[torch.from_numpy(group_of_copy), torch.from_numpy(slot_of_copy)] = torch.from_numpy(
        schedule.weight.astype(np.float32))
    layout_target = torch.from_numpy(data.targets[data_index][padded_copy])
    specs = model.param_specs()
    trained = [spec for spec in specs if spec.trainable]  # constant tables are read, never stepped
    row_lr = {spec.name: local.lr_of(spec.kind is ParamKind.PRIVATE_ROWS) for spec in specs}
    row_clients_t = torch.from_numpy(row_clients)

    loss_sum = 0.0
    bounds = schedule.step_bounds
    private_names = [s.name for s in model.specs_by_kind(ParamKind.PRIVATE_ROWS)]
    path: dict[str, list[Tensor]] = {name: [] for name in private_names} if record_path else {}
    for step in range(len(bounds) - 1):
        for name, snapshots in path.items():  # lock step: global step t is every client's local step t
            snapshots.append(tables[name].clone())
        lo, hi = int(bounds[step]), int(bounds[step + 1])  # the copies trained at this step
        g_lo, g_hi = int(group_of_copy[lo]), int(group_of_copy[hi - 1]) + 1
        n = int(group_width[g_lo:g_hi].max())
        step_index = {
            ParamKind.PRIVATE_ROWS: layout_index[ParamKind.PRIVATE_ROWS][g_lo:g_hi, :n].reshape(-1),  # (G * N,)
            ParamKind.SHARED_ROWS: layout_index[ParamKind.SHARED_ROWS][g_lo:g_hi, :n].reshape(-1),  # (G * N * S,)
            ParamKind.SHARED_DENSE: layout_index[ParamKind.SHARED_DENSE][g_lo:g_hi],  # (G,)
        }
        step_shape = {
            ParamKind.PRIVATE_ROWS: (g_hi - g_lo, n),
            ParamKind.SHARED_ROWS: (g_hi - g_lo, n, slots),
            ParamKind.SHARED_DENSE: (g_hi - g_lo,),
        }
        # index_select on a flat index: several times faster than advanced indexing with (G, N) indices
        rows = {spec.name: tables[spec.name].index_select(0, step_index[spec.kind])
                .view(*step_shape[spec.kind], *spec.row_shape).requires_grad_(spec.trainable) for spec in specs}
        step_weights = layout_weight[g_lo:g_hi, :n]  # padding contributes nothing
        loss = (model.example_loss(rows, ExampleBatch(layout_target[g_lo:g_hi, :n])) * step_weights).sum()
        grads = torch.autograd.grad(loss, [rows[spec.name] for spec in trained])
        if local.clip_norm is not None:  # each client's step gradient to norm <= clip_norm
            factor = clip_factors(list(grads), [spec.kind for spec in trained], step_index, step_weights > 0,
                                  local.clip_norm)
            grads = [grad * factor.view(-1, *[1] * (grad.dim() - 1)) for grad in grads]
        with torch.no_grad():
            if local.prox_mu:  # FedProx: the stepping clients' shared copies move towards the global model too
                proximal_step(model, tables, start, step_index[ParamKind.SHARED_DENSE], row_clients_t, local.lr * local.prox_mu)
            for spec, grad in zip(trained, grads):
                # scaling first and adding without alpha is faster than index_add_(alpha=-lr)
                update = grad.reshape(-1, *spec.row_shape) * -row_lr[spec.name]
                tables[spec.name].index_add_(0, step_index[spec.kind], update)
        loss_sum += float(loss.detach())

    # The shared tables become their deltas in place (no new (R, d) allocation); private rows keep their new values.
    deltas = {name: tables[name].sub_(start[name]) for name in model.uploaded_names()}
    row_counts = np.bincount(item_row.reshape(-1), minlength=len(row_keys)).astype(np.float32)
    sent = uploaded_rows(model, len(row_keys))  # no uploaded item table (text tower): no rows, no item indices
    update = CohortUpdate(
        row_items=torch.from_numpy(row_items[sent]),
        row_clients=torch.from_numpy(row_clients[sent]),
        row_counts=torch.from_numpy(row_counts[sent]),
        row_deltas={s.name: deltas[s.name] for s in model.uploaded_specs(ParamKind.SHARED_ROWS)},
        dense_deltas={s.name: deltas[s.name] for s in model.uploaded_specs(ParamKind.SHARED_DENSE)},
        client_sizes=torch.from_numpy(examples.client_sizes.astype(np.float32)),
    )
    private_rows = {name: tables[name] for name in private_names}
    steps = int(np.sum(-(-examples.client_sizes // local.batch_size))) * local.epochs
    private_path = {name: torch.stack([*snapshots, tables[name].clone()]) for name, snapshots in path.items()}
    return CohortResult(update, torch.from_numpy(own_users), private_rows, loss_sum, steps,
                        private_path if record_path else None)


def _step_of(bounds: np.ndarray) -> np.ndarray:
    """The step number of every copy, from the step boundaries."""
    return np.repeat(np.arange(len(bounds) - 1), np.diff(bounds))
