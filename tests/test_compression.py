"""Compressed uploads: top-k, 8-bit quantisation, error feedback, in the simulator and on Flower nodes."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import fedrec.data  # noqa: F401  (import the data package first: fedrec.federated.cohort needs it)
from fedrec.config import load_config
from fedrec.data.synthetic import make_synthetic
from fedrec.errors import FedrecError
from fedrec.federated.aggregation import CohortUpdate
from fedrec.federated.cohort import ClientData, sample_cohort
from fedrec.federated.compression import (
    DENSE_CLIENTS, DENSE_VALUES, QMAX, ROW_KEYS, ROW_VALUES, Compression, UploadLayout, decode_upload, dequantize,
    encode_upload, kept_count, quantize, topk_mask)
from fedrec.federated.local import LocalTraining
from fedrec.federated.server import FedAvgSettings, ServerState, run_round, server_update, upload_bytes
from fedrec.federated.server_opt import ServerOptimizer
from fedrec.federated.vectorized import train_cohort_vectorized
from fedrec.models.mf import BiasedMF, MFConfig
from fedrec.runtime.checkpoint import CHECKPOINT_NAME, load_checkpoint
from fedrec.runtime.trainer import train

SYNTHETIC = ["data.name='synthetic'", "data.num_users=80", "data.num_items=50", "data.mean_interactions=10",
             "model.dim=6", "train.rounds=3", "train.client_fraction=0.5", "train.batch_size=4",
             "train.server_optimizer='adam'", "train.server_lr=0.05", "train.eval_every=3"]
SETTINGS = {
    "topk": Compression(topk=0.1),
    "int8": Compression(bits=8),
    "topk+int8": Compression(topk=0.1, bits=8),
    "int8-tensor-nearest": Compression(bits=8, scale="tensor", rounding="deterministic", error_feedback=False),
}


def _setup(num_users: int = 40, num_items: int = 30, dim: int = 4):
    dataset = make_synthetic(num_users=num_users, num_items=num_items, mean_interactions=9, seed=2)
    data = ClientData.from_interactions(dataset.interactions, np.arange(num_users), num_users)
    model = BiasedMF(MFConfig(dim=dim, l2=0.05, global_mean=3.0), num_users, num_items)
    params = model.init_params(torch.Generator().manual_seed(1))
    return model, data, params


def _random_update(rng: np.random.Generator, num_clients: int, num_items: int, dim: int, items_per_client: int):
    """A cohort update with random deltas: each client touches a random set of items."""
    items = [np.sort(rng.choice(num_items, size=rng.integers(0, items_per_client + 1), replace=False))
             for _ in range(num_clients)]
    rows = sum(len(i) for i in items)
    return CohortUpdate(
        row_items=torch.from_numpy(np.concatenate(items).astype(np.int64)),
        row_clients=torch.from_numpy(np.repeat(np.arange(num_clients), [len(i) for i in items])),
        row_counts=torch.from_numpy(rng.integers(1, 5, rows).astype(np.float32)),
        row_deltas={"item_vec": torch.from_numpy(rng.normal(size=(rows, dim)).astype(np.float32)),
                    "item_bias": torch.from_numpy(rng.normal(size=(rows, 1)).astype(np.float32) * 0.1)},
        dense_deltas={"global_bias": torch.from_numpy(rng.normal(size=(num_clients, 1)).astype(np.float32) * 0.01)},
        client_sizes=torch.from_numpy(rng.integers(1, 20, num_clients).astype(np.float32)),
    )


# -- the pure pieces ----------------------------------------------------------------------------


@settings(max_examples=60, deadline=None)
@given(st.lists(st.floats(-1e3, 1e3, allow_nan=False, width=32), min_size=1, max_size=60), st.integers(1, 4),
       st.sampled_from(["stochastic", "deterministic"]), st.integers(0, 2**32 - 1))
def test_quantisation_error_is_bounded_by_the_scale(values, num_groups, rounding, seed):
    values_t = torch.tensor(values, dtype=torch.float32)
    group = torch.arange(len(values)) % num_groups
    uniform = torch.rand(len(values), generator=torch.Generator().manual_seed(seed))
    codes, scales = quantize(values_t, group, num_groups, rounding, uniform)
    assert codes.dtype == torch.int8 and int(codes.abs().max()) <= QMAX
    for g in range(num_groups):  # the scale is the group's largest magnitude over 127
        members = values_t[group == g]
        expected = float(members.abs().max()) / QMAX if len(members) else 0.0
        assert float(scales[g]) == pytest.approx(expected, rel=1e-6)
    error = (dequantize(codes, scales, group) - values_t).abs()
    bound = scales[group] * (0.5 if rounding == "deterministic" else 1.0)
    assert bool((error <= bound * (1 + 1e-5) + 1e-30).all()), (error - bound).max()


def test_stochastic_rounding_is_unbiased():
    values = torch.tensor([0.3, -0.71, 1.0, 0.0049, -0.5])
    draws = 4000
    repeated = values.repeat(draws)
    group = torch.arange(draws).repeat_interleave(5)  # every draw its own group: scale = 1 / 127 each time
    uniform = torch.rand(draws * 5, generator=torch.Generator().manual_seed(0))
    codes, scales = quantize(repeated, group, draws, "stochastic", uniform)
    total = dequantize(codes, scales, group).double().reshape(draws, 5).sum(0)
    scale = 1.0 / QMAX
    # each draw errs by less than one step: the mean of 4000 is within 5 standard errors of the truth
    assert torch.allclose(total / draws, values.double(), atol=5 * scale / math.sqrt(draws))
    one = torch.zeros(5, dtype=torch.int64)
    nearest, nearest_scales = quantize(values, one, 1, "deterministic")
    assert not torch.allclose(dequantize(nearest, nearest_scales, one).double(), values.double(), atol=1e-4)  # biased


def test_kept_count_is_the_ceiling_and_at_least_one():
    assert kept_count(np.array([130, 10, 0, 3, 7]), 0.1).tolist() == [13, 1, 0, 1, 1]
    assert kept_count(np.array([5, 1]), 1.0).tolist() == [5, 1]
    assert kept_count(7, 0.5).tolist() == 4


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 3), st.integers(0, 6)), min_size=0, max_size=50),
       st.sampled_from([0.01, 0.1, 0.3, 0.5, 1.0]))
def test_topk_keeps_exactly_the_k_largest_of_each_client(entries, fraction):
    """Against brute force, ties included (small integer magnitudes): ties go to the earlier entry."""
    owner = torch.tensor([o for o, _ in entries], dtype=torch.int64)
    magnitude = torch.tensor([float(m) for _, m in entries], dtype=torch.float32)
    mask = topk_mask(magnitude, owner, 4, fraction)
    for client in range(4):
        index = [i for i, (o, _) in enumerate(entries) if o == client]
        k = int(kept_count(len(index), fraction))
        expected = sorted(index, key=lambda i: (-entries[i][1], i))[:k]
        kept = np.flatnonzero(mask.numpy())
        assert sorted(kept[np.isin(kept, index)].tolist()) == sorted(expected)


def test_lossless_settings_decode_to_the_exact_update_and_leave_no_residual():
    model, data, params = _setup()
    cohort = np.arange(0, 40, 3)
    update = train_cohort_vectorized(model, params, data, cohort, LocalTraining(batch_size=3), 7, 0).update
    layout = UploadLayout.of(model)
    compressed = encode_upload(update, cohort, layout, Compression(topk=1.0), {}, 0, 0)
    decoded = decode_upload(compressed.encoded, layout, Compression(topk=1.0))
    for field in ("row_items", "row_clients", "row_counts", "client_sizes"):
        assert torch.equal(getattr(decoded, field), getattr(update, field)), field
    for name in update.row_deltas:
        assert torch.equal(decoded.row_deltas[name], update.row_deltas[name])
    for name in update.dense_deltas:
        assert torch.equal(decoded.dense_deltas[name], update.dense_deltas[name])
    assert len(compressed.residuals[ROW_KEYS]) == 0 and len(compressed.residuals[DENSE_CLIENTS]) == 0  # none held


@pytest.mark.parametrize("name", list(SETTINGS))
def test_payload_is_what_the_bytes_count_and_is_smaller(name):
    model, data, params = _setup(dim=16)
    cohort = np.arange(0, 40, 2)
    update = train_cohort_vectorized(model, params, data, cohort, LocalTraining(batch_size=3), 7, 0).update
    encoded = encode_upload(update, cohort, UploadLayout.of(model), SETTINGS[name], {}, 0, 0).encoded
    raw = encoded.to_bytes()
    assert len(raw) == encoded.nbytes == sum(a.nbytes for a in encoded.arrays().values())
    assert encoded.values.dtype == (np.int8 if SETTINGS[name].bits else np.float32)
    assert encoded.nbytes < upload_bytes(model, update)
    if SETTINGS[name].topk is not None:  # the values sent: ceil(10%) of each client's coordinates
        width = 16 + 1
        sizes = np.bincount(update.row_clients.numpy(), minlength=len(cohort)) * width + 1
        per_client = np.bincount(np.repeat(np.arange(len(cohort)), encoded.client_rows), encoded.row_values,
                                 minlength=len(cohort)) + encoded.client_dense_values
        assert per_client.astype(int).tolist() == kept_count(sizes, 0.1).tolist()
        assert encoded.value_column.dtype == np.uint8  # 17 columns: one byte per position


@settings(max_examples=25, deadline=None)
@given(st.integers(0, 2**31 - 1), st.sampled_from([(0.05, None), (0.3, None), (None, 8), (0.2, 8), (1.0, 8)]),
       st.sampled_from(["row", "tensor"]), st.integers(1, 5))
def test_error_feedback_sent_plus_residual_is_the_sum_of_true_updates(seed, method, scale, rounds):
    """Over rounds with changing item sets: everything sent plus what is still held equals everything computed."""
    rng = np.random.default_rng(seed)
    num_clients, num_items, dim = 5, 12, 3
    compression = Compression(topk=method[0], bits=method[1], scale=scale)
    model = BiasedMF(MFConfig(dim=dim), 10, num_items)
    layout = UploadLayout.of(model)
    true_rows = torch.zeros(num_clients, num_items, dim + 1, dtype=torch.float64)
    sent_rows = torch.zeros_like(true_rows)
    true_dense = torch.zeros(num_clients, 1, dtype=torch.float64)
    sent_dense = torch.zeros_like(true_dense)
    residuals: dict[str, torch.Tensor] = {}
    for round_index in range(rounds):
        clients = np.sort(rng.choice(num_clients, size=rng.integers(1, num_clients + 1), replace=False))
        update = _random_update(rng, len(clients), num_items, dim, 6)
        flat = torch.cat([update.row_deltas["item_vec"], update.row_deltas["item_bias"]], 1).double()
        true_rows.index_put_((torch.from_numpy(clients)[update.row_clients], update.row_items), flat, accumulate=True)
        true_dense[torch.from_numpy(clients)] += update.dense_deltas["global_bias"].double()
        compressed = encode_upload(update, clients, layout, compression, residuals, seed, round_index)
        residuals = compressed.residuals
        decoded = decode_upload(compressed.encoded, layout, compression)
        got = torch.cat([decoded.row_deltas["item_vec"], decoded.row_deltas["item_bias"]], 1).double()
        sent_rows.index_put_((torch.from_numpy(clients)[decoded.row_clients], decoded.row_items), got, accumulate=True)
        sent_dense[torch.from_numpy(clients)] += decoded.dense_deltas["global_bias"].double()
    held_rows = torch.zeros_like(true_rows)
    keys = residuals[ROW_KEYS]
    held_rows[keys // num_items, keys % num_items] = residuals[ROW_VALUES].double()
    held_dense = torch.zeros_like(true_dense)
    held_dense[residuals[DENSE_CLIENTS]] = residuals[DENSE_VALUES].double()
    assert bool((keys[1:] > keys[:-1]).all()) and bool((residuals[ROW_VALUES] != 0).any(1).all())  # sorted, sparse
    torch.testing.assert_close(sent_rows + held_rows, true_rows, atol=1e-5, rtol=0)
    torch.testing.assert_close(sent_dense + held_dense, true_dense, atol=1e-5, rtol=0)


def test_rows_with_nothing_kept_are_not_sent_and_decode_checks_its_input():
    model, data, params = _setup(dim=8)
    cohort = np.arange(0, 40, 2)
    update = train_cohort_vectorized(model, params, data, cohort, LocalTraining(batch_size=3), 7, 0).update
    layout = UploadLayout.of(model)
    encoded = encode_upload(update, cohort, layout, Compression(topk=0.01), {}, 0, 0).encoded
    assert len(encoded.row_items) < len(update.row_items)
    decoded = decode_upload(encoded, layout, Compression(topk=0.01))
    assert len(decoded.row_items) == len(encoded.row_items) == int(encoded.client_rows.sum())
    with pytest.raises(FedrecError, match="same \\[compression\\]"):
        decode_upload(encoded, layout, Compression(topk=0.01, bits=8))  # no scales in the payload
    with pytest.raises(FedrecError, match="compression.topk"):
        Compression()


# -- the simulator --------------------------------------------------------------------------------


def _round_inputs():
    model, data, params = _setup()
    settings_ = FedAvgSettings(local=LocalTraining(batch_size=3), client_fraction=0.5,
                               server=ServerOptimizer("adam", 0.05))
    return model, data, params, settings_


def test_a_round_without_compression_is_bit_identical_to_backend_then_server_update():
    model, data, params, settings_ = _round_inputs()
    state = ServerState(0, dict(params))
    next_state, stats = run_round(model, state, data, settings_, seed=3)
    cohort = sample_cohort(data.num_clients, 0.5, 3, 0)
    result = train_cohort_vectorized(model, params, data, cohort, settings_.local, 3, 0)
    expected, _ = server_update(model, ServerState(0, dict(params)), result.update, settings_, 3)
    for name in model.shared_names():
        assert torch.equal(next_state.params[name], expected.params[name]), name
    assert next_state.client_state == {}
    assert stats.bytes_up == upload_bytes(model, result.update)
    # lossless compression (every coordinate, float32) gives the same floats
    lossless = FedAvgSettings(**{**settings_.__dict__, "compression": Compression(topk=1.0)})
    same, lossless_stats = run_round(model, ServerState(0, dict(params)), data, lossless, seed=3)
    for name in model.shared_names():
        assert torch.equal(same.params[name], expected.params[name]), name
    assert lossless_stats.bytes_up > 0


@pytest.mark.parametrize("name", ["topk+int8", "int8"])
def test_round_bytes_up_is_the_encoded_payload(name):
    model, data, params, settings_ = _round_inputs()
    compressed_settings = FedAvgSettings(**{**settings_.__dict__, "compression": SETTINGS[name]})
    state = ServerState(0, dict(params))
    residuals: dict[str, torch.Tensor] = {}
    for round_index in range(2):
        cohort = sample_cohort(data.num_clients, 0.5, 3, round_index)
        result = train_cohort_vectorized(model, state.params, data, cohort, settings_.local, 3, round_index)
        expected = encode_upload(result.update, cohort, UploadLayout.of(model), SETTINGS[name], residuals, 3,
                                 round_index)
        residuals = expected.residuals
        state, stats = run_round(model, state, data, compressed_settings, seed=3)
        assert stats.bytes_up == expected.encoded.nbytes == len(expected.encoded.to_bytes())
        assert stats.bytes_up < upload_bytes(model, result.update)
        for key in (ROW_KEYS, ROW_VALUES):
            assert torch.equal(state.client_state[key], residuals[key])


def test_participation_dropouts_compress_only_the_senders():
    from fedrec.federated.participation import Participation

    model, data, params, settings_ = _round_inputs()
    dropping = FedAvgSettings(**{**settings_.__dict__, "compression": Compression(topk=0.2),
                                 "participation": Participation(dropout=0.5)})
    state, stats = run_round(model, ServerState(0, dict(params)), data, dropping, seed=3)
    cohort = sample_cohort(data.num_clients, 0.5, 3, 0)
    holders = np.unique(state.client_state[ROW_KEYS].numpy() // 30)  # clients holding a residual row
    assert stats.dropped > 0 and len(holders) == len(cohort) - stats.dropped  # each sender, nobody else
    assert set(holders) <= set(cohort)


def test_config_section_and_refusals():
    config = load_config(None, ["compression.topk=0.1", "compression.bits=8", "compression.error_feedback=false"])
    assert (config.compression.topk, config.compression.bits, config.compression.error_feedback) == (0.1, 8, False)
    with pytest.raises(FedrecError, match="compression.bits=4"):
        load_config(None, ["compression.bits=4"])
    with pytest.raises(FedrecError, match="compression.topk"):
        load_config(None, ["compression.topk=1.5"])
    with pytest.raises(FedrecError, match="did you mean compression.topk"):
        load_config(None, ["compression.top_k=0.1"])
    with pytest.raises(FedrecError, match="train.mode = 'federated'"):
        load_config(None, ["compression.bits=8", "train.mode='centralized'"])
    with pytest.raises(FedrecError, match="privacy"):
        load_config(None, ["compression.bits=8", "privacy.noise_multiplier=1.0", "privacy.delta=1e-5"])


def test_resume_after_interrupt_is_exact_with_residuals(tmp_path):
    overrides = SYNTHETIC + ["compression.topk=0.1", "compression.bits=8", "train.rounds=4"]
    straight = train(load_config(None, overrides), tmp_path / "straight")

    def stop_after_two(record: dict) -> None:
        if record["round"] == 2:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train(load_config(None, overrides), tmp_path / "resumed", on_round=stop_after_two)
    resumed = train(load_config(None, overrides), tmp_path / "resumed", resume=True)
    expected, expected_meta = load_checkpoint(tmp_path / "straight" / CHECKPOINT_NAME)
    tensors, meta = load_checkpoint(tmp_path / "resumed" / CHECKPOINT_NAME)
    assert sorted(tensors) == sorted(expected)
    assert any(key.startswith("client/residual/") and len(value) for key, value in expected.items())
    for key, value in expected.items():
        assert torch.equal(tensors[key], value), key
    assert meta["bytes_up"] == expected_meta["bytes_up"] and resumed["rmse"] == straight["rmse"]


# -- Flower: nodes compress, the server decodes ------------------------------------------------------


@pytest.mark.parametrize("extra", [
    ["compression.topk=0.1", "compression.bits=8"],
    ["compression.bits=8", "compression.scale='tensor'", "model.name='bpr'", "eval.sampled_negatives=0"],
], ids=["mf-topk-int8", "bpr-int8-tensor"])
def test_simulator_and_flower_nodes_give_the_same_model_with_compression(tmp_path, extra):
    from fedrec.flower.federation import run_federation
    from fedrec.flower.node import InProcessNodes, load_node

    config = load_config(None, SYNTHETIC + extra)
    simulated = train(config, tmp_path / "sim")
    nodes = InProcessNodes([load_node(config, k, 3) for k in range(3)])
    deployed = run_federation(config, nodes, tmp_path / "dep", expected_nodes=3)
    sim_tensors, _ = load_checkpoint(tmp_path / "sim" / CHECKPOINT_NAME)
    dep_tensors, _ = load_checkpoint(tmp_path / "dep" / CHECKPOINT_NAME)
    shared = [k for k in dep_tensors if k.startswith(("param/", "server/"))]
    assert shared
    for key in shared:
        torch.testing.assert_close(dep_tensors[key], sim_tensors[key], atol=1e-6, rtol=0, msg=key)
    key = "rmse" if config.model.name == "mf" else "hr@10"
    assert deployed[key] == pytest.approx(simulated[key], abs=1e-5)
    # the nodes kept their clients' residuals; the server measured the serialised (smaller) replies
    assert any("residuals" in state.array_records for state in nodes.states.values())
    plain = load_config(None, SYNTHETIC + [e for e in extra if not e.startswith("compression.")])
    uncompressed = run_federation(plain, InProcessNodes([load_node(plain, k, 3) for k in range(3)]), tmp_path / "plain",
                                  expected_nodes=3)
    assert deployed["bytes_up"] < uncompressed["bytes_up"]


def test_server_refuses_an_upload_compressed_differently(tmp_path):
    from fedrec.flower.codec import encoded_to_record, record_to_upload, update_to_record

    model, data, params = _setup()
    cohort = np.arange(0, 40, 5)
    update = train_cohort_vectorized(model, params, data, cohort, LocalTraining(), 0, 0).update
    encoded = encode_upload(update, cohort, UploadLayout.of(model), Compression(bits=8), {}, 0, 0).encoded
    record = encoded_to_record(encoded)
    decoded = record_to_upload(record, model, Compression(bits=8))
    assert torch.equal(decoded.row_items, update.row_items)
    with pytest.raises(FedrecError, match="same \\[compression\\]"):
        record_to_upload(record, model, None)
    with pytest.raises(FedrecError, match="same \\[compression\\]"):
        record_to_upload(update_to_record(update), model, Compression(bits=8))


# -- real data -------------------------------------------------------------------------------------


@pytest.mark.slow
def test_ml100k_compressed_mf_costs_little_accuracy_for_far_fewer_bytes(ml100k_dir, tmp_path):
    base = [f"data.data_dir='{ml100k_dir.parent}'", "train.rounds=5", "train.eval_every=5"]
    config_path = Path(__file__).resolve().parent.parent / "configs" / "ml100k-mf-fedavg.toml"
    plain = train(load_config(config_path, base), tmp_path / "plain")
    small = train(load_config(config_path, base + ["compression.topk=0.1", "compression.bits=8"]), tmp_path / "small")
    assert small["bytes_up"] * 10 < plain["bytes_up"]
    assert small["rmse"] < plain["rmse"] + 0.05
    history = [json.loads(line) for line in (tmp_path / "small" / "history.jsonl").read_text().splitlines()]
    assert sum(entry["bytes_up"] for entry in history) == small["bytes_up"]
