"""Size-aware update validation (defence.norm_scaling = "sqrt_size"): hand-computed cases and properties."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from fedrec.config import load_config
from fedrec.errors import FedrecError
from fedrec.federated.aggregation import CohortUpdate
from fedrec.federated.robust import ValidationSettings, relative_norms, validate_update
from fedrec.runtime.trainer import defence_settings

CONFIGS = Path(__file__).resolve().parent.parent / "configs"


def one_row_each(norms: list[float], sizes: list[float]) -> CohortUpdate:
    """Client k uploads one row (item k) of norm ``norms[k]`` (all along the first axis) and has ``sizes[k]`` examples."""
    clients = len(norms)
    deltas = torch.zeros(clients, 2)
    deltas[:, 0] = torch.tensor(norms)
    return CohortUpdate(row_items=torch.arange(clients), row_clients=torch.arange(clients),
                        row_counts=torch.ones(clients), row_deltas={"v": deltas}, dense_deltas={},
                        client_sizes=torch.tensor(sizes))


def test_relative_norms_hand_computed():
    norms = torch.tensor([2.0, 6.0, 3.0], dtype=torch.float64)
    sizes = torch.tensor([4.0, 9.0, 0.25])
    assert relative_norms(norms, sizes, "none").tolist() == [2.0, 6.0, 3.0]
    assert relative_norms(norms, sizes, "sqrt_size").tolist() == [1.0, 2.0, 3.0]  # size 0.25 clamped to 1


def test_heavy_honest_client_kept_small_outsized_client_rejected():
    # Sizes 1, 1, 1, 100, 4; norms 1, 1, 1, 8 (heavy user: 0.8 per sqrt-example) and 8 (a 4-example client).
    update = one_row_each([1.0, 1.0, 1.0, 8.0, 8.0], [1.0, 1.0, 1.0, 100.0, 4.0])
    _, raw = validate_update(update, 5, ValidationSettings(max_norm_ratio=3.0))
    assert raw.rejected_clients.tolist() == [3, 4]  # median norm 1: both 8s are > 3
    kept, scaled = validate_update(update, 5, ValidationSettings(max_norm_ratio=3.0, norm_scaling="sqrt_size"))
    # norm / sqrt(size): 1, 1, 1, 0.8, 4 -> median 1: only the 4-example client (4 > 3) is rejected
    assert scaled.rejected_clients.tolist() == [4] and scaled.rejected["norm"] == 1
    assert kept.num_clients == 4 and float(kept.row_deltas["v"][:, 0].max()) == 8.0


@settings(max_examples=30, deadline=None)
@given(norms=st.lists(st.floats(0.01, 100.0), min_size=1, max_size=12), data=st.data(),
       ratio=st.sampled_from([1.5, 3.0, 10.0]))
def test_sqrt_size_equals_the_raw_test_on_size_normalised_uploads(norms, data, ratio):
    """Scaling client k's upload by sqrt(size_k) makes the size-aware test decide exactly as the raw one did."""
    sizes = data.draw(st.lists(st.sampled_from([1.0, 4.0, 16.0, 64.0, 256.0]), min_size=len(norms), max_size=len(norms)))
    plain = one_row_each(norms, [1.0] * len(norms))
    scaled = one_row_each([n * s ** 0.5 for n, s in zip(norms, sizes)], sizes)  # powers of two: exact in float32
    _, expected = validate_update(plain, len(norms), ValidationSettings(max_norm_ratio=ratio))
    _, got = validate_update(scaled, len(norms), ValidationSettings(max_norm_ratio=ratio, norm_scaling="sqrt_size"))
    assert got.rejected_clients.tolist() == expected.rejected_clients.tolist()


@settings(max_examples=20, deadline=None)
@given(honest=st.integers(3, 10), size=st.sampled_from([1.0, 20.0, 500.0]), bad=st.sampled_from(["nan", "inf", "huge"]))
def test_sqrt_size_still_rejects_non_finite_and_huge_uploads(honest, size, bad):
    norms = [1.0] * honest + [{"nan": float("nan"), "inf": float("inf"), "huge": 1e6}[bad]]
    update = one_row_each(norms, [size] * honest + [size])
    kept, report = validate_update(update, len(norms), ValidationSettings(max_norm_ratio=3.0, norm_scaling="sqrt_size"))
    assert report.rejected_clients.tolist() == [honest] and kept.num_clients == honest
    assert report.rejected["non_finite" if bad != "huge" else "norm"] == 1


def test_bad_scaling_is_refused_in_code_and_config():
    with pytest.raises(FedrecError, match="norm_scaling"):
        ValidationSettings(norm_scaling="linear")  # type: ignore[arg-type]
    with pytest.raises(FedrecError) as error:
        load_config(CONFIGS / "ml100k-poison-defended.toml", ["defence.norm_scaling='linear'"])
    assert "defence.norm_scaling" in str(error.value) and "\n" not in str(error.value)


def test_defended_config_uses_size_aware_validation():
    defence = defence_settings(load_config(CONFIGS / "ml100k-poison-defended.toml", []))
    assert defence is not None
    assert defence.validation == ValidationSettings(max_norm_ratio=3.0, norm_scaling="sqrt_size")
    assert defence.robust.method == "mean"
