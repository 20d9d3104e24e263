"""The DP accountant: values equal dp_accounting called directly; calibration inverts epsilon."""

from __future__ import annotations

import math

import dp_accounting
import pytest
from dp_accounting.pld import PLDAccountant
from dp_accounting.rdp import RdpAccountant

from fedrec.errors import FedrecError
from fedrec.privacy.accountant import PLD_DISCRETIZATION, calibrate_noise, epsilon, epsilon_pld


def direct_event(z: float, q: float, rounds: int) -> dp_accounting.DpEvent:
    return dp_accounting.SelfComposedDpEvent(dp_accounting.PoissonSampledDpEvent(q, dp_accounting.GaussianDpEvent(z)), rounds)


@pytest.mark.parametrize(("z", "q", "rounds", "delta"), [(1.1, 0.01, 1000, 1e-5), (2.6, 1.0, 20, 1e-4)])
def test_rdp_epsilon_equals_dp_accounting(z: float, q: float, rounds: int, delta: float) -> None:
    accountant = RdpAccountant()
    accountant.compose(direct_event(z, q, rounds))
    assert epsilon(z, q, rounds, delta) == pytest.approx(accountant.get_epsilon(delta), rel=1e-9)


@pytest.mark.parametrize(("z", "q", "rounds"), [(2.6, 1.0, 20), (1.0, 0.5, 5)])
def test_pld_epsilon_equals_dp_accounting(z: float, q: float, rounds: int) -> None:
    accountant = PLDAccountant(value_discretization_interval=PLD_DISCRETIZATION)
    accountant.compose(direct_event(z, q, rounds))
    assert epsilon_pld(z, q, rounds, 1e-4) == pytest.approx(accountant.get_epsilon(1e-4), rel=1e-9)
    assert epsilon_pld(z, q, rounds, 1e-4) <= epsilon(z, q, rounds, 1e-4)  # PLD is the tighter one here


def test_single_gaussian_matches_the_exact_calibration() -> None:
    """One unsampled round is the Gaussian mechanism: PLD agrees with its exact (epsilon, delta) curve."""
    sigma = dp_accounting.get_sigma_gaussian(2.0, 1e-5)
    assert epsilon_pld(sigma, 1.0, 1, 1e-5, discretization=1e-3) == pytest.approx(2.0, abs=0.02)
    assert epsilon(sigma, 1.0, 1, 1e-5) >= 2.0  # RDP is an upper bound


def test_epsilon_grows_with_rounds_and_sampling_and_falls_with_noise() -> None:
    assert epsilon(1.0, 1.0, 10, 1e-5) < epsilon(1.0, 1.0, 20, 1e-5)
    assert epsilon(1.0, 0.5, 10, 1e-5) < epsilon(1.0, 1.0, 10, 1e-5)  # amplification by sampling
    assert epsilon(2.0, 1.0, 10, 1e-5) < epsilon(1.0, 1.0, 10, 1e-5)
    assert epsilon(1.0, 1.0, 0, 1e-5) == 0.0
    assert math.isinf(epsilon(0.0, 0.1, 3, 1e-5))


@pytest.mark.parametrize(("target", "q", "rounds"), [
    (8.0, 1.0, 20), (1.0, 1.0, 5),
    pytest.param(4.0, 0.5, 12, marks=pytest.mark.slow),  # subsampled RDP is slow to evaluate (~30 evaluations)
])
def test_calibration_inverts_epsilon(target: float, q: float, rounds: int) -> None:
    z = calibrate_noise(target, 1e-4, q, rounds)
    assert epsilon(z, q, rounds, 1e-4) <= target
    assert epsilon(z * 0.99, q, rounds, 1e-4) > target  # 1% less noise would overspend: z is (nearly) the smallest


def test_calibration_refuses_bad_input() -> None:
    with pytest.raises(FedrecError, match="target epsilon"):
        calibrate_noise(0.0, 1e-4, 1.0, 10)
    with pytest.raises(FedrecError, match="delta"):
        calibrate_noise(8.0, 1.5, 1.0, 10)
    with pytest.raises(FedrecError, match="sampling probability"):
        epsilon(1.0, 0.0, 10, 1e-4)
