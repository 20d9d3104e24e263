"""Secure aggregation and item hiding in ``fedrec train``: the server steps from the protocol's sum and
reaches the plain model (to fixed-point precision), with and without DP; hiding changes the bytes as
expected; defences that need individual uploads are refused in one line."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from fedrec.config import load_config
from fedrec.errors import FedrecError
from fedrec.federated.aggregation import ROW_WEIGHTINGS, CohortUpdate, aggregate, keep_clients
from fedrec.federated.server import INDEX_BYTES
from fedrec.privacy.cohort_sum import (ClientVectors, CohortSum, aggregate_sum, contributions, dropout_clients,
                                       mean_from_sum, secure_cohort_sum, sum_layout)
from fedrec.privacy.dp import CentralDP, SharedShapes, noise_generator, private_mean
from fedrec.privacy.secagg import SecAggSettings
from fedrec.runtime.trainer import train

ROOT = Path(__file__).resolve().parents[1]
SMALL = ["data.num_users=30", "data.num_items=40", "model.dim=4", "train.eval_every=100", "train.rounds=2"]
SECAGG = ["privacy.secure_aggregation=true"]
SHAPES = SharedShapes(rows={"item_vec": (6, 2), "item_bias": (6, 1)}, dense={"global_bias": (1,)})


def random_update(num_clients: int, seed: int) -> CohortUpdate:
    gen = np.random.default_rng(seed)
    touched = [np.sort(gen.choice(6, size=gen.integers(1, 5), replace=False)) for _ in range(num_clients)]
    items = torch.from_numpy(np.concatenate(touched))
    clients = torch.from_numpy(np.repeat(np.arange(num_clients), [len(t) for t in touched]))
    g = torch.Generator().manual_seed(seed)
    return CohortUpdate(items, clients, torch.randint(1, 4, (len(items),), generator=g).float(),
                        {"item_vec": torch.randn(len(items), 2, generator=g),
                         "item_bias": torch.randn(len(items), 1, generator=g)},
                        {"global_bias": torch.randn(num_clients, 1, generator=g)},
                        torch.randint(1, 9, (num_clients,), generator=g).float())


def params_of(run: Path) -> dict[str, torch.Tensor]:
    return {k: v for k, v in load_file(run / "checkpoint.safetensors").items() if k.startswith("param/")}


def assert_same_model(a: Path, b: Path, atol: float = 1e-5) -> None:
    pa, pb = params_of(a), params_of(b)
    assert pa.keys() == pb.keys()
    for name in pa:
        torch.testing.assert_close(pa[name], pb[name], rtol=0, atol=atol)


def history(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "history.jsonl").read_text().splitlines() if line.strip()]


# -- the sum and the server's step from it ---------------------------------------------------------------


@pytest.mark.parametrize("weighting", ROW_WEIGHTINGS)
def test_the_protocols_sum_gives_the_plain_aggregate_with_dropouts(weighting):
    update = random_update(7, seed=3)
    layout = sum_layout(SHAPES, weighting, None)
    parts = contributions(update, layout, weighting)
    total, report = secure_cohort_sum(ClientVectors(parts, layout), layout.length, 7, layout, SecAggSettings(),
                                      seed=1, round_index=0, dropout=2 / 7)
    assert report.survivors == 5 and report.dropped == 2 and total.num_clients == 5
    alive = torch.ones(7, dtype=torch.bool)
    alive[torch.from_numpy(dropout_clients(7, 2 / 7, 1, 0))] = False
    expected = aggregate(keep_clients(update, alive), 6, weighting)
    got = mean_from_sum(total, weighting)
    for name in expected:  # fixed point: 2^-25 per value and client
        torch.testing.assert_close(got[name], expected[name], rtol=1e-5, atol=1e-6)
    # the bytes are the protocol's messages: at least every survivor's masked vector of 8-byte ring elements
    assert report.bytes_up > 5 * layout.length * 8


def test_the_clear_sum_equals_the_sum_of_the_client_vectors():
    update = random_update(5, seed=0)
    layout = sum_layout(SHAPES, "row_count", None)
    parts = contributions(update, layout, "row_count")
    vectors = ClientVectors(parts, layout)
    clear = CohortSum.zeros(layout)
    clear.add(parts)
    decoded = CohortSum.from_vector(sum(vectors[u] for u in range(5)), layout, 5)
    for name in clear.row_sums:
        torch.testing.assert_close(decoded.row_sums[name], clear.row_sums[name])
    torch.testing.assert_close(decoded.row_weights, clear.row_weights)
    assert decoded.total_size == pytest.approx(float(update.client_sizes.sum()))


@pytest.mark.parametrize("adaptive", [False, True])
def test_central_dp_from_the_sum_equals_dp_on_the_uploads(adaptive):
    update = random_update(6, seed=5)
    privacy = CentralDP(1.2, 0.8, 6.0, adaptive=adaptive, count_stddev=2.0 if adaptive else None)
    expected, expected_clip = private_mean(update, SHAPES, privacy, 0.8, noise_generator(0, 4))
    layout = sum_layout(SHAPES, "row_count", privacy)
    assert layout.clipped and not layout.weighted and layout.count_unclipped == adaptive
    total = CohortSum.zeros(layout)
    total.add(contributions(update, layout, "row_count", clip_norm=0.8))
    got, next_clip = aggregate_sum(total, "row_count", privacy, 0.8, noise_generator(0, 4))
    for name in expected:
        torch.testing.assert_close(got[name], expected[name], rtol=1e-5, atol=1e-6)
    assert (next_clip is None) != adaptive and (not adaptive or next_clip == pytest.approx(expected_clip))


# -- fedrec train ------------------------------------------------------------------------------------------


def test_train_with_secure_aggregation_equals_train_without(tmp_path):
    plain = train(load_config(None, SMALL), tmp_path / "plain")
    secure = train(load_config(None, [*SMALL, *SECAGG]), tmp_path / "secure")
    assert_same_model(tmp_path / "plain", tmp_path / "secure")
    assert secure["rmse"] == pytest.approx(plain["rmse"], abs=1e-5)
    lines = history(tmp_path / "secure")
    assert all(line["secagg_seconds"] > 0 for line in lines)
    assert "secagg_seconds" not in history(tmp_path / "plain")[0]
    # every client sends keys, shares, its masked vector and unmasking shares: far more than its sparse rows
    vector_bytes = 30 * (40 * 6 + 1 + 1) * 8  # 30 clients x (item_vec 4 + item_bias 1 + weight per item, bias, size)
    assert all(line["bytes_up"] > vector_bytes for line in lines)
    assert secure["bytes_up"] == sum(line["bytes_up"] for line in lines)


def test_secure_aggregation_composes_with_central_dp_and_dropouts(tmp_path):
    dp = ["privacy.noise_multiplier=0.7", "privacy.delta=1e-4", "privacy.adaptive_clip=true",
          "privacy.clip_count_stddev=3.0", "train.client_fraction=0.6"]
    train(load_config(None, [*SMALL, *dp]), tmp_path / "dp")
    metrics = train(load_config(None, [*SMALL, *dp, *SECAGG]), tmp_path / "dp_secure")
    assert_same_model(tmp_path / "dp", tmp_path / "dp_secure")
    assert metrics["epsilon"] > 0
    dropped = train(load_config(None, [*SMALL, *SECAGG, "privacy.secagg_dropout=0.2"]), tmp_path / "dropped")
    assert np.isfinite(dropped["rmse"])
    with pytest.raises(AssertionError):  # a fifth of each cohort is lost: a different model
        assert_same_model(tmp_path / "dropped", tmp_path / "dp_secure")


def test_hiding_in_train_changes_the_bytes_and_keeps_the_model(tmp_path):
    plain = train(load_config(None, SMALL), tmp_path / "plain")
    dense = train(load_config(None, [*SMALL, "privacy.hiding='dense'"]), tmp_path / "dense")
    assert_same_model(tmp_path / "plain", tmp_path / "dense", atol=0)  # a zero row adds nothing
    per_client = (40 * 5 + 1) * 4  # every item's 5 floats and the global bias, no indices
    assert [line["bytes_up"] for line in history(tmp_path / "dense")] == [30 * per_client] * 2
    pseudo = train(load_config(None, [*SMALL, "privacy.hiding='pseudo'", "privacy.pseudo_items=3"]),
                   tmp_path / "pseudo")
    extra_row = INDEX_BYTES + 5 * 4  # index, item_vec (4) and item_bias (1) float32
    assert pseudo["bytes_up"] == plain["bytes_up"] + 2 * 30 * 3 * extra_row  # 3 fake rows per client per round
    assert abs(pseudo["rmse"] - plain["rmse"]) < 0.02 and pseudo["rmse"] != plain["rmse"]
    assert dense["rmse"] == plain["rmse"]


def test_pseudo_items_under_secure_aggregation_match_pseudo_items_in_the_clear(tmp_path):
    pseudo = [*SMALL, "privacy.hiding='pseudo'", "privacy.pseudo_ratio=1.0", "train.row_weighting='client_size'"]
    train(load_config(None, pseudo), tmp_path / "clear")
    train(load_config(None, [*pseudo, *SECAGG]), tmp_path / "secure")
    assert_same_model(tmp_path / "clear", tmp_path / "secure")


@pytest.mark.parametrize(("overrides", "message"), [
    ([*SECAGG, "defence.aggregator='median'"], "defence.* cannot be combined with privacy.secure_aggregation"),
    ([*SECAGG, "defence.check_uploads=true"], "the server then receives only the cohort's sum"),
    (["privacy.hiding='pseudo'", "defence.aggregator='krum'"], "privacy.hiding = 'pseudo'"),
    (["privacy.hiding='pseudo'"], "privacy.hiding = 'pseudo' needs privacy.pseudo_items"),
    (["privacy.pseudo_items=5"], "need privacy.hiding = 'pseudo'"),
    ([*SECAGG, "train.mode='centralized'"], "need train.mode = 'federated'"),
])
def test_incompatible_settings_are_one_line_errors(overrides, message):
    with pytest.raises(FedrecError) as error:
        load_config(None, [*SMALL, *overrides])
    assert message in str(error.value) and "\n" not in str(error.value)


def test_the_cli_refuses_secure_aggregation_with_a_robust_aggregator(tmp_path):
    result = subprocess.run([sys.executable, "-m", "fedrec.cli", "train", str(ROOT / "configs" / "default.toml"),
                             "--out", str(tmp_path / "x"), "--set", "privacy.secure_aggregation=true",
                             "--set", "defence.aggregator='median'"], capture_output=True, text=True, timeout=120)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: defence.* cannot be combined with privacy.secure_aggregation")


def test_a_ranking_model_without_dense_tensors_under_dp_and_secure_aggregation(tmp_path):
    bpr = [*SMALL, "model.name='bpr'", "privacy.noise_multiplier=0.7", "privacy.delta=1e-4"]
    train(load_config(None, bpr), tmp_path / "dp")
    train(load_config(None, [*bpr, *SECAGG]), tmp_path / "dp_secure")
    assert_same_model(tmp_path / "dp", tmp_path / "dp_secure")
    with pytest.raises(FedrecError, match="pseudo_values='bootstrap'"):  # virtual ratings need a rating model
        train(load_config(None, [*bpr, "privacy.hiding='pseudo'", "privacy.pseudo_items=2"]), tmp_path / "virtual")
