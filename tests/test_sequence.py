"""The SASRec-style next-item model: windows, masks, padding, backends, scoring, runs."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from fedrec.data.dataset import Interactions, Split
from fedrec.data.synthetic import make_synthetic
from fedrec.config import load_config
from fedrec.errors import FedrecError
from fedrec.federated.cohort import slot_items
from fedrec.federated.local import LocalTraining
from fedrec.federated.server import FedAvgSettings, ServerState, run_round
from fedrec.federated.server_opt import ServerOptimizer
from fedrec.federated.vectorized import train_cohort_vectorized
from fedrec.models.base import ExampleBatch, ParamKind, gather_rows
from fedrec.models.registry import build_model
from fedrec.models.sequence import (SASRec, SASRecConfig, latest_histories, sequence_client_data,
                                    sequence_evaluation_histories, sequence_windows)
from fedrec.runtime.trainer import train


def _inter(users, items, times) -> Interactions:
    n = len(users)
    return Interactions(np.array(users, np.int64), np.array(items, np.int64), np.ones(n, np.float32),
                        np.array(times, np.int64))


# -- windows and histories ----------------------------------------------------------------------

def test_windows_by_time_hand_computed():
    # user 0 by time: 10, 11, 12, 13, 14 (rows shuffled; the tie at t=3 keeps row order: 12 then 13)
    # user 1: 20, 21; user 2: a single item (no window)
    train = _inter([0, 1, 0, 0, 2, 0, 0, 1], [14, 21, 11, 12, 30, 13, 10, 20], [9, 5, 2, 3, 1, 3, 1, 4])
    users, last, history = sequence_windows(train, length=3)
    got = sorted(zip(users.tolist(), last.tolist(), map(tuple, history.tolist())))
    assert got == [(0, 11, (-1, -1, 10)), (0, 14, (11, 12, 13)), (1, 21, (-1, -1, 20))]
    users, last, history = sequence_windows(train, length=2)
    got = sorted(zip(users.tolist(), last.tolist(), map(tuple, history.tolist())))
    assert got == [(0, 12, (10, 11)), (0, 14, (12, 13)), (1, 21, (-1, 20))]


def test_every_item_but_the_first_is_a_target_once():
    dataset = make_synthetic(num_users=30, num_items=50, mean_interactions=15, seed=1)
    train = dataset.interactions
    for length in (1, 4, 7, 100):
        users, last, history = sequence_windows(train, length)
        # a window with k real history items trains k next-item targets (its last item included)
        targets = int((history >= 0).sum())
        assert len(last) == len(users) and np.all(last >= 0)
        per_user = np.bincount(train.users, minlength=30)
        assert targets == int(np.sum(np.maximum(per_user - 1, 0)))


def test_latest_histories_hand_computed():
    train = _inter([0, 0, 0, 1], [5, 6, 7, 8], [1, 2, 3, 1])
    validation = _inter([0, 1], [9, 3], [4, 2])
    test = _inter([0, 1], [1, 2], [5, 3])
    split = Split(train, test, validation)
    before_test, before_val = sequence_evaluation_histories(split, num_users=3, length=3)
    assert before_test.tolist() == [[6, 7, 9], [-1, 8, 3], [-1, -1, -1]]
    assert before_val.tolist() == [[5, 6, 7], [-1, -1, 8], [-1, -1, -1]]
    assert latest_histories([train], 3, 1).tolist() == [[7], [8], [-1]]


def test_slot_items_put_history_first_and_pad_with_the_own_item():
    train = _inter([0, 0, 0, 1, 1], [3, 4, 5, 6, 7], [1, 2, 3, 1, 2])
    data = sequence_client_data(train, np.arange(2), 2, num_items=10, length=3)
    index = np.arange(len(data.users))
    zeros = np.zeros(len(index), np.int64)
    slots = slot_items(data, index, 4, seed=0, round_index=0, clients=data.users, epochs=zeros, positions=index)
    assert slots.shape == (2, 3 + 1 + 4)
    assert slots[:, :4].tolist() == [[5, 3, 4, 5], [7, 7, 6, 7]]  # padding -> the own item
    assert data.targets.tolist() == [2.0, 1.0]  # real history items, which the model masks by
    for row, user_items in zip(slots, ({3, 4, 5}, {6, 7})):
        assert not set(row[4:].tolist()) & user_items  # negatives: items the user never interacted with


# -- the model ----------------------------------------------------------------------------------

def _model(num_items=30, num_users=4, length=6, **options) -> tuple[SASRec, dict[str, torch.Tensor]]:
    config = SASRecConfig(**{"dim": 8, "blocks": 2, "heads": 2, "max_history": length, "negatives": 5, **options})
    model = SASRec(config, num_users, num_items)
    params = model.init_params(torch.Generator().manual_seed(0))
    return model, params


def _dense(model, params):
    return {s.name: params[s.name].unsqueeze(0) for s in model.specs_by_kind(ParamKind.SHARED_DENSE)}


def test_causal_mask_output_at_t_ignores_later_items():
    model, params = _model()
    emb = torch.randn(1, 3, 6, 8, generator=torch.Generator().manual_seed(1))
    real = torch.ones(1, 3, 6, dtype=torch.bool)
    hidden = model.encode(emb, real, _dense(model, params), train=False)
    for t in range(5):
        changed = emb.clone()
        changed[:, :, t + 1:] += torch.randn(changed[:, :, t + 1:].shape)
        other = model.encode(changed, real, _dense(model, params), train=False)
        torch.testing.assert_close(other[:, :, :t + 1], hidden[:, :, :t + 1], atol=1e-6, rtol=0)
        assert not torch.allclose(other[:, :, t + 1:], hidden[:, :, t + 1:])


@pytest.mark.parametrize("l2", [0.0, 0.1])
def test_padding_gets_no_gradient_and_does_not_change_outputs(l2):
    model, params = _model(l2=l2)
    rows = gather_rows(model, params, torch.tensor([0, 1]), torch.randint(0, 30, (2, model.item_slots)))
    rows = {k: v.clone().requires_grad_() for k, v in rows.items()}
    lengths = torch.tensor([[2.0, 6.0]])  # example 0 has 4 padding slots
    loss = model.example_loss(rows, ExampleBatch(lengths)).sum()
    loss.backward()
    grad = rows["item_emb"].grad[0]  # (N, S, d)
    assert torch.count_nonzero(grad[0, :4]) == 0
    assert torch.all(grad[0, 4:].abs().sum(-1) > 0)  # real history, own item, negatives
    assert torch.all(grad[1].abs().sum(-1) > 0)
    # whatever sits in the padding slots, the loss is the same
    moved = {k: v.detach().clone() for k, v in rows.items()}
    moved["item_emb"][0, 0, :4] += 5.0
    torch.testing.assert_close(model.example_loss(moved, ExampleBatch(lengths)),
                               model.example_loss({k: v.detach() for k, v in rows.items()}, ExampleBatch(lengths)))


def test_loss_is_sampled_softmax_of_the_next_item():
    model, params = _model(length=1, blocks=1, heads=1)
    rows = gather_rows(model, params, torch.tensor([0]), torch.tensor([[3, 4, 7, 8, 9, 10, 11]]))
    hidden = model.encode(rows["item_emb"][:, :, :1], torch.ones(1, 1, 1, dtype=torch.bool),
                          {k: v for k, v in rows.items() if k != "item_emb"}, train=False)[0, 0, 0]
    logits = rows["item_emb"][0, 0, 1:] @ hidden  # own item, then the 5 negatives
    expected = -torch.log_softmax(logits, 0)[0]
    torch.testing.assert_close(model.example_loss(rows, ExampleBatch(torch.tensor([[1.0]])))[0, 0], expected)


def test_score_all_matches_predict():
    model, params = _model(num_users=3)
    histories = np.array([[1, 2, 3, 4, 5, 6], [7, 7, 8, 9, 1, 0], [2, 4, 6, 8, 10, 12]])
    model = model.with_histories(histories)
    users = torch.tensor([0, 2, 1])
    candidates = torch.tensor([[11, 12, 13, 14, 15, 16], [0, 1, 2, 3, 4, 5], [29, 28, 27, 26, 25, 24]])
    items = torch.cat([torch.from_numpy(histories)[users], candidates], 1)  # history, own, 5 negatives
    predicted = model.predict(gather_rows(model, params, users, items))[0, :, model.length:]
    full = model.score_all(params, users)
    torch.testing.assert_close(predicted, full.gather(1, candidates), atol=1e-5, rtol=1e-5)
    assert full.shape == (3, 30)


def test_score_all_ignores_what_padding_would_hold():
    model, params = _model(num_users=2)
    model = model.with_histories(np.array([[-1, -1, -1, 3, 4, 5], [9, 9, 9, 3, 4, 5]]))
    users = torch.tensor([0])
    torch.testing.assert_close(model.score_all(params, users), model.score_all(params, users))
    # the user with the padded history scores like any history whose padding is masked
    dense = _dense(model, params)
    emb = params["item_emb"][torch.tensor([[0, 0, 0, 3, 4, 5]])].unsqueeze(0)
    real = torch.tensor([[[False, False, False, True, True, True]]])
    expected = model.scores_from(emb, real, dense, params["item_emb"].unsqueeze(0).unsqueeze(0))[0]
    torch.testing.assert_close(model.score_all(params, users), expected, atol=1e-5, rtol=1e-5)


def test_text_init_uses_the_text_embeddings():
    text = torch.randn(30, 12, generator=torch.Generator().manual_seed(2))
    model = SASRec(SASRecConfig(dim=8, item_init="text"), 4, 30, item_text=text)
    emb = model.init_params(torch.Generator().manual_seed(0))["item_emb"]
    centred = text[:, :8] - text[:, :8].mean(0)
    torch.testing.assert_close(emb / emb.norm(dim=1, keepdim=True), centred / centred.norm(dim=1, keepdim=True))
    assert math.isclose(float(emb.norm(dim=1).mean()), 0.05 * math.sqrt(8), rel_tol=1e-4)
    with pytest.raises(ValueError, match="text embeddings"):
        SASRec(SASRecConfig(item_init="text"), 4, 30)


# -- federated training -------------------------------------------------------------------------

def _tiny_federation(num_users=8, num_items=25, length=4):
    dataset = make_synthetic(num_users=num_users, num_items=num_items, mean_interactions=9, seed=4)
    data = sequence_client_data(dataset.interactions, np.arange(num_users), num_users, num_items, length)
    model = SASRec(SASRecConfig(dim=8, blocks=2, heads=2, max_history=length, negatives=3), num_users, num_items)
    return model, data


def test_upload_holds_only_real_items_and_padding_rows_do_not_move():
    model, data = _tiny_federation()
    params = model.init_params(torch.Generator().manual_seed(0))
    cohort = np.arange(data.num_clients)
    local = LocalTraining(epochs=1, lr=0.5, batch_size=2)
    result = train_cohort_vectorized(model, params, data, cohort, local, seed=3, round_index=0)
    update = result.update
    for client in cohort:
        part = data.client_slice(client)
        index = np.arange(part.start, part.stop)
        n = len(index)
        slots = slot_items(data, index, model.negatives, 3, 0, np.full(n, client), np.zeros(n, np.int64), np.arange(n))
        history = data.history[index]
        real_items = set(history[history >= 0].tolist()) | set(data.items[index].tolist()) | set(slots[:, 5:].ravel().tolist())
        sent = update.row_items[update.row_clients == int(client)].tolist()
        assert set(sent) == real_items
    assert bool(torch.all(update.row_deltas["item_emb"].abs().sum(1) > 0))  # every uploaded row was trained


@pytest.mark.parametrize("kwargs", [
    dict(local=LocalTraining(epochs=2, lr=0.3, batch_size=2), client_fraction=0.5),
    dict(local=LocalTraining(epochs=1, lr=0.2, batch_size=1), server=ServerOptimizer("adam", lr=0.01),
         row_weighting="client_size"),
])
def test_vectorized_equals_reference(kwargs):
    model, data = _tiny_federation()
    results = {}
    for backend in ("reference", "vectorized"):
        state = ServerState(0, model.init_params(torch.Generator().manual_seed(5)))
        for _ in range(2):
            state, _ = run_round(model, state, data, FedAvgSettings(backend=backend, **kwargs), seed=7)
        results[backend] = state
    for name, value in results["reference"].params.items():
        torch.testing.assert_close(results["vectorized"].params[name], value, atol=1e-5, rtol=0)
    start = model.init_params(torch.Generator().manual_seed(5))
    assert not torch.allclose(results["vectorized"].params["block0_wq"], start["block0_wq"])


# -- fedrec train -------------------------------------------------------------------------------

def _synthetic_overrides(*extra: str) -> list[str]:
    return ["data.name=synthetic", "data.num_users=40", "data.num_items=60", "data.mean_interactions=15",
            "data.split=leave_last_out", "model.name=sasrec", "model.dim=16", "model.max_history=8",
            "model.negatives=10", "train.local_lr=0.3", "train.batch_size=2", "train.server_optimizer=adam",
            "train.server_lr=0.01", "eval.sampled_negatives=20", *extra]


def test_train_tiny_synthetic_federated_and_centralized(tmp_path: Path):
    fed = train(load_config(None, _synthetic_overrides("train.rounds=3")), tmp_path / "fed")
    for key in ("hr@10", "ndcg@10", "val_hr@10", "val_ndcg@10", "sampled_hr@10", "popularity_ndcg@10"):
        assert 0.0 <= fed[key] <= 1.0, key
    history = [json.loads(line) for line in (tmp_path / "fed" / "history.jsonl").read_text().splitlines()]
    assert history[-1]["train_loss"] < history[0]["train_loss"]
    assert fed["bytes_up"] > 0 and fed["clients"] == 40
    central = train(load_config(None, _synthetic_overrides("train.rounds=2", "train.mode=centralized",
                                                           "train.central_lr=0.01")), tmp_path / "central")
    assert 0.0 <= central["ndcg@10"] <= 1.0 and central["bytes_up"] == 0


def test_bad_settings_get_one_line_errors(tmp_path: Path):
    with pytest.raises(FedrecError, match="cold_start_items=0"):
        train(load_config(None, _synthetic_overrides("model.cold_start_items=0.1")), tmp_path / "a")
    with pytest.raises(FedrecError, match="multiple of heads"):
        train(load_config(None, _synthetic_overrides("model.heads=3")), tmp_path / "b")
    with pytest.raises(FedrecError, match="does not take model.max_history"):
        build_model("bpr", {"max_history": 5}, 3, 4)
    with pytest.raises(FedrecError, match="finetune_epochs"):
        train(load_config(None, _synthetic_overrides("train.rounds=1", "eval.finetune_epochs=1")), tmp_path / "c")


@pytest.mark.slow
def test_ml100k_sasrec_beats_popularity(ml100k_dir: Path, tmp_path: Path):
    config = load_config(Path("configs/ml100k-sasrec-fedavg.toml"),
                         [f"data.data_dir={ml100k_dir.parent}", "train.rounds=30", "train.eval_every=30"])
    metrics = train(config, tmp_path / "run")
    assert metrics["clients"] == 943 and metrics["split"] == "leave-last-out"
    assert metrics["ndcg@10"] > metrics["popularity_ndcg@10"]


def test_dropout_runs_repeat_exactly_and_resume_matches(tmp_path: Path):
    """Dropout draws come from torch's generator seeded per (seed, round): reruns and resumes repeat."""
    overrides = _synthetic_overrides("train.rounds=2", "model.dropout=0.3")
    first = train(load_config(None, overrides), tmp_path / "a")
    torch.manual_seed(12345)  # whatever the global generator holds must not matter
    second = train(load_config(None, overrides), tmp_path / "b")
    assert first["ndcg@10"] == second["ndcg@10"] and first["hr@10"] == second["hr@10"]
    history_a = (tmp_path / "a" / "history.jsonl").read_text().splitlines()
    history_b = (tmp_path / "b" / "history.jsonl").read_text().splitlines()
    assert [json.loads(x)["train_loss"] for x in history_a] == [json.loads(x)["train_loss"] for x in history_b]
    no_dropout = train(load_config(None, _synthetic_overrides("train.rounds=2", "model.dropout=0.0")), tmp_path / "c")
    assert json.loads(history_a[0])["train_loss"] != json.loads(
        (tmp_path / "c" / "history.jsonl").read_text().splitlines()[0])["train_loss"]
