"""Recency emphasis (train.recency_*) and the final fit on train + validation (data.train_on_validation)."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fedrec.config import load_config
from fedrec.data.dataset import Interactions
from fedrec.data.recency import latest_rank, repeat_latest
from fedrec.errors import FedrecError
from fedrec.runtime.experiment import prepare
from fedrec.runtime.trainer import train

SETTINGS = settings(max_examples=80, deadline=None)


@st.composite
def interactions(draw: st.DrawFn) -> Interactions:
    """Random interactions with many equal timestamps; ``ratings`` holds the row number."""
    n = draw(st.integers(0, 50))
    users = draw(st.lists(st.integers(0, 5), min_size=n, max_size=n))
    stamps = draw(st.lists(st.integers(0, 4), min_size=n, max_size=n))
    return Interactions(np.asarray(users, dtype=np.int64), np.arange(n, dtype=np.int64) % 7,
                        np.arange(n, dtype=np.float32), np.asarray(stamps, dtype=np.int64))


def brute_latest_rank(inter: Interactions) -> list[int]:
    """For each row, the number of its user's rows that are later (larger timestamp, or equal and a later row)."""
    n = len(inter)
    return [sum(1 for j in range(n) if inter.users[j] == inter.users[i]
                and (inter.timestamps[j], j) > (inter.timestamps[i], i)) for i in range(n)]


@SETTINGS
@given(interactions())
def test_latest_rank_matches_brute_force(inter: Interactions) -> None:
    assert latest_rank(inter).tolist() == brute_latest_rank(inter)


@SETTINGS
@given(interactions(), st.integers(1, 6), st.integers(0, 3))
def test_repeat_latest_repeats_exactly_each_users_latest_rows(inter: Interactions, window: int, repeats: int) -> None:
    out = repeat_latest(inter, window, repeats)
    rows = out.ratings.astype(np.int64)
    assert rows[:len(inter)].tolist() == list(range(len(inter)))  # the original rows first, in order
    ranks = brute_latest_rank(inter)
    expected = Counter({i: 1 + (repeats if ranks[i] < window else 0) for i in range(len(inter))})
    assert Counter(rows.tolist()) == expected
    for name in ("users", "items", "timestamps"):  # every field travels with its row
        assert np.array_equal(getattr(out, name), getattr(inter, name)[rows])


def test_repeat_latest_by_hand() -> None:
    # user 0: rows 0 (t=5), 1 (t=1), 2 (t=5, later row than 0) -> latest two are rows 2 and 0; user 1: row 3 alone
    inter = Interactions(np.array([0, 0, 0, 1]), np.array([10, 11, 12, 13]), np.arange(4, dtype=np.float32),
                         np.array([5, 1, 5, 9]))
    assert latest_rank(inter).tolist() == [1, 2, 0, 0]
    assert repeat_latest(inter, 2, 2).items.tolist() == [10, 11, 12, 13, 10, 12, 13, 10, 12, 13]
    assert repeat_latest(inter, 2, 0) is inter


def _config(*overrides: str):
    return load_config(None, ["data.num_users=40", "data.num_items=30", "data.mean_interactions=12",
                              "data.split=leave_last_out", "model.name=bpr", "model.dim=4", "train.rounds=2",
                              "train.batch_size=4", "eval.ks=[5]", "eval.sampled_negatives=0", *overrides])


def test_recency_repeats_grow_each_clients_examples_and_nothing_else() -> None:
    plain = prepare(_config())
    recent = prepare(_config("train.recency_repeats=2", "train.recency_window=3"))
    per_user = np.bincount(plain.split.train.users, minlength=plain.dataset.num_users)
    assert np.array_equal(recent.clients.sizes, plain.clients.sizes + 2 * np.minimum(per_user, 3))
    assert np.array_equal(recent.split.train.items, plain.split.train.items)  # the split (and popularity) unchanged
    assert np.array_equal(recent.clients.user_items.items, plain.clients.user_items.items)  # negatives: same items


def test_train_on_validation_trains_on_the_validation_interaction_and_reports_test_only(tmp_path: Path) -> None:
    plain = prepare(_config())
    final = prepare(_config("data.train_on_validation=true"))
    assert final.split.validation is None
    assert len(final.split.train) == len(plain.split.train) + len(plain.split.validation)
    assert np.array_equal(final.split.test.items, plain.split.test.items)
    metrics = train(_config("data.train_on_validation=true"), tmp_path / "run")
    assert "hr@5" in metrics and not any(key.startswith("val_") for key in metrics)


def test_recency_and_final_fit_settings_are_refused_where_they_cannot_apply() -> None:
    for overrides, expected in ((["data.split=ratio", "data.train_on_validation=true"], "data.train_on_validation"),
                                (["model.name=sasrec", "data.split=leave_last_out", "train.recency_repeats=1"],
                                 "train.recency_repeats")):
        with pytest.raises(FedrecError, match=expected) as info:
            load_config(None, overrides)
        assert "\n" not in str(info.value)


def test_recency_emphasis_skips_simulated_attackers_and_refuses_data_without_time() -> None:
    from dataclasses import replace

    from fedrec.runtime.experiment import recency_emphasis

    config = _config("train.recency_repeats=1", "train.recency_window=1")
    dataset = prepare(_config()).dataset
    real = Interactions(np.array([0, 0]), np.array([1, 2]), np.ones(2, np.float32), np.array([3, 4]))
    fake_user = dataset.num_users  # an injected attacker's rows: all at time 0
    fake = Interactions(np.array([fake_user, fake_user]), np.array([5, 6]), np.ones(2, np.float32), np.zeros(2, np.int64))
    out = recency_emphasis(config, Interactions.concat([real, fake]), dataset)
    assert sorted(zip(out.users.tolist(), out.items.tolist())) == [(0, 1), (0, 2), (0, 2), (fake_user, 5), (fake_user, 6)]
    timeless = replace(dataset, interactions=replace(dataset.interactions,
                                                     timestamps=np.zeros(len(dataset.interactions), np.int64)))
    with pytest.raises(FedrecError, match="no timestamps") as info:
        recency_emphasis(config, real, timeless)
    assert "\n" not in str(info.value)
