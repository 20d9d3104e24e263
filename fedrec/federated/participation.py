"""Stragglers and dropouts: which of a round's sampled clients the server actually hears from.

A simulated clock, not a real one. Each client has a compute speed drawn once for the run
(log-normal around 1 with ``speed_sigma``, from the seed), so its round takes
``examples x local epochs x seconds_per_example x speed`` simulated seconds. The round has a
deadline: a quantile of the cohort's times (``deadline_quantile``) or a fixed number of seconds
(``deadline_seconds``). A client that misses it is *late*: its update is dropped (default) or
down-weighted by ``deadline / its time``, the fraction of its work done by the deadline.
Independently, each sampled client *drops out* with probability ``dropout`` (its device goes away
before uploading). Every draw is a pure function of (seed, round, client), like the rest of a
run's randomness, so both backends and a resumed run see the same arrivals.

Private rows: a client that drops out loses the round (its private rows keep their old values, as
if it had never trained); a late client did finish training, so it keeps its new private rows; only
its upload misses the deadline.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Literal

import numpy as np
import torch
from torch import Tensor

from fedrec.federated import rng
from fedrec.federated.aggregation import keep_clients
from fedrec.federated.cohort import ClientData
from fedrec.federated.local import CohortResult

LateUpdates = Literal["drop", "downweight"]
SPEED_ROUND = 1 << 41  # round counter of the per-client speed draws (disjoint from training rounds)


@dataclass(frozen=True)
class Participation:
    """Stragglers and dropouts of a run; the defaults simulate neither."""

    dropout: float = 0.0  # probability that a sampled client drops out before uploading
    speed_sigma: float = 0.0  # sigma of the log-normal per-client speed (0: equal speeds)
    seconds_per_example: float = 0.01  # simulated seconds per example and epoch at speed 1
    deadline_quantile: float | None = None  # deadline = this quantile of the cohort's compute times
    deadline_seconds: float | None = None  # ... or this many simulated seconds
    late: LateUpdates = "drop"

    @property
    def active(self) -> bool:
        return self.dropout > 0 or self.deadline_quantile is not None or self.deadline_seconds is not None


@dataclass(frozen=True)
class Arrivals:
    """What the server hears from each cohort position."""

    weights: np.ndarray  # (C,) weight of each update: 1 on time, 0 not used, deadline/time when late and down-weighted
    dropped: np.ndarray  # (C,) bool: dropped out before uploading
    late: np.ndarray  # (C,) bool: missed the deadline (and was dropped or down-weighted)
    deadline: float = float("inf")  # the round's deadline in simulated seconds

    @property
    def used(self) -> np.ndarray:
        """Cohort positions whose update reaches the aggregate."""
        return self.weights > 0


@dataclass(frozen=True)
class ArrivedCohort:
    """A cohort's training result restricted to the clients the server heard from."""

    result: CohortResult | None
    weights: Tensor | None  # (C',) weights of the kept clients, None when all are 1
    dropped: int = 0
    late: int = 0


def client_speeds(clients: np.ndarray, sigma: float, seed: int) -> np.ndarray:
    """Each client's time multiplier, log-normal(0, sigma): the same for a client in every round."""
    uniform = rng.uniform01(seed, rng.STREAM_DROPOUT, SPEED_ROUND, np.asarray(clients, dtype=np.int64))
    normal = torch.special.ndtri(torch.from_numpy(np.clip(uniform, 1e-12, 1 - 1e-12))).numpy()
    return np.exp(sigma * normal)


def compute_times(examples: np.ndarray, speeds: np.ndarray, epochs: int, seconds_per_example: float) -> np.ndarray:
    """Simulated seconds each client needs for its local training."""
    return np.asarray(examples, dtype=np.float64) * epochs * seconds_per_example * speeds


def decide_arrivals(cohort: np.ndarray, examples: np.ndarray, settings: Participation, epochs: int, seed: int,
                    round_index: int) -> Arrivals:
    """Which cohort positions (clients ``cohort``, with ``examples`` each) arrive, and their weights."""
    cohort = np.asarray(cohort, dtype=np.int64)
    dropped = rng.uniform01(seed, rng.STREAM_DROPOUT, round_index, cohort) < settings.dropout
    times = compute_times(examples, client_speeds(cohort, settings.speed_sigma, seed), epochs,
                          settings.seconds_per_example)
    deadline = float("inf")
    if settings.deadline_seconds is not None:
        deadline = settings.deadline_seconds
    elif settings.deadline_quantile is not None and np.any(~dropped):
        deadline = float(np.quantile(times[~dropped], settings.deadline_quantile))
    late = ~dropped & (times > deadline)
    weights = np.where(dropped, 0.0, 1.0)
    if settings.late == "drop":
        weights[late] = 0.0
    else:
        weights[late] = deadline / times[late]
    return Arrivals(weights, dropped, late, deadline)


def arrive(result: CohortResult | None, data: ClientData, cohort: np.ndarray, settings: Participation | None,
           epochs: int, seed: int, round_index: int) -> ArrivedCohort:
    """The part of a cohort's result the server receives (see the module doc for private rows)."""
    if result is None or settings is None or not settings.active:
        return ArrivedCohort(result, None)
    arrivals = decide_arrivals(cohort, data.sizes[cohort], settings, epochs, seed, round_index)
    used = torch.from_numpy(arrivals.used)
    update = keep_clients(result.update, used)
    kept = arrivals.weights[arrivals.used]
    weights = None if np.all(kept == 1.0) else torch.from_numpy(kept.astype(np.float32))
    users, private_rows = result.users, result.private_rows
    if arrivals.dropped.any():  # dropped clients lose the round: their private rows are not written back
        gone = np.concatenate([data.users[data.client_slice(int(c))] for c in cohort[arrivals.dropped]])
        stay = torch.from_numpy(~np.isin(result.users.numpy(), gone))
        users, private_rows = users[stay], {name: rows[stay] for name, rows in private_rows.items()}
    arrived = replace(result, update=update, users=users, private_rows=private_rows)
    return ArrivedCohort(arrived, weights, int(arrivals.dropped.sum()), int(arrivals.late.sum()))
