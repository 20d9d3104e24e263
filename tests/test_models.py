"""Biased MF formulas against hand-computed values, and the model contract every model must pass."""

from __future__ import annotations

import math

import pytest
import torch

from fedrec.models.base import ExampleBatch, ParamKind, gather_rows, parameter_bytes, ranking_loss
from fedrec.models.bpr import BPRConfig, BPRMF
from fedrec.models.mf import BiasedMF, MFConfig
from fedrec.models.registry import MODELS, build_model
from fedrec.errors import FedrecError


def _tiny_mf(l2: float = 0.1) -> tuple[BiasedMF, dict[str, torch.Tensor]]:
    model = BiasedMF(MFConfig(dim=2, l2=l2), num_users=2, num_items=3)
    params = {
        "user_vec": torch.tensor([[1.0, 2.0], [0.5, -1.0]]),
        "user_bias": torch.tensor([[0.1], [-0.2]]),
        "item_vec": torch.tensor([[0.3, 0.4], [1.0, 0.0], [-1.0, 1.0]]),
        "item_bias": torch.tensor([[0.2], [0.0], [-0.5]]),
        "global_bias": torch.tensor([3.5]),
    }
    return model, params


def test_mf_prediction_matches_hand_computation():
    model, params = _tiny_mf()
    rows = gather_rows(model, params, torch.tensor([0, 1]), torch.tensor([[0], [2]]))
    predicted = model.predict(rows)
    # user 0, item 0: 3.5 + 0.1 + 0.2 + (1*0.3 + 2*0.4) = 4.9
    # user 1, item 2: 3.5 - 0.2 - 0.5 + (0.5*-1 + -1*1) = 1.3
    assert predicted.shape == (1, 2, 1)
    assert predicted[0, :, 0].tolist() == pytest.approx([4.9, 1.3], abs=1e-6)


def test_mf_loss_is_squared_error_plus_l2_on_the_rows_used():
    model, params = _tiny_mf(l2=0.1)
    rows = gather_rows(model, params, torch.tensor([0]), torch.tensor([[0]]))
    loss = model.example_loss(rows, ExampleBatch(torch.tensor([[4.0]])))
    # error 0.9; reg = |p|^2 5 + b_u^2 0.01 + |q|^2 0.25 + b_i^2 0.04 = 5.30
    assert loss.shape == (1, 1)
    assert float(loss[0, 0]) == pytest.approx(0.81 + 0.1 * 5.30, abs=1e-6)


def test_mf_gradient_of_user_vector_matches_formula():
    model, params = _tiny_mf(l2=0.1)
    rows = gather_rows(model, params, torch.tensor([0]), torch.tensor([[0]]))
    rows["user_vec"].requires_grad_(True)
    model.example_loss(rows, ExampleBatch(torch.tensor([[4.0]]))).sum().backward()
    # d/dp = 2 * err * q + 2 * l2 * p = 2*0.9*[0.3,0.4] + 0.2*[1,2]
    expected = [2 * 0.9 * 0.3 + 0.2 * 1.0, 2 * 0.9 * 0.4 + 0.2 * 2.0]
    assert rows["user_vec"].grad[0, 0].tolist() == pytest.approx(expected, abs=1e-6)


def test_ranking_losses_match_hand_computation():
    """Scores (positive first) [2, 0, 1]: BPR averages -log sigmoid over the margins; softmax is one cross-entropy."""
    scores = torch.tensor([[2.0, 0.0, 1.0]])
    bpr = (math.log1p(math.exp(-2.0)) + math.log1p(math.exp(-1.0))) / 2
    softmax = -2.0 + math.log(math.exp(2.0) + math.exp(0.0) + math.exp(1.0))
    assert float(ranking_loss(scores, "bpr")[0]) == pytest.approx(bpr, abs=1e-6)
    assert float(ranking_loss(scores, "softmax")[0]) == pytest.approx(softmax, abs=1e-6)
    # one negative: the two losses are the same function of the margin
    pair = torch.tensor([[0.3, -0.4]])
    assert float(ranking_loss(pair, "softmax")[0]) == pytest.approx(float(ranking_loss(pair, "bpr")[0]), abs=1e-6)
    with pytest.raises(ValueError, match="bpr, softmax"):
        ranking_loss(scores, "hinge")


@pytest.mark.parametrize("loss", ["bpr", "softmax"])
def test_bpr_mf_loss_matches_hand_computation(loss: str):
    """score = <p_u, q_i> + b_i for the positive and each negative, then the ranking loss plus L2 on the rows used."""
    model = BPRMF(BPRConfig(dim=2, l2=0.1, negatives=2, loss=loss), num_users=1, num_items=3)
    params = {"user_vec": torch.tensor([[1.0, 2.0]]),
              "item_vec": torch.tensor([[0.3, 0.4], [1.0, 0.0], [-1.0, 1.0]]),
              "item_bias": torch.tensor([[0.2], [0.0], [-0.5]])}
    rows = gather_rows(model, params, torch.tensor([0]), torch.tensor([[0, 1, 2]]))
    # scores: 0.3 + 0.8 + 0.2 = 1.3; 1.0; -1 + 2 - 0.5 = 0.5
    s = [1.3, 1.0, 0.5]
    if loss == "bpr":
        expected = (math.log1p(math.exp(-(s[0] - s[1]))) + math.log1p(math.exp(-(s[0] - s[2])))) / 2
    else:
        expected = -s[0] + math.log(sum(math.exp(v) for v in s))
    # reg: |p|^2 5 + |q|^2 (0.25 + 1 + 2) + b^2 (0.04 + 0 + 0.25)
    expected += 0.1 * (5.0 + 3.25 + 0.29)
    assert float(model.example_loss(rows, ExampleBatch(torch.ones(1, 1)))[0, 0]) == pytest.approx(expected, abs=1e-5)


def test_unknown_ranking_loss_is_refused():
    with pytest.raises(FedrecError, match="loss"):
        build_model("bpr", {"loss": "hinge"}, 2, 3)
    with pytest.raises(FedrecError, match="does not take model.loss"):
        build_model("ncf", {"loss": "softmax"}, 2, 3)


@pytest.mark.parametrize("name", sorted(MODELS))
def test_model_contract(name: str):
    """Every model: declared shapes match init; user rows private; loss finite, (B,), differentiable."""
    model = build_model(name, {"dim": 4}, num_users=5, num_items=7)
    assert 1 <= model.item_slots <= 6
    params = model.init_params(torch.Generator().manual_seed(0))
    specs = model.param_specs()
    assert {s.name for s in specs} == set(params)
    for spec in specs:
        assert tuple(params[spec.name].shape) == spec.shape
        if spec.kind is ParamKind.PRIVATE_ROWS:
            assert spec.shape[0] == 5 and not spec.is_shared
        if spec.kind is ParamKind.SHARED_ROWS:
            assert spec.shape[0] == 7 and spec.is_shared
    assert any(s.kind is ParamKind.PRIVATE_ROWS for s in specs)
    again = model.init_params(torch.Generator().manual_seed(0))
    assert all(torch.equal(params[k], again[k]) for k in params)
    users = torch.tensor([0, 4, 2])
    items = torch.tensor([[1, 3, 5, 2, 4, 0], [6, 0, 1, 2, 3, 4], [0, 6, 5, 4, 3, 2]])[:, : model.item_slots]
    rows = {k: v.requires_grad_() for k, v in gather_rows(model, params, users, items).items()}
    loss = model.example_loss(rows, ExampleBatch(torch.tensor([[1.0, 5.0, 3.0]])))
    assert loss.shape == (1, 3) and torch.isfinite(loss).all()
    loss.sum().backward()
    assert all(v.grad is not None for v in rows.values())


@pytest.mark.parametrize("name", sorted(MODELS))
def test_extra_users_do_not_change_the_shared_start(name: str):
    """Fake users appended by an attack (or any other population size) leave the shared tensors' start as it is,
    so runs with and without them are paired at each seed. For MF and BPR the existing users' rows are kept too
    (when dim * users is a multiple of 16: torch's normal sampler draws in blocks of 16)."""
    small = build_model(name, {"dim": 16}, num_users=5, num_items=7).init_params(torch.Generator().manual_seed(3))
    large_model = build_model(name, {"dim": 16}, num_users=14, num_items=7)
    large = large_model.init_params(torch.Generator().manual_seed(3))
    for spec in large_model.param_specs():
        if spec.kind is ParamKind.PRIVATE_ROWS:
            if name in ("mf", "bpr"):
                assert torch.equal(large[spec.name][:5], small[spec.name]), spec.name
        else:
            assert torch.equal(large[spec.name], small[spec.name]), spec.name


def test_parameter_bytes():
    model = BiasedMF(MFConfig(dim=8), num_users=10, num_items=20)
    item_vec = next(s for s in model.param_specs() if s.name == "item_vec")
    assert parameter_bytes(item_vec) == 20 * 8 * 4
    assert parameter_bytes(item_vec, rows=3) == 3 * 8 * 4
    assert math.prod(item_vec.row_shape) == 8


def test_unknown_model_is_a_clear_error():
    with pytest.raises(FedrecError, match="unknown model 'nope'"):
        build_model("nope", {}, 2, 2)
