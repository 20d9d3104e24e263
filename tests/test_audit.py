"""The privacy audit: metric formulas, the item attack on plain uploads and on sums, the rating attack
(exact with one local step), the audit run against its targets, and ``fedrec audit`` end to end."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from sklearn.metrics import roc_auc_score
from typer.testing import CliRunner

from fedrec.config import load_config
from fedrec.errors import FedrecError
from fedrec.federated.aggregation import ROW_WEIGHTINGS, CohortUpdate, aggregate
from fedrec.federated.cohort import ClientData
from fedrec.federated.local import LocalTraining
from fedrec.federated.server import write_private_rows
from fedrec.federated.vectorized import train_cohort_vectorized
from fedrec.models.mf import BiasedMF, MFConfig
from fedrec.privacy.audit import (AuditSettings, ItemObservations, RowSums, auc_along, infer_ratings,
                                  item_attack_metrics, precision_at_k, rating_evidence, run_audit, true_ratings)
from fedrec.privacy.hiding import HidingSettings, select_clients

ROOT = Path(__file__).resolve().parents[1]
TINY = ["data.num_users=200", "data.num_items=150", "model.dim=8", "train.rounds=3"]


# -- formulas -------------------------------------------------------------------------------------------


def test_auc_matches_sklearn_with_ties_along_both_axes():
    gen = np.random.default_rng(0)
    scores = gen.integers(0, 4, size=(6, 9)).astype(float)  # many ties
    truth = gen.random((6, 9)) < 0.4
    truth[:, 0], truth[:, 1] = True, False  # every row has both classes
    rows = auc_along(scores, truth, axis=1)
    for r in range(6):
        assert rows[r] == pytest.approx(roc_auc_score(truth[r], scores[r]))
    columns = auc_along(scores, truth, axis=0)
    for c in range(9):
        if 0 < truth[:, c].sum() < 6:
            assert columns[c] == pytest.approx(roc_auc_score(truth[:, c], scores[:, c]))
        else:
            assert np.isnan(columns[c])


def test_precision_at_k_breaks_ties_at_random_in_expectation():
    scores = np.array([[3.0, 2, 2, 2, 1], [5, 4, 3, 2, 1]])
    truth = np.array([[0, 1, 0, 0, 1], [1, 1, 0, 0, 0]], dtype=bool)
    # row 0: the top item misses; one of two slots goes to three tied items holding one hit -> 1/3
    assert precision_at_k(scores, truth, 2).tolist() == pytest.approx([1 / 6, 1.0])


def tiny_update(touched: list[list[int]], seed: int = 0) -> CohortUpdate:
    gen = torch.Generator().manual_seed(seed)
    items = torch.tensor([i for rows in touched for i in rows], dtype=torch.int64)
    clients = torch.tensor([k for k, rows in enumerate(touched) for _ in rows], dtype=torch.int64)
    return CohortUpdate(items, clients, torch.randint(1, 4, (len(items),), generator=gen).float(),
                        {"item_vec": torch.randn(len(items), 2, generator=gen),
                         "item_bias": torch.randn(len(items), 1, generator=gen)},
                        {"global_bias": torch.randn(len(touched), 1, generator=gen)},
                        torch.randint(1, 9, (len(touched),), generator=gen).float())


@settings(max_examples=30, deadline=None)
@given(touched=st.lists(st.lists(st.integers(0, 5), min_size=1, max_size=6, unique=True), min_size=2, max_size=6),
       cut=st.integers(1, 5), weighting=st.sampled_from(ROW_WEIGHTINGS), seed=st.integers(0, 99))
def test_row_sums_over_chunks_of_clients_equal_the_aggregate(touched, cut, weighting, seed):
    update = tiny_update(touched, seed)
    model = BiasedMF(MFConfig(dim=2), num_users=3, num_items=6)
    sums = RowSums.zeros(model)
    cut = min(cut, len(touched) - 1)
    for positions in (np.arange(cut), np.arange(cut, len(touched))):
        sums.add(select_clients(update, positions), weighting)
    expected = aggregate(update, 6, weighting)
    for name, value in sums.mean(weighting).items():
        torch.testing.assert_close(value, expected[name], rtol=1e-5, atol=1e-6)


# -- the item attack --------------------------------------------------------------------------------------


def test_item_attack_is_exact_on_plain_uploads_and_blind_on_sums():
    touched = [[0, 1], [2], [1, 3]]
    truth = np.zeros((3, 4), dtype=bool)
    for k, items in enumerate(touched):
        truth[k, items] = True
    update = tiny_update(touched)
    plain = ItemObservations.empty(np.array([0, 1, 2]), 4)
    plain.add_uploads(update, np.array([0, 1, 2]))
    result = item_attack_metrics(plain, truth, k=1)
    assert result["audit_item_auc"] == 1.0 and result["audit_item_auc_per_client"] == 1.0
    assert result["audit_item_precision@1"] == 1.0

    model = BiasedMF(MFConfig(dim=2), num_users=3, num_items=4)
    sums = RowSums.zeros(model)
    sums.add(update, "row_count")
    summed = ItemObservations.empty(np.array([0, 1, 2]), 4)
    summed.add_sums(sums, np.array([0, 1, 2]))
    summed.add_prior(sums)
    result = item_attack_metrics(summed, truth, k=1)
    # every client gets the same guess, so no item separates the clients that hold it
    assert result["audit_item_auc"] == 0.5
    prior = result["audit_prior_item_auc_per_client"]  # the scorers (and their negations) see only popularity
    assert result["audit_item_auc_per_client"] == pytest.approx(max(prior, 1 - prior))


# -- the rating attack ------------------------------------------------------------------------------------


def hand_made_rounds(batch_size: int):
    """Two users rate a few of 6 items; two rounds of federated MF (FedAvg, server lr 1)."""
    data = ClientData(offsets=np.array([0, 4, 7]), users=np.array([0, 0, 0, 0, 1, 1, 1]),
                      items=np.array([0, 2, 3, 5, 1, 2, 4]),
                      targets=np.array([5, 3, 4, 1, 2, 5, 4], dtype=np.float32))
    model = BiasedMF(MFConfig(dim=3, l2=0.05, global_mean=3.4), num_users=2, num_items=6)
    params = model.init_params(torch.Generator().manual_seed(1))
    params["item_bias"] = torch.linspace(-0.3, 0.3, 6).reshape(6, 1)
    params["user_bias"] = torch.tensor([[0.4], [-0.2]])
    local = LocalTraining(epochs=1, lr=0.1, batch_size=batch_size)
    cohort, evidence = np.array([0, 1]), []
    for round_index in range(2):
        result = train_cohort_vectorized(model, params, data, cohort, local, 0, round_index)
        evidence.append(rating_evidence(result.update, cohort, params, local, 0.05))
        deltas = aggregate(result.update, 6, "row_count")
        params = {name: params[name] + deltas[name] if name in deltas else params[name] for name in params}
        params = write_private_rows(params, result)
    clients, items, ratings = infer_ratings(evidence[0], evidence[1], local, 0.05)
    real, truth = true_ratings(data, clients, items, 6)
    return real, ratings, truth


def test_rating_attack_recovers_ratings_exactly_from_two_one_step_uploads():
    real, ratings, truth = hand_made_rounds(batch_size=8)
    assert real.all() and len(real) == 7
    np.testing.assert_allclose(ratings, truth, atol=2e-3)


def test_rating_attack_is_approximate_with_several_local_steps():
    real, ratings, truth = hand_made_rounds(batch_size=2)
    error = np.sqrt(np.mean((ratings[real] - truth[real]) ** 2))
    assert 2e-3 < error < 2.0


# -- the audit run ----------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def synthetic_audits() -> dict[str, dict]:
    config = load_config(ROOT / "configs" / "default.toml", TINY + ["train.batch_size=512"])
    options = {"plain": AuditSettings(), "pseudo": AuditSettings(HidingSettings("pseudo", pseudo_items=120))}
    return {name: run_audit(config, option) for name, option in options.items()}


def test_plain_uploads_reveal_items_and_ratings(synthetic_audits):
    plain = synthetic_audits["plain"]
    assert plain["audit_item_auc"] > 0.99 and plain["audit_item_auc_per_client"] > 0.99
    assert plain["audit_item_precision@10"] > plain["audit_prior_item_precision@10"]
    assert plain["audit_rating_rmse"] < 0.01 < plain["audit_rating_rmse_baseline"]  # one local step: exact


def test_pseudo_items_hide_items(synthetic_audits):  # secure aggregation: tests/test_audit_secagg.py
    pseudo, plain = synthetic_audits["pseudo"], synthetic_audits["plain"]
    # 120 virtual pseudo-items per client (of 150 items): which of its items are real is hidden ...
    assert pseudo["audit_item_auc_membership"] <= 0.65 and pseudo["audit_item_auc_per_client"] <= 0.65
    # ... but row norms still scale with 1/(client size), and heavy users hold more items (measured 0.71)
    assert 0.6 < pseudo["audit_item_auc"] < 0.8 and pseudo["audit_item_scorer"] == "-norm"
    assert pseudo["audit_rating_rmse"] > 10 * plain["audit_rating_rmse"]
    assert pseudo["bytes_up"] > 3 * plain["bytes_up"]


def test_the_audit_refuses_impossible_settings():
    config = load_config(ROOT / "configs" / "default.toml", TINY)
    with pytest.raises(FedrecError, match="observe"):
        run_audit(config, AuditSettings(observe_rounds=5))
    with pytest.raises(FedrecError, match="federated"):
        run_audit(load_config(ROOT / "configs" / "default.toml", TINY + ["train.mode=centralized"]), AuditSettings())
    text = load_config(None, ["data.name=synthetic", "model.name=tower_bpr", "data.split=leave_last_out"])
    with pytest.raises(FedrecError, match="text adapter update, which the audit does not measure"):
        run_audit(text, AuditSettings())


@pytest.mark.parametrize("setting, named", [("train.recency_repeats=2", "train.recency_repeats"),
                                             ("train.local_clip_norm=0.05", "train.local_clip_norm")])
def test_the_rating_attack_stands_down_when_steps_are_not_plain(setting, named, monkeypatch):
    import fedrec.privacy.audit as audit_module

    plain = run_audit(load_config(ROOT / "configs" / "default.toml", TINY), AuditSettings())
    scored = []
    direction_scores = audit_module.mf_direction_scores
    monkeypatch.setattr(audit_module, "mf_direction_scores", lambda *a: scored.append(1) or direction_scores(*a))
    changed = run_audit(load_config(ROOT / "configs" / "default.toml", TINY + [setting]), AuditSettings())
    assert isinstance(plain["audit_rating_rmse"], float) and "audit_rating_note" not in plain
    assert changed["audit_rating_rmse"] is None and named in changed["audit_rating_note"]
    assert isinstance(changed["audit_item_auc"], float) and scored  # the item attack runs, its direction scorer too


def test_virtual_fake_rows_are_refused_with_local_clipping():
    config = load_config(ROOT / "configs" / "default.toml", TINY + ["train.local_clip_norm=0.05"])
    with pytest.raises(FedrecError, match="--pseudo-values bootstrap"):
        run_audit(config, AuditSettings(HidingSettings("pseudo", pseudo_ratio=1.0)))
    with pytest.raises(FedrecError, match="pseudo_values = 'bootstrap'"):
        load_config(ROOT / "configs" / "default.toml", TINY + ["train.local_clip_norm=0.05", "privacy.hiding=pseudo",
                                                               "privacy.pseudo_ratio=1.0"])
    load_config(ROOT / "configs" / "default.toml", TINY + ["train.local_clip_norm=0.05", "privacy.hiding=pseudo",
                                                           "privacy.pseudo_ratio=1.0", "privacy.pseudo_values=bootstrap"])


@pytest.mark.slow
def test_rating_attack_is_exact_on_ml100k_with_one_local_step(ml100k_dir):
    config = load_config(ROOT / "configs" / "ml100k-mf-fedavg.toml",
                         ["train.rounds=2", "train.batch_size=1024", f"data.data_dir=\"{ml100k_dir}\""])
    metrics = run_audit(config, AuditSettings())
    assert metrics["audit_clients"] == 943 and metrics["audit_rating_clients"] == 943
    assert metrics["audit_rating_pairs"] == 80000  # every rating of fold u1's training part
    assert metrics["audit_item_auc"] == 1.0
    assert metrics["audit_rating_rmse"] < 0.01 < 0.5 < metrics["audit_rating_rmse_baseline"]


# -- the command line -------------------------------------------------------------------------------------


def test_fedrec_audit_writes_the_metrics(tmp_path):
    from fedrec.cli import app

    args = ["audit", str(ROOT / "configs" / "default.toml"), *[a for s in TINY for a in ("--set", s)],
            "--hiding", "pseudo", "--pseudo-ratio", "1", "--out", str(tmp_path / "run"), "--quiet"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    for key in ("audit_item_auc", "audit_item_precision@10", "audit_rating_rmse", "rmse"):
        assert isinstance(metrics[key], float)
    assert metrics["audit_hiding"] == "pseudo" and "audit_item_auc=" in result.output
    bad = CliRunner().invoke(app, args[:-5] + ["--hiding", "pseudo", "--out", str(tmp_path / "bad")])
    assert isinstance(bad.exception, FedrecError) and "--pseudo-items" in str(bad.exception)
    bad = CliRunner().invoke(app, args[:-5] + ["--hiding", "masked", "--out", str(tmp_path / "bad")])
    assert isinstance(bad.exception, FedrecError) and "none, dense, pseudo" in str(bad.exception)
