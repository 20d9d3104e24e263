"""Update validation and robust aggregation: brute-force agreement, resistance, and corruption properties."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from fedrec.errors import FedrecError
from fedrec.federated.aggregation import CohortUpdate, aggregate
from fedrec.federated.robust import (
    ClientUpload,
    RobustSettings,
    ValidationSettings,
    group_krum,
    group_median,
    group_trimmed_mean,
    robust_aggregate,
    split_update,
    validate_update,
    validate_uploads,
)
from fedrec.models.base import ParamKind, ParamSpec

NUM_ITEMS, DIM = 6, 3
SPECS = [
    ParamSpec("item_vec", ParamKind.SHARED_ROWS, (NUM_ITEMS, DIM)),
    ParamSpec("item_bias", ParamKind.SHARED_ROWS, (NUM_ITEMS,)),
    ParamSpec("user_vec", ParamKind.PRIVATE_ROWS, (10, DIM)),
    ParamSpec("global_bias", ParamKind.SHARED_DENSE, (1,)),
    ParamSpec("layer", ParamKind.SHARED_DENSE, (2, 2)),
]


def random_update(seed: int, clients: int, scale: float = 1.0, num_items: int = NUM_ITEMS) -> CohortUpdate:
    """Honest-looking uploads: each client touches 1..num_items distinct items with N(0, scale) deltas."""
    gen = np.random.default_rng(seed)
    items, owners = [], []
    for client in range(clients):
        mine = np.sort(gen.choice(num_items, size=gen.integers(1, num_items + 1), replace=False))
        items.extend(mine)
        owners.extend([client] * len(mine))
    rows = len(items)
    return CohortUpdate(
        row_items=torch.tensor(items, dtype=torch.int64),
        row_clients=torch.tensor(owners, dtype=torch.int64),
        row_counts=torch.tensor(gen.integers(1, 5, rows), dtype=torch.float32),
        row_deltas={"item_vec": torch.tensor(gen.normal(0, scale, (rows, DIM)), dtype=torch.float32),
                    "item_bias": torch.tensor(gen.normal(0, scale, rows), dtype=torch.float32)},
        dense_deltas={"global_bias": torch.tensor(gen.normal(0, scale, (clients, 1)), dtype=torch.float32),
                      "layer": torch.tensor(gen.normal(0, scale, (clients, 2, 2)), dtype=torch.float32)},
        client_sizes=torch.tensor(gen.integers(1, 50, clients), dtype=torch.float32),
    )


def client_vectors(update: CohortUpdate) -> dict[int, list[tuple[int, np.ndarray]]]:
    """item -> [(client, concatenated row delta)] by brute force."""
    out: dict[int, list[tuple[int, np.ndarray]]] = {}
    for r in range(len(update.row_items)):
        vec = np.concatenate([update.row_deltas["item_vec"][r].numpy(), update.row_deltas["item_bias"][r:r + 1].numpy()])
        out.setdefault(int(update.row_items[r]), []).append((int(update.row_clients[r]), vec.astype(np.float64)))
    return out


def brute_krum(vectors: list[np.ndarray], fraction: float, multi: bool) -> np.ndarray:
    n = len(vectors)
    f = math.floor(fraction * n)
    k = n - f - 2
    if k < 1:
        return np.median(np.stack(vectors), axis=0)
    scores = []
    for i in range(n):
        dists = sorted(float(np.sum((vectors[i] - vectors[j]) ** 2)) for j in range(n) if j != i)
        scores.append(sum(dists[:k]))
    if not multi:
        return vectors[int(np.argmin(scores))]
    best = np.argsort(scores, kind="stable")[: n - f]
    return np.mean([vectors[i] for i in best], axis=0)


def brute_row(method: str, vectors: list[np.ndarray], s: RobustSettings) -> np.ndarray:
    stack = np.stack(vectors)
    if method == "median":
        return np.median(stack, axis=0)
    if method == "trimmed_mean":
        n = len(vectors)
        cut = math.floor(s.trim_fraction * n)
        ordered = np.sort(stack, axis=0)
        return ordered[cut:n - cut].mean(axis=0)
    return brute_krum(vectors, s.byzantine_fraction, multi=method == "multi_krum")


def as_rows(result: dict[str, torch.Tensor]) -> np.ndarray:
    return np.concatenate([result["item_vec"].numpy(), result["item_bias"][:, None].numpy()], axis=1)


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 10_000), clients=st.integers(1, 9),
       method=st.sampled_from(["median", "trimmed_mean", "krum", "multi_krum"]),
       trim=st.sampled_from([0.0, 0.1, 0.25, 0.4]), fraction=st.sampled_from([0.0, 0.2, 0.34]))
def test_aggregators_match_a_per_row_loop(seed, clients, method, trim, fraction):
    update = random_update(seed, clients)
    s = RobustSettings(method=method, trim_fraction=trim, byzantine_fraction=fraction)
    result = robust_aggregate(update, NUM_ITEMS, settings=s)
    rows = as_rows(result)
    by_item = client_vectors(update)
    for item in range(NUM_ITEMS):
        expected = brute_row(method, [v for _, v in by_item[item]], s) if item in by_item else np.zeros(DIM + 1)
        np.testing.assert_allclose(rows[item], expected, rtol=1e-5, atol=1e-5)
    dense = np.concatenate([update.dense_deltas["global_bias"].numpy(), update.dense_deltas["layer"].reshape(clients, 4).numpy()], 1)
    expected = brute_row(method, list(dense.astype(np.float64)), s)
    got = np.concatenate([result["global_bias"].numpy(), result["layer"].reshape(4).numpy()])
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5)
    assert result["item_vec"].shape == (NUM_ITEMS, DIM) and result["layer"].shape == (2, 2)


@settings(max_examples=10, deadline=None)
@given(seed=st.integers(0, 10_000), clients=st.integers(1, 8), bound=st.floats(0.1, 3.0))
def test_norm_bound_is_clipping_then_the_weighted_mean(seed, clients, bound):
    update = random_update(seed, clients)
    result = robust_aggregate(update, NUM_ITEMS, settings=RobustSettings(method="norm_bound", clip_norm=bound))
    rows = as_rows(result)
    for item, entries in client_vectors(update).items():
        weights = [float(update.row_counts[(update.row_items == item) & (update.row_clients == c)]) for c, _ in entries]
        clipped = [v * min(1.0, bound / max(np.linalg.norm(v), 1e-30)) for _, v in entries]
        expected = np.average(np.stack(clipped), axis=0, weights=weights)
        np.testing.assert_allclose(rows[item], expected, rtol=1e-5, atol=1e-6)
    # "mean" without clipping is exactly the plain aggregate
    plain = robust_aggregate(update, NUM_ITEMS, settings=RobustSettings(method="mean"))
    reference = aggregate(update, NUM_ITEMS)
    for name in reference:
        torch.testing.assert_close(plain[name], reference[name])


def test_hand_computed_median_and_trimmed_mean():
    vectors = torch.tensor([[1.0], [100.0], [3.0], [2.0], [5.0], [-7.0]])
    groups = torch.tensor([0, 0, 0, 1, 1, 1])
    assert group_median(vectors, groups, 3)[:, 0].tolist() == [3.0, 2.0, 0.0]
    assert group_trimmed_mean(vectors, groups, 2, 0.34)[:, 0].tolist() == [3.0, 2.0]
    # two senders: the median is their mean
    assert group_median(torch.tensor([[1.0], [4.0]]), torch.tensor([0, 0]), 1).item() == 2.5


def test_median_and_trimmed_mean_resist_a_minority_of_huge_outliers():
    gen = torch.Generator().manual_seed(0)
    honest = 1.0 + 0.1 * torch.randn(7, 4, generator=gen)
    attack = torch.full((3, 4), 1e6)
    vectors = torch.cat([honest, attack])
    groups = torch.zeros(10, dtype=torch.int64)
    for result in (group_median(vectors, groups, 1), group_trimmed_mean(vectors, groups, 1, 0.3)):
        assert (result - 1.0).abs().max() < 0.5
    assert group_median(vectors, groups, 1).max() < 1e3  # the plain mean would be ~3e5


def test_krum_picks_the_honest_cluster():
    gen = torch.Generator().manual_seed(1)
    honest = 0.05 * torch.randn(7, 5, generator=gen)
    attackers = 3.0 + 0.01 * torch.randn(3, 5, generator=gen)  # a tight, colluding cluster far away
    vectors = torch.cat([attackers, honest])
    groups = torch.zeros(10, dtype=torch.int64)
    chosen = group_krum(vectors, groups, 1, byzantine_fraction=0.3, multi=False)[0]
    assert any(torch.equal(chosen, row) for row in honest)
    multi = group_krum(vectors, groups, 1, byzantine_fraction=0.3, multi=True)[0]
    torch.testing.assert_close(multi, honest.mean(0))  # n - f = 7 selected: exactly the honest ones


def test_krum_falls_back_to_the_median_with_too_few_senders():
    vectors = torch.tensor([[1.0, 1.0], [3.0, 5.0], [10.0, 0.0]])
    groups = torch.tensor([0, 1, 1])  # row 0: one sender, row 1: two
    result = group_krum(vectors, groups, 3, byzantine_fraction=0.2, multi=False)
    assert result.tolist() == [[1.0, 1.0], [6.5, 2.5], [0.0, 0.0]]


def test_settings_refuse_bad_values():
    with pytest.raises(FedrecError, match="clip_norm"):
        RobustSettings(method="norm_bound")
    with pytest.raises(FedrecError, match="trim_fraction"):
        RobustSettings(method="trimmed_mean", trim_fraction=0.5)
    with pytest.raises(FedrecError, match="unknown robust aggregation"):
        RobustSettings(method="average")  # type: ignore[arg-type]


# ------------------------------------------------------------------------------------ validation

CORRUPTIONS = ("nan", "inf", "neg_inf", "wrong_row_shape", "wrong_dense_shape", "missing_tensor", "huge_norm",
               "item_out_of_range", "negative_item", "nan_weight", "negative_size", "duplicate_item")


def corrupt(upload: ClientUpload, kind: str, where: int) -> ClientUpload:
    rows = {k: v.clone() for k, v in upload.row_deltas.items()}
    dense = {k: v.clone() for k, v in upload.dense_deltas.items()}
    items, counts, size = upload.row_items.clone(), upload.row_counts.clone(), upload.size
    if kind in ("nan", "inf", "neg_inf"):
        value = {"nan": math.nan, "inf": math.inf, "neg_inf": -math.inf}[kind]
        target = [rows["item_vec"], rows["item_bias"], dense["layer"]][where % 3]
        target.view(-1)[where % target.numel()] = value
    elif kind == "wrong_row_shape":
        rows["item_vec"] = torch.zeros(len(items), DIM + 1)
    elif kind == "wrong_dense_shape":
        dense["layer"] = torch.zeros(3, 2)
    elif kind == "missing_tensor":
        del dense["global_bias"]
    elif kind == "huge_norm":
        rows["item_vec"] = rows["item_vec"] * 1e4 + 1e3
    elif kind == "item_out_of_range":
        items[where % len(items)] = NUM_ITEMS + where
    elif kind == "negative_item":
        items[where % len(items)] = -1
    elif kind == "nan_weight":
        counts[0] = math.nan
    elif kind == "negative_size":
        size = -float(where + 1)
    elif kind == "duplicate_item":
        items = torch.cat([items, items[:1]])
        counts = torch.cat([counts, counts[:1]])
        rows = {k: torch.cat([v, v[:1]]) for k, v in rows.items()}
    return ClientUpload(items, counts, rows, dense, size)


@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 10_000), honest=st.integers(3, 8),
       attacks=st.lists(st.tuples(st.sampled_from(CORRUPTIONS), st.integers(0, 50)), min_size=1, max_size=2),
       method=st.sampled_from(["mean", "median", "trimmed_mean", "multi_krum"]), data=st.data())
def test_corrupted_clients_never_change_the_aggregate(seed, honest, attacks, method, data):
    """The issue's property: NaN, Inf, a wrong shape or a huge norm never changes the global update."""
    clean = random_update(seed, honest)
    uploads = split_update(clean)
    extra = split_update(random_update(seed + 1, len(attacks)))
    corrupted = [corrupt(upload, kind, where) for upload, (kind, where) in zip(extra, attacks)]
    positions = sorted(data.draw(st.lists(st.integers(0, honest + len(attacks) - 1), min_size=len(attacks),
                                          max_size=len(attacks), unique=True)))
    mixed, honest_iter, bad_iter = [], iter(uploads), iter(corrupted)
    for k in range(honest + len(attacks)):
        mixed.append(next(bad_iter) if k in positions else next(honest_iter))
    s = RobustSettings(method=method)
    accepted, report = validate_uploads(mixed, SPECS, NUM_ITEMS, ValidationSettings(max_norm_ratio=10.0))
    assert report.num_rejected == len(attacks)
    assert report.rejected_clients.tolist() == positions
    assert sum(report.rejected.values()) == len(attacks)
    expected = robust_aggregate(clean, NUM_ITEMS, settings=s)
    got = robust_aggregate(accepted, NUM_ITEMS, settings=s)
    for name, value in expected.items():
        torch.testing.assert_close(got[name], value)


def test_validation_counts_each_reason():
    uploads = split_update(random_update(3, 6))
    uploads[1] = corrupt(uploads[1], "nan", 0)
    uploads[2] = corrupt(uploads[2], "wrong_row_shape", 0)
    uploads[4] = corrupt(uploads[4], "huge_norm", 0)
    accepted, report = validate_uploads(uploads, SPECS, NUM_ITEMS)
    assert report.rejected == {"shape": 1, "non_finite": 1, "item_range": 0, "bad_weight": 0, "norm": 1}
    assert report.rejected_clients.tolist() == [1, 2, 4]
    assert report.kept_clients.tolist() == [0, 3, 5]
    assert accepted.num_clients == 3 and set(accepted.row_clients.tolist()) == {0, 1, 2}


def test_validate_update_on_the_flat_layout_and_absolute_bound():
    update = random_update(5, 4)
    update.row_deltas["item_bias"][0] = math.inf  # belongs to client 0 (rows are grouped by client)
    kept, report = validate_update(update, NUM_ITEMS, ValidationSettings(max_norm_ratio=None, max_norm=1e9))
    assert report.rejected["non_finite"] == 1 and report.rejected_clients.tolist() == [0]
    assert kept.num_clients == 3 and torch.isfinite(kept.row_deltas["item_bias"]).all()
    _, strict = validate_update(random_update(5, 4), NUM_ITEMS, ValidationSettings(max_norm_ratio=None, max_norm=1e-6))
    assert strict.rejected["norm"] == 4


def test_everyone_rejected_gives_a_zero_update():
    uploads = [corrupt(u, "nan", 1) for u in split_update(random_update(2, 3))]
    accepted, report = validate_uploads(uploads, SPECS, NUM_ITEMS)
    assert report.num_rejected == 3 and accepted.num_clients == 0
    for method in ("mean", "median", "krum"):
        result = robust_aggregate(accepted, NUM_ITEMS, settings=RobustSettings(method=method))
        assert all(torch.equal(v, torch.zeros_like(v)) for v in result.values())
        assert result["layer"].shape == (2, 2)


def test_vectorised_over_many_rows_is_fast_enough():
    """A cohort-sized case (4k rows, 300 items, up to ~30 senders a row) runs without a per-row loop."""
    gen = torch.Generator().manual_seed(0)
    rows, items = 4_000, 300
    update = CohortUpdate(
        row_items=torch.randint(0, items, (rows,), generator=gen), row_clients=torch.arange(rows) % 200,
        row_counts=torch.ones(rows), row_deltas={"v": torch.randn(rows, 16, generator=gen)},
        dense_deltas={}, client_sizes=torch.ones(200),
    )
    for method in ("median", "trimmed_mean", "multi_krum"):
        result = robust_aggregate(update, items, settings=RobustSettings(method=method))
        assert result["v"].shape == (items, 16) and torch.isfinite(result["v"]).all()
