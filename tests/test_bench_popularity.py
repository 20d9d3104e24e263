"""bench/bench_popularity.py: popularity thirds, per-third metrics and the top-10 popularity, by hand."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from fedrec.data.dataset import Interactions
from fedrec.eval.ranking import ranking_task

@pytest.fixture(scope="module")
def bench(load_bench):
    return load_bench("bench_popularity")


def _inter(users, items) -> Interactions:
    n = len(users)
    return Interactions(np.array(users, np.int64), np.array(items, np.int64), np.ones(n, np.float32), np.zeros(n, np.int64))


def test_thirds_and_per_third_metrics_by_hand(bench):
    # 12 items; popularity = item index (item 11 is the most popular)
    popularity = np.arange(12)
    held_out = _inter([0, 1, 2], [1, 6, 11])  # one held-out item in each third
    edges = bench.tier_edges(popularity, held_out.items)
    assert np.digitize(popularity[held_out.items], edges).tolist() == [0, 1, 2]
    train = _inter([0, 1, 2], [0, 0, 0])  # item 0 excluded for everyone
    # scores: item index for every user, so item 11 ranks 1st, 6 ranks 6th, 1 ranks 11th (item 0 excluded)
    scores = torch.arange(12, dtype=torch.float32).expand(3, 12)
    tiers = bench.metrics_by_tier(lambda users: scores[users], held_out, [train], popularity, edges, 12)
    assert [t["n"] for t in tiers] == [1, 1, 1]
    assert [t["hr@10"] for t in tiers] == [0.0, 1.0, 1.0]
    assert tiers[1]["ndcg@10"] == pytest.approx(1 / math.log2(6 + 1))
    assert tiers[2]["ndcg@10"] == pytest.approx(1.0)
    # top 10 of every user: items 11..2 (item 0 excluded, item 1 is 11th): mean popularity 6.5
    task = ranking_task(held_out, [train], 12)
    assert bench.top10_popularity(scores, task, popularity) == pytest.approx(6.5)


def test_an_empty_third_gives_nan_not_an_error(bench):
    popularity = np.arange(12)
    held_out = _inter([0, 1], [5, 5])
    tiers = bench.metrics_by_tier(lambda users: torch.zeros(len(users), 12), held_out, [], popularity,
                                  np.array([1.0, 2.0]), 12)
    assert [t["n"] for t in tiers] == [0, 0, 2] and math.isnan(tiers[0]["hr@10"])
