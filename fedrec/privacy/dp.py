"""Client-level differential privacy for federated averaging (DP-FedAvg), as pure tensor functions.

DP-FedAvg (McMahan et al. 2018, "Learning Differentially Private Recurrent Language Models"):
each client's whole upload -- every shared row it sends and every dense delta -- is clipped
jointly to L2 norm ``C``; the clipped uploads are summed; Gaussian noise N(0, (zC)^2) is added to
*every* shared coordinate (all rows of every shared row table, every dense tensor: noise only on
the rows somebody touched would reveal which items were touched); the noisy sum is divided by a
fixed denominator, the expected cohort size ``q N`` (dividing by the actual cohort size would leak
it). Clients are Poisson-sampled (:func:`fedrec.federated.cohort.sample_cohort`) so that
:mod:`fedrec.privacy.accountant` accounts for exactly what happens.

Adaptive clipping (Andrew et al. 2021, "Differentially Private Learning with Adaptive Clipping"):
after each round ``C <- C * exp(-clip_lr * (b - target_quantile))`` where ``b`` is the noised
fraction of the cohort whose update norm was at most ``C`` (count noise N(0, sigma_b^2), divided by
the expected cohort size). The count is a second Gaussian query on the same clients; the paper's
Theorem 1 splits the privacy budget so that the pair is exactly as private as one Gaussian
mechanism with noise multiplier ``z``: the update noise multiplier becomes
``z_update = (z^-2 - (2 sigma_b)^-2)^(-1/2)`` (:func:`update_noise_multiplier`), and the accountant
is charged for ``z``.

All noise comes from a ``torch.Generator`` seeded from (seed, round) (:func:`noise_generator`), so
runs are reproducible and a resumed run draws the same noise.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from fedrec.errors import FedrecError
from fedrec.federated import rng
from fedrec.federated.aggregation import CohortUpdate

# Counter stream of the DP noise seeds (chosen far from the small stream ids in fedrec.federated.rng).
STREAM_DP_NOISE = 0x44500001


@dataclass(frozen=True)
class SharedShapes:
    """Full shapes of the shared tensors: row tables (one row per item) and dense tensors."""

    rows: dict[str, tuple[int, ...]]
    dense: dict[str, tuple[int, ...]]


@dataclass(frozen=True)
class CentralDP:
    """Settings of one DP-FedAvg round (the noise multiplier is what the accountant is charged for)."""

    noise_multiplier: float
    clip_norm: float  # the initial clip norm when adaptive
    expected_clients: float  # q * N, the fixed denominator
    adaptive: bool = False
    target_quantile: float = 0.5
    clip_lr: float = 0.2
    count_stddev: float | None = None  # adaptive: sigma_b; default expected_clients / 20 (Andrew et al.)

    @property
    def count_noise(self) -> float:
        return self.count_stddev if self.count_stddev is not None else self.expected_clients / 20.0

    @property
    def update_noise(self) -> float:
        """Noise multiplier applied to the update sum (larger than z when clipping is adaptive)."""
        if not self.adaptive:
            return self.noise_multiplier
        return update_noise_multiplier(self.noise_multiplier, self.count_noise)


def noise_generator(seed: int, round_index: int) -> torch.Generator:
    """A generator whose draws are a pure function of (seed, round)."""
    key = int(rng.hash64(seed, STREAM_DP_NOISE, round_index)) & ((1 << 63) - 1)
    return torch.Generator().manual_seed(key)


def update_norms(update: CohortUpdate) -> Tensor:
    """L2 norm of each client's whole upload (all its rows and dense deltas), shape (C,)."""
    squares = torch.zeros(update.num_clients, dtype=torch.float64)
    for delta in update.row_deltas.values():
        per_row = delta.reshape(delta.shape[0], math.prod(delta.shape[1:])).double().square().sum(1)
        squares.index_add_(0, update.row_clients, per_row)
    for delta in update.dense_deltas.values():
        squares += delta.reshape(delta.shape[0], math.prod(delta.shape[1:])).double().square().sum(1)
    return squares.sqrt()


def clip_factors(norms: Tensor, clip_norm: float) -> Tensor:
    """Per-client scale min(1, C / norm) (zero updates stay zero)."""
    return torch.clamp(clip_norm / norms.clamp_min(torch.finfo(torch.float64).tiny), max=1.0)


def clip_update(update: CohortUpdate, clip_norm: float) -> tuple[CohortUpdate, Tensor]:
    """The cohort's uploads with each client's whole upload scaled to norm <= C; also the norms before clipping."""
    if not clip_norm > 0.0:
        raise FedrecError(f"clip norm must be positive, got {clip_norm}")
    norms = update_norms(update)
    scale = clip_factors(norms, clip_norm)
    row_scale = scale[update.row_clients]
    clipped = CohortUpdate(
        row_items=update.row_items,
        row_clients=update.row_clients,
        row_counts=update.row_counts,
        row_deltas={n: (d.double() * row_scale.reshape(-1, *[1] * (d.dim() - 1))).to(d.dtype) for n, d in update.row_deltas.items()},
        dense_deltas={n: (d.double() * scale.reshape(-1, *[1] * (d.dim() - 1))).to(d.dtype) for n, d in update.dense_deltas.items()},
        client_sizes=update.client_sizes,
    )
    return clipped, norms


def sum_update(update: CohortUpdate, shapes: SharedShapes) -> dict[str, Tensor]:
    """Unweighted sum over clients of every shared tensor, full shapes (rows nobody sent are zero)."""
    sums: dict[str, Tensor] = {}
    for name, shape in shapes.rows.items():
        total = torch.zeros(shape, dtype=torch.float32)
        if name in update.row_deltas and update.row_deltas[name].shape[0]:
            total.index_add_(0, update.row_items, update.row_deltas[name].to(torch.float32))
        sums[name] = total
    for name, shape in shapes.dense.items():
        total = torch.zeros(shape, dtype=torch.float32)
        if name in update.dense_deltas and update.dense_deltas[name].shape[0]:
            total += update.dense_deltas[name].to(torch.float32).sum(0)
        sums[name] = total
    return sums


def add_gaussian_noise(sums: dict[str, Tensor], stddev: float, generator: torch.Generator) -> dict[str, Tensor]:
    """Every coordinate of every tensor plus independent N(0, stddev^2) (drawn in sorted name order)."""
    noisy = {}
    for name in sorted(sums):
        value = sums[name]
        noise = torch.randn(value.shape, generator=generator, dtype=torch.float32)
        noisy[name] = value + stddev * noise
    return noisy


def update_noise_multiplier(noise_multiplier: float, count_stddev: float) -> float:
    """Andrew et al. 2021, Thm 1: z_update = (z^-2 - (2 sigma_b)^-2)^(-1/2)."""
    if noise_multiplier == 0.0:
        return 0.0
    remaining = noise_multiplier ** -2 - (2.0 * count_stddev) ** -2
    if remaining <= 0.0:
        raise FedrecError(f"adaptive clipping needs privacy.clip_count_stddev > noise_multiplier / 2 = "
                          f"{noise_multiplier / 2:.4g}, got {count_stddev:.4g}; raise it or add clients per round")
    return remaining ** -0.5


def adaptive_clip_norm(clip_norm: float, norms: Tensor, target_quantile: float, clip_lr: float, count_stddev: float,
                       expected_clients: float, generator: torch.Generator) -> float:
    """Geometric step of C toward the target quantile of update norms from a noised count below C."""
    return adaptive_clip_from_count(clip_norm, int((norms <= clip_norm).sum()), target_quantile, clip_lr, count_stddev,
                                    expected_clients, generator)


def adaptive_clip_from_count(clip_norm: float, below: int, target_quantile: float, clip_lr: float, count_stddev: float,
                             expected_clients: float, generator: torch.Generator) -> float:
    """:func:`adaptive_clip_norm` given only how many clients had norm <= C (what secure aggregation reveals)."""
    noisy = float(below) + count_stddev * float(torch.randn((), generator=generator, dtype=torch.float64))
    fraction = noisy / expected_clients
    return float(clip_norm * math.exp(-clip_lr * (fraction - target_quantile)))


def private_mean(update: CohortUpdate, shapes: SharedShapes, settings: CentralDP, clip_norm: float,
                 generator: torch.Generator) -> tuple[dict[str, Tensor], float]:
    """One DP-FedAvg aggregation: clip -> sum -> dense noise -> fixed denominator.

    Returns the mean delta of every shared tensor and the clip norm for the next round.
    """
    clipped, norms = clip_update(update, clip_norm)
    noisy = add_gaussian_noise(sum_update(clipped, shapes), settings.update_noise * clip_norm, generator)
    deltas = {name: value / settings.expected_clients for name, value in noisy.items()}
    next_clip = clip_norm
    if settings.adaptive:
        next_clip = adaptive_clip_norm(clip_norm, norms, settings.target_quantile, settings.clip_lr,
                                       settings.count_noise, settings.expected_clients, generator)
    return deltas, next_clip
