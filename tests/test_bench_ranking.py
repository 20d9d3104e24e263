"""bench/bench_ranking.py's summary: seed means, the fed/central ratio of the means and the per-seed ratio range."""

from __future__ import annotations


import pytest

@pytest.fixture(scope="module")
def bench(load_bench):
    return load_bench("bench_ranking")


def _metrics(hr: float, ndcg: float, val_hr: float = 0.2, val_ndcg: float = 0.1) -> dict[str, float]:
    return {"hr@10": hr, "ndcg@10": ndcg, "val_hr@10": val_hr, "val_ndcg@10": val_ndcg, "sampled_hr@10": 0.5,
            "sampled_ndcg@10": 0.3, "popularity_hr@10": 0.05, "coverage@10": 0.4, "round_seconds": 1.0}


def test_ratio_of_means_and_per_seed_range_hand_computed(bench):
    results = {("p", "fedavg"): [_metrics(0.08, 0.04, val_hr=0.3), _metrics(0.10, 0.05, val_hr=0.1)],
               ("p", "central"): [_metrics(0.10, 0.04), _metrics(0.08, 0.05)]}
    rows, per_seed = bench.summarise(results, ["p"])
    fed = [c.strip() for c in rows[2].split("|")[1:-1]]
    central = [c.strip() for c in rows[3].split("|")[1:-1]]
    assert len(fed) == len(central) == len(rows[0].split("|")) - 2 == len(rows[1].split("|")) - 2
    assert fed[:4] == ["p", "fedavg", "0.0900", "0.0450"] and fed[9] == "0.4000"  # coverage@10, a mean like the rest
    # ratio of the means: HR 0.09 / 0.09, NDCG 0.045 / 0.045, val HR 0.2 / 0.2, val NDCG 0.1 / 0.1
    assert fed[10:14] == ["1.000", "1.000", "1.000", "1.000"]
    # per-seed HR ratios 0.8 and 1.25; NDCG ratios 1.0 and 1.0
    assert fed[14:16] == ["0.800..1.250", "1.000..1.000"]
    assert central[10:16] == [""] * 6
    assert per_seed == ["p: seed 0 fed 0.0800 / 0.0400, central 0.1000 / 0.0400; "
                        "seed 1 fed 0.1000 / 0.0500, central 0.0800 / 0.0500"]


def test_one_seed_shows_the_single_ratio(bench):
    results = {("p", "fedavg"): [_metrics(0.09, 0.045)], ("p", "central"): [_metrics(0.10, 0.05)]}
    fed = [c.strip() for c in bench.summarise(results, ["p"])[0][2].split("|")[1:-1]]
    assert fed[10:12] == ["0.900", "0.900"] and fed[14:16] == ["0.900", "0.900"]


def test_runs_without_validation_leave_the_validation_cells_blank(bench):
    # data.train_on_validation: the runs report test metrics only
    def test_only(hr: float, ndcg: float) -> dict[str, float]:
        return {k: v for k, v in _metrics(hr, ndcg).items() if not k.startswith("val_")}

    results = {("p", "fedavg"): [test_only(0.09, 0.045)], ("p", "central"): [test_only(0.10, 0.05)]}
    fed = [c.strip() for c in bench.summarise(results, ["p"])[0][2].split("|")[1:-1]]
    assert fed[2:6] == ["0.0900", "0.0450", "", ""]
    assert fed[10:14] == ["0.900", "0.900", "", ""]
