"""Recommendations from a finished run (fedrec/serving/recommend.py) and the recommend/similar commands.

Small runs are trained here on the synthetic dataset; every answer is checked against a brute-force
computation from the checkpoint's tensors and the split rebuilt independently.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from typer.testing import CliRunner

from fedrec.cli import app
from fedrec.config import load_config
from fedrec.errors import FedrecError
from fedrec.runtime.checkpoint import load_checkpoint
from fedrec.runtime.experiment import prepare
from fedrec.runtime.trainer import train
from fedrec.serving.recommend import (export_recommendations, item_embedding_tables, item_of, item_vectors, load_run,
                                      private_row_shapes, private_rows_of, ranked_records, recommend_all,
                                      recommend_for_user, score_private_rows, seen_items, similar_items,
                                      top_k_excluding, user_history, user_of)

SMALL = ["data.num_users=40", "data.num_items=30", "data.mean_interactions=8", "model.dim=4", "train.rounds=2",
         "eval.ks=[5]", "eval.sampled_negatives=0"]
MODELS = {
    "mf": [],
    "bpr": ["model.name='bpr'"],
    "neumf": ["model.name='ncf'", "model.layers=[8, 4]"],
    "gmf_private_head": ["model.name='ncf'", "model.variant='gmf'", "model.private_head=true"],
}


def train_small_run(directory: Path, extra: list[str]) -> Path:
    """A finished run of a small synthetic job (a second or so)."""
    config = load_config(None, SMALL + extra)
    train(config, directory)
    return directory


@pytest.fixture(scope="module")
def run_dirs(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("runs")
    return {name: train_small_run(root / name, extra) for name, extra in MODELS.items()}


@pytest.fixture(scope="module")
def runs(run_dirs):
    return {name: load_run(path) for name, path in run_dirs.items()}


def reference_seen(run_dir: Path) -> list[set[int]]:
    """Each user's training items, from the split rebuilt independently of the code under test."""
    config = load_config(None, SMALL + MODELS[run_dir.name])
    exp = prepare(config)
    seen = [set() for _ in range(exp.dataset.num_users)]
    for user, item in zip(exp.split.train.users, exp.split.train.items):
        seen[int(user)].add(int(item))
    return seen


def brute_force_mf_scores(run_dir: Path, user: int) -> np.ndarray:
    tensors, _ = load_checkpoint(run_dir / "checkpoint.safetensors")
    p = tensors["param/user_vec"][user].numpy().astype(np.float64)
    q = tensors["param/item_vec"].numpy().astype(np.float64)
    scores = q @ p + tensors["param/item_bias"].numpy()[:, 0]
    if "param/user_bias" in tensors:
        scores += float(tensors["param/user_bias"][user, 0]) + float(tensors["param/global_bias"][0])
    return scores


@pytest.mark.parametrize("name", ["mf", "bpr"])
def test_top_k_matches_brute_force_and_skips_training_items(runs, run_dirs, name):
    run = runs[name]
    seen = reference_seen(run_dirs[name])
    for user in range(run.dataset.num_users):
        scores = brute_force_mf_scores(run_dirs[name], user)
        candidates = [i for i in range(len(scores)) if i not in seen[user]]
        expected = sorted(candidates, key=lambda i: -scores[i])[:5]
        got = recommend_for_user(run, user, 5)
        assert not set(got.items.tolist()) & seen[user]
        np.testing.assert_allclose(got.scores, scores[expected], rtol=1e-5, atol=1e-5)
        assert set(seen_items(run, user).tolist()) == seen[user]


def test_raw_ids_titles_and_history(runs):
    run = runs["mf"]
    user = user_of(run, run.dataset.user_ids[7])
    assert user == 7
    records = ranked_records(run, recommend_for_user(run, user, 3))
    assert [r["rank"] for r in records] == [1, 2, 3]
    for record in records:
        index = item_of(run, record["item"])
        assert record["title"] == run.dataset.item_titles[index] != ""
    history = user_history(run, user)
    assert sorted(item_of(run, h["item"]) for h in history) == sorted(seen_items(run, user).tolist())
    assert [h["timestamp"] for h in history] == sorted((h["timestamp"] for h in history), reverse=True)


@pytest.mark.parametrize("name", list(MODELS))
def test_on_device_scores_equal_server_scores(runs, name):
    """A client holding its own private rows gets exactly the scores the server computes for it."""
    run = runs[name]
    from fedrec.models.base import score_all_items

    for user in (0, 5, 39):
        rows = private_rows_of(run, user)
        assert set(rows) == set(private_row_shapes(run.model))
        on_device = score_private_rows(run, rows)
        server = score_all_items(run.model, run.params, torch.tensor([user]))[0]
        torch.testing.assert_close(on_device, server, rtol=1e-5, atol=1e-5)
        ranked = top_k_excluding(on_device, seen_items(run, user), 4)
        expected = recommend_for_user(run, user, 4)
        np.testing.assert_array_equal(ranked.items, expected.items)


def test_private_rows_are_checked(runs):
    run = runs["mf"]
    rows = private_rows_of(run, 0)
    with pytest.raises(FedrecError, match="needs private rows user_bias, user_vec"):
        score_private_rows(run, {"user_vec": rows["user_vec"]})
    with pytest.raises(FedrecError, match=r"user_vec must have shape \(4,\)"):
        score_private_rows(run, {**rows, "user_vec": torch.zeros(5)})


def test_all_users_export_matches_single_user_answers(runs, tmp_path):
    run = runs["bpr"]
    frame = recommend_all(run, 4, chunk=7)  # several chunks
    assert len(frame) == 4 * run.dataset.num_users
    for user in (0, 13, 39):
        rows = frame[frame["user"] == str(run.dataset.user_ids[user])]
        expected = recommend_for_user(run, user, 4)
        assert rows["rank"].tolist() == [1, 2, 3, 4]
        assert rows["item"].tolist() == [str(run.dataset.item_ids[i]) for i in expected.items]
        np.testing.assert_allclose(rows["score"].to_numpy(), expected.scores, rtol=1e-6)
        assert rows["title"].tolist() == [run.dataset.item_titles[i] for i in expected.items]
    for suffix in (".csv", ".parquet"):
        path = tmp_path / f"top{suffix}"
        export_recommendations(frame, path)
        back = pd.read_csv(path, dtype={"user": str, "item": str}) if suffix == ".csv" else pd.read_parquet(path)
        assert back["item"].tolist() == frame["item"].tolist()
        assert back["title"].tolist() == frame["title"].tolist()
    with pytest.raises(FedrecError, match=r"must end in \.csv or \.parquet"):
        export_recommendations(frame, tmp_path / "top.xlsx")


@pytest.mark.parametrize("name", ["text_bpr", "tower_bpr"])
def test_similar_items_of_a_text_model_use_the_vectors_it_scores_with(name, tmp_path, monkeypatch):
    """q_i = e_i + W t_i + b (tower: W t_i + b), computed by hand from the checkpoint; not the raw text."""
    monkeypatch.setenv("FEDREC_CACHE", str(tmp_path / "cache"))
    extra = [f"model.name='{name}'", "model.text_dim=5", "model.text_max_length=12", "data.split='leave_last_out'"]
    run = load_run(train_small_run(tmp_path / name, extra))
    tensors, _ = load_checkpoint(tmp_path / name / "checkpoint.safetensors")
    t = {k[len("param/"):]: v.numpy().astype(np.float64) for k, v in tensors.items() if k.startswith("param/")}
    q = t["item_text"] @ t["adapter_w"] + t["adapter_b"] + (t["item_vec"] if name == "text_bpr" else 0.0)
    q /= np.linalg.norm(q, axis=1, keepdims=True)
    assert item_embedding_tables(run) == (["item_vec + adapter(item_text)"] if name == "text_bpr" else ["adapter(item_text)"])
    cosine = q @ q[4]
    cosine[4] = -np.inf
    got = similar_items(item_vectors(run), 4, 5)
    np.testing.assert_allclose(got.scores, np.sort(cosine)[::-1][:5], rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(got.items, np.argsort(-cosine, kind="stable")[:5])


@pytest.mark.parametrize("name", ["mf", "neumf"])
def test_similar_items_are_the_cosine_nearest(runs, run_dirs, name):
    run = runs[name]
    tensors, _ = load_checkpoint(run_dirs[name] / "checkpoint.safetensors")
    tables = item_embedding_tables(run)
    assert tables == (["item_vec"] if name == "mf" else ["item_gmf", "item_mlp"])
    parts = [tensors[f"param/{t}"].numpy().astype(np.float64) for t in tables]
    vectors = np.concatenate([p / np.linalg.norm(p, axis=1, keepdims=True) for p in parts], axis=1)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    unit = item_vectors(run)
    for item in (0, 11, 29):
        cosine = vectors @ vectors[item]
        cosine[item] = -np.inf
        got = similar_items(unit, item, 5)
        assert item not in got.items
        np.testing.assert_allclose(got.scores, np.sort(cosine)[::-1][:5], rtol=1e-5, atol=1e-6)


def test_bad_input_is_one_line(runs, run_dirs, tmp_path):
    run = runs["mf"]
    with pytest.raises(FedrecError, match="unknown user ID 'nobody'"):
        user_of(run, "nobody")
    with pytest.raises(FedrecError, match="unknown item ID '-1'"):
        item_of(run, -1)
    with pytest.raises(FedrecError, match="K=0 is not a positive number"):
        recommend_for_user(run, 0, 0)
    candidates = run.num_items - len(seen_items(run, 0))
    with pytest.raises(FedrecError, match=f"more than the {candidates} candidate items; use K <= {candidates}"):
        recommend_for_user(run, 0, candidates + 1)
    assert len(recommend_for_user(run, 0, candidates).items) == candidates
    with pytest.raises(FedrecError, match="for --all"):
        recommend_all(run, run.num_items)
    with pytest.raises(FedrecError, match="more than the 29 candidate items"):
        similar_items(item_vectors(run), 0, 30)
    with pytest.raises(FedrecError, match="not found"):
        load_run(tmp_path / "missing")
    with pytest.raises(FedrecError, match="is not a fedrec run"):
        load_run(tmp_path)
    unfinished = tmp_path / "unfinished"
    unfinished.mkdir()
    for name in ("config.json", "checkpoint.safetensors"):
        (unfinished / name).write_bytes((run_dirs["mf"] / name).read_bytes())
    with pytest.raises(FedrecError, match="has not finished"):
        load_run(unfinished)
    (unfinished / "metrics.json").write_text("{}")
    (unfinished / "config.json").write_text("{not json")
    with pytest.raises(FedrecError, match="not a valid fedrec run config"):
        load_run(unfinished)


# -- the commands ----------------------------------------------------------------------------------


def invoke(*args: str):
    return CliRunner().invoke(app, list(args))


def test_recommend_command_json_and_table(runs, run_dirs):
    run = runs["mf"]
    user = str(run.dataset.user_ids[3])
    result = invoke("recommend", str(run_dirs["mf"]), "--user", user, "-k", "3", "--json")
    assert result.exit_code == 0, result.output
    payload = json.loads(result.output)
    expected = recommend_for_user(run, 3, 3)
    assert [entry["item"] for entry in payload["items"]] == [str(run.dataset.item_ids[i]) for i in expected.items]
    table = invoke("recommend", str(run_dirs["mf"]), "--user", user)
    assert table.exit_code == 0
    assert run.dataset.item_titles[recommend_for_user(run, 3, 1).items[0]] in table.output


def test_recommend_all_and_similar_commands(runs, run_dirs, tmp_path):
    output = tmp_path / "all.csv"
    result = invoke("recommend", str(run_dirs["bpr"]), "--all", "--output", str(output), "-k", "2")
    assert result.exit_code == 0, result.output
    frame = pd.read_csv(output, dtype={"user": str, "item": str})
    assert list(frame.columns) == ["user", "rank", "item", "score", "title"]
    assert len(frame) == 2 * runs["bpr"].dataset.num_users
    item = str(runs["bpr"].dataset.item_ids[0])
    similar = invoke("similar", str(run_dirs["bpr"]), "--item", item, "-k", "3", "--json")
    assert similar.exit_code == 0, similar.output
    payload = json.loads(similar.output)
    assert payload["tables"] == ["item_vec"] and len(payload["items"]) == 3


@pytest.mark.parametrize("args, message", [
    (["--user", "1", "--all"], "either --user ID or --all"),
    ([], "either --user ID or --all"),
    (["--all"], "--all needs --output"),
    (["--all", "--output", "x.txt"], r"must end in \.csv or \.parquet"),
    (["--user", "nobody"], "unknown user ID 'nobody'"),
    (["--user", "0", "-k", "0"], "-k 0 is not a positive number"),
])
def test_recommend_command_errors(run_dirs, args, message):
    result = invoke("recommend", str(run_dirs["mf"]), *args)
    assert isinstance(result.exception, FedrecError), result.output
    assert re.search(message, str(result.exception))


@pytest.mark.slow
def test_recommend_on_ml100k(tmp_path, ml100k_dir):
    """A real run: user 1's recommendations are unseen MovieLens titles; Star Wars' neighbours carry titles."""
    config = load_config(None, ["data.name='ml-100k'", f"data.data_dir='{ml100k_dir}'", "data.split='official'",
                                "model.dim=16", "train.rounds=3", "eval.ks=[10]"])
    train(config, tmp_path / "run")
    run = load_run(tmp_path / "run")
    user = user_of(run, "1")
    records = ranked_records(run, recommend_for_user(run, user, 10))
    seen = {str(run.dataset.item_ids[i]) for i in seen_items(run, user)}
    base = pd.read_csv(ml100k_dir / "u1.base", sep="\t", names=["user", "item", "rating", "time"], dtype=str)
    assert seen == set(base.loc[base["user"] == "1", "item"])  # exactly user 1's training ratings of fold u1
    assert all(r["item"] not in seen and r["title"] for r in records)
    star_wars = item_of(run, "50")
    assert run.dataset.item_titles[star_wars] == "Star Wars (1977)"
    assert len(similar_items(item_vectors(run), star_wars, 5).items) == 5
