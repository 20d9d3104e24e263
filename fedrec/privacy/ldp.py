"""Local differential privacy on each client's upload: clip, then the analytic Gaussian mechanism.

Every client clips its whole upload to L2 norm ``C`` and adds Gaussian noise to every shared
coordinate before it leaves the device, so each upload alone is (epsilon, delta)-DP with respect to
anything the client could have sent: two clipped uploads differ by at most ``2C`` in L2 norm, the
sensitivity. The classical calibration sigma = sqrt(2 ln(1.25/delta)) / epsilon is only valid for
epsilon <= 1; the analytic Gaussian mechanism (Balle & Wang 2018, "Improving the Gaussian Mechanism
for Differential Privacy", Theorem 8) is exact for every epsilon: N(0, sigma^2) with L2
sensitivity Delta is (epsilon, delta)-DP iff

    Phi(Delta / (2 sigma) - epsilon sigma / Delta) - e^epsilon Phi(-Delta / (2 sigma) - epsilon sigma / Delta) <= delta,

and the left side decreases in sigma, so the smallest such sigma is found by bisection.
The epsilon is per round and per client (a client that takes part in k rounds spends k epsilon by
basic composition).
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import Tensor

from fedrec.errors import FedrecError


def gaussian_delta(sigma: float, epsilon: float, sensitivity: float = 1.0) -> float:
    """The smallest delta for which N(0, sigma^2) noise is (epsilon, delta)-DP (Balle & Wang 2018, Thm 8)."""
    from scipy.stats import norm  # imported here: keeps `import fedrec.federated.server` light

    a = sensitivity / (2.0 * sigma)
    b = epsilon * sigma / sensitivity
    # e^eps * Phi(x) evaluated in log space: e^eps overflows for large epsilon
    return float(norm.cdf(a - b) - math.exp(epsilon + norm.logcdf(-a - b)))


def analytic_gaussian_sigma(epsilon: float, delta: float, sensitivity: float = 1.0) -> float:
    """The smallest sigma with (epsilon, delta)-DP for L2 sensitivity ``sensitivity`` (relative tolerance 1e-10)."""
    if not epsilon > 0.0 or math.isinf(epsilon):
        raise FedrecError(f"local epsilon must be a positive finite number, got {epsilon}")
    if not 0.0 < delta < 1.0:
        raise FedrecError(f"local delta must be in (0, 1), got {delta}")
    if not sensitivity > 0.0:
        raise FedrecError(f"sensitivity must be positive, got {sensitivity}")
    from scipy.optimize import brentq

    def excess(log_sigma: float) -> float:
        return gaussian_delta(math.exp(log_sigma), epsilon, sensitivity) - delta

    low, high = math.log(sensitivity) - 10.0, math.log(sensitivity) + 10.0
    while excess(low) < 0.0:
        low -= 10.0
    while excess(high) > 0.0:
        high += 10.0
    return math.exp(brentq(excess, low, high, xtol=1e-12, rtol=1e-10))


def local_noise_stddev(epsilon: float, delta: float, clip_norm: float) -> float:
    """Per-coordinate noise of one clipped upload (sensitivity 2C: any two uploads of norm <= C)."""
    return analytic_gaussian_sigma(epsilon, delta, sensitivity=2.0 * clip_norm)


def privatize_upload(upload: Tensor, clip_norm: float, stddev: float, generator: torch.Generator) -> Tensor:
    """One client's flat upload clipped to norm C plus N(0, stddev^2) on every coordinate."""
    scale = torch.clamp(clip_norm / upload.norm().clamp_min(torch.finfo(upload.dtype).tiny), max=1.0)
    return upload * scale + stddev * torch.randn(upload.shape, generator=generator, dtype=upload.dtype)


def summed_noise_stddev(stddev: float, num_clients: int) -> float:
    """Stddev of the sum of ``num_clients`` independent N(0, stddev^2) draws: what the server's sum carries."""
    return float(stddev * np.sqrt(num_clients))


class LocalDP:
    """Settings of local DP: each upload clipped to ``clip_norm`` and noised for (epsilon, delta) per round."""

    def __init__(self, epsilon: float, delta: float, clip_norm: float) -> None:
        self.epsilon, self.delta, self.clip_norm = epsilon, delta, clip_norm
        self.stddev = local_noise_stddev(epsilon, delta, clip_norm)  # calibrated once, here

    def __repr__(self) -> str:
        return f"LocalDP(epsilon={self.epsilon}, delta={self.delta}, clip_norm={self.clip_norm}, stddev={self.stddev:.6g})"
