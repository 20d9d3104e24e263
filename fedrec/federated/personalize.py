"""Personalisation by local fine-tuning: each client adapts the global model to its own data.

After training, every client starts from the global model, runs a few local epochs over its own
training examples (shared parts included) and keeps the result for itself; nothing is uploaded.
It is evaluated with its own copy. The vectorised backend produces every client's copy at once as
a :class:`~fedrec.federated.local.CohortResult`; :func:`personal_rows` reads a user's copy from it.
The seeds' mixing step, theta_i <- theta_g + beta (theta_i - theta_g), interpolates each fine-tuned
copy with the model it started from (``mix_beta``; 1 keeps the fine-tuned copy, 0 the global model).
(The other personalisation, a private score head, is a model setting: see ``NCF(private_head)``.)
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np
import torch
from torch import Tensor

from fedrec.federated.cohort import ClientData
from fedrec.federated.local import CohortResult, LocalTraining
from fedrec.federated.server import write_private_rows
from fedrec.federated.vectorized import train_cohort_vectorized
from fedrec.models.base import ParamKind, RecModel, num_catalogue_items, score_items_in_chunks

FINETUNE_ROUND = 1 << 40  # round counter used for fine-tuning draws (disjoint from training rounds)
REFIT_ROUND = (1 << 40) + 1  # ... and for the final refit of the private rows


@dataclass(frozen=True)
class Personalization:
    """Every client's fine-tuned copy, as deltas from the global model."""

    result: CohortResult
    cohort_position_of_user: np.ndarray  # (num_users,) position of the user's client, -1 if not fine-tuned
    row_keys: np.ndarray  # (R,) sorted keys cohort_position * num_items + item of the fine-tuned rows


def finetune(model: RecModel, params: dict[str, Tensor], data: ClientData, client_of_user: np.ndarray,
             local: LocalTraining, seed: int, mix_beta: float = 1.0) -> Personalization:
    """Fine-tune every client that has training data, starting from the global ``params``, then mix
    each copy with its start by ``mix_beta`` (see :func:`mix_with_start`)."""
    cohort = np.flatnonzero(data.sizes > 0)
    result = train_cohort_vectorized(model, params, data, cohort, local, seed, FINETUNE_ROUND)
    if mix_beta != 1.0:
        result = mix_with_start(result, params, mix_beta)
    position_of_client = np.full(data.num_clients, -1, dtype=np.int64)
    position_of_client[cohort] = np.arange(len(cohort))
    num_items = num_catalogue_items(model)
    keys = result.update.row_clients.numpy() * num_items + result.update.row_items.numpy()
    return Personalization(result, position_of_client[client_of_user], keys)


def refit_private_rows(model: RecModel, params: dict[str, Tensor], data: ClientData, epochs: int, lr: float,
                       batch_size: int, seed: int) -> dict[str, Tensor]:
    """Parameters with every client's private rows refitted to the shared model in ``params``.

    After the last round, each client runs ``epochs`` local epochs of SGD (learning rate ``lr``) over
    its own examples on its private rows only (user vector and bias); the shared parts stay as the
    server sent them and nothing is uploaded. During training a client's private rows were last
    fitted to the previous round's shared model; this fits them to the final one.
    """
    cohort = np.flatnonzero(data.sizes > 0)
    if not len(cohort) or not model.specs_by_kind(ParamKind.PRIVATE_ROWS):
        return dict(params)
    local = LocalTraining(epochs, lr=0.0, batch_size=batch_size, private_lr=lr)  # shared copies do not move
    return write_private_rows(params, train_cohort_vectorized(model, params, data, cohort, local, seed, REFIT_ROUND))


def mix_with_start(result: CohortResult, params: dict[str, Tensor], beta: float) -> CohortResult:
    """Every fine-tuned copy moved to theta_start + beta (theta_tuned - theta_start).

    theta_start is the global model for the shared parts (their deltas are scaled by beta) and the
    client's own trained row for its private rows, so beta = 0 gives back the model before fine-tuning.
    """
    update = replace(result.update, row_deltas={n: beta * d for n, d in result.update.row_deltas.items()},
                     dense_deltas={n: beta * d for n, d in result.update.dense_deltas.items()})
    private = {name: torch.lerp(params[name][result.users], rows, beta) for name, rows in result.private_rows.items()}
    return replace(result, update=update, private_rows=private)


def personal_rows(model: RecModel, params: dict[str, Tensor], personal: Personalization, users: Tensor,
                  items: Tensor) -> dict[str, Tensor]:
    """Rows for (users (B,), items (B, S)) from each user's fine-tuned copy of the model.

    Every user is its own group (it has its own dense tensors): (B, 1, ...) rows, (B, *shape) dense.
    """
    result = personal.result
    positions = torch.from_numpy(personal.cohort_position_of_user[users.numpy()])  # (B,)
    tuned = positions >= 0
    num_items = num_catalogue_items(model)
    rows: dict[str, Tensor] = {}
    for spec in model.param_specs():
        value = params[spec.name]
        if spec.kind is ParamKind.PRIVATE_ROWS:
            rows[spec.name] = value[users].unsqueeze(1)  # (B, 1, *row)
        elif spec.kind is ParamKind.SHARED_ROWS:
            rows[spec.name] = value[items].unsqueeze(1)  # (B, 1, S, *row)
        elif not spec.trainable:  # a constant tensor: nobody fine-tunes it
            rows[spec.name] = value.unsqueeze(0).expand(len(users), *spec.shape)
        else:  # the client's own fine-tuned copy, or the global one
            own = value + result.update.dense_deltas[spec.name][positions.clamp_min(0)]  # (B, *shape)
            mask = tuned.reshape(-1, *[1] * len(spec.shape))
            rows[spec.name] = torch.where(mask, own, value.unsqueeze(0).expand_as(own))
    # Private rows: the fine-tuned values of the users that were fine-tuned.
    if result.users.numel():
        slot = torch.searchsorted(result.users, users).clamp_max(result.users.numel() - 1)
        has_row = result.users[slot] == users
        for name, values in result.private_rows.items():
            fresh = values[slot].unsqueeze(1)
            rows[name] = torch.where(has_row.reshape(-1, *[1] * (fresh.dim() - 1)), fresh, rows[name])
    # Shared rows: add the client's delta where it fine-tuned that item.
    keys = (positions.clamp_min(0)[:, None] * num_items + items).numpy()
    index = np.searchsorted(personal.row_keys, keys).clip(max=max(len(personal.row_keys) - 1, 0))
    hit = torch.from_numpy((personal.row_keys[index] == keys) if len(personal.row_keys) else np.zeros_like(keys, bool))
    hit &= tuned[:, None]
    index_t = torch.from_numpy(index)
    for name, deltas in result.update.row_deltas.items():
        delta = deltas[index_t].unsqueeze(1)  # (B, 1, S, *row_shape)
        mask = hit.unsqueeze(1).reshape(*hit.shape[:1], 1, hit.shape[1], *[1] * (delta.dim() - 3))
        rows[name] = rows[name] + torch.where(mask, delta, torch.zeros_like(delta))
    return rows


def personal_scores(model: RecModel, params: dict[str, Tensor], personal: Personalization, users: Tensor,
                    max_elements: int = 1 << 22) -> Tensor:
    """Every item's score for each user under its fine-tuned copy: (B, num_items)."""
    return score_items_in_chunks(model, users, lambda u, i: personal_rows(model, params, personal, u, i), max_elements)
