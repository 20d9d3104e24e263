"""Local DP: the analytic Gaussian mechanism (Balle & Wang 2018) and the clipped, noised upload."""

from __future__ import annotations

import math

import dp_accounting
import pytest
import torch

from fedrec.errors import FedrecError
from fedrec.privacy.ldp import LocalDP, analytic_gaussian_sigma, gaussian_delta, privatize_upload, summed_noise_stddev


@pytest.mark.parametrize(("epsilon", "delta", "sigma"), [
    # values of Balle & Wang's reference implementation (also what dp_accounting.get_sigma_gaussian gives)
    (1.0, 1e-5, 3.7306316),
    (8.0, 1e-4, 0.5430750),
    (0.1, 1e-6, 36.304690),
])
def test_known_values(epsilon: float, delta: float, sigma: float) -> None:
    assert analytic_gaussian_sigma(epsilon, delta) == pytest.approx(sigma, rel=1e-6)


@pytest.mark.parametrize("epsilon", [0.5, 1.0, 3.0, 10.0, 40.0])
def test_agrees_with_dp_accounting_and_scales_with_sensitivity(epsilon: float) -> None:
    assert analytic_gaussian_sigma(epsilon, 1e-5) == pytest.approx(dp_accounting.get_sigma_gaussian(epsilon, 1e-5), rel=1e-7)
    assert analytic_gaussian_sigma(epsilon, 1e-5, sensitivity=3.0) == pytest.approx(3 * analytic_gaussian_sigma(epsilon, 1e-5), rel=1e-7)


def test_sigma_is_the_boundary_of_the_privacy_condition() -> None:
    sigma = analytic_gaussian_sigma(2.0, 1e-5)
    assert gaussian_delta(sigma, 2.0) == pytest.approx(1e-5, rel=1e-6)
    assert gaussian_delta(sigma * 0.99, 2.0) > 1e-5 > gaussian_delta(sigma * 1.01, 2.0)


def test_beats_the_classical_gaussian_mechanism_where_that_one_is_valid() -> None:
    classical = math.sqrt(2 * math.log(1.25 / 1e-5)) / 1.0
    assert analytic_gaussian_sigma(1.0, 1e-5) < classical


def test_refuses_bad_input() -> None:
    with pytest.raises(FedrecError, match="local epsilon"):
        analytic_gaussian_sigma(0.0, 1e-5)
    with pytest.raises(FedrecError, match="local delta"):
        analytic_gaussian_sigma(1.0, 0.0)


def test_local_settings_use_sensitivity_twice_the_clip_norm() -> None:
    local = LocalDP(4.0, 1e-5, clip_norm=0.5)
    assert local.stddev == pytest.approx(analytic_gaussian_sigma(4.0, 1e-5, sensitivity=1.0))


def test_privatized_upload_is_clipped_then_noised_everywhere() -> None:
    upload = torch.full((20_000,), 0.1, dtype=torch.float64)  # norm 14.1
    clean = privatize_upload(upload, 2.0, 0.0, torch.Generator().manual_seed(0))
    assert float(clean.norm()) == pytest.approx(2.0)
    noisy = privatize_upload(upload, 2.0, 0.3, torch.Generator().manual_seed(0))
    noise = noisy - clean
    assert bool((noise != 0).all())
    assert float(noise.std()) == pytest.approx(0.3, rel=4 / math.sqrt(2 * 20_000))  # 4 standard errors


def test_summed_noise_of_independent_clients() -> None:
    assert summed_noise_stddev(0.5, 16) == pytest.approx(2.0)
