"""bench/bench_poison.py's statistics: mean +- sd over seeds, the paired HR@10 drop and the verdict, hand-computed."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from fedrec.config import load_config

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def bench(load_bench):
    return load_bench("bench_poison")


def runs(hr: list[float], er: list[float], rejected: float = 0.0) -> list[dict[str, float]]:
    return [{"er@5": e / 2, "er@10": e, "hr@10": h, "ndcg@10": h / 2, "val_hr@10": h, "rejected": rejected}
            for h, e in zip(hr, er)]


def test_mean_sd_and_paired_drop_hand_computed(bench):
    assert bench.mean_sd([1.0, 2.0, 3.0]) == (2.0, 1.0)
    assert bench.mean_sd([5.0]) == (5.0, 0.0)
    drop, diff, se = bench.paired_drop([0.09, 0.10, 0.08], [0.10, 0.10, 0.10])
    assert drop == pytest.approx(0.1)  # means 0.09 vs 0.10
    assert diff == pytest.approx(-0.01)
    assert se == pytest.approx(0.01 / math.sqrt(3))  # differences -0.01, 0, -0.02: sd 0.01


def test_table_verdict_reads_the_means(bench):
    results = {
        "clean": runs([0.100, 0.104, 0.096], [0.001, 0.001, 0.001]),
        "attack": runs([0.090, 0.094, 0.086], [0.050, 0.060, 0.040]),
        "attack+weak": runs([0.100, 0.104, 0.096], [0.010, 0.012, 0.008], rejected=2.0),  # ER too high
        "attack+costly": runs([0.090, 0.094, 0.086], [0.001, 0.001, 0.001], rejected=100.0),  # HR drop 10%
        "attack+good": runs([0.099, 0.101, 0.097], [0.002, 0.002, 0.002], rejected=1.0),  # ER 2x, HR drop 1%
    }
    lines, verdict = bench.table(results, 3, defended="attack+good")
    assert len(lines) == 2 + len(results)
    good = next(line for line in lines if line.startswith("| attack+good |"))
    assert "0.0990 +- 0.0020" in good and "+1.0%" in good and "| 1.0 |" in good
    text = " ".join(verdict)
    assert "ER@10 0.0500 (mean of 3 seeds)" in text
    assert "attack+weak: ER@10 0.0100 (> 2x clean" in text
    assert "attack+costly" in text and "beyond 5%" in text
    assert verdict[-1].startswith("Target, judged on `attack+good`") and "**met**" in verdict[-1]
    _, costly = bench.table(results, 3, defended="attack+costly")  # judged on the chosen row, not the best one
    assert "**not met**" in costly[-1]


def test_verdict_compares_with_the_same_population_when_available(bench):
    results = {"clean": runs([0.10, 0.10], [0.0, 0.0]), "zero-uploads": runs([0.09, 0.09], [0.0, 0.0]),
               "attack+x": runs([0.09, 0.09], [0.0, 0.0])}
    _, verdict = bench.table(results, 2, defended="attack+x")
    assert "HR@10 drop +10.0% of the mean (beyond 5%" in verdict[0]
    assert "Against `zero-uploads` (the same population, no attack): HR@10 drop +0.0%" in verdict[0]
    assert "**not met**" in verdict[-1]


def test_verdict_when_nothing_meets_the_target(bench):
    results = {"clean": runs([0.1, 0.1], [0.0, 0.0]), "attack+x": runs([0.1, 0.1], [0.01, 0.02])}
    _, verdict = bench.table(results, 2, defended="attack+x")
    assert "**not met**" in verdict[-1]


def test_every_row_is_a_valid_config(bench):
    for name, overrides in bench.ROWS.items():
        config = load_config(ROOT / "configs" / "ml100k-poison-clean.toml",
                             bench.FAST_EVAL + overrides + ["train.seed=3", "attack.seed=3"])
        assert config.train.seed == 3 and config.attack.seed == 3, name
        assert config.attack.enabled == (name != "clean" and not name.startswith("clean+")), name
        assert config.defence.enabled == ("+" in name), name
