"""The seeds' mixing step on the recommender runtime: theta_i <- theta_g + beta (theta_i - theta_g)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from fedrec.data.synthetic import make_synthetic
from fedrec.federated.cohort import ClientData
from fedrec.federated.local import LocalTraining
from fedrec.federated.personalize import finetune, personal_rows, personal_scores
from fedrec.models.base import gather_rows, score_all_items
from fedrec.models.registry import build_model


@pytest.mark.parametrize("name, options", [("mf", dict(dim=4)), ("ncf", dict(variant="neumf", dim=4, layers=(8, 4), negatives=2))])
def test_mixed_copy_interpolates_between_global_and_finetuned(name, options):
    dataset = make_synthetic(num_users=25, num_items=20, mean_interactions=8, seed=1)
    data = ClientData.from_interactions(dataset.interactions, np.arange(25), 25, num_items=20)
    model = build_model(name, options, 25, 20)
    params = model.init_params(torch.Generator().manual_seed(0))
    local = LocalTraining(epochs=2, lr=0.1, batch_size=3)
    users = torch.arange(25)
    items = torch.arange(20).expand(25, -1)
    rows = {beta: personal_rows(model, params, finetune(model, params, data, np.arange(25), local, seed=7, mix_beta=beta),
                                users, items) for beta in (0.0, 0.3, 1.0)}
    plain = personal_rows(model, params, finetune(model, params, data, np.arange(25), local, seed=7), users, items)
    dense = {spec.name for spec in model.param_specs() if spec.kind.value == "shared_dense"}
    for table, value in gather_rows(model, params, users, items).items():  # beta = 0: every row as in the global model
        expected = value.expand(25, *value.shape[1:]) if table in dense else value.transpose(0, 1)
        torch.testing.assert_close(rows[0.0][table], expected, atol=1e-6, rtol=0)
    for table in plain:
        torch.testing.assert_close(rows[1.0][table], plain[table])  # beta = 1: plain fine-tuning
        interpolated = rows[0.0][table] + 0.3 * (plain[table] - rows[0.0][table])
        torch.testing.assert_close(rows[0.3][table], interpolated, atol=1e-5, rtol=1e-5)
    # beta = 0 is the global model exactly
    zero = finetune(model, params, data, np.arange(25), local, seed=7, mix_beta=0.0)
    torch.testing.assert_close(personal_scores(model, params, zero, users), score_all_items(model, params, users),
                               atol=1e-5, rtol=1e-5)


def test_train_reports_mixed_finetuned_metrics(tmp_path):
    from fedrec.config import load_config
    from fedrec.runtime.trainer import train

    base = ["data.num_users=80", "data.num_items=40", "model.dim=4", "train.rounds=1", "eval.finetune_epochs=1"]
    global_only = train(load_config(None, [*base, "eval.mix_beta=0.0"]), tmp_path / "zero")
    assert global_only["finetuned_rmse"] == pytest.approx(global_only["rmse"], abs=1e-5)
    half = train(load_config(None, [*base, "eval.mix_beta=0.5"]), tmp_path / "half")
    full = train(load_config(None, base), tmp_path / "full")
    assert half["rmse"] == full["rmse"] and half["finetuned_rmse"] != full["finetuned_rmse"]


def test_finetuned_copies_are_scored_on_validation_too(tmp_path):
    from fedrec.config import load_config
    from fedrec.runtime.trainer import train

    base = ["data.num_users=80", "data.num_items=40", "model.name=bpr", "model.dim=4", "train.rounds=1",
            "data.split=leave_last_out", "eval.finetune_epochs=1", "eval.sampled_negatives=0"]
    global_only = train(load_config(None, [*base, "eval.mix_beta=0.0"]), tmp_path / "zero")
    assert global_only["finetuned_val_ndcg@10"] == pytest.approx(global_only["val_ndcg@10"], abs=1e-6)
    assert global_only["finetuned_ndcg@10"] == pytest.approx(global_only["ndcg@10"], abs=1e-6)
    tuned = train(load_config(None, base), tmp_path / "full")
    assert tuned["finetuned_val_ndcg@10"] != tuned["val_ndcg@10"]  # the fine-tuned copies, not the global model
