"""bench/bench_text_warm.py: the shared budget of rounds, the seed means, and the config pairs it compares."""

from __future__ import annotations

from pathlib import Path

import pytest

from fedrec.config import load_config

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def bench(load_bench):
    return load_bench("bench_text_warm")


def test_budget_of_rounds_is_the_configs_when_they_agree(bench):
    assert bench.configured_rounds("ml100k-bpr-fedavg", "ml100k-text-bpr-fedavg") == 80
    assert bench.configured_rounds("ml100k-bpr-softmax-fedavg", "ml100k-text-softmax-fedavg") == 50


def test_configs_with_different_rounds_are_refused_with_the_fix(bench):
    with pytest.raises(SystemExit, match="different train.rounds.*pass --rounds N"):
        bench.configured_rounds("ml100k-bpr-fedavg", "ml100k-text-softmax-fedavg")


def test_seed_means_per_checkpoint_hand_computed(bench):
    runs = [([{"round": 10, "ndcg@10": 0.02, "val_ndcg@10": 0.04}, {"round": 20, "ndcg@10": 0.03}], {"ndcg@10": 0.03}),
            ([{"round": 10, "ndcg@10": 0.04, "val_ndcg@10": 0.06}, {"round": 20, "ndcg@10": 0.05}], {"ndcg@10": 0.07})]
    records, final = bench._mean_runs(runs)
    assert records[0] == pytest.approx({"round": 10, "ndcg@10": 0.03, "val_ndcg@10": 0.05})
    assert records[1] == pytest.approx({"round": 20, "ndcg@10": 0.04}) and isinstance(records[1]["round"], int)
    assert final == pytest.approx({"ndcg@10": 0.05})


@pytest.mark.parametrize(("id_only", "id_text", "own_settings"), [
    ("ml100k-bpr-fedavg", "ml100k-text-bpr-fedavg", set()),
    ("ml100k-bpr-softmax-fedavg", "ml100k-text-softmax-fedavg", {("train", "server_lr")}),
])
def test_warm_pairs_differ_only_in_the_text_and_their_own_validation_choices(id_only, id_text, own_settings):
    """The compared configs share split, loss, negatives, L2, local steps and rounds; the text one adds its text."""
    a = load_config(ROOT / "configs" / f"{id_only}.toml", []).model_dump()
    b = load_config(ROOT / "configs" / f"{id_text}.toml", []).model_dump()
    differ = {(section, key) for section in a for key in a[section] if a[section][key] != b[section][key]}
    text_keys = {("model", key) for key in ("name", "text_adapter", "text_encoder", "text_dim")}
    set_by_the_bench = {("train", "eval_every")}  # --eval-every, the same for both runs
    assert differ - text_keys - set_by_the_bench == own_settings
    assert (a["model"]["name"], b["model"]["name"]) == ("bpr", "text_bpr")


def test_section_title_names_a_non_default_pair_and_the_overrides(bench):
    base = "Warm items: ID + text vs ID-only (ML-100K, full ranking)"
    assert bench.section_title("ml100k-bpr-fedavg", "ml100k-text-bpr-fedavg", []) == base
    assert bench.section_title("ml100k-bpr-fedavg", "ml100k-text-bpr-fedavg", ["model.l2=0.01"]) == \
        f"{base}, with `model.l2=0.01`"
    assert bench.section_title("a", "b", ["x=1", "y=2"]) == f"{base}, ID + text: b, ID-only: a, with `x=1`, `y=2`"


def test_shared_protocol_is_described_from_the_configs_and_different_data_refused(bench):
    assert bench.same_protocol("ml100k-bpr-softmax-fedavg", [], "ml100k-text-softmax-fedavg", []) == \
        "ml-100k, split leave_last_out, federated, server optimiser adam, one client per user, 1 of the clients per round"
    with pytest.raises(SystemExit, match="different data settings"):
        bench.same_protocol("ml100k-bpr-fedavg", [], "ml100k-text-bpr-fedavg", ["data.time_ties=random"])
    with pytest.raises(SystemExit, match="server_optimizer"):
        bench.same_protocol("ml100k-bpr-fedavg", [], "ml100k-text-bpr-fedavg", ["train.server_optimizer=sgd"])
