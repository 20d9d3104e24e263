"""Train/validation/test splits: official folds, per-user random ratio, leave-last-out."""

from __future__ import annotations

from dataclasses import replace

import numpy as np

from fedrec.data.dataset import Dataset, Interactions, Split
from fedrec.data.recency import latest_rank
from fedrec.errors import FedrecError


def official_split(dataset: Dataset, fold: str | int) -> Split:
    """An official fold of ``dataset``: 1..5 or "u1".."u5", "ua", "ub" (ML-100K)."""
    name = f"u{fold}" if isinstance(fold, int) or str(fold).strip().isdigit() else str(fold).strip()
    if name not in dataset.official_splits:
        available = ", ".join(dataset.official_splits) or "none"
        raise FedrecError(
            f"fold {fold!r} is not an official split of {dataset.name} (available: {available}); "
            "pick one of those or use a random or leave-last-out split"
        )
    return dataset.official_splits[name]


def _check_ratio(what: str, ratio: float) -> None:
    if not 0.0 < ratio < 1.0:
        raise FedrecError(f"{what}={ratio} must be strictly between 0 and 1")


def _random_per_user(users: np.ndarray, ratio: float, rng: np.random.Generator) -> np.ndarray:
    """Mask picking round(ratio * n) random rows of each user with n >= 2 rows, at least 1 and at most n - 1."""
    if len(users) == 0:
        return np.zeros(0, dtype=bool)
    order = np.lexsort((rng.random(len(users)), users))
    sorted_users = users[order]
    starts = np.flatnonzero(np.r_[True, sorted_users[1:] != sorted_users[:-1]])
    sizes = np.diff(np.r_[starts, len(users)])
    take = np.where(sizes >= 2, np.clip(np.rint(ratio * sizes), 1, sizes - 1), 0).astype(np.int64)
    rank = np.arange(len(users)) - np.repeat(starts, sizes)
    mask = np.zeros(len(users), dtype=bool)
    mask[order] = rank < np.repeat(take, sizes)
    return mask


def random_ratio_split(inter: Interactions, test_ratio: float, seed: int) -> Split:
    """Per user, a random ``test_ratio`` of the interactions go to test.

    Every user with at least 2 interactions keeps at least one in train and one in test;
    a user with a single interaction stays in train. Rows keep their input order.
    """
    _check_ratio("test_ratio", test_ratio)
    test = _random_per_user(inter.users, test_ratio, np.random.default_rng(seed))
    return Split(train=inter.subset(~test), test=inter.subset(test), name=f"random-{test_ratio:g}-seed{seed}")


def leave_last_out_with_report(inter: Interactions, validation: bool = True,
                               tie_seed: int | None = None) -> tuple[Split, int]:
    """Leave-last-out split and the number of users excluded because they have too few interactions.

    Per user by timestamp: the last interaction goes to test, the second to last to validation (when
    ``validation``), the rest to train. Equal timestamps are ordered by row (a later row counts as
    later), or, with ``tie_seed``, in a random order drawn from that seed. Users with fewer than 3
    interactions (2 without validation) are left out of every part.
    """
    needed = 3 if validation else 2
    n = len(inter)
    within_tie = None if tie_seed is None else np.random.default_rng(tie_seed).permutation(n)
    from_end = latest_rank(inter, within_tie)  # 0 for each user's last row
    sizes = np.bincount(inter.users) if n else np.zeros(0, np.int64)
    enough = sizes[inter.users] >= needed
    part = np.where(from_end == 0, 2, np.where((from_end == 1) & validation, 1, 0))  # 0 train, 1 validation, 2 test
    part = np.where(enough, part, -1)  # -1: excluded
    split = Split(
        train=inter.subset(part == 0),
        test=inter.subset(part == 2),
        validation=inter.subset(part == 1) if validation else None,
        name="leave-last-out",
    )
    return split, int(((sizes > 0) & (sizes < needed)).sum())


def random_leave_one_out_with_report(inter: Interactions, seed: int, validation: bool = True) -> tuple[Split, int]:
    """Leave-one-out with the held-out interactions chosen at random per user (for data without time).

    Same rules as leave-last-out, with a seeded random order in place of time; returns the split and
    the number of users left out for having too few interactions.
    """
    random_time = np.random.default_rng(seed).permutation(len(inter)).astype(np.int64)
    shuffled = Interactions(inter.users, inter.items, inter.ratings, random_time)
    split, excluded = leave_last_out_with_report(shuffled, validation)
    restore = lambda part: None if part is None else inter.subset(_rows_of(part, inter, random_time))  # noqa: E731
    return replace(split, train=restore(split.train), test=restore(split.test), validation=restore(split.validation),
                   name=f"random-leave-one-out-seed{seed}"), excluded


def _rows_of(part: Interactions, inter: Interactions, random_time: np.ndarray) -> np.ndarray:
    """Row indices of ``inter`` whose random time stamps appear in ``part`` (they are unique)."""
    position = np.empty(len(random_time), dtype=np.int64)
    position[random_time] = np.arange(len(random_time))
    return np.sort(position[part.timestamps])


def leave_last_out(inter: Interactions, validation: bool = True) -> Split:
    """Leave-last-out split; see ``leave_last_out_with_report`` for the excluded-user count."""
    return leave_last_out_with_report(inter, validation)[0]


def carve_validation(split: Split, ratio: float, seed: int) -> Split:
    """Move a random ``ratio`` of each user's train interactions to validation.

    Users with at least 2 train interactions give at least one and keep at least one; the test
    part is unchanged. A split that already has a validation part is an error.
    """
    _check_ratio("validation ratio", ratio)
    if split.validation is not None:
        raise FedrecError(f"split {split.name or '(unnamed)'} already has a validation part; do not carve another")
    chosen = _random_per_user(split.train.users, ratio, np.random.default_rng(seed))
    return replace(split, train=split.train.subset(~chosen), validation=split.train.subset(chosen))


def hold_out_items(dataset: Dataset, fraction: float, seed: int) -> tuple[Dataset, Interactions, int]:
    """Cold-start split: a random ``fraction`` of the items leaves training entirely.

    Returns the dataset with its items relabelled so the kept ("warm") items come first,
    0..W-1 (in their original order), and the held-out ("cold") ones after them, W..N-1; its
    interactions (and official folds) hold only warm items. Also returns the interactions with
    cold items (relabelled the same way), which are all test data, and W. Item ids, titles and
    texts follow the relabelling, so every index still names the same item. Only items with at
    least one interaction are held out, and at least one item is, and one stays.
    """
    _check_ratio("cold-start item fraction", fraction)
    counts = np.bincount(dataset.interactions.items, minlength=dataset.num_items)
    candidates = np.flatnonzero(counts > 0)
    if len(candidates) < 2:
        raise FedrecError(f"{dataset.name} has {len(candidates)} items with interactions; the cold-start protocol "
                          "needs at least 2")
    take = int(np.clip(round(fraction * len(candidates)), 1, len(candidates) - 1))
    cold = np.sort(np.random.default_rng(seed).choice(candidates, size=take, replace=False))
    is_cold = np.zeros(dataset.num_items, dtype=bool)
    is_cold[cold] = True
    order = np.r_[np.flatnonzero(~is_cold), cold]  # new index -> old index
    new_index = np.empty(dataset.num_items, dtype=np.int64)
    new_index[order] = np.arange(dataset.num_items)

    def relabel(part: Interactions) -> Interactions:
        return Interactions(part.users, new_index[part.items], part.ratings, part.timestamps)

    def warm(part: Interactions) -> Interactions:
        return relabel(part.subset(~is_cold[part.items]))

    folds = {name: replace(split, train=warm(split.train), test=warm(split.test),
                           validation=None if split.validation is None else warm(split.validation))
             for name, split in dataset.official_splits.items()}
    relabelled = replace(
        dataset,
        interactions=warm(dataset.interactions),
        item_ids=dataset.item_ids[order],
        item_titles=[dataset.item_titles[k] for k in order],
        item_texts=[dataset.item_texts[k] for k in order],
        official_splits=folds,
    )
    cold_part = relabel(dataset.interactions.subset(is_cold[dataset.interactions.items]))
    return relabelled, cold_part, dataset.num_items - take
