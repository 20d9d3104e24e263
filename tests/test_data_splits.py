"""Split properties: disjoint parts that rebuild the input, per-user guarantees, determinism."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fedrec.data import (
    Dataset,
    Interactions,
    Split,
    carve_validation,
    leave_last_out,
    leave_last_out_with_report,
    make_synthetic,
    official_split,
    random_ratio_split,
)
from fedrec.errors import FedrecError

SETTINGS = settings(max_examples=60, deadline=None)


@st.composite
def interactions(draw: st.DrawFn) -> Interactions:
    """Random interactions; ``ratings`` holds the row number so every row is identifiable."""
    n = draw(st.integers(0, 60))
    users = draw(st.lists(st.integers(0, 7), min_size=n, max_size=n))
    stamps = draw(st.lists(st.integers(0, 5), min_size=n, max_size=n))  # many ties on purpose
    return Interactions(
        np.asarray(users, dtype=np.int64),
        np.arange(n, dtype=np.int64) % 5,
        np.arange(n, dtype=np.float32),
        np.asarray(stamps, dtype=np.int64),
    )


def rows(part: Interactions | None) -> np.ndarray:
    return np.zeros(0, dtype=np.int64) if part is None else part.ratings.astype(np.int64)


def assert_partitions(inter: Interactions, split: Split, excluded: np.ndarray | None = None) -> None:
    """The parts are disjoint, keep input order, and with ``excluded`` rebuild the input exactly."""
    parts = [rows(split.train), rows(split.test), rows(split.validation)]
    for part in parts:
        assert np.all(np.diff(part) > 0)  # input order kept, no repeats
    together = np.concatenate(parts + ([excluded] if excluded is not None else []))
    assert np.array_equal(np.sort(together), np.arange(len(inter)))
    for part, name in zip((split.train, split.test, split.validation), ("train", "test", "validation")):
        if part is not None:  # every field travels with its row
            index = rows(part)
            assert np.array_equal(part.users, inter.users[index]), name
            assert np.array_equal(part.timestamps, inter.timestamps[index]), name


@SETTINGS
@given(interactions(), st.floats(0.05, 0.95), st.integers(0, 2**32 - 1))
def test_random_ratio_split(inter: Interactions, ratio: float, seed: int) -> None:
    split = random_ratio_split(inter, ratio, seed)
    assert_partitions(inter, split)
    assert split.validation is None
    sizes = np.bincount(inter.users, minlength=8)
    train = np.bincount(split.train.users, minlength=8)
    test = np.bincount(split.test.users, minlength=8)
    for user in range(8):
        if sizes[user] >= 2:
            assert train[user] >= 1 and test[user] >= 1
            assert test[user] == min(max(round(ratio * sizes[user]), 1), sizes[user] - 1)
        else:
            assert test[user] == 0 and train[user] == sizes[user]
    again = random_ratio_split(inter, ratio, seed)
    assert np.array_equal(rows(again.test), rows(split.test))


def test_random_ratio_split_depends_on_seed() -> None:
    inter = make_synthetic(num_users=50, num_items=100).interactions
    a, b = random_ratio_split(inter, 0.2, 0), random_ratio_split(inter, 0.2, 1)
    assert len(a.test) == len(b.test)
    assert not np.array_equal(a.test.items, b.test.items)


@SETTINGS
@given(interactions(), st.booleans())
def test_leave_last_out(inter: Interactions, validation: bool) -> None:
    split, excluded_users = leave_last_out_with_report(inter, validation)
    needed = 3 if validation else 2
    sizes = np.bincount(inter.users, minlength=8)
    small = np.flatnonzero((sizes > 0) & (sizes < needed))
    assert excluded_users == len(small)
    excluded_rows = np.flatnonzero(np.isin(inter.users, small))
    assert_partitions(inter, split, excluded_rows)
    assert (split.validation is not None) == validation
    for user in np.flatnonzero(sizes >= needed):
        mine = np.flatnonzero(inter.users == user)
        # latest by timestamp, ties broken by row order: the max of (timestamp, row)
        by_time = mine[np.lexsort((mine, inter.timestamps[mine]))]
        assert rows(split.test)[split.test.users == user].tolist() == [by_time[-1]]
        if validation:
            assert rows(split.validation)[split.validation.users == user].tolist() == [by_time[-2]]
        assert split.test.timestamps[split.test.users == user][0] == inter.timestamps[mine].max()
    assert np.array_equal(rows(leave_last_out(inter, validation).test), rows(split.test))


@SETTINGS
@given(interactions(), st.booleans(), st.integers(0, 1000))
def test_leave_last_out_with_random_time_ties(inter: Interactions, validation: bool, seed: int) -> None:
    """Random tie order: same parts and users as the row rule, held-out rows at each user's latest timestamps,
    the same order for the same seed."""
    split, excluded = leave_last_out_with_report(inter, validation, tie_seed=seed)
    by_row, excluded_by_row = leave_last_out_with_report(inter, validation)
    assert excluded == excluded_by_row
    assert_partitions(inter, split, np.flatnonzero(np.isin(inter.users, np.setdiff1d(inter.users, split.test.users))))
    assert np.array_equal(np.sort(split.test.users), np.sort(by_row.test.users))
    for user in np.unique(split.test.users):
        mine = np.flatnonzero(inter.users == user)
        stamps = np.sort(inter.timestamps[mine])
        assert split.test.timestamps[split.test.users == user][0] == stamps[-1]
        if validation:
            assert split.validation.timestamps[split.validation.users == user][0] == stamps[-2]
    again, _ = leave_last_out_with_report(inter, validation, tie_seed=seed)
    assert np.array_equal(rows(again.test), rows(split.test))


def test_random_time_ties_pick_every_tied_row_alike() -> None:
    """One user with five interactions in the same second: over seeds, each is the test row about a fifth of the time
    (the row rule always picks the last row)."""
    inter = Interactions(np.zeros(5, np.int64), np.arange(5, dtype=np.int64), np.arange(5, dtype=np.float32),
                         np.zeros(5, np.int64))
    assert rows(leave_last_out(inter).test).tolist() == [4]
    picks = np.bincount([rows(leave_last_out_with_report(inter, tie_seed=seed)[0].test)[0] for seed in range(2000)],
                        minlength=5)
    assert np.all(np.abs(picks / 2000 - 0.2) < 0.04), picks


@SETTINGS
@given(interactions(), st.floats(0.05, 0.95), st.integers(0, 1000))
def test_carve_validation(inter: Interactions, ratio: float, seed: int) -> None:
    base = random_ratio_split(inter, 0.3, seed)
    split = carve_validation(base, ratio, seed)
    assert_partitions(inter, split)
    assert np.array_equal(rows(split.test), rows(base.test))
    before = np.bincount(base.train.users, minlength=8)
    after = np.bincount(split.train.users, minlength=8)
    carved = np.bincount(split.validation.users, minlength=8)
    assert np.all(after[before >= 1] >= 1)
    assert np.all(carved[before >= 2] >= 1) and np.all(carved[before < 2] == 0)
    assert np.array_equal(rows(carve_validation(base, ratio, seed).validation), rows(split.validation))


def test_split_errors() -> None:
    inter = make_synthetic(num_users=20, num_items=40).interactions
    for call in (
        lambda: random_ratio_split(inter, 0.0, 0),
        lambda: random_ratio_split(inter, 1.5, 0),
        lambda: carve_validation(random_ratio_split(inter, 0.2, 0), 1.0, 0),
        lambda: carve_validation(leave_last_out(inter), 0.1, 0),
    ):
        with pytest.raises(FedrecError) as info:
            call()
        assert "\n" not in str(info.value)


def _with_folds() -> Dataset:
    d = make_synthetic(num_users=20, num_items=40)
    fold = random_ratio_split(d.interactions, 0.2, 0)
    return Dataset(
        d.name, d.interactions, d.user_ids, d.item_ids, d.item_titles, d.item_texts, d.rating_range,
        official_splits={"u1": fold, "ua": fold},
    )


def test_official_split_lookup() -> None:
    d = _with_folds()
    assert official_split(d, 1) is d.official_splits["u1"]
    assert official_split(d, "1") is d.official_splits["u1"]
    assert official_split(d, "ua") is d.official_splits["ua"]
    with pytest.raises(FedrecError) as info:
        official_split(d, 3)
    message = str(info.value)
    assert "'u3'" not in message and "3" in message and "available: u1, ua" in message and "\n" not in message
    with pytest.raises(FedrecError, match="available: none"):
        official_split(make_synthetic(num_users=10, num_items=20), "u1")


def test_random_leave_one_out_holds_out_one_random_interaction_per_user():
    from fedrec.data.splits import random_leave_one_out_with_report

    rng = np.random.default_rng(0)
    users = np.repeat(np.arange(6), [1, 2, 3, 5, 8, 4])
    items = np.concatenate([rng.permutation(10)[:k] for k in [1, 2, 3, 5, 8, 4]])
    inter = Interactions(users, items, np.ones(len(users), np.float32), np.zeros(len(users), np.int64))
    split, excluded = random_leave_one_out_with_report(inter, seed=3)
    assert excluded == 2  # users with 1 and 2 interactions cannot give test + validation + train
    assert np.array_equal(np.sort(split.test.users), np.arange(2, 6))
    assert np.array_equal(np.sort(split.validation.users), np.arange(2, 6))
    assert len(split.train) + len(split.test) + len(split.validation) == len(inter) - 3
    keys = lambda part: set(zip(part.users.tolist(), part.items.tolist()))  # noqa: E731
    assert keys(split.train) | keys(split.test) | keys(split.validation) == keys(inter.subset(users >= 2))
    again, _ = random_leave_one_out_with_report(inter, seed=3)
    assert keys(again.test) == keys(split.test)
    other = [keys(random_leave_one_out_with_report(inter, seed=s)[0].test) for s in range(1, 8)]
    assert any(o != keys(split.test) for o in other)  # the held-out item is random, not the last row


def test_ml100k_time_ties_decide_the_test_item_and_random_order_removes_the_popularity_shift(ml100k_dir) -> None:
    """The figures the README's "Equal timestamps" paragraph quotes: 415 of 943 users rated their last two items in
    the same second; ordered by row (item id within a second), the tied test items are the less popular ones."""
    from fedrec.data import load_dataset

    inter = load_dataset("ml-100k", data_dir=ml100k_dir).interactions
    by_row = leave_last_out(inter)
    tied = by_row.test.timestamps == by_row.validation.timestamps[np.argsort(by_row.validation.users)][
        np.searchsorted(np.sort(by_row.validation.users), by_row.test.users)]
    assert tied.sum() == 415 and len(tied) == 943
    counts = np.bincount(inter.items)
    val_count = counts[by_row.validation.items[np.argsort(by_row.validation.users)]]
    test_count = counts[by_row.test.items[np.argsort(by_row.test.users)]]
    tied_sorted = tied[np.argsort(by_row.test.users)]
    assert np.median(test_count[tied_sorted]) == 79 and np.median(val_count[tied_sorted]) == 134
    assert abs(np.median(test_count[~tied_sorted]) - np.median(val_count[~tied_sorted])) <= 2
    random_ties = leave_last_out_with_report(inter, tie_seed=0)[0]
    row_gap = counts[by_row.validation.items].mean() - counts[by_row.test.items].mean()
    random_gap = counts[random_ties.validation.items].mean() - counts[random_ties.test.items].mean()
    assert row_gap > 20 and abs(random_gap) < row_gap / 2
