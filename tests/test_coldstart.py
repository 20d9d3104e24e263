"""Cold-start protocol: held-out items leave training entirely and are ranked among themselves."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from fedrec.config import load_config
from fedrec.data.dataset import Interactions
from fedrec.data.synthetic import make_synthetic
from fedrec.data.splits import hold_out_items
from fedrec.errors import FedrecError
from fedrec.eval.protocol import cold_start_metrics, cold_start_task
from fedrec.runtime.experiment import prepare


def _inter(users, items):
    n = len(users)
    return Interactions(np.asarray(users, np.int64), np.asarray(items, np.int64), np.ones(n, np.float32),
                        np.arange(n, dtype=np.int64))


def test_hold_out_items_relabels_warm_first_and_removes_cold_items_from_training():
    dataset = make_synthetic(num_users=50, num_items=40, mean_interactions=10, seed=2)
    warm_set, cold, warm = hold_out_items(dataset, 0.25, seed=3)
    assert warm == 30 and warm_set.num_items == 40
    assert warm_set.interactions.items.max() < warm and cold.items.min() >= warm
    assert len(warm_set.interactions) + len(cold) == len(dataset.interactions)
    # every index still names the same item: raw ids, texts and interactions moved together
    old_index = {item_id: k for k, item_id in enumerate(dataset.item_ids)}
    for part in (warm_set.interactions, cold):
        for u, i in zip(part.users[:50], part.items[:50]):
            old = old_index[warm_set.item_ids[i]]
            assert warm_set.item_texts[i] == dataset.item_texts[old]
            assert np.any((dataset.interactions.users == u) & (dataset.interactions.items == old))
    again = hold_out_items(dataset, 0.25, seed=3)[0]
    assert list(again.item_ids) == list(warm_set.item_ids)
    with pytest.raises(FedrecError, match="strictly between 0 and 1"):
        hold_out_items(dataset, 1.0, seed=0)


def test_cold_metrics_match_brute_force_per_interaction():
    # items 0..1 warm, 2..5 held out (4 cold items). user 0 interacted with cold items 2 and 4, user 1 with 5.
    cold = _inter([0, 0, 1], [2, 4, 5])
    task = cold_start_task(cold, first_cold=2, num_items=6)
    assert task.users.tolist() == [0, 0, 1] and task.task.num_items == 4
    scores = torch.tensor([[9.0, 9.0, 0.4, 0.3, 0.1, 0.2],   # user 0 over items 0..5
                           [9.0, 9.0, 0.5, 0.5, 0.5, 0.1]])  # user 1
    metrics = cold_start_metrics(lambda users: scores[users], task, ks=[1, 2])
    # (0, 2): candidates {2, 3, 5} (4 is the user's other one): score 0.4 ranks 1 -> ndcg 1
    # (0, 4): candidates {4, 3, 5}: 0.1 below 0.3 and 0.2 -> rank 3 -> hr@2 0, mrr@2 0
    # (1, 5): candidates {2, 3, 4, 5}: 0.1 is last -> rank 4
    assert metrics["cold_interactions"] == 3
    assert metrics["cold_hr@1"] == pytest.approx(1 / 3)
    assert metrics["cold_hr@2"] == pytest.approx(1 / 3)
    assert metrics["cold_ndcg@2"] == pytest.approx(1 / 3)
    assert metrics["cold_auc"] == pytest.approx((1.0 + 0.0 + 0.0) / 3)


def test_cold_random_baseline_is_the_exact_expectation():
    # 3 users, 6 cold items, one cold interaction each: n = 6 candidates, one positive
    cold = _inter([0, 1, 2], [10, 12, 15])
    task = cold_start_task(cold, first_cold=10, num_items=16)
    metrics = cold_start_metrics(lambda users: torch.zeros(len(users), 16), task, ks=[3], prefix="r_")
    assert metrics["r_hr@3"] == pytest.approx(3 / 6)
    assert metrics["r_ndcg@3"] == pytest.approx(sum(1 / math.log2(r + 1) for r in (1, 2, 3)) / 6)


def _small_config(name: str, *extra: str):
    return load_config(None, [f"model.name={name}", "model.dim=4", "model.cold_start_items=0.2", "data.num_users=60",
                              "data.num_items=40", "data.mean_interactions=12", "data.split=leave_last_out",
                              "eval.ks=[5]", "eval.sampled_negatives=0", "train.rounds=2", *extra])


def test_id_only_model_says_not_supported_instead_of_a_number(capsys):
    exp = prepare(_small_config("bpr"))
    params = exp.model.init_params(torch.Generator().manual_seed(0))
    metrics = exp.evaluator(params)
    assert metrics["cold_start"] == "not supported by model bpr"
    assert not any(k.startswith("cold_") and k != "cold_start" for k in metrics)
    assert "cold start: not supported by model bpr" in capsys.readouterr().err
    baseline = exp.evaluator.popularity_baseline()
    assert baseline["cold_popularity_ndcg@5"] == pytest.approx(baseline["cold_random_ndcg@5"])  # untrained: ties
    # warm rankings never see held-out items; negatives come from warm items only
    assert exp.clients.user_items.num_items == exp.evaluator.warm_items == 32
    task = exp.evaluator._parts["test"].task
    first = task.exclude_items[task.exclude_offsets[0]:task.exclude_offsets[1]]
    assert set(range(32, 40)) <= set(first.tolist())


def test_cold_start_needs_a_ranking_model():
    with pytest.raises(FedrecError, match="predicts ratings"):
        prepare(_small_config("mf"))


@pytest.mark.slow
def test_ml100k_cold_start_text_model_beats_random_three_times(ml100k_dir, tmp_path):
    """The named config, shortened to 3 rounds: held-out items ranked >= 3x better than random.

    Embeddings come from the disk cache ($FEDREC_CACHE or ~/.cache/fedrec) when a run made them."""
    from pathlib import Path

    from fedrec.runtime.trainer import train

    root = Path(__file__).resolve().parents[1]
    config = load_config(root / "configs" / "ml100k-text-coldstart.toml",
                         [f"data.data_dir={json.dumps(str(ml100k_dir))}", "train.rounds=3", "train.eval_every=3",
                          "eval.sampled_negatives=0"])
    metrics = train(config, tmp_path / "run")
    assert "cold_start" not in metrics and metrics["cold_interactions"] > 5000
    assert metrics["cold_ndcg@10"] >= 3 * metrics["cold_random_ndcg@10"]
    assert metrics["cold_popularity_ndcg@10"] == pytest.approx(metrics["cold_random_ndcg@10"])
    assert json.loads((tmp_path / "run" / "metrics.json").read_text())["cold_ndcg@10"] == metrics["cold_ndcg@10"]
