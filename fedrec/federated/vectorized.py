"""Vectorised backend: a whole cohort's local training as batched tensor operations.

No Python loop over clients. The cohort's examples form one ragged batch; every (client, item)
pair a client touches gets its own local copy of the item's rows; dense tensors get one copy per
client, shape (C, ...). Local step ``s`` of every client runs at once: gather the rows the step's
examples need, compute each client's batch-mean loss, and scatter the SGD update back with
``index_add_``. The loop is over step numbers (the largest client's count), and the work is
proportional to the cohort's examples. It computes exactly what :mod:`fedrec.federated.reference`
computes client by client (the equivalence test guards this).
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from fedrec.federated.aggregation import CohortUpdate
from fedrec.federated.cohort import ClientData, cohort_examples, local_schedule
from fedrec.federated.local import CohortResult, LocalTraining
from fedrec.models.base import ExampleBatch, ParamKind, RecModel


def train_cohort_vectorized(model: RecModel, params: dict[str, Tensor], data: ClientData, cohort: np.ndarray,
                            local: LocalTraining, seed: int, round_index: int) -> CohortResult:
    """Local training of every client in ``cohort`` (sorted client indices) in lockstep."""
    num_items = max(spec.shape[0] for spec in model.specs_by_kind(ParamKind.SHARED_ROWS))
    examples = cohort_examples(data, cohort)
    users = data.users[examples.example_index]
    items = data.items[examples.example_index]
    targets = torch.from_numpy(data.targets[examples.example_index])

    own_users, user_row = np.unique(users, return_inverse=True)
    row_keys, item_row = np.unique(examples.cohort_position * num_items + items, return_inverse=True)
    row_items, row_clients = row_keys % num_items, row_keys // num_items
    num_clients = len(cohort)

    start: dict[str, Tensor] = {}
    for spec in model.param_specs():
        if spec.kind is ParamKind.PRIVATE_ROWS:
            start[spec.name] = params[spec.name][torch.from_numpy(own_users)]
        elif spec.kind is ParamKind.SHARED_ROWS:
            start[spec.name] = params[spec.name][torch.from_numpy(row_items)]
        else:
            start[spec.name] = params[spec.name].unsqueeze(0).expand(num_clients, *spec.shape)
    tables = {name: value.clone() for name, value in start.items()}

    schedule = local_schedule(examples, cohort, local.epochs, local.batch_size, seed, round_index)
    user_row_t = torch.from_numpy(user_row)
    item_row_t = torch.from_numpy(item_row)
    client_t = torch.from_numpy(examples.cohort_position)
    example_t = torch.from_numpy(schedule.example)
    weight_t = torch.from_numpy(schedule.weight)
    index_of = {
        ParamKind.PRIVATE_ROWS: user_row_t,
        ParamKind.SHARED_ROWS: item_row_t,
        ParamKind.SHARED_DENSE: client_t,
    }
    specs = model.param_specs()

    loss_sum = 0.0
    bounds = schedule.step_bounds
    for step in range(len(bounds) - 1):
        chosen = example_t[bounds[step]:bounds[step + 1]]  # (B,) examples trained at this step
        step_index = {kind: index[chosen] for kind, index in index_of.items()}
        leaves = [tables[spec.name][step_index[spec.kind]].requires_grad_() for spec in specs]
        rows = {
            spec.name: leaf.unsqueeze(1) if spec.kind is ParamKind.SHARED_ROWS else leaf
            for spec, leaf in zip(specs, leaves)
        }
        weights = weight_t[bounds[step]:bounds[step + 1]]  # 1 / client's batch size
        loss = (model.example_loss(rows, ExampleBatch(targets[chosen])) * weights).sum()
        grads = torch.autograd.grad(loss, leaves)
        with torch.no_grad():
            for spec, grad in zip(specs, grads):
                tables[spec.name].index_add_(0, step_index[spec.kind], grad, alpha=-local.lr)
        loss_sum += float(loss.detach())

    deltas = {name: tables[name] - start[name] for name in tables}
    update = CohortUpdate(
        row_items=torch.from_numpy(row_items),
        row_clients=torch.from_numpy(row_clients),
        row_counts=torch.from_numpy(np.bincount(item_row, minlength=len(row_keys)).astype(np.float32)),
        row_deltas={s.name: deltas[s.name] for s in model.specs_by_kind(ParamKind.SHARED_ROWS)},
        dense_deltas={s.name: deltas[s.name] for s in model.specs_by_kind(ParamKind.SHARED_DENSE)},
        client_sizes=torch.from_numpy(examples.client_sizes.astype(np.float32)),
    )
    private_rows = {s.name: tables[s.name] for s in model.specs_by_kind(ParamKind.PRIVATE_ROWS)}
    steps = int(np.sum(-(-examples.client_sizes // local.batch_size))) * local.epochs
    return CohortResult(update, torch.from_numpy(own_users), private_rows, loss_sum, steps)
