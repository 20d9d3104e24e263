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
from fedrec.federated.local import CohortResult, LocalTraining, local_copies
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

    index_of = {
        ParamKind.PRIVATE_ROWS: torch.from_numpy(user_row),  # (M,)
        ParamKind.SHARED_ROWS: torch.from_numpy(item_row),  # (M, S)
        ParamKind.SHARED_DENSE: torch.from_numpy(copy_client),  # (M,)
    }
    targets = torch.from_numpy(data.targets[data_index])
    weights = torch.from_numpy(schedule.weight)  # 1 / size of the client's batch
    specs = model.param_specs()

    loss_sum = 0.0
    bounds = schedule.step_bounds
    for step in range(len(bounds) - 1):
        part = slice(int(bounds[step]), int(bounds[step + 1]))  # the copies trained at this step
        step_index = {kind: index[part] for kind, index in index_of.items()}
        leaves = [tables[spec.name][step_index[spec.kind]].requires_grad_() for spec in specs]
        rows = dict(zip((spec.name for spec in specs), leaves))
        loss = (model.example_loss(rows, ExampleBatch(targets[part])) * weights[part]).sum()
        grads = torch.autograd.grad(loss, leaves)
        with torch.no_grad():
            for spec, grad in zip(specs, grads):
                index = step_index[spec.kind]
                if spec.kind is ParamKind.SHARED_ROWS:
                    index, grad = index.reshape(-1), grad.reshape(-1, *spec.row_shape)
                lr = local.lr_of(spec.kind is ParamKind.PRIVATE_ROWS)
                tables[spec.name].index_add_(0, index, grad, alpha=-lr)
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
