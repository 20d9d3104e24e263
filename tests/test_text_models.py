"""Text-aware models: formulas by hand, the model contract, frozen text rows, backend equivalence."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from fedrec.data.synthetic import make_synthetic
from fedrec.errors import FedrecError
from fedrec.federated.cohort import ClientData
from fedrec.federated.local import LocalTraining
from fedrec.federated.server import BACKENDS
from fedrec.federated.server_opt import ServerOptimizer
from fedrec.models.base import ExampleBatch, ParamKind, gather_rows, score_items_in_chunks
from fedrec.models.registry import COLD_START_MODELS, IMPLICIT_MODELS, TEXT_MODELS, build_model
from tests.test_backends import _run

TEXT_DIM = 5


def _text(num_items: int, seed: int = 0) -> torch.Tensor:
    return torch.nn.functional.normalize(torch.randn(num_items, TEXT_DIM, generator=torch.Generator().manual_seed(seed)), dim=1)


def _hand_model(name: str, **options):
    """2 users, 3 items, dim 2, text dim 2, linear adapter: small enough to score by hand."""
    text = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.6, 0.8]])
    model = build_model(name, {"dim": 2, "l2": 0.1, **options}, 2, 3, item_text=text)
    params = model.init_params(torch.Generator().manual_seed(0))
    params["user_vec"] = torch.tensor([[1.0, 2.0], [0.5, -1.0]])
    params["adapter_w"] = torch.tensor([[1.0, 0.0], [1.0, 1.0]])  # A(t) = t @ W + b
    params["adapter_b"] = torch.tensor([0.1, -0.1])
    if "item_vec" in params:
        params["item_vec"] = torch.tensor([[0.3, 0.4], [1.0, 0.0], [-1.0, 1.0]])
        params["item_bias"] = torch.tensor([[0.2], [0.0], [-0.5]])
    return model, params


def test_tower_scores_match_hand_computation():
    model, params = _hand_model("tower_bpr")
    rows = gather_rows(model, params, torch.tensor([0, 1]), torch.tensor([[2, 0], [1, 2]]))
    # A(t2) = [0.6 + 0.8, 0.8] + [0.1, -0.1] = [1.5, 0.7]; A(t0) = [1.1, -0.1]; A(t1) = [1.1, 0.9]
    # user 0: <[1,2],[1.5,0.7]> = 2.9, <[1,2],[1.1,-0.1]> = 0.9; user 1: <[.5,-1],[1.1,.9]> = -0.35, <.,[1.5,.7]> = 0.05
    torch.testing.assert_close(model.predict(rows)[0], torch.tensor([[2.9, 0.9], [-0.35, 0.05]]))
    loss = model.example_loss(rows, ExampleBatch(torch.ones(1, 2)))
    # -log sigmoid(2.9 - 0.9) + 0.1 * |p_0|^2 = 0.126928 + 0.5
    assert float(loss[0, 0]) == pytest.approx(float(-torch.nn.functional.logsigmoid(torch.tensor(2.0))) + 0.5, abs=1e-6)


@pytest.mark.parametrize("loss", ["bpr", "softmax"])
def test_tower_ranking_losses_match_hand_computation(loss: str):
    """User 0, positive item 2 and negatives 0, 1 (scores 2.9, 0.9, 2.9 from the hand model above), plus the L2."""
    model, params = _hand_model("tower_bpr", loss=loss, negatives=2)
    rows = gather_rows(model, params, torch.tensor([0]), torch.tensor([[2, 0, 1]]))
    # A(t1) = [0 + 1, 1] + [0.1, -0.1] = [1.1, 0.9]; <[1, 2], [1.1, 0.9]> = 2.9
    torch.testing.assert_close(model.predict(rows)[0, 0], torch.tensor([2.9, 0.9, 2.9]))
    if loss == "bpr":  # the mean of -log sigmoid over the margins 2.0 and 0.0
        expected = (math.log1p(math.exp(-2.0)) + math.log(2.0)) / 2
    else:  # one softmax over all three: -2.9 + log(2 e^2.9 + e^0.9)
        expected = -2.9 + math.log(2 * math.exp(2.9) + math.exp(0.9))
    loss_value = float(model.example_loss(rows, ExampleBatch(torch.ones(1, 1)))[0, 0])
    assert loss_value == pytest.approx(expected + 0.5, abs=1e-6)  # 0.1 * |p_0|^2 = 0.5


def test_rating_and_ranking_text_models_refuse_each_others_loss():
    with pytest.raises(FedrecError, match="squared error"):
        build_model("text_mf", {"loss": "softmax"}, 3, 4, item_text=_text(4))
    with pytest.raises(FedrecError, match="implicit-feedback"):
        build_model("tower_bpr", {"loss": "mse"}, 3, 4, item_text=_text(4))


def test_id_plus_text_scores_and_mse_loss_match_hand_computation():
    model, params = _hand_model("text_mf")
    params["global_bias"] = torch.tensor([3.0])
    params["user_bias"] = torch.tensor([[0.1], [-0.2]])
    rows = gather_rows(model, params, torch.tensor([0]), torch.tensor([[0]]))
    # q_0 = e_0 + A(t_0) = [0.3, 0.4] + [1.1, -0.1] = [1.4, 0.3]; 3 + 0.1 + 0.2 + <[1,2],[1.4,0.3]> = 5.3
    assert float(model.predict(rows)[0, 0, 0]) == pytest.approx(5.3, abs=1e-6)
    loss = model.example_loss(rows, ExampleBatch(torch.tensor([[5.0]])))
    # error 0.3; reg = |p|^2 5 + b_u^2 0.01 + |e|^2 0.25 + b_i^2 0.04 = 5.30 (the text is not penalised)
    assert float(loss[0, 0]) == pytest.approx(0.09 + 0.1 * 5.30, abs=1e-6)


@pytest.mark.parametrize("name", sorted(TEXT_MODELS))
@pytest.mark.parametrize("adapter", ["linear", "mlp"])
def test_text_model_contract(name: str, adapter: str):
    """The contract of tests/test_models.py, plus: the text table is shared rows that get no gradient."""
    model = build_model(name, {"dim": 4, "text_adapter": adapter, "adapter_hidden": 6}, 5, 7, item_text=_text(7))
    params = model.init_params(torch.Generator().manual_seed(0))
    specs = model.param_specs()
    assert {s.name for s in specs} == set(params)
    for spec in specs:
        assert tuple(params[spec.name].shape) == spec.shape
        if spec.kind is ParamKind.PRIVATE_ROWS:
            assert spec.shape[0] == 5 and not spec.is_shared
        if spec.kind is ParamKind.SHARED_ROWS:
            assert spec.shape[0] == 7
    assert any(s.name.startswith("adapter_") and s.kind is ParamKind.SHARED_DENSE for s in specs)
    again = model.init_params(torch.Generator().manual_seed(0))
    assert all(torch.equal(params[k], again[k]) for k in params)
    users = torch.tensor([0, 4, 2])
    items = torch.tensor([[1, 3, 5, 2], [6, 0, 1, 2], [0, 6, 5, 4]])[:, : model.item_slots]
    rows = {k: v.clone().requires_grad_() for k, v in gather_rows(model, params, users, items).items()}
    loss = model.example_loss(rows, ExampleBatch(torch.tensor([[1.0, 5.0, 3.0]])))
    assert loss.shape == (1, 3) and torch.isfinite(loss).all()
    loss.sum().backward()
    assert all(v.grad is not None for v in rows.values())
    assert torch.count_nonzero(rows["item_text"].grad) == 0  # frozen: exactly zero gradient
    assert rows["user_vec"].grad.abs().sum() > 0
    # score_all agrees with predict on gathered rows
    every = score_items_in_chunks(model, users, lambda u, i: gather_rows(model, params, u, i))
    torch.testing.assert_close(model.score_all(params, users), every, atol=1e-5, rtol=0)


def test_registry_sets_and_missing_text_error():
    assert {"text_bpr", "tower_bpr"} <= IMPLICIT_MODELS and "text_mf" not in IMPLICIT_MODELS
    assert COLD_START_MODELS == set(TEXT_MODELS)
    with pytest.raises(FedrecError, match="needs the items' text embeddings"):
        build_model("text_bpr", {}, 3, 4)
    with pytest.raises(FedrecError, match="does not take model.layers"):
        build_model("tower_bpr", {"layers": (4,)}, 3, 4, item_text=_text(4))
    with pytest.raises(FedrecError, match="invalid model settings"):
        build_model("tower_bpr", {}, 3, 4, item_text=_text(5))


def test_unseen_item_scores_by_text_alone():
    """ID residuals start at zero: an item no one trained scores <p_u, A(t_i)> in the ID + text model."""
    text = _text(6)
    id_text = build_model("text_bpr", {"dim": 3}, 2, 6, item_text=text)
    tower = build_model("tower_bpr", {"dim": 3}, 2, 6, item_text=text)
    p1 = id_text.init_params(torch.Generator().manual_seed(1))
    p2 = {k: p1[k] for k in tower.init_params(torch.Generator().manual_seed(1))}
    torch.testing.assert_close(id_text.score_all(p1, torch.tensor([0, 1])), tower.score_all(p2, torch.tensor([0, 1])))


@pytest.mark.parametrize(
    "name, options",
    [
        ("text_bpr", dict(dim=4, negatives=2)),
        ("text_bpr", dict(dim=4, negatives=3, loss="softmax")),
        ("tower_bpr", dict(dim=4, negatives=3, text_adapter="mlp", adapter_hidden=6)),
        ("text_mf", dict(dim=4)),
    ],
)
def test_vectorized_equals_reference_text_models(name, options):
    """The helper of tests/test_backends.py: both backends reach the same model; the text stays frozen."""
    dataset = make_synthetic(num_users=40, num_items=30, mean_interactions=10, seed=3)
    data = ClientData.from_interactions(dataset.interactions, np.arange(40), 40, num_items=30)
    text = _text(30, seed=2)
    model = build_model(name, options, 40, 30, item_text=text)
    kwargs = dict(local=LocalTraining(epochs=2, lr=0.1, batch_size=4), client_fraction=0.5,
                  server=ServerOptimizer("adam", lr=0.01))
    ref = _run(model, data, "reference", rounds=2, **kwargs)
    vec = _run(model, data, "vectorized", rounds=2, **kwargs)
    for key in ref.params:
        torch.testing.assert_close(vec.params[key], ref.params[key], atol=1e-5, rtol=0)
    assert torch.equal(vec.params["item_text"], text)
    assert not torch.equal(vec.params["adapter_w"], model.init_params(torch.Generator().manual_seed(5))["adapter_w"])


@pytest.mark.parametrize("backend", ["vectorized", "reference"])
def test_frozen_text_rows_are_never_uploaded_noised_or_given_server_state(backend):
    """item_text is trainable=False: no deltas, no upload bytes, no DP noise, no server Adam state."""
    from fedrec.federated.server import FedAvgSettings, ServerState, run_round, upload_bytes
    from fedrec.privacy.dp import CentralDP

    dataset = make_synthetic(num_users=30, num_items=20, mean_interactions=8, seed=4)
    data = ClientData.from_interactions(dataset.interactions, np.arange(30), 30, num_items=20)
    text = _text(20, seed=1)
    model = build_model("text_bpr", dict(dim=4, negatives=2), 30, 20, item_text=text)
    assert [s.name for s in model.param_specs() if not s.is_uploaded and s.is_shared] == ["item_text"]
    assert "item_text" in model.shared_names() and "item_text" not in model.uploaded_names()
    local = LocalTraining(epochs=1, lr=0.1, batch_size=4)
    result = BACKENDS[backend](model, model.init_params(torch.Generator().manual_seed(0)), data, np.arange(30), local, 1, 0)
    assert set(result.update.row_deltas) == {"item_vec", "item_bias"}
    rows = int(result.update.row_items.shape[0])
    # per touched row: int32 index + item_vec (4 floats) + item_bias (1 float); dense: adapter_w (5x4) + adapter_b (4)
    assert upload_bytes(model, result.update) == rows * (4 + 4 * 5) + 30 * 4 * (TEXT_DIM * 4 + 4)

    dp = CentralDP(noise_multiplier=5.0, clip_norm=0.5, expected_clients=30.0)
    settings = FedAvgSettings(backend=backend, local=local, server=ServerOptimizer("adam", lr=0.05), privacy=dp)
    state = ServerState(0, model.init_params(torch.Generator().manual_seed(0)))
    for _ in range(2):
        state, stats = run_round(model, state, data, settings, seed=3)
    assert torch.equal(state.params["item_text"], text)  # heavy noise reached every other shared tensor
    assert not torch.equal(state.params["item_vec"], torch.zeros(20, 4))
    assert not any(key.startswith("item_text") for key in state.optimizer_state)
    assert stats.bytes_up > 0


def test_centralised_training_steps_every_tensor_but_the_constant_text():
    from fedrec.runtime.centralized import CentralSettings, make_optimizer, train_epoch, trained_leaves

    dataset = make_synthetic(num_users=20, num_items=15, mean_interactions=6, seed=2)
    data = ClientData.from_interactions(dataset.interactions, np.arange(20), 20, num_items=15)
    text = _text(15, seed=4)
    model = build_model("text_bpr", dict(dim=3, negatives=1), 20, 15, item_text=text)
    params = model.init_params(torch.Generator().manual_seed(0))
    start = {name: value.clone() for name, value in params.items()}
    leaves = trained_leaves(model, params)
    assert "item_text" not in leaves and not params["item_text"].requires_grad
    train_epoch(model, params, make_optimizer(leaves, CentralSettings(lr=0.05, batch_size=16)), data, 16, 0, 0)
    assert torch.equal(params["item_text"], text)
    assert all(not torch.equal(params[name], start[name]) for name in ("user_vec", "item_vec", "adapter_w"))


def _tower_setup():
    dataset = make_synthetic(num_users=24, num_items=18, mean_interactions=6, seed=6)
    data = ClientData.from_interactions(dataset.interactions, np.arange(24), 24, num_items=18)
    return build_model("tower_bpr", dict(dim=4, negatives=2), 24, 18, item_text=_text(18, seed=3)), data


def _tower_settings(**kwargs):
    from fedrec.federated.server import FedAvgSettings

    return FedAvgSettings(local=LocalTraining(epochs=1, lr=0.1, batch_size=4), server=ServerOptimizer("adam", lr=0.05),
                          **kwargs)


def _secure():
    from fedrec.privacy.cohort_sum import SecureAggregation
    from fedrec.privacy.secagg import SecAggSettings

    return SecureAggregation(SecAggSettings())


@pytest.mark.parametrize("option", ["plain", "reference", "compression", "central_dp", "local_dp", "secure", "pseudo"])
def test_a_text_tower_uploads_no_item_rows_under_every_upload_option(option):
    """The tower's only item table is the constant text: its uploads carry no item rows or indices, and every
    upload path (compression, DP, secure aggregation, item hiding) runs on the adapter alone."""
    from fedrec.federated.compression import Compression
    from fedrec.federated.server import ServerState, full_upload_bytes, run_round
    from fedrec.models.base import parameter_bytes
    from fedrec.privacy.dp import CentralDP
    from fedrec.privacy.hiding_settings import HidingSettings
    from fedrec.privacy.ldp import LocalDP

    model, data = _tower_setup()
    options = {"plain": {}, "reference": dict(backend="reference"), "compression": dict(compression=Compression(bits=8)),
               "central_dp": dict(privacy=CentralDP(noise_multiplier=1.0, clip_norm=0.5, expected_clients=24.0)),
               "local_dp": dict(privacy=LocalDP(4.0, 1e-5, clip_norm=0.5)), "secure": dict(secure_aggregation=_secure()),
               "pseudo": dict(hiding=HidingSettings("pseudo", pseudo_items=3, pseudo_values="bootstrap"),
                             secure_aggregation=_secure())}
    settings = _tower_settings(**options[option])
    start = model.init_params(torch.Generator().manual_seed(0))
    result = BACKENDS[settings.backend](model, start, data, np.arange(24), settings.local, 1, 0)
    assert result.update.row_items.numel() == 0 and result.update.row_deltas == {}
    state, stats = run_round(model, ServerState(0, start), data, settings, seed=2)
    assert torch.equal(state.params["item_text"], start["item_text"])
    assert not torch.equal(state.params["adapter_w"], start["adapter_w"])
    adapter = sum(parameter_bytes(s) for s in model.param_specs() if s.is_uploaded)
    assert full_upload_bytes(model, 24) == 24 * adapter
    if option in ("plain", "reference", "central_dp", "local_dp"):
        assert stats.bytes_up == 24 * adapter  # the adapter in full, no item rows and no indices


def test_attacks_on_a_text_tower_have_no_item_rows_to_craft():
    from fedrec.federated.attacks import AttackSettings, pip_attack_direction

    model, _ = _tower_setup()
    params = model.init_params(torch.Generator().manual_seed(0))
    assert pip_attack_direction(model, params, torch.tensor([1, 2]), torch.tensor([3]), torch.tensor([0]),
                                AttackSettings(method="pip_attack")) == {}
