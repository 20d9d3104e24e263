"""Training examples grouped by client, cohort sampling and the local-step schedule.

Both backends read the same :class:`ClientData` and the same counter-based draws; the vectorised
backend additionally lays a cohort out as one ragged batch (see :func:`cohort_examples`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np

from fedrec.data.dataset import Interactions
from fedrec.federated import rng
from fedrec.federated.negatives import UserItems, sample_negatives


@dataclass(frozen=True)
class ClientData:
    """Each client's training examples, concatenated in client order (CSR layout).

    Client ``k`` owns examples ``offsets[k]:offsets[k+1]``. Clients are opaque indices: the
    server-side code never sees a raw user identifier.
    """

    offsets: np.ndarray  # (num_clients + 1,) int64
    users: np.ndarray  # (n,) int64 user index of each example
    items: np.ndarray  # (n,) int64
    targets: np.ndarray  # (n,) float32
    user_items: UserItems | None = None  # each user's training items, for negative sampling
    #: optional (n, L) items each example carries before its own item (e.g. the user's previous
    #: items, oldest first); entries < 0 are padding. See :func:`slot_items`.
    history: np.ndarray | None = None

    @property
    def num_clients(self) -> int:
        return len(self.offsets) - 1

    @property
    def sizes(self) -> np.ndarray:
        return np.diff(self.offsets)

    def client_slice(self, client: int) -> slice:
        return slice(int(self.offsets[client]), int(self.offsets[client + 1]))

    @staticmethod
    def from_interactions(train: Interactions, client_of_user: np.ndarray, num_clients: int,
                          num_items: int | None = None) -> ClientData:
        """Group training interactions by the client that owns each user (stable within a client).

        With ``num_items`` given, also index each user's items for negative sampling.
        """
        clients = client_of_user[train.users]
        order = np.argsort(clients, kind="stable")
        counts = np.bincount(clients, minlength=num_clients)
        offsets = np.zeros(num_clients + 1, dtype=np.int64)
        np.cumsum(counts, out=offsets[1:])
        return ClientData(
            offsets=offsets,
            users=train.users[order].astype(np.int64),
            items=train.items[order].astype(np.int64),
            targets=train.ratings[order].astype(np.float32),
            user_items=UserItems.from_interactions(train, len(client_of_user), num_items) if num_items else None,
        )


Sampling = Literal["fixed", "poisson"]


def sample_cohort(num_clients: int, fraction: float, seed: int, round_index: int, eligible: np.ndarray | None = None,
                  sampling: Sampling = "fixed") -> np.ndarray:
    """The round's cohort (sorted client indices).

    ``fixed``: a fixed-size cohort, uniformly without replacement (the clients with the smallest keys).
    ``poisson``: every eligible client independently with probability ``fraction`` (so the cohort
    size varies and may be zero) -- the sampling the DP accountant assumes. Both are pure functions
    of (seed, round, client), so every backend and a resumed run see the same cohort.
    """
    candidates = np.arange(num_clients) if eligible is None else np.flatnonzero(eligible)
    if sampling == "poisson":
        return candidates[rng.uniform01(seed, rng.STREAM_COHORT, round_index, candidates) < fraction]
    if fraction >= 1.0:
        return candidates
    size = max(1, int(round(fraction * num_clients)))
    keys = rng.hash64(seed, rng.STREAM_COHORT, round_index, candidates)
    return candidates[smallest_keys(keys, size)]


def smallest_keys(keys: np.ndarray, count: int) -> np.ndarray:
    """Positions (ascending) of the ``count`` smallest keys, ties going to the earlier position.

    The same set as the first ``count`` of a stable argsort, found by a partition in time linear in
    ``len(keys)`` (a full sort of a 10^6-client population is what a round would otherwise pay).
    """
    if count >= len(keys):
        return np.arange(len(keys))
    if count <= 0:
        return np.zeros(0, dtype=np.int64)
    threshold = np.partition(keys, count - 1)[count - 1]
    below = np.flatnonzero(keys < threshold)
    ties = np.flatnonzero(keys == threshold)[:count - len(below)]
    return np.sort(np.concatenate([below, ties]))


def order_within_groups(groups: np.ndarray, keys: np.ndarray) -> np.ndarray:
    """``np.lexsort((keys, groups))`` for non-negative int ``groups`` and uint64 ``keys``, with one sort.

    Sorts the group in the high bits and the key's top bits below it; only if two such numbers tie
    (vanishingly rare for hashed keys) does it fall back to the two-key sort, so the order is always exact.
    """
    if len(groups) == 0:
        return np.zeros(0, dtype=np.int64)
    bits = int(groups.max()).bit_length()
    if bits > 32:
        return np.lexsort((keys, groups))
    combined = (groups.astype(np.uint64) << np.uint64(64 - bits)) | (keys.astype(np.uint64) >> np.uint64(bits)) \
        if bits else keys.astype(np.uint64)
    order = np.argsort(combined)
    ordered = combined[order]
    if np.any(ordered[1:] == ordered[:-1]):
        return np.lexsort((keys, groups))
    return order


def shuffle_keys(seed: int, round_index: int, clients: np.ndarray, epoch: int, positions: np.ndarray) -> np.ndarray:
    """Sort keys that shuffle each client's examples in one local epoch."""
    return rng.hash64(seed, rng.STREAM_SHUFFLE, round_index, clients, epoch, positions)


@dataclass(frozen=True)
class CohortExamples:
    """A cohort's examples as one ragged batch, sorted by cohort position."""

    example_index: np.ndarray  # (N,) index into ClientData arrays
    cohort_position: np.ndarray  # (N,) 0..C-1
    position_in_client: np.ndarray  # (N,)
    client_sizes: np.ndarray  # (C,)


def cohort_examples(data: ClientData, cohort: np.ndarray) -> CohortExamples:
    """Gather the cohort's examples without a Python loop over clients."""
    starts = data.offsets[cohort]
    sizes = data.offsets[cohort + 1] - starts
    total = int(sizes.sum())
    cohort_position = np.repeat(np.arange(len(cohort)), sizes)
    first = np.zeros(len(cohort), dtype=np.int64)
    np.cumsum(sizes[:-1], out=first[1:])
    position = np.arange(total, dtype=np.int64) - first[cohort_position]
    return CohortExamples(starts[cohort_position] + position, cohort_position, position, sizes)


@dataclass(frozen=True)
class StepSchedule:
    """Which example copy is trained at which local step, and its weight in its client's batch mean."""

    example: np.ndarray  # (M,) index into CohortExamples arrays, ordered by step
    epoch: np.ndarray  # (M,)
    weight: np.ndarray  # (M,) 1 / size of the client's batch at that step
    step_bounds: np.ndarray  # (num_steps + 1,) slice boundaries into the arrays above


def local_schedule(examples: CohortExamples, cohort: np.ndarray, epochs: int, batch_size: int, seed: int, round_index: int) -> StepSchedule:
    """Lock-step schedule: each client shuffles per epoch and cuts batches; steps run in order."""
    sizes = examples.client_sizes
    steps_per_epoch = -(-sizes // batch_size)  # ceil
    pos = examples.cohort_position
    parts_example, parts_step, parts_epoch, parts_weight = [], [], [], []
    first = np.zeros(len(sizes), dtype=np.int64)
    np.cumsum(sizes[:-1], out=first[1:])
    for epoch in range(epochs):
        keys = shuffle_keys(seed, round_index, cohort[pos], epoch, examples.position_in_client)
        order = order_within_groups(pos, keys)  # by client, then key
        rank = np.empty_like(order)
        rank[order] = np.arange(len(order)) - first[pos[order]]
        batch = rank // batch_size
        batch_len = np.minimum(batch_size, sizes[pos] - batch * batch_size)
        parts_example.append(np.arange(len(pos)))
        parts_step.append(epoch * steps_per_epoch[pos] + batch)
        parts_epoch.append(np.full(len(pos), epoch))
        parts_weight.append(1.0 / batch_len)
    step = np.concatenate(parts_step)
    narrow = np.int16 if len(step) and step.max() < np.iinfo(np.int16).max else np.int64
    order = np.argsort(step.astype(narrow), kind="stable")  # int16: numpy's linear-time radix sort
    step = step[order]
    num_steps = int(step[-1]) + 1 if len(step) else 0
    bounds = np.searchsorted(step, np.arange(num_steps + 1))
    return StepSchedule(
        example=np.concatenate(parts_example)[order],
        epoch=np.concatenate(parts_epoch)[order],
        weight=np.concatenate(parts_weight)[order].astype(np.float32),
        step_bounds=bounds,
    )


def slot_items(data: ClientData, example_index: np.ndarray, negatives: int, seed: int, round_index: int,
               clients: np.ndarray, epochs: np.ndarray, positions: np.ndarray) -> np.ndarray:
    """Item slots of example copies: (n, 1 + negatives), the example's own item first.

    ``clients``, ``epochs`` and ``positions`` (position of the example within its client) key the
    negative draws, so a client draws the same negatives in every backend.
    With ``data.history``, its L items come first: (n, L + 1 + negatives). A padding entry (< 0)
    becomes the example's own item, so padding touches no row the example does not already touch
    (the model masks those slots out; it learns which from the example's target).
    """
    own = data.items[example_index][:, None]
    if data.history is not None:
        history = data.history[example_index]
        own = np.concatenate([np.where(history < 0, own, history), own], axis=1)  # (n, L + 1)
    if negatives == 0:
        return own
    if data.user_items is None:
        raise ValueError("negative sampling needs ClientData built with num_items")
    sampled = sample_negatives(data.user_items, data.users[example_index], seed, round_index, clients, epochs,
                               positions, negatives)
    return np.concatenate([own, sampled], axis=1)
