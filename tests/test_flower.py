"""Flower deployment: same model as the simulator for the same seed and cohort; node failures are bounded.

Fast tests run the node and server code in one process (the handlers the Flower apps call, on the
same records). Tests marked slow start a real SuperLink and SuperNodes on loopback.
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path

import numpy as np
import psutil
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from fedrec.config import load_config
from fedrec.data.synthetic import make_synthetic
from fedrec.errors import FedrecError
from fedrec.federated.cohort import ClientData, sample_cohort
from fedrec.federated.local import LocalTraining
from fedrec.federated.vectorized import train_cohort_vectorized
from fedrec.flower.codec import merge_in_cohort_order, record_to_update, serialized_bytes, update_to_record
from fedrec.flower.federation import run_federation
from fedrec.flower.node import InProcessNodes, combine_metrics, load_node, node_clients
from fedrec.models.base import ParamKind
from fedrec.models.mf import BiasedMF, MFConfig
from fedrec.runtime.checkpoint import CHECKPOINT_NAME, load_checkpoint
from fedrec.runtime.trainer import train

SYNTHETIC = ["data.name='synthetic'", "data.num_users=80", "data.num_items=50", "data.mean_interactions=10",
             "model.dim=6", "train.rounds=3", "train.client_fraction=0.5", "train.batch_size=4",
             "train.server_optimizer='adam'", "train.server_lr=0.05", "train.eval_every=3"]


def _shared_tensors(path: Path) -> dict[str, torch.Tensor]:
    tensors, _ = load_checkpoint(path / CHECKPOINT_NAME)
    return {k: v for k, v in tensors.items() if k.startswith(("param/", "server/"))}


def _assert_same_shared(simulated: Path, deployed: Path, atol: float = 1e-5, has_private_rows: bool = True) -> None:
    deployed_tensors = _shared_tensors(deployed)
    simulated_tensors = _shared_tensors(simulated)
    assert deployed_tensors, "the deployment wrote no parameters"
    for name, value in deployed_tensors.items():
        torch.testing.assert_close(value, simulated_tensors[name], atol=atol, rtol=0, msg=name)
    private = [k for k in simulated_tensors if k.startswith("param/user")]
    assert bool(private) == has_private_rows and not any(k in deployed_tensors for k in private), \
        "private rows must stay on the nodes"


# -- pure pieces -------------------------------------------------------------------------------


def test_node_clients_are_disjoint_blocks_covering_everyone():
    blocks = [node_clients(10, k, 3) for k in range(3)]
    assert [b.tolist() for b in blocks] == [[0, 1, 2, 3], [4, 5, 6], [7, 8, 9]]
    with pytest.raises(FedrecError, match="partition-id"):
        node_clients(10, 3, 3)
    with pytest.raises(FedrecError, match="fewer nodes"):
        node_clients(2, 0, 3)


def test_combine_metrics_matches_the_pooled_computation():
    errors_a, errors_b = np.array([1.0, -2.0, 0.5]), np.array([3.0])
    part = lambda e: {"rmse": float(np.sqrt(np.mean(e**2))), "mae": float(np.mean(np.abs(e))), "count": len(e),
                      "val_count": 0}
    pooled = np.concatenate([errors_a, errors_b])
    combined = combine_metrics([part(errors_a), part(errors_b)], ranking=False)
    assert combined["rmse"] == pytest.approx(math.sqrt(np.mean(pooled**2)))
    assert combined["mae"] == pytest.approx(np.mean(np.abs(pooled)))
    assert "val_rmse" not in combined
    ranking = combine_metrics([{"hr@10": 1.0, "evaluated_users": 1}, {"hr@10": 0.25, "evaluated_users": 4}], True)
    assert ranking == {"hr@10": pytest.approx(2.0 / 5), "evaluated_users": 5}


def _cohort_setup():
    dataset = make_synthetic(num_users=40, num_items=30, mean_interactions=9, seed=2)
    data = ClientData.from_interactions(dataset.interactions, np.arange(40), 40)
    model = BiasedMF(MFConfig(dim=4, l2=0.05, global_mean=3.0), 40, 30)
    params = model.init_params(torch.Generator().manual_seed(1))
    return model, data, params


def test_update_survives_serialisation_and_bytes_are_measured():
    model, data, params = _cohort_setup()
    update = train_cohort_vectorized(model, params, data, np.arange(0, 40, 3), LocalTraining(batch_size=3), 7, 0).update
    record = update_to_record(update)
    back = record_to_update(record)
    for field in ("row_items", "row_clients", "row_counts", "client_sizes"):
        assert torch.equal(getattr(back, field).to(getattr(update, field).dtype), getattr(update, field))
    for name in update.row_deltas:
        assert torch.equal(back.row_deltas[name], update.row_deltas[name])
    payload = sum(t.numel() * t.element_size() for t in [*update.row_deltas.values(), *update.dense_deltas.values()])
    payload += update.row_items.numel() * 4 * 2 + update.row_counts.numel() * 4 + update.client_sizes.numel() * 4
    measured = serialized_bytes(record)
    assert payload <= measured <= payload + 4096  # the arrays plus small headers, each object once


@settings(max_examples=6, deadline=None)
@given(st.lists(st.integers(0, 2), min_size=40, max_size=40), st.integers(0, 3))
def test_node_uploads_merge_into_the_simulators_cohort_update(owner_of_client, round_index):
    """Training any split of a cohort on separate nodes and merging gives the whole-cohort update:
    the vectorised backend's result for a client does not depend on who shares its batch."""
    model, data, params = _cohort_setup()
    local = LocalTraining(epochs=2, lr=0.05, batch_size=3)
    cohort = sample_cohort(40, 0.6, 5, round_index)
    whole = train_cohort_vectorized(model, params, data, cohort, local, 5, round_index)
    owner = np.asarray(owner_of_client)[cohort]
    parts = []
    for node in np.unique(owner):
        positions = np.flatnonzero(owner == node)
        parts.append((positions, train_cohort_vectorized(model, params, data, cohort[positions], local, 5,
                                                         round_index).update))
    merged = merge_in_cohort_order(parts, 30)
    expected = whole.update
    assert torch.equal(merged.row_items, expected.row_items)
    assert torch.equal(merged.row_clients, expected.row_clients)
    assert torch.equal(merged.client_sizes, expected.client_sizes)
    for name in expected.row_deltas:
        torch.testing.assert_close(merged.row_deltas[name], expected.row_deltas[name], atol=1e-6, rtol=0)
    for name in expected.dense_deltas:
        torch.testing.assert_close(merged.dense_deltas[name], expected.dense_deltas[name], atol=1e-6, rtol=0)


def test_merge_refuses_overlapping_positions():
    model, data, params = _cohort_setup()
    update = train_cohort_vectorized(model, params, data, np.array([1, 2]), LocalTraining(), 0, 0).update
    with pytest.raises(ValueError, match="same cohort position"):
        merge_in_cohort_order([(np.array([0, 1]), update), (np.array([1, 2]), update)], 30)


# -- server and nodes in one process -------------------------------------------------------------


@pytest.mark.parametrize("extra", [
    [],  # cross-device: one client per user, half of them per round
    ["data.clients='silos'", "data.num_silos=7", "train.client_fraction=1.0"],  # cross-silo
    ["model.name='bpr'", "eval.sampled_negatives=0"],  # implicit feedback: negatives, ranking metrics
    ["train.refit_private_epochs=2", "train.refit_private_lr=0.05"],  # the nodes refit at the final evaluation
    # the nodes fine-tune a copy per client at the final evaluation (after the refit), as fedrec train does
    ["model.name='bpr'", "eval.sampled_negatives=0", "eval.finetune_epochs=2", "eval.mix_beta=0.5",
     "train.refit_private_epochs=1", "train.refit_private_lr=0.05"],
    ["eval.finetune_epochs=1", "data.split='leave_last_out'"],
    # local gradient clipping on the nodes, in training and fine-tuning alike
    ["eval.finetune_epochs=1", "data.split='leave_last_out'", "train.local_clip_norm=0.05"],
    # recency emphasis: each node repeats its users' latest interactions as the simulator does (ties at random);
    # with the sampled-softmax loss over 3 negatives
    ["model.name='bpr'", "eval.sampled_negatives=0", "data.split='leave_last_out'", "data.time_ties='random'",
     "train.recency_repeats=2", "train.recency_window=2", "model.loss='softmax'", "model.negatives=3"],
], ids=["per-user-mf", "silos-mf", "per-user-bpr", "per-user-mf-refit", "per-user-bpr-finetune", "per-user-mf-finetune",
        "per-user-mf-finetune-clipped", "per-user-bpr-softmax-recency"])
def test_in_process_deployment_equals_the_simulator(tmp_path, extra):
    config = load_config(None, SYNTHETIC + extra)
    train(config, tmp_path / "sim")
    nodes = InProcessNodes([load_node(config, k, 3) for k in range(3)])
    metrics = run_federation(config, nodes, tmp_path / "dep", expected_nodes=3)
    _assert_same_shared(tmp_path / "sim", tmp_path / "dep", atol=1e-6)
    simulated = __import__("json").loads((tmp_path / "sim" / "metrics.json").read_text())
    key = "rmse" if config.model.name == "mf" else "hr@10"
    assert metrics[key] == pytest.approx(simulated[key], abs=1e-6)
    if config.train.refit_private_epochs and key == "rmse":
        assert metrics["before_refit_rmse"] == pytest.approx(simulated["before_refit_rmse"], abs=1e-6)
        assert metrics["rmse"] < metrics["before_refit_rmse"]
    if config.eval.finetune_epochs:
        finetuned = sorted(k for k in simulated if k.startswith("finetuned_") and k.split("@")[0][10:] in
                           ("hr", "ndcg", "recall", "mrr", "rmse", "mae"))
        assert finetuned and all(k in metrics for k in finetuned)
        for name in finetuned:
            assert metrics[name] == pytest.approx(simulated[name], abs=1e-6), name
        assert any(metrics[name] != metrics[name[len("finetuned_"):]] for name in finetuned)  # it did fine-tune
    assert metrics["nodes_finished"] == 3 and metrics["bytes_up"] > 0 and metrics["bytes_down"] > 0
    for name in ("config.json", "history.jsonl", "metrics.json", CHECKPOINT_NAME):
        assert (tmp_path / "dep" / name).is_file()


TEXT = ["data.name=synthetic", "data.num_users=30", "data.num_items=24", "data.mean_interactions=8",
        "data.split=leave_last_out", "model.dim=6", "model.text_dim=5", "model.text_max_length=12",
        "model.negatives=2", "train.rounds=3", "train.batch_size=4", "train.client_fraction=0.5",
        "train.server_optimizer='adam'", "train.server_lr=0.05", "train.eval_every=3", "eval.ks=[5]",
        "eval.sampled_negatives=0"]


class RecordingNodes(InProcessNodes):
    """In-process nodes that note the tensor names of every shared model the server sends."""

    def __init__(self, views):
        super().__init__(views)
        self.sent_names: set[str] = set()

    def exchange(self, requests, message_type, round_index, timeout):
        for request in requests.values():
            if "shared" in request.array_records:
                self.sent_names.update(request.array_records["shared"].keys())
        return super().exchange(requests, message_type, round_index, timeout)


@pytest.mark.parametrize("model", ["text_bpr", "tower_mf"])
def test_text_models_deploy_to_the_simulators_model_without_sending_the_text(model, tmp_path, monkeypatch):
    """The nodes build the item text embeddings from the public item data; the server takes them from the nodes'
    query replies, checks they agree, and never sends the constant table in a round."""
    monkeypatch.setenv("FEDREC_CACHE", str(tmp_path / "cache"))
    config = load_config(None, [*TEXT, f"model.name={model}"])
    simulated = train(config, tmp_path / "sim")
    nodes = RecordingNodes([load_node(config, k, 3) for k in range(3)])
    metrics = run_federation(config, nodes, tmp_path / "dep", expected_nodes=3)
    _assert_same_shared(tmp_path / "sim", tmp_path / "dep", atol=1e-6)
    assert "param/item_text" in _shared_tensors(tmp_path / "dep")  # the run's checkpoint still holds the full model
    key = "ndcg@5" if model == "text_bpr" else "rmse"
    assert metrics[key] == pytest.approx(simulated[key], abs=1e-6)
    assert nodes.sent_names and "item_text" not in nodes.sent_names
    assert "adapter_w" in nodes.sent_names


SASREC = ["data.name=synthetic", "data.num_users=30", "data.num_items=24", "data.mean_interactions=8",
          "data.split=leave_last_out", "model.name=sasrec", "model.dim=8", "model.blocks=1", "model.max_history=6",
          "model.negatives=5", "model.text_dim=8", "train.rounds=3", "train.batch_size=4", "train.client_fraction=0.5",
          "train.server_optimizer='adam'", "train.server_lr=0.05", "train.eval_every=3", "eval.ks=[5]",
          "eval.sampled_negatives=0"]


@pytest.mark.parametrize("item_init", ["random", "text"])
def test_sasrec_deploys_to_the_simulators_model(item_init, tmp_path, monkeypatch):
    """Each node trains its own users' windows and ranks from their histories; with item_init=text the server
    starts the item embeddings from the nodes' text embeddings, as fedrec train does from the encoder."""
    monkeypatch.setenv("FEDREC_CACHE", str(tmp_path / "cache"))
    config = load_config(None, [*SASREC, f"model.item_init={item_init}"])
    simulated = train(config, tmp_path / "sim")
    nodes = InProcessNodes([load_node(config, k, 3) for k in range(3)])
    metrics = run_federation(config, nodes, tmp_path / "dep", expected_nodes=3)
    _assert_same_shared(tmp_path / "sim", tmp_path / "dep", atol=1e-6, has_private_rows=False)  # SASRec has no user rows
    for key in ("hr@5", "ndcg@5", "mrr@5"):
        assert metrics[key] == pytest.approx(simulated[key], abs=1e-6), key
    assert 0 < metrics["hr@5"] < 1


def test_nodes_with_different_item_text_are_refused_in_one_line(tmp_path, monkeypatch):
    monkeypatch.setenv("FEDREC_CACHE", str(tmp_path / "cache"))
    config = load_config(None, [*TEXT, "model.name=text_bpr"])
    other = load_config(None, [*TEXT, "model.name=text_bpr", "model.text_max_length=4"])  # other truncation
    nodes = InProcessNodes([load_node(config, 0, 2), load_node(other, 1, 2)])
    with pytest.raises(FedrecError, match="different item text embeddings") as info:
        run_federation(config, nodes, tmp_path / "dep", expected_nodes=2)
    assert "\n" not in str(info.value)


def test_in_process_private_rows_stay_on_their_node(tmp_path):
    config = load_config(None, SYNTHETIC)
    views = [load_node(config, k, 2) for k in range(2)]
    nodes = InProcessNodes(views)
    run_federation(config, nodes, tmp_path / "dep", expected_nodes=2)
    for node, view in nodes.views.items():
        rows = nodes.states[node].array_records["private"].to_torch_state_dict()
        specs = view.model.specs_by_kind(ParamKind.PRIVATE_ROWS)
        assert sorted(rows) == sorted(s.name for s in specs)
        assert all(len(rows[s.name]) == len(view.users) for s in specs)
    assert set(views[0].users).isdisjoint(views[1].users)


def test_a_node_that_stops_answering_is_dropped_and_the_run_finishes(tmp_path):
    config = load_config(None, SYNTHETIC)
    nodes = InProcessNodes([load_node(config, k, 2) for k in range(2)], fail={1: 1})
    metrics = run_federation(config, nodes, tmp_path / "dep", expected_nodes=2)
    history = [__import__("json").loads(line) for line in (tmp_path / "dep" / "history.jsonl").read_text().splitlines()]
    assert [h["nodes"] for h in history] == [2, 1, 1]
    assert history[1]["lost_nodes"] == 1 and history[1]["clients"] < history[0]["clients"] + 10
    cohort = sample_cohort(80, 0.5, 0, 1)
    assert history[1]["clients"] == int(np.sum(cohort < 40))  # only node 1's clients (0..39) trained
    assert metrics["nodes_finished"] == 1 and math.isfinite(metrics["rmse"])


def test_no_node_answering_is_a_clear_error(tmp_path):
    config = load_config(None, SYNTHETIC)
    nodes = InProcessNodes([load_node(config, 0, 1)], fail={0: 0})
    with pytest.raises(FedrecError, match="no SuperNode answered round 1"):
        run_federation(config, nodes, tmp_path / "dep", expected_nodes=1, round_timeout=1)


def test_missing_nodes_and_bad_partitions_fail_clearly(tmp_path):
    config = load_config(None, SYNTHETIC)
    lonely = InProcessNodes([load_node(config, 0, 2)])
    began = time.monotonic()
    with pytest.raises(FedrecError, match="only 1 of 2 SuperNodes connected"):
        run_federation(config, lonely, tmp_path / "a", expected_nodes=2, connect_timeout=0.5)
    assert time.monotonic() - began < 10
    with pytest.raises(FedrecError, match="partitions"):
        run_federation(config, InProcessNodes([load_node(config, 0, 2), load_node(config, 0, 2)]), tmp_path / "b",
                       expected_nodes=2)
    for setting, message in [("train.mode='centralized'", "train.mode=federated"),
                             ("model.name='lora_bpr'", "not supported in deployment")]:
        with pytest.raises(FedrecError, match=message):
            run_federation(load_config(None, SYNTHETIC + [setting]), InProcessNodes([]), tmp_path / "c",
                           expected_nodes=1)


def test_flower_run_config_without_a_job_is_refused():
    from fedrec.flower.app import job_config

    with pytest.raises(FedrecError, match="no job"):
        job_config({"job": ""})
    with pytest.raises(FedrecError, match="not a valid fedrec config"):
        job_config({"job": '{"train": {"rounds": -1}}'})


def test_cli_deploy_app_only_writes_a_runnable_app_and_refuses_bad_input(tmp_path):
    import tomllib

    from typer.testing import CliRunner

    from fedrec.cli import app
    from fedrec.flower.app import job_config

    sets = [arg for a in SYNTHETIC for arg in ("--set", a)]
    result = CliRunner().invoke(app, ["deploy", "configs/default.toml", "--nodes", "3", "--app-only",
                                      "--out", str(tmp_path / "remote"), *sets])
    assert result.exit_code == 0, result.output
    run_config = tomllib.loads((tmp_path / "remote/flower/run_config.toml").read_text())
    assert run_config["nodes"] == 3 and Path(run_config["out-dir"]).is_absolute()
    assert job_config(run_config) == load_config(Path("configs/default.toml"), SYNTHETIC)
    app_toml = tomllib.loads((tmp_path / "remote/flower/app/pyproject.toml").read_text())
    assert app_toml["tool"]["flwr"]["app"]["components"]["serverapp"] == "fedrec.flower.app:server_app"
    assert set(run_config) <= set(app_toml["tool"]["flwr"]["app"]["config"])  # flwr only overrides declared keys
    result = CliRunner().invoke(app, ["deploy", "configs/default.toml", "--nodes", "0", "--out", str(tmp_path / "x")])
    assert isinstance(result.exception, FedrecError) and "--nodes" in str(result.exception)
    assert not (tmp_path / "x").exists()


# -- real SuperLink and SuperNodes on loopback --------------------------------------------------------


def _ml100k_config(ml100k_dir: Path, rounds: int):
    return load_config(Path("configs/ml100k-mf-fedavg.toml"), [
        f"data.data_dir={str(ml100k_dir.parent)!r}", f"train.rounds={rounds}", "model.dim=8",
        "train.client_fraction=0.1", f"train.eval_every={rounds}"])


def _left_alive(pids: list[int]) -> list[int]:
    alive = []
    for pid in pids:
        try:
            if psutil.Process(pid).status() != psutil.STATUS_ZOMBIE:
                alive.append(pid)
        except psutil.NoSuchProcess:
            pass
    return alive


def _processes_with_home(home: Path) -> list[int]:
    """Live processes whose environment carries this deployment's FLWR_HOME: every process ``fedrec deploy``
    starts and every process those start (SuperExec, ServerApp, ClientApps) inherit it."""
    found = []
    for process in psutil.process_iter():
        try:
            if process.environ().get("FLWR_HOME") == str(home) and process.status() != psutil.STATUS_ZOMBIE:
                found.append(process.pid)
        except psutil.Error:
            continue
    return found


# In the default suite, so that CI runs a real SuperLink + 2 SuperNodes on loopback (about 80 s for the
# equivalence part on 2 cores, mostly Flower starting a process per message; the fault adds about 40-60 s:
# the SuperLink gives up on a dead SuperNode after two missed 30 s heartbeats).
def test_loopback_deployment_equals_the_simulator_then_survives_a_killed_supernode(tmp_path, ml100k_dir):
    """Rounds 1-2: the simulator's model. After round 2 SuperNode 1 is killed (SIGKILL): the run finishes
    its 4 rounds with node 0 (or stops with a one-line error) within a bound, and leaves no process."""
    import json
    import shutil

    from fedrec.flower.deploy import deploy

    base = load_config(Path("configs/ml100k-mf-fedavg.toml"), [
        f"data.data_dir={str(ml100k_dir.parent)!r}", "model.dim=8", "train.client_fraction=0.1",
        "train.eval_every=2"])
    train(base.model_copy(update={"train": base.train.model_copy(update={"rounds": 2})}), tmp_path / "sim")
    config = base.model_copy(update={"train": base.train.model_copy(update={"rounds": 4})})
    out = tmp_path / "dep"
    clusters, killed = [], []

    def kill_node_1_after_round_2(record):
        if record["round"] == 2 and not killed:
            (tmp_path / "round2").mkdir()  # the checkpoint is written before the history line announcing it
            shutil.copy(out / CHECKPOINT_NAME, tmp_path / "round2" / CHECKPOINT_NAME)
            victim = clusters[0].processes["supernode-1"]
            victim.kill()  # no goodbye to the SuperLink: as a crashed machine
            killed.append(victim.pid)

    round_timeout, connect_timeout = 150.0, 120.0
    began = time.monotonic()
    try:
        metrics = deploy(config, 2, out, round_timeout=round_timeout, connect_timeout=connect_timeout,
                         on_round=kill_node_1_after_round_2, on_cluster=clusters.append)
    except FedrecError as error:  # the other allowed ending: a clear one-line error
        metrics = None
        assert "\n" not in str(error) and "SuperNode" in str(error), error
    elapsed = time.monotonic() - began
    assert killed, "the run ended before a node could be killed"
    assert elapsed < 2 * connect_timeout + 6 * round_timeout  # bounded: it never hangs
    _, meta = load_checkpoint(tmp_path / "round2" / CHECKPOINT_NAME)
    assert meta["round"] == 2
    _assert_same_shared(tmp_path / "sim", tmp_path / "round2")
    history = [json.loads(line) for line in (out / "history.jsonl").read_text().splitlines()]
    simulated = json.loads((tmp_path / "sim" / "metrics.json").read_text())
    # round 2 is not the deployment's last round, so its evaluation comes before any refit of the private rows
    assert history[1]["rmse"] == pytest.approx(simulated["before_refit_rmse"], abs=1e-5)
    assert [h["nodes"] for h in history[:2]] == [2, 2]
    if metrics is not None:  # finished with the remaining node
        assert [h["round"] for h in history] == [1, 2, 3, 4] and history[-1]["nodes"] == 1
        assert sum(h.get("lost_nodes", 0) for h in history) == 1
        assert metrics["nodes"] == 2 and metrics["nodes_finished"] == 1 and math.isfinite(metrics["rmse"])
    pids = clusters[0].pids()
    assert len(pids) >= 3  # SuperLink, 2 SuperNodes and their children
    assert _left_alive(pids) == []
    assert _processes_with_home((out / "flower" / "home").resolve()) == []


@pytest.mark.slow
def test_a_deployment_whose_nodes_fail_at_start_stops_clearly_and_leaves_no_process(tmp_path, monkeypatch):
    from fedrec.flower.deploy import deploy

    monkeypatch.delenv("FEDREC_DATA", raising=False)  # the lookup would fall back to it and find the data

    config = load_config(None, ["data.name='ml-100k'", f"data.data_dir={str(tmp_path / 'nowhere')!r}",
                                "train.rounds=1"])
    clusters = []
    began = time.monotonic()
    with pytest.raises(FedrecError) as failure:
        deploy(config, 2, tmp_path / "dep", round_timeout=60, connect_timeout=120, on_cluster=clusters.append)
    assert time.monotonic() - began < 2 * 120 + 4 * 60
    message = str(failure.value)
    assert "\n" not in message and "SuperNode" in message and "nowhere" in message, message
    assert _left_alive(clusters[0].pids()) == []
    assert _processes_with_home((tmp_path / "dep" / "flower" / "home").resolve()) == []


@pytest.mark.slow
def test_ctrl_c_stops_every_process_the_deployment_started(tmp_path, ml100k_dir):
    import signal
    import subprocess
    import sys

    command = [sys.executable, "-m", "fedrec.cli", "deploy", "configs/ml100k-mf-fedavg.toml", "--nodes", "2",
               "--out", str(tmp_path / "dep"), "--data-dir", str(ml100k_dir.parent), "--set", "model.dim=8",
               "--set", "train.client_fraction=0.1"]
    deploy = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    seen: dict[int, psutil.Process] = {}
    deadline = time.monotonic() + 300
    try:
        while time.monotonic() < deadline:  # until both SuperNodes run
            for child in psutil.Process(deploy.pid).children(recursive=True):
                seen.setdefault(child.pid, child)
            if sum("flower-supernode" in " ".join(_cmdline(p)) for p in seen.values()) == 2:
                break
            assert deploy.poll() is None, deploy.communicate()
            time.sleep(0.5)
        time.sleep(5)
        for child in psutil.Process(deploy.pid).children(recursive=True):
            seen.setdefault(child.pid, child)
        deploy.send_signal(signal.SIGINT)
        _, err = deploy.communicate(timeout=120)
    finally:
        if deploy.poll() is None:
            deploy.kill()
    assert deploy.returncode == 130 and "interrupted" in err
    assert len(seen) >= 3
    assert _left_alive(list(seen)) == []


def _cmdline(process: psutil.Process) -> list[str]:
    try:
        return process.cmdline()
    except psutil.Error:
        return []


def test_settings_the_deployment_does_not_implement_are_refused():
    from fedrec.config import RunConfig
    from fedrec.flower.federation import check_deployable

    check_deployable(load_config(None, SYNTHETIC))
    check_deployable(load_config(None, SYNTHETIC + ["privacy.noise_multiplier=1.0", "privacy.delta=1e-5"]))
    with pytest.raises(FedrecError, match=r"\[attack\]"):
        check_deployable(load_config(None, SYNTHETIC + ["attack.method='random'", "attack.num_targets=2"]))
    if "lora_bpr" in str(RunConfig.model_fields["model"].annotation.model_fields["name"].annotation):
        with pytest.raises(FedrecError, match="not supported in deployment"):
            check_deployable(load_config(None, SYNTHETIC + ["model.name='lora_bpr'"]))


# -- resume: an interrupted deployment continues to the uninterrupted one's model --------------------------


def _stop_after(round_: int):
    def on_round(record: dict) -> None:
        if record["round"] == round_:
            raise KeyboardInterrupt

    return on_round


class CountingNodes(InProcessNodes):
    """In-process nodes that count the training rounds they are asked to run."""

    def __init__(self, views, **kwargs):
        super().__init__(views, **kwargs)
        self.trained_rounds: list[int] = []

    def exchange(self, requests, message_type, round_index, timeout):
        if message_type == "train":
            self.trained_rounds.append(round_index + 1)
        return super().exchange(requests, message_type, round_index, timeout)


RESUMED = ["train.rounds=4", "train.eval_every=2"]


def _nodes(config, state_dir, count=3, **kwargs) -> CountingNodes:
    """Fresh node processes: new views and states; only the files in ``state_dir`` survive a restart."""
    return CountingNodes([load_node(config, k, count, state_dir) for k in range(count)], **kwargs)


def _assert_resumed_like_straight(out: Path, straight: Path, resumed: dict, straight_metrics: dict) -> None:
    _assert_same_shared(straight, out, atol=1e-6, has_private_rows=False)  # both are deployments
    keys = [k for k in straight_metrics if k.split("@")[0].removeprefix("finetuned_").removeprefix("before_refit_")
            in ("rmse", "mae", "hr", "ndcg", "epsilon")]
    assert keys
    for key in [*keys, "rounds", "bytes_down", "nodes_finished"]:
        assert resumed[key] == pytest.approx(straight_metrics[key], abs=1e-6), key
    rounds = [json.loads(line)["round"] for line in (out / "history.jsonl").read_text().splitlines()]
    assert rounds == list(range(1, straight_metrics["rounds"] + 1))


@pytest.mark.parametrize("extra", [
    [],  # MF: user rows on the nodes, server Adam, half the clients per round
    ["model.name='bpr'", "eval.sampled_negatives=0", "compression.topk=0.2"],  # + error-feedback residuals on the nodes
    ["privacy.noise_multiplier=0.8", "privacy.delta=1e-3", "privacy.clip_norm=0.5"],  # + the server's DP state
    ["train.refit_private_epochs=2", "train.refit_private_lr=0.05", "eval.finetune_epochs=1"],  # + the final steps
    ["train.checkpoint_every=2"],  # the server's checkpoint lags the nodes' states by a round
], ids=["mf", "bpr-compressed", "mf-central-dp", "mf-refit-finetune", "checkpoint-every-2"])
def test_interrupted_deployment_resumes_to_the_uninterrupted_model(extra, tmp_path):
    config = load_config(None, SYNTHETIC + RESUMED + extra)
    straight = run_federation(config, _nodes(config, tmp_path / "s-nodes"), tmp_path / "straight", expected_nodes=3)
    out, state_dir = tmp_path / "run", tmp_path / "nodes"
    with pytest.raises(KeyboardInterrupt):
        run_federation(config, _nodes(config, state_dir), out, expected_nodes=3, on_round=_stop_after(3))
    assert not (out / "metrics.json").exists()
    restarted = _nodes(config, state_dir)
    resumed = run_federation(config, restarted, out, expected_nodes=3, resume=True)
    checkpointed = 2 if config.train.checkpoint_every == 2 else 3
    assert restarted.trained_rounds == list(range(checkpointed + 1, 5))  # only the rounds left, not a fresh run
    _assert_resumed_like_straight(out, tmp_path / "straight", resumed, straight)
    assert len(list(state_dir.glob("*-partition-0-of-3-round-*.safetensors"))) <= config.train.checkpoint_every + 1


def test_resume_twice_and_extend_a_finished_run(tmp_path):
    config = load_config(None, SYNTHETIC + RESUMED)
    straight = run_federation(config, _nodes(config, tmp_path / "s-nodes"), tmp_path / "straight", expected_nodes=3)
    out, state_dir = tmp_path / "run", tmp_path / "nodes"
    short = load_config(None, SYNTHETIC + ["train.rounds=2", "train.eval_every=2"])
    run_federation(short, _nodes(short, state_dir), out, expected_nodes=3)  # finished after 2 rounds
    with pytest.raises(KeyboardInterrupt):  # extended to 4, interrupted in round 3
        run_federation(config, _nodes(config, state_dir), out, expected_nodes=3, resume=True, on_round=_stop_after(3))
    assert not (out / "metrics.json").exists()  # the 2-round figures no longer describe the run
    resumed = run_federation(config, _nodes(config, state_dir), out, expected_nodes=3, resume=True)
    _assert_resumed_like_straight(out, tmp_path / "straight", resumed, straight)


def test_a_node_lost_before_the_interruption_stays_dropped_after_the_resume(tmp_path):
    config = load_config(None, SYNTHETIC + RESUMED)
    straight = run_federation(config, _nodes(config, tmp_path / "s-nodes", fail={1: 1}), tmp_path / "straight",
                              expected_nodes=3)
    assert straight["nodes_finished"] == 2
    out, state_dir = tmp_path / "run", tmp_path / "nodes"
    with pytest.raises(KeyboardInterrupt):
        run_federation(config, _nodes(config, state_dir, fail={1: 1}), out, expected_nodes=3, on_round=_stop_after(3))
    restarted = _nodes(config, state_dir)  # every node is back, the lost one without a state for round 3
    resumed = run_federation(config, restarted, out, expected_nodes=3, resume=True)
    _assert_resumed_like_straight(out, tmp_path / "straight", resumed, straight)


def test_resuming_without_the_nodes_state_is_a_one_line_error(tmp_path):
    config = load_config(None, SYNTHETIC + RESUMED)
    with pytest.raises(KeyboardInterrupt):
        run_federation(config, _nodes(config, tmp_path / "nodes", 2), tmp_path / "run", expected_nodes=2,
                       on_round=_stop_after(2))
    for nodes, message in [(_nodes(config, None, 2), "keeps no state"),
                           (_nodes(config, tmp_path / "elsewhere", 2), "no saved state after round 2"),
                           (_nodes(config, tmp_path / "nodes", 3), "resume with --nodes 2")]:
        with pytest.raises(FedrecError, match=message) as info:
            run_federation(config, nodes, tmp_path / "run", expected_nodes=len(nodes.views), resume=True)
        assert "\n" not in str(info.value)
    assert (tmp_path / "run" / "config.json").exists() and not (tmp_path / "run" / "metrics.json").exists()
    with pytest.raises(FedrecError, match="already holds a run; resume it"):  # a fresh run would destroy it
        run_federation(config, _nodes(config, tmp_path / "nodes", 2), tmp_path / "run", expected_nodes=2)
    other = load_config(None, SYNTHETIC + RESUMED + ["train.local_lr=0.5"])
    with pytest.raises(FedrecError, match="different config"):
        run_federation(other, _nodes(other, tmp_path / "nodes", 2), tmp_path / "run", expected_nodes=2, resume=True)
    finished = load_config(None, SYNTHETIC + ["train.rounds=2"])
    run_federation(finished, _nodes(finished, tmp_path / "f-nodes", 2), tmp_path / "finished", expected_nodes=2)
    with pytest.raises(FedrecError, match="set train.rounds higher"):
        run_federation(finished, _nodes(finished, tmp_path / "f-nodes", 2), tmp_path / "finished", expected_nodes=2,
                       resume=True)


def test_an_unwritable_state_dir_is_a_one_line_error_at_start(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.raises(FedrecError, match="state-dir") as info:
        load_node(load_config(None, SYNTHETIC), 0, 2, blocker / "nodes")
    assert "\n" not in str(info.value)


def test_the_simulator_does_not_count_constant_tables_as_downloaded():
    from fedrec.federated.server import download_bytes
    from fedrec.models.registry import build_model

    model = build_model("text_bpr", {"dim": 4}, 5, 7, item_text=torch.zeros(7, 3))
    trained = 4 * (7 * 4 + 7 + 3 * 4 + 4)  # item_vec, item_bias, adapter_w, adapter_b (float32)
    assert download_bytes(model, 2) == 2 * trained


def test_a_diverging_deployment_stops_at_the_first_non_finite_loss(tmp_path):
    config = load_config(None, SYNTHETIC + ["train.rounds=6", "train.local_lr=1e6", "train.server_optimizer='sgd'",
                                            "train.server_lr=1.0"])
    with pytest.raises(FedrecError, match=r"diverged in round \d+.*train.local_lr") as info:
        run_federation(config, InProcessNodes([load_node(config, k, 2) for k in range(2)]), tmp_path / "dep",
                       expected_nodes=2)
    assert "\n" not in str(info.value) and not (tmp_path / "dep" / "metrics.json").exists()
