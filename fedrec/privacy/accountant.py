"""Privacy accounting for DP-FedAvg: T rounds of the Poisson-subsampled Gaussian mechanism.

Each round samples every client independently with probability ``q`` and releases the sum of the
clipped uploads plus N(0, (zC)^2) noise, which is ``PoissonSampledDpEvent(q, GaussianDpEvent(z))``
under add-or-remove-one-client adjacency (client-level DP). The accounting is done by
``dp_accounting`` (Google's library): Renyi DP (Mironov 2017; Mironov, Talwar, Zhang 2019) gives the
headline epsilon, the privacy loss distribution (PLD; Koskela et al., Doroshenko et al. 2022) a
tighter estimate alongside.
"""

from __future__ import annotations

import math
from functools import lru_cache

import dp_accounting
import numpy as np
from absl import logging as absl_logging
from dp_accounting.mechanism_calibration import LowerEndpointAndGuess, calibrate_dp_mechanism
from dp_accounting.pld import PLDAccountant
from dp_accounting.rdp import RdpAccountant
from dp_accounting.rdp.rdp_privacy_accountant import compute_epsilon

from fedrec.config import MIN_NOISE_MULTIPLIER
from fedrec.errors import FedrecError

# dp_accounting logs a warning for every Renyi order whose series does not converge (it drops
# that order, which only makes the bound slightly looser); keep the run's output clean.
absl_logging.set_verbosity(absl_logging.ERROR)

PLD_DISCRETIZATION = 1e-2  # PLD value grid; coarser is faster and still an upper bound (pessimistic rounding)


def round_event(noise_multiplier: float, sampling_prob: float) -> dp_accounting.DpEvent:
    """One DP-FedAvg round: each client sampled with probability q, Gaussian noise of multiplier z."""
    _check(noise_multiplier, sampling_prob)
    return dp_accounting.PoissonSampledDpEvent(sampling_prob, dp_accounting.GaussianDpEvent(noise_multiplier))


def training_event(noise_multiplier: float, sampling_prob: float, rounds: int) -> dp_accounting.DpEvent:
    """``rounds`` compositions of :func:`round_event`."""
    return dp_accounting.SelfComposedDpEvent(round_event(noise_multiplier, sampling_prob), rounds)


def _check(noise_multiplier: float, sampling_prob: float) -> None:
    if not 0.0 < sampling_prob <= 1.0:
        raise FedrecError(f"sampling probability must be in (0, 1], got {sampling_prob}")
    if noise_multiplier < 0.0:
        raise FedrecError(f"noise multiplier must be >= 0, got {noise_multiplier}")


@lru_cache(maxsize=64)
def _round_rdp(noise_multiplier: float, sampling_prob: float) -> tuple[np.ndarray, np.ndarray]:
    """(orders, RDP of one round); Renyi DP adds up over rounds."""
    accountant = RdpAccountant()
    accountant.compose(round_event(noise_multiplier, sampling_prob))
    return np.asarray(accountant.orders), np.asarray(accountant.rdp)


def epsilon(noise_multiplier: float, sampling_prob: float, rounds: int, delta: float) -> float:
    """Epsilon (RDP accountant) after ``rounds`` rounds at ``delta``; inf without noise."""
    _check(noise_multiplier, sampling_prob)
    if rounds <= 0:
        return 0.0
    if noise_multiplier == 0.0:
        return math.inf
    orders, rdp = _round_rdp(float(noise_multiplier), float(sampling_prob))
    eps, _ = compute_epsilon(orders, rdp * rounds, delta)
    return float(eps)


def epsilon_pld(noise_multiplier: float, sampling_prob: float, rounds: int, delta: float,
                discretization: float = PLD_DISCRETIZATION) -> float:
    """Epsilon from the privacy loss distribution accountant (usually tighter than RDP)."""
    _check(noise_multiplier, sampling_prob)
    if rounds <= 0:
        return 0.0
    if noise_multiplier == 0.0:
        return math.inf
    accountant = PLDAccountant(value_discretization_interval=discretization)
    accountant.compose(training_event(noise_multiplier, sampling_prob, rounds))
    return float(accountant.get_epsilon(delta))


def check_noise_multiplier(noise_multiplier: float) -> None:
    """Refuse, in one line, a noise multiplier too small to protect anything or to be accounted."""
    if noise_multiplier < MIN_NOISE_MULTIPLIER:
        raise FedrecError(f"the noise multiplier {noise_multiplier:.3g} (privacy.noise_multiplier, or calibrated from "
                          f"privacy.epsilon) is below {MIN_NOISE_MULTIPLIER}: epsilon would be in the hundreds or more and "
                          "the accountant cannot evaluate it; raise privacy.noise_multiplier or lower privacy.epsilon")


def calibrate_noise(target_epsilon: float, delta: float, sampling_prob: float, rounds: int, tolerance: float = 1e-3) -> float:
    """The smallest noise multiplier z (to ``tolerance``) whose RDP epsilon after ``rounds`` is <= target.

    A binary search on z (``dp_accounting.mechanism_calibration``); the result errs on the side of
    more noise, so ``epsilon(z, q, rounds, delta) <= target_epsilon``.
    """
    if not target_epsilon > 0.0 or math.isinf(target_epsilon):
        raise FedrecError(f"target epsilon must be a positive finite number, got {target_epsilon}")
    if not 0.0 < delta < 1.0:
        raise FedrecError(f"delta must be in (0, 1), got {delta}")
    if rounds < 1:
        raise FedrecError(f"rounds must be >= 1 to calibrate noise, got {rounds}")
    _check(1.0, sampling_prob)
    return float(calibrate_dp_mechanism(
        RdpAccountant,
        lambda z: training_event(z, sampling_prob, rounds),
        target_epsilon,
        delta,
        LowerEndpointAndGuess(0.0, 1.0),
        tol=tolerance,
    ))
