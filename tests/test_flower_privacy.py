"""Privacy and defences in a Flower deployment: the same rounds as the simulator's, node and server in one process.

Central DP and [defence] act on the server (:func:`fedrec.federated.server.server_update`, noise seeded
from (seed, round)), so a deployment reaches the simulator's model and epsilon for the same seed.
Local DP noises on the nodes: same distribution as the simulator, other draws.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from fedrec.config import load_config
from fedrec.errors import FedrecError
from fedrec.flower.federation import check_deployable, run_federation
from fedrec.flower.local_dp import mean_of_noisy_sums, node_noise_generator, noisy_local_sum
from fedrec.flower.node import InProcessNodes, load_node
from fedrec.federated.aggregation import CohortUpdate
from fedrec.federated.server import shared_shapes
from fedrec.models.mf import BiasedMF, MFConfig
from fedrec.privacy.ldp import LocalDP
from fedrec.runtime.checkpoint import CHECKPOINT_NAME, load_checkpoint
from fedrec.runtime.trainer import budget_stop_reason, privacy_settings, train

SYNTHETIC = ["data.name='synthetic'", "data.num_users=80", "data.num_items=50", "data.mean_interactions=10",
             "model.dim=6", "train.rounds=3", "train.client_fraction=0.5", "train.batch_size=4",
             "train.server_optimizer='adam'", "train.server_lr=0.05", "train.eval_every=3"]


def _tensors(path: Path, prefixes: tuple[str, ...] = ("param/", "server/", "privacy/")) -> dict[str, torch.Tensor]:
    tensors, _ = load_checkpoint(path / CHECKPOINT_NAME)
    return {k: v for k, v in tensors.items() if k.startswith(prefixes)}


def _history(path: Path) -> list[dict]:
    return [json.loads(line) for line in (path / "history.jsonl").read_text().splitlines()]


def _deploy_and_simulate(tmp_path: Path, settings: list[str], nodes: int = 3):
    config = load_config(None, SYNTHETIC + settings)
    simulated = train(config, tmp_path / "sim")
    deployed = run_federation(config, InProcessNodes([load_node(config, k, nodes) for k in range(nodes)]),
                              tmp_path / "dep", expected_nodes=nodes)
    return config, simulated, deployed


def _assert_same_model(tmp_path: Path, atol: float = 1e-6) -> None:
    deployed, simulated = _tensors(tmp_path / "dep"), _tensors(tmp_path / "sim")
    assert any(k.startswith("param/") for k in deployed)
    for name, value in deployed.items():
        torch.testing.assert_close(value, simulated[name], atol=atol, rtol=0, msg=name)


@pytest.mark.parametrize("settings", [
    ["privacy.noise_multiplier=0.8", "privacy.delta=1e-3", "privacy.clip_norm=0.5", "privacy.adaptive_clip=true",
     "privacy.clip_count_stddev=2.0", "train.rounds=2", "train.eval_every=1"],
    pytest.param(["privacy.epsilon=8.0", "privacy.delta=1e-3"], marks=pytest.mark.slow),  # calibration: ~10 s
], ids=["noise-multiplier-adaptive-clip", "target-epsilon"])
def test_central_dp_deployment_equals_the_simulator_model_and_epsilon(tmp_path, settings):
    config, simulated, deployed = _deploy_and_simulate(tmp_path, settings)
    _assert_same_model(tmp_path)
    assert "privacy/clip_norm" in _tensors(tmp_path / "dep") or not config.privacy.adaptive_clip
    sim_history, dep_history = _history(tmp_path / "sim"), _history(tmp_path / "dep")
    assert len(dep_history) == config.train.rounds
    for sim, dep in zip(sim_history, dep_history):
        assert dep["clients"] == sim["clients"]  # the same Poisson cohort
        for key in ("epsilon", "epsilon_pld", "delta", "clip_norm"):
            if key in sim:
                assert dep[key] == pytest.approx(sim[key], rel=1e-9), key
    assert [h["epsilon"] for h in dep_history] == sorted(h["epsilon"] for h in dep_history)
    for key in ("epsilon", "delta", "noise_multiplier", "sampling_prob", "expected_clients", "privacy_mode", "rmse"):
        assert deployed[key] == pytest.approx(simulated[key], rel=1e-6) if isinstance(simulated[key], float) \
            else deployed[key] == simulated[key], key
    if config.privacy.epsilon is not None:
        assert deployed["epsilon"] <= config.privacy.epsilon * (1 + 1e-9)


def test_poisson_cohorts_differ_in_size_and_match_the_simulator(tmp_path):
    _, _, _ = _deploy_and_simulate(tmp_path, ["privacy.noise_multiplier=1.0", "privacy.delta=1e-3",
                                              "train.rounds=4", "train.eval_every=4"], nodes=2)
    sizes = [h["clients"] for h in _history(tmp_path / "dep")]
    assert sizes == [h["clients"] for h in _history(tmp_path / "sim")]
    assert len(set(sizes)) > 1  # Poisson sampling, not a fixed cohort size


def test_defences_in_deployment_equal_the_simulator_and_count_rejections(tmp_path):
    settings = ["defence.check_uploads=true", "defence.max_norm=0.05", "defence.aggregator='trimmed_mean'",
                "defence.trim_fraction=0.2", "train.eval_every=1"]
    _, simulated, deployed = _deploy_and_simulate(tmp_path, settings)
    _assert_same_model(tmp_path)
    sim_history, dep_history = _history(tmp_path / "sim"), _history(tmp_path / "dep")
    assert [h["rejected_by_reason"] for h in dep_history] == [h["rejected_by_reason"] for h in sim_history]
    assert sum(h["rejected"] for h in dep_history) > 0  # the absolute norm bound rejected somebody
    assert deployed["rmse"] == pytest.approx(simulated["rmse"], abs=1e-6)


def _toy_update() -> tuple[BiasedMF, CohortUpdate]:
    """Two clients: client 0 sends item rows 0 and 2, client 1 sends item row 2 (zero biases, zero mu)."""
    model = BiasedMF(MFConfig(dim=2, global_mean=3.0), 4, 3)
    update = CohortUpdate(
        row_items=torch.tensor([0, 2, 2]), row_clients=torch.tensor([0, 0, 1]), row_counts=torch.ones(3),
        row_deltas={"item_vec": torch.tensor([[3.0, 0.0], [0.0, 4.0], [1.0, 0.0]]), "item_bias": torch.zeros(3, 1)},
        dense_deltas={"global_bias": torch.zeros(2, 1)}, client_sizes=torch.tensor([2.0, 1.0]))
    return model, update


def test_noisy_local_sum_clips_each_client_then_adds_the_summed_noise():
    model, update = _toy_update()
    exact = LocalDP(1e9, 1e-5, clip_norm=1.0)  # negligible noise: the clipped sum, by hand
    sums = noisy_local_sum(model, update, exact, node_noise_generator(0, 0, 0))
    # client 0 sent (3,0) and (0,4): norm 5, scaled to 1/5; client 1 sent (1,0): norm 1, kept
    expected = torch.tensor([[0.6, 0.0], [0.0, 0.0], [1.0, 0.8]])
    torch.testing.assert_close(sums["item_vec"], expected, atol=1e-4, rtol=0)
    noisy = LocalDP(1.0, 1e-5, clip_norm=1.0)
    draws = torch.stack([noisy_local_sum(model, update, noisy, node_noise_generator(0, r, 1))["item_vec"]
                         for r in range(400)])
    residual = draws - expected
    assert residual.std().item() == pytest.approx(noisy.stddev * math.sqrt(2), rel=0.1)  # two clients' noise
    a = noisy_local_sum(model, update, noisy, node_noise_generator(0, 3, 0))["item_vec"]
    b = noisy_local_sum(model, update, noisy, node_noise_generator(0, 3, 1))["item_vec"]
    assert not torch.equal(a, b)  # every node draws its own noise
    node_sum = {"item_vec": expected, "item_bias": torch.zeros(3, 1), "global_bias": torch.zeros(1)}
    mean = mean_of_noisy_sums([node_sum, node_sum], shared_shapes(model), 4)
    torch.testing.assert_close(mean["item_vec"], expected / 2)


def test_local_dp_deployment_noises_on_the_nodes(tmp_path):
    base = ["privacy.mode='local'", "privacy.delta=1e-5", "privacy.clip_norm=0.5"]
    # negligible noise: the deployment is the simulator's run
    _deploy_and_simulate(tmp_path / "quiet", base + ["privacy.epsilon=1e9", "train.server_optimizer='sgd'",
                                                    "train.server_lr=1.0"])
    _assert_same_model(tmp_path / "quiet", atol=1e-4)
    config = load_config(None, SYNTHETIC + base + ["privacy.epsilon=2.0"])
    nodes = InProcessNodes([load_node(config, k, 2) for k in range(2)])
    metrics = run_federation(config, nodes, tmp_path / "noisy", expected_nodes=2)
    assert metrics["privacy_mode"] == "local" and metrics["local_epsilon"] == 2.0
    assert metrics["local_noise_stddev"] == pytest.approx(privacy_settings(config, 0).stddev)
    assert all(h["local_epsilon"] == 2.0 for h in _history(tmp_path / "noisy"))
    assert math.isfinite(metrics["rmse"])
    # what a node uploads is dense (every item row noised), never a client's own rows
    view = next(iter(nodes.views.values()))
    from flwr.app import ArrayRecord, ConfigRecord, RecordDict

    from fedrec.flower.codec import record_to_tensors, tensors_to_record
    from fedrec.flower.node import CLIENTS, SHARED, TASK, UPDATE, handle_train

    shared = {n: v for n, v in view.model.init_params(torch.Generator().manual_seed(0)).items()
              if n in view.model.shared_names()}
    content = RecordDict({SHARED: tensors_to_record(shared), TASK: ConfigRecord({"round": 0}),
                          CLIENTS: ArrayRecord({"cohort": torch.from_numpy(view.clients[:5].astype(np.int64))})})
    upload = record_to_tensors(handle_train(view, RecordDict(), content).array_records[UPDATE])
    assert set(upload) == set(shared) and upload["item_vec"].shape == shared["item_vec"].shape
    assert bool((upload["item_vec"] != 0).all())


def test_budget_stop_reason_names_the_round_and_the_target():
    config = load_config(None, SYNTHETIC + ["privacy.epsilon=1.0", "privacy.delta=1e-3"])
    privacy = privacy_settings(config, 80, noise_multiplier=0.5)  # too little noise for 3 rounds at epsilon 1
    reason = budget_stop_reason(config, privacy, 0)
    assert reason is not None and "round 1" in reason and "privacy.epsilon = 1" in reason
    assert budget_stop_reason(config, privacy_settings(config, 80, noise_multiplier=50.0), 2) is None


def test_privacy_and_defences_are_deployable_simulation_only_settings_are_refused():
    check_deployable(load_config(None, SYNTHETIC + ["privacy.noise_multiplier=1.0", "privacy.delta=1e-3"]))
    check_deployable(load_config(None, SYNTHETIC + ["defence.aggregator='median'"]))
    check_deployable(load_config(None, SYNTHETIC + ["eval.finetune_epochs=1"]))
    for setting, message in [("train.client_dropout=0.2", "stragglers"),
                             ("privacy.hiding='dense'", "hiding")]:
        with pytest.raises(FedrecError, match=message):
            check_deployable(load_config(None, SYNTHETIC + [setting]))


def test_deployment_stops_before_a_round_that_would_exceed_the_budget(tmp_path, monkeypatch, capsys):
    """With less noise than the target needs (as after a resume with more rounds), the server stops early."""
    import fedrec.runtime.trainer as trainer

    calibrated = trainer.privacy_settings
    monkeypatch.setattr(trainer, "privacy_settings", lambda config, eligible, noise_multiplier=None: calibrated(
        config, eligible, noise_multiplier=1.2))
    config = load_config(None, SYNTHETIC + ["privacy.epsilon=3.0", "privacy.delta=1e-3", "train.rounds=3"])
    expected = budget_stop_reason(config, calibrated(config, 80, noise_multiplier=1.2), 0)
    from fedrec.privacy.accountant import epsilon

    spent = [epsilon(1.2, 0.5, rounds, 1e-3) for rounds in (1, 2, 3)]  # 2.06, 2.86, 3.48
    allowed = sum(e <= 3.0 for e in spent)
    assert expected is None and allowed == 2  # the setting stops before round 3
    metrics = run_federation(config, InProcessNodes([load_node(config, k, 2) for k in range(2)]), tmp_path / "dep",
                             expected_nodes=2)
    assert metrics["rounds"] == allowed and len(_history(tmp_path / "dep")) == allowed
    assert metrics["epsilon"] == pytest.approx(spent[allowed - 1]) and metrics["epsilon"] <= 3.0
    assert f"round {allowed + 1} would spend" in metrics["stopped"] and "privacy budget reached" in capsys.readouterr().err
    assert math.isfinite(metrics["rmse"])  # the final model is evaluated although round 3 never ran
    _, meta = load_checkpoint(tmp_path / "dep" / CHECKPOINT_NAME)
    assert meta["round"] == allowed and meta["noise_multiplier"] == 1.2
