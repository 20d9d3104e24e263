"""Reference backend: runs the cohort's clients one by one, as a device would.

Written for clarity, not speed: each client copies the rows it needs, trains them with
``torch.optim.SGD`` and reports its deltas. The vectorised backend must match it (see tests).
"""

from __future__ import annotations

import numpy as np
import torch

from fedrec.federated.aggregation import CohortUpdate
from fedrec.federated.cohort import ClientData, shuffle_keys, slot_items
from fedrec.federated.local import CohortResult, LocalTraining, local_copies, pad_path, proximal_term, uploaded_rows
from fedrec.models.base import ExampleBatch, ParamKind, RecModel
from torch import Tensor


def train_client(model: RecModel, params: dict[str, Tensor], data: ClientData, client: int,
                 local: LocalTraining, seed: int, round_index: int, record_path: bool = False) -> CohortResult:
    """One client's local training from the current global model; returns its upload (and, with
    ``record_path``, its private rows before every local step)."""
    part = data.client_slice(client)
    example_index = np.arange(part.start, part.stop)
    n = len(example_index)
    users = data.users[example_index]
    targets = torch.from_numpy(data.targets[example_index])
    # The items of each epoch's examples: own item first, then the negatives the client samples.
    epoch_items = [
        slot_items(data, example_index, model.negatives, seed, round_index, np.full(n, client), np.full(n, epoch),
                   np.arange(n))
        for epoch in range(local.epochs)
    ]  # each (n, S)
    own_users, user_row = np.unique(users, return_inverse=True)
    own_items, item_row = np.unique(np.stack(epoch_items), return_inverse=True)
    item_row = item_row.reshape(local.epochs, n, -1)  # (E, n, S)
    start = local_copies(model, params, own_users, own_items, 1)
    trainable = {s.name for s in model.param_specs() if s.trainable}  # constant tables are read, never stepped
    local_params = {name: value.clone().requires_grad_(name in trainable) for name, value in start.items()}
    private = {s.name for s in model.specs_by_kind(ParamKind.PRIVATE_ROWS)}
    optimizer = torch.optim.SGD(
        [{"params": [value], "lr": local.lr_of(name in private)} for name, value in local_params.items()
         if name in trainable], lr=local.lr)
    user_row_t, item_row_t = torch.from_numpy(user_row), torch.from_numpy(item_row)
    shared = model.uploaded_names()

    loss_sum, steps = 0.0, 0
    path: dict[str, list[Tensor]] = {name: [] for name in private} if record_path else {}
    for epoch in range(local.epochs):
        order = np.argsort(shuffle_keys(seed, round_index, np.int64(client), epoch, np.arange(n)), kind="stable")
        for begin in range(0, n, local.batch_size):
            batch = torch.from_numpy(order[begin:begin + local.batch_size])
            for name, snapshots in path.items():
                snapshots.append(local_params[name].detach().clone())
            rows = {}
            for spec in model.param_specs():
                value = local_params[spec.name]
                if spec.kind is ParamKind.PRIVATE_ROWS:
                    rows[spec.name] = value[user_row_t[batch]].unsqueeze(0)  # (1, B, ...)
                elif spec.kind is ParamKind.SHARED_ROWS:
                    rows[spec.name] = value[item_row_t[epoch][batch]].unsqueeze(0)  # (1, B, S, ...)
                else:
                    rows[spec.name] = value  # (1, *shape): the client's one copy
            loss = model.example_loss(rows, ExampleBatch(targets[batch].unsqueeze(0))).mean()
            optimizer.zero_grad()
            loss.backward()
            if local.clip_norm is not None:
                torch.nn.utils.clip_grad_norm_([v for v in local_params.values() if v.requires_grad], local.clip_norm)
            if local.prox_mu:  # FedProx's pull, after clipping
                proximal_term(local_params, start, shared, local.prox_mu).backward()
            optimizer.step()
            loss_sum += float(loss.detach())
            steps += 1

    with torch.no_grad():
        deltas = {name: local_params[name].detach() - start[name] for name in start}
    row_names = [s.name for s in model.uploaded_specs(ParamKind.SHARED_ROWS)]
    sent = uploaded_rows(model, len(own_items))  # no uploaded item table (text tower): no rows, no item indices
    dense_names = [s.name for s in model.uploaded_specs(ParamKind.SHARED_DENSE)]
    private_names = [s.name for s in model.specs_by_kind(ParamKind.PRIVATE_ROWS)]
    update = CohortUpdate(
        row_items=torch.from_numpy(own_items[sent]),
        row_clients=torch.zeros(len(own_items), dtype=torch.int64)[sent],
        row_counts=torch.from_numpy(np.bincount(item_row.reshape(-1), minlength=len(own_items)).astype(np.float32)[sent]),
        row_deltas={name: deltas[name] for name in row_names},
        dense_deltas={name: deltas[name] for name in dense_names},
        client_sizes=torch.tensor([float(n)]),
    )
    private_rows = {name: local_params[name].detach() for name in private_names}
    private_path = {name: torch.stack([*snapshots, private_rows[name].clone()]) for name, snapshots in path.items()}
    return CohortResult(update, torch.from_numpy(own_users), private_rows, loss_sum, steps,
                        private_path if record_path else None)


def train_cohort_reference(model: RecModel, params: dict[str, Tensor], data: ClientData, cohort: np.ndarray,
                           local: LocalTraining, seed: int, round_index: int, record_path: bool = False) -> CohortResult:
    """Every client of the cohort in turn, each from the same global model."""
    results = [train_client(model, params, data, int(c), local, seed, round_index, record_path) for c in cohort]
    path = None
    if record_path and results:  # every client's path padded to the longest one (a finished client's rows stay as they are)
        length = max(len(next(iter(r.private_path.values()))) for r in results)
        path = {name: torch.cat([pad_path(r.private_path[name], length) for r in results], dim=1)
                for name in results[0].private_rows}
    return CohortResult(
        update=CohortUpdate.concat([r.update for r in results]),
        users=torch.cat([r.users for r in results]),
        private_rows={n: torch.cat([r.private_rows[n] for r in results]) for n in results[0].private_rows},
        loss_sum=sum(r.loss_sum for r in results),
        steps=sum(r.steps for r in results),
        private_path=path,
    )
