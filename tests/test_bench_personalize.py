"""bench/bench_personalize.py: which metrics make each arm, and the ratios to the global model and to centralised."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="module")
def bench(load_bench):
    return load_bench("bench_personalize")


def _metrics(hr: float, ndcg: float, prefix: str = "") -> dict[str, float]:
    return {f"{prefix}hr@10": hr, f"{prefix}ndcg@10": ndcg, f"{prefix}val_hr@10": 2 * hr,
            f"{prefix}val_ndcg@10": 2 * ndcg}


def test_arms_come_from_the_right_runs(bench):
    fed = {**_metrics(0.08, 0.04), **_metrics(0.10, 0.05, "finetuned_"), "coverage@10": 0.3}
    arms = bench.arm_metrics(fed, _metrics(0.09, 0.03), _metrics(0.12, 0.06))
    assert list(arms) == ["global", "local fine-tuning", "private score head", "centralised"]
    assert arms["global"] == _metrics(0.08, 0.04) and arms["local fine-tuning"] == _metrics(0.10, 0.05)
    assert arms["private score head"] == _metrics(0.09, 0.03) and arms["centralised"] == _metrics(0.12, 0.06)
    assert "private score head" not in bench.arm_metrics(fed, None, _metrics(0.12, 0.06))  # not an NCF model


def test_ratios_of_the_seed_means_hand_computed(bench):
    seeds = [bench.arm_metrics({**_metrics(0.08, 0.04), **_metrics(0.10, 0.06, "finetuned_")}, None,
                               _metrics(0.10, 0.05)),
             bench.arm_metrics({**_metrics(0.10, 0.04), **_metrics(0.08, 0.02, "finetuned_")}, None,
                               _metrics(0.08, 0.03))]
    rows = [[c.strip() for c in row.split("|")[1:-1]] for row in bench.summarise("p", seeds)]
    # means: global 0.09 / 0.04, fine-tuned 0.09 / 0.04, centralised 0.09 / 0.04 (val: twice each)
    assert rows[0] == ["p", "global", "0.0900", "0.0400", "0.1800", "0.0800", "", "", "", "", "1.000", "1.000",
                       "1.000", "1.000"]
    assert rows[1][:10] == ["p", "local fine-tuning", "0.0900", "0.0400", "0.1800", "0.0800", "1.000", "1.000",
                            "1.000", "1.000"]
    assert rows[2] == ["p", "centralised", "0.0900", "0.0400", "0.1800", "0.0800"] + [""] * 8
    seeds[1]["local fine-tuning"]["hr@10"] = 0.17  # fine-tuned mean 0.135: 1.5x global and centralised
    seeds[1]["local fine-tuning"]["val_ndcg@10"] = 0.06  # fine-tuned val mean 0.09 against 0.08: 1.125x
    rows = [[c.strip() for c in row.split("|")[1:-1]] for row in bench.summarise("p", seeds)]
    assert rows[1][6] == "1.500" and rows[1][10] == "1.500" and rows[1][9] == "1.125" and rows[1][13] == "1.125"
