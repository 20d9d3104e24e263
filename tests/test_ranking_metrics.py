"""Ranking metrics: closed-form expectations over random tie-breaking against brute-force enumeration."""

from __future__ import annotations

import itertools
import math
from unittest import mock

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from fedrec.data.dataset import Interactions
from fedrec.errors import FedrecError
from fedrec.eval import ranking
from fedrec.eval.ranking import (
    RankingTask,
    full_ranking_metrics,
    ranking_task,
    sample_negatives,
    sampled_ranking_metrics,
)

SETTINGS = settings(max_examples=40, deadline=None)


def inter(users: list[int], items: list[int]) -> Interactions:
    users_, items_ = np.asarray(users, dtype=np.int64), np.asarray(items, dtype=np.int64)
    return Interactions(users_, items_, np.ones(len(users_), np.float32), np.zeros(len(users_), np.int64))


def scorer(matrix: torch.Tensor):
    """score_users for a fixed (num_users, num_items) score matrix."""
    return lambda users: matrix[users]


def pair_scorer(matrix: torch.Tensor):
    """score_pairs for a fixed (num_users, num_items) score matrix."""
    return lambda users, items: matrix[users[:, None], items]


# ---------------------------------------------------------------- brute-force reference

def orders(scores: dict[int, float]) -> list[list[int]]:
    """Every ranking of the candidates consistent with the scores (all orders within tied blocks)."""
    levels = sorted(set(scores.values()), reverse=True)
    blocks = [[i for i in sorted(scores) if scores[i] == level] for level in levels]
    return [[i for block in choice for i in block]
            for choice in itertools.product(*(itertools.permutations(b) for b in blocks))]


def textbook(order: list[int], positives: set[int], k: int) -> dict[str, float]:
    """Textbook metrics of one deterministic ranking."""
    ranks = [r for r, item in enumerate(order, start=1) if item in positives]
    hits = [r for r in ranks if r <= k]
    ideal = sum(1 / math.log2(r + 1) for r in range(1, min(len(positives), k) + 1))
    return {
        f"hr@{k}": float(bool(hits)),
        f"ndcg@{k}": sum(1 / math.log2(r + 1) for r in hits) / ideal,
        f"recall@{k}": len(hits) / len(positives),
        f"mrr@{k}": 1 / min(ranks) if min(ranks) <= k else 0.0,
    }


def textbook_auc(scores: dict[int, float], positives: set[int]) -> float | None:
    """Fraction of (positive, negative) pairs with the positive higher, ties 1/2; None without negatives."""
    negatives = [i for i in scores if i not in positives]
    if not negatives:
        return None
    wins = sum(1.0 if scores[p] > scores[n] else 0.5 if scores[p] == scores[n] else 0.0
               for p in positives for n in negatives)
    return wins / (len(positives) * len(negatives))


def brute_force(matrix: np.ndarray, positives: dict[int, set[int]], excluded: dict[int, set[int]],
                ks: list[int]) -> dict[str, float]:
    """Mean over users of the metrics averaged over every tie-breaking order, plus coverage by index."""
    sums: dict[str, float] = {}
    evaluated, auc_values, covered = 0, [], {k: set() for k in ks}
    for user in sorted(positives):
        scores = {i: float(matrix[user, i]) for i in range(matrix.shape[1]) if i not in excluded[user]}
        pos = positives[user] - excluded[user]
        if not pos:
            continue
        evaluated += 1
        all_orders = orders(scores)
        for k in ks:
            for order in all_orders:
                for name, value in textbook(order, pos, k).items():
                    sums[name] = sums.get(name, 0.0) + value / len(all_orders)
            by_index = sorted(scores, key=lambda i: (-scores[i], i))
            covered[k].update(by_index[:k])
        auc = textbook_auc(scores, pos)
        if auc is not None:
            auc_values.append(auc)
    out = {name: total / evaluated for name, total in sums.items()}
    out.update({f"coverage@{k}": len(covered[k]) / matrix.shape[1] for k in ks})
    out["auc"] = float(np.mean(auc_values)) if auc_values else math.nan
    out["evaluated_users"] = evaluated
    return out


@st.composite
def small_cases(draw: st.DrawFn):
    """Tiny score matrices with many ties, 1..3 positives per user, some excluded (maybe the positives)."""
    num_users = draw(st.integers(1, 4))
    num_items = draw(st.integers(1, 7))
    values = draw(st.lists(st.sampled_from([-1.0, 0.25, 2.0]), min_size=3, max_size=3, unique=True))
    matrix = np.array([[draw(st.sampled_from(values)) for _ in range(num_items)] for _ in range(num_users)])
    item = st.integers(0, num_items - 1)
    positives = {u: draw(st.sets(item, min_size=1, max_size=3)) for u in range(num_users)}
    excluded = {u: draw(st.sets(item, max_size=num_items)) for u in range(num_users)}
    ks = draw(st.lists(st.integers(1, min(6, num_items)), min_size=1, max_size=3))
    return matrix, positives, excluded, ks


def build_task(matrix, positives, excluded) -> RankingTask:
    test = [(u, i) for u, items in positives.items() for i in items]
    train = [(u, i) for u, items in excluded.items() for i in items]
    return ranking_task(inter(*zip(*test)), [inter(*zip(*train))] if train else [], matrix.shape[1])


@SETTINGS
@given(small_cases(), st.integers(1, 3), st.booleans())
def test_full_ranking_matches_enumeration_of_all_tie_breaks(case, batch_users, sort_path) -> None:
    matrix, positives, excluded, ks = case
    task = build_task(matrix, positives, excluded)
    threshold = -1 if sort_path else ranking._COMPARE_MAX_POSITIVES  # exercise both counting paths
    with mock.patch.object(ranking, "_COMPARE_MAX_POSITIVES", threshold):
        got = full_ranking_metrics(scorer(torch.tensor(matrix)), task, ks, batch_users=batch_users)
    want = brute_force(matrix, positives, excluded, sorted(set(ks)))
    assert got["evaluated_users"] == want["evaluated_users"]
    assert got["skipped_users"] == len(positives) - want["evaluated_users"]
    assert got["dropped_positives"] == sum(len(positives[u] & excluded[u]) for u in positives)
    for name, value in want.items():
        if math.isnan(value):
            assert math.isnan(got[name]), name
        else:
            assert got[name] == pytest.approx(value, abs=1e-9), name


# ---------------------------------------------------------------- hand-computed cases

def one_user(scores: list[float], positives: list[int], ks: list[int], excluded: list[int] = ()) -> dict:
    task = ranking_task(inter([0] * len(positives), positives), [inter([0] * len(excluded), list(excluded))],
                        len(scores))
    return full_ranking_metrics(scorer(torch.tensor([scores])), task, ks)


def test_positive_ranked_first_scores_one() -> None:
    got = one_user([0.1, 5.0, 0.3, 0.2], [1], [1, 3])
    for name in ("hr@1", "ndcg@1", "mrr@1", "recall@1", "hr@3", "ndcg@3", "mrr@3", "auc"):
        assert got[name] == 1.0, name


def test_positive_at_rank_three_of_ten() -> None:
    scores = [10.0 - i for i in range(10)]  # item i has rank i + 1
    got = one_user(scores, [2], [2, 3, 10])
    assert got["ndcg@10"] == pytest.approx(1 / math.log2(4))
    assert got["mrr@10"] == pytest.approx(1 / 3)
    assert got["hr@2"] == 0.0 and got["mrr@2"] == 0.0 and got["ndcg@2"] == 0.0
    assert got["hr@3"] == 1.0
    assert got["auc"] == pytest.approx(7 / 9)


@pytest.mark.parametrize("n", [1, 4, 10])
def test_constant_scores_give_random_ranking(n: int) -> None:
    ks = [k for k in (1, 3, 10) if k <= n]
    got = one_user([0.5] * n, [n - 1], ks)
    for k in ks:
        assert got[f"hr@{k}"] == pytest.approx(k / n)
        assert got[f"recall@{k}"] == pytest.approx(k / n)
        assert got[f"ndcg@{k}"] == pytest.approx(sum(1 / math.log2(r + 1) for r in range(1, k + 1)) / n)
        assert got[f"mrr@{k}"] == pytest.approx(sum(1 / r for r in range(1, k + 1)) / n)
    assert math.isnan(got["auc"]) if n == 1 else got["auc"] == 0.5


def test_hit_rate_of_two_positives_in_one_tied_block_is_not_linear() -> None:
    # Four tied candidates, two positives: P(no positive in the top 2) = C(2,2)/C(4,2) = 1/6.
    got = one_user([1.0] * 4, [0, 3], [1, 2])
    assert got["hr@1"] == pytest.approx(1 / 2)
    assert got["hr@2"] == pytest.approx(5 / 6)
    assert got["recall@2"] == pytest.approx(1 / 2)
    # First positive at position 1 w.p. 1/2, 2 w.p. 1/3: MRR@2 = 1/2 + 1/6.
    assert got["mrr@2"] == pytest.approx(2 / 3)
    # Expected DCG@2 = (1 + 1/log2(3)) / 2, ideal DCG = 1 + 1/log2(3).
    assert got["ndcg@2"] == pytest.approx(1 / 2)


def test_auc_with_ties() -> None:
    # User 0: positive scores 2 vs negatives 3, 2, 1, 1 -> (0 + 1/2 + 1 + 1) / 4.
    # User 1: positives 2, 3 vs negatives 3, 1 -> (0 + 1 + 1/2 + 1) / 4.
    matrix = torch.tensor([[2.0, 3.0, 2.0, 1.0, 1.0], [2.0, 3.0, 3.0, 1.0, 9.0]])
    task = ranking_task(inter([0, 1, 1], [0, 0, 1]), [inter([1], [4])], 5)
    got = full_ranking_metrics(scorer(matrix), task, [1])
    assert got["auc"] == pytest.approx((0.625 + 0.625) / 2)


def test_constant_scorer_auc_is_one_half() -> None:
    task = ranking_task(inter([0, 0, 1, 2], [1, 4, 2, 0]), [inter([0, 2], [0, 5])], 8)
    assert full_ranking_metrics(scorer(torch.zeros(3, 8)), task, [2])["auc"] == 0.5


def test_coverage_breaks_ties_by_item_index() -> None:
    # Top-1 lists: user 0 -> item 2 (highest); user 1 -> item 1 (tie 1,3,4: lowest index);
    # user 2 -> item 3 (items 0..2 excluded, tie 3,4). Top-2 adds item 0 (user 0), item 3 (user 1), 4 (user 2).
    matrix = torch.tensor([[5.0, 0.0, 9.0, 0.0, 0.0, 0.0],
                           [0.0, 1.0, 0.0, 1.0, 1.0, 0.0],
                           [9.0, 9.0, 9.0, 2.0, 2.0, 0.0]])
    task = ranking_task(inter([0, 1, 2], [5, 5, 5]), [inter([2, 2, 2], [0, 1, 2])], 6)
    got = full_ranking_metrics(scorer(matrix), task, [1, 2])
    assert got["coverage@1"] == pytest.approx(3 / 6)
    assert got["coverage@2"] == pytest.approx(5 / 6)


def test_excluded_items_are_masked() -> None:
    got = one_user([1e6, 1.0, 0.0, 0.5], [1], [1], excluded=[0, 3])
    assert got["hr@1"] == 1.0 and got["auc"] == 1.0
    # Without the exclusion the huge score would outrank the positive.
    assert one_user([1e6, 1.0, 0.0, 0.5], [1], [1])["hr@1"] == 0.0


def test_skipped_users_and_dropped_positives_are_counted() -> None:
    # User 0: its only positive is a training item (dropped, skipped). User 1: everything excluded
    # (skipped). User 2: one of two positives dropped, still evaluated.
    test = inter([0, 1, 2, 2], [1, 0, 2, 3])
    train = inter([0, 1, 1, 1, 1, 2], [1, 0, 1, 2, 3, 3])
    task = ranking_task(test, [train], 4)
    assert task.dropped_positives == 3
    matrix = torch.tensor([[0.0] * 4, [0.0] * 4, [0.0, 0.0, 1.0, 0.0]])
    got = full_ranking_metrics(scorer(matrix), task, [1])
    assert (got["evaluated_users"], got["skipped_users"], got["dropped_positives"]) == (1, 2, 3)
    assert got["hr@1"] == 1.0


def test_validation_items_excluded_alongside_training() -> None:
    task = ranking_task(inter([0], [2]), [inter([0], [0]), inter([0], [1])], 4)
    assert task.exclude_items.tolist() == [0, 1]
    got = full_ranking_metrics(scorer(torch.tensor([[9.0, 8.0, 1.0, 0.0]])), task, [1])
    assert got["hr@1"] == 1.0


# ---------------------------------------------------------------- sampled ranking

def random_task(num_users: int, num_items: int, train_per_user: int, seed: int) -> RankingTask:
    rng = np.random.default_rng(seed)
    train_u, train_i, test_i = [], [], []
    for u in range(num_users):
        items = rng.choice(num_items, size=train_per_user + 1, replace=False)
        train_u += [u] * train_per_user
        train_i += items[:-1].tolist()
        test_i.append(int(items[-1]))
    return ranking_task(inter(list(range(num_users)), test_i), [inter(train_u, train_i)], num_items)


def test_negatives_avoid_interacted_items_and_are_deterministic() -> None:
    task = random_task(20, 300, 150, seed=1)
    negatives = sample_negatives(task, 99, seed=7)
    assert negatives.shape == (20, 99)
    for k in range(len(task.users)):
        row = set(negatives[k].tolist())
        assert len(row) == 99 and min(row) >= 0 and max(row) < 300
        used = set(task.exclude_items[task.exclude_offsets[k]:task.exclude_offsets[k + 1]].tolist())
        used |= set(task.positive_items[task.positive_offsets[k]:task.positive_offsets[k + 1]].tolist())
        assert not row & used
    np.testing.assert_array_equal(negatives, sample_negatives(task, 99, seed=7))
    assert not np.array_equal(negatives, sample_negatives(task, 99, seed=8))


def test_negatives_cover_all_available_items_when_too_few() -> None:
    # 10 items, 6 used per user (5 training + 1 positive): the 4 others, then -1 padding.
    task = random_task(3, 10, 5, seed=2)
    negatives = sample_negatives(task, 99)
    for k in range(3):
        used = set(task.exclude_items[task.exclude_offsets[k]:task.exclude_offsets[k + 1]].tolist())
        used.add(int(task.positive_items[k]))
        assert set(negatives[k, :4].tolist()) == set(range(10)) - used
        assert (negatives[k, 4:] == -1).all()


def test_sampled_metrics_match_textbook_on_the_hundred_candidates() -> None:
    task = random_task(30, 400, 50, seed=3)
    negatives = sample_negatives(task, 99, seed=0)
    matrix = torch.randn(30, 400, generator=torch.Generator().manual_seed(0), dtype=torch.float64)  # no ties
    got = sampled_ranking_metrics(pair_scorer(matrix), task, negatives, [1, 10, 50])
    want: dict[str, float] = {}
    for k in range(30):
        positive = int(task.positive_items[k])
        candidates = [positive] + negatives[k].tolist()
        order = sorted(candidates, key=lambda i: -float(matrix[k, i]))
        for cut in (1, 10, 50):
            for name, value in textbook(order, {positive}, cut).items():
                want["sampled_" + name] = want.get("sampled_" + name, 0.0) + value / 30
        scores = {i: float(matrix[k, i]) for i in candidates}
        want["sampled_auc"] = want.get("sampled_auc", 0.0) + textbook_auc(scores, {positive}) / 30
    for name, value in want.items():
        assert got[name] == pytest.approx(value, abs=1e-9), name
    assert got["evaluated_users"] == 30


@SETTINGS
@given(small_cases())
def test_sampled_with_all_negatives_equals_full_ranking_of_first_positive(case) -> None:
    matrix, positives, excluded, ks = case
    first = {u: {min(p)} for u, p in positives.items()}  # the sampled protocol ranks the first positive
    task = build_task(matrix, first, excluded)
    negatives = sample_negatives(task, 10, seed=0)  # > num_items: every non-interacted item
    got = sampled_ranking_metrics(pair_scorer(torch.tensor(matrix)), task, negatives, ks)
    want = brute_force(matrix, first, excluded, sorted(set(ks)))
    for name in (n for n in want if not n.startswith(("coverage", "evaluated"))):
        value = want[name]
        assert (math.isnan(got["sampled_" + name]) if math.isnan(value)
                else got["sampled_" + name] == pytest.approx(value, abs=1e-9)), name
    assert got["evaluated_users"] == want["evaluated_users"]


# ---------------------------------------------------------------- bad input

def assert_one_line_error(excinfo: pytest.ExceptionInfo, *fragments: str) -> None:
    message = str(excinfo.value)
    assert "\n" not in message
    for fragment in fragments:
        assert fragment in message, message


@pytest.mark.parametrize("ks, fragment", [([0], "K=0"), ([5], "K=5 is larger"), ([], "empty"), ([2.5], "K=2.5")])
def test_bad_cut_offs(ks, fragment) -> None:
    task = ranking_task(inter([0], [1]), [], 4)
    with pytest.raises(FedrecError) as excinfo:
        full_ranking_metrics(scorer(torch.zeros(1, 4)), task, ks)
    assert_one_line_error(excinfo, fragment)
    with pytest.raises(FedrecError):
        sampled_ranking_metrics(pair_scorer(torch.zeros(1, 4)), task, sample_negatives(task, 2), ks)


def test_wrong_score_shape() -> None:
    task = ranking_task(inter([0, 1], [1, 2]), [], 4)
    with pytest.raises(FedrecError) as excinfo:
        full_ranking_metrics(lambda users: torch.zeros(len(users), 3), task, [1])
    assert_one_line_error(excinfo, "(2, 3)", "(2, 4)")
    with pytest.raises(FedrecError) as excinfo:
        sampled_ranking_metrics(lambda users, items: torch.zeros(len(users)), task, sample_negatives(task, 2), [1])
    assert_one_line_error(excinfo, "(2,)", "(2, 3)")


@pytest.mark.parametrize("bad", [math.nan, math.inf])
def test_non_finite_scores_name_the_users(bad: float) -> None:
    task = ranking_task(inter([3, 5, 8], [1, 2, 0]), [inter([5], [3])], 4)
    matrix = torch.zeros(9, 4)
    matrix[8, 2] = bad
    matrix[5, 3] = math.nan  # on an excluded item: ignored
    with pytest.raises(FedrecError) as excinfo:
        full_ranking_metrics(scorer(matrix), task, [1])
    assert_one_line_error(excinfo, "1 users (8)")
    matrix[8, 2] = 0.0
    assert full_ranking_metrics(scorer(matrix), task, [1])["evaluated_users"] == 3


def test_item_out_of_catalogue() -> None:
    with pytest.raises(FedrecError) as excinfo:
        ranking_task(inter([0], [4]), [], 4)
    assert_one_line_error(excinfo, "item index 4", "num_items")
