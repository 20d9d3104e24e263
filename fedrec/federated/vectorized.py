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
from fedrec.federated.local import CohortResult, LocalTraining, local_copies, proximal_step
from fedrec.models.base import ExampleBatch, ParamKind, RecModel


def train_cohort_vectorized(model: RecModel, params: dict[str, Tensor], data: ClientData, cohort: np.ndarray,
                            local: LocalTraining, seed: int, round_index: int) -> CohortResult:
    """Local training of every client in ``cohort`` (sorted client indices) in lockstep."""
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

    # Within a step, each client's copies are contiguous: lay the step out as (clients, batch),
    # padded, so that every client's dense tensors are used once per step, not copied per example.
    new_group = np.r_[True, (np.diff(copy_client) != 0) | (np.diff(_step_of(schedule.step_bounds)) != 0)]
    group_of_copy = np.cumsum(new_group) - 1  # (M,)
    group_first = np.flatnonzero(new_group)
    slot_of_copy = np.arange(len(copy_client)) - group_first[group_of_copy]  # (M,) position in its group
    group_client = torch.from_numpy(copy_client[group_first])  # (groups,) cohort position of each group
    user_row_t, item_row_t = torch.from_numpy(user_row), torch.from_numpy(item_row)
    targets = torch.from_numpy(data.targets[data_index])
    weights = torch.from_numpy(schedule.weight)  # 1 / size of the client's batch
    specs = model.param_specs()

    loss_sum = 0.0
    bounds = schedule.step_bounds
    for step in range(len(bounds) - 1):
        lo, hi = int(bounds[step]), int(bounds[step + 1])  # the copies trained at this step
        g_lo, g_hi = int(group_of_copy[lo]), int(group_of_copy[hi - 1]) + 1
        group = torch.from_numpy(group_of_copy[lo:hi] - g_lo)
        slot = torch.from_numpy(slot_of_copy[lo:hi])
        shape = (g_hi - g_lo, int(slot.max()) + 1)  # (G, N)
        padded_copy = torch.zeros(shape, dtype=torch.int64)
        padded_copy[group, slot] = torch.arange(lo, hi)
        real = torch.zeros(shape, dtype=torch.bool)
        real[group, slot] = True
        step_index = {
            ParamKind.PRIVATE_ROWS: user_row_t[padded_copy],  # (G, N)
            ParamKind.SHARED_ROWS: item_row_t[padded_copy],  # (G, N, S)
            ParamKind.SHARED_DENSE: group_client[g_lo:g_hi],  # (G,)
        }
        leaves = [tables[spec.name][step_index[spec.kind]].requires_grad_() for spec in specs]
        rows = dict(zip((spec.name for spec in specs), leaves))
        step_weights = torch.where(real, weights[padded_copy], 0.0)  # padding contributes nothing
        loss = (model.example_loss(rows, ExampleBatch(targets[padded_copy])) * step_weights).sum()
        grads = torch.autograd.grad(loss, leaves)
        with torch.no_grad():
            if local.prox_mu:  # FedProx: the stepping clients' shared copies move towards the global model too
                proximal_step(model, tables, start, group_client[g_lo:g_hi], torch.from_numpy(row_clients), local.lr * local.prox_mu)
            for spec, grad in zip(specs, grads):
                index = step_index[spec.kind].reshape(-1)
                lr = local.lr_of(spec.kind is ParamKind.PRIVATE_ROWS)
                tables[spec.name].index_add_(0, index, grad.reshape(-1, *spec.row_shape), alpha=-lr)
        loss_sum += float(loss.detach())

    deltas = {name: tables[name] - start[name] for name in tables}
    update = CohortUpdate(
        row_items=torch.from_numpy(row_items),
        row_clients=torch.from_numpy(row_clients),
        row_counts=torch.from_numpy(np.bincount(item_row.reshape(-1), minlength=len(row_keys)).astype(np.float32)),
        row_deltas={s.name: deltas[s.name] for s in model.specs_by_kind(ParamKind.SHARED_ROWS)},
        dense_deltas={s.name: deltas[s.name] for s in model.specs_by_kind(ParamKind.SHARED_DENSE)},
        client_sizes=torch.from_numpy(examples.client_sizes.astype(np.float32)),
    )
    private_rows = {s.name: tables[s.name] for s in model.specs_by_kind(ParamKind.PRIVATE_ROWS)}
    steps = int(np.sum(-(-examples.client_sizes // local.batch_size))) * local.epochs
    return CohortResult(update, torch.from_numpy(own_users), private_rows, loss_sum, steps)


def _step_of(bounds: np.ndarray) -> np.ndarray:
    """The step number of every copy, from the step boundaries."""
    return np.repeat(np.arange(len(bounds) - 1), np.diff(bounds))
