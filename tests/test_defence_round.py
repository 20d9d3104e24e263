"""Defences wired into the round: a corrupted upload is rejected and never applied; config and outputs."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from fedrec.config import load_config
from fedrec.data.synthetic import make_synthetic
from fedrec.errors import FedrecError
from fedrec.federated import server as server_module
from fedrec.federated.aggregation import aggregate
from fedrec.federated.cohort import ClientData
from fedrec.federated.robust import DefenceSettings, RobustSettings, keep_clients
from fedrec.federated.server import FedAvgSettings, ServerState, run_round
from fedrec.models.mf import BiasedMF, MFConfig

ROOT = Path(__file__).resolve().parents[1]
TINY = ["data.num_users=80", "data.num_items=60", "train.rounds=2", "model.dim=4"]


def _setup():
    dataset = make_synthetic(num_users=50, num_items=40, mean_interactions=10, seed=4)
    train = dataset.interactions
    data = ClientData.from_interactions(train, np.arange(50), 50)
    model = BiasedMF(MFConfig(dim=4, l2=0.05, global_mean=float(train.ratings.mean())), 50, 40)
    return model, data


@pytest.mark.parametrize("corruption", ["nan", "inf", "huge"])
def test_corrupted_client_never_changes_the_model(monkeypatch, corruption):
    model, data = _setup()
    state = ServerState(0, model.init_params(torch.Generator().manual_seed(1)))
    honest_train = server_module.BACKENDS["vectorized"]
    bad = 3  # cohort position of the attacker
    captured = {}

    def corrupted_train(*args, **kwargs):
        result = honest_train(*args, **kwargs)
        captured["honest"] = result.update
        rows = result.update.row_clients == bad
        poisoned = result.update.row_deltas["item_vec"].clone()
        poisoned[rows] = {"nan": float("nan"), "inf": float("inf"), "huge": 1e6}[corruption]
        result.update.row_deltas["item_vec"] = poisoned
        return result

    monkeypatch.setitem(server_module.BACKENDS, "vectorized", corrupted_train)
    settings = FedAvgSettings(defence=DefenceSettings())
    new_state, stats = run_round(model, state, data, settings, seed=7)
    assert sum(stats.rejected.values()) == 1
    # Expected: the honest clients' aggregate only, applied by the same server step.
    honest = keep_clients(captured["honest"], torch.arange(captured["honest"].num_clients) != bad)
    deltas = aggregate(honest, 40, settings.row_weighting)
    expected, _ = settings.server.step(state.params, deltas, {})
    for name in model.shared_names():
        torch.testing.assert_close(new_state.params[name], expected[name])
        assert torch.isfinite(new_state.params[name]).all()


def test_median_round_matches_robust_aggregate_of_the_same_uploads(monkeypatch):
    model, data = _setup()
    state = ServerState(0, model.init_params(torch.Generator().manual_seed(2)))
    settings = FedAvgSettings(defence=DefenceSettings(robust=RobustSettings(method="median")))
    plain = FedAvgSettings()
    with_median, _ = run_round(model, state, data, settings, seed=3)
    without, _ = run_round(model, state, data, plain, seed=3)
    # Same local training (private rows equal), different aggregation of the shared rows.
    torch.testing.assert_close(with_median.params["user_vec"], without.params["user_vec"])
    assert not torch.allclose(with_median.params["item_vec"], without.params["item_vec"])


def test_defence_config_end_to_end(tmp_path):
    from fedrec.runtime.trainer import train

    config = load_config(ROOT / "configs" / "default.toml",
                         TINY + ["defence.check_uploads=true", "defence.aggregator=\"trimmed_mean\""])
    metrics = train(config, tmp_path)
    history = [json.loads(line) for line in (tmp_path / "history.jsonl").read_text().splitlines()]
    assert [entry["rejected"] for entry in history] == [0, 0]
    assert np.isfinite(metrics["rmse"])


@pytest.mark.parametrize("overrides, message", [
    (["defence.aggregator=\"norm_bound\""], "needs defence.clip_norm"),
    (["defence.check_uploads=true", "privacy.epsilon=8", "privacy.delta=1e-4"], "cannot be combined"),
    (["defence.aggregator=\"median\"", "train.mode=\"centralized\""], "federated training only"),
])
def test_defence_config_errors_are_one_line(overrides, message):
    with pytest.raises(FedrecError, match=message) as error:
        load_config(ROOT / "configs" / "default.toml", overrides)
    assert "\n" not in str(error.value)
