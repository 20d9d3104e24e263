"""``fedrec train`` with model lora_bpr: a tiny end-to-end run, resume, bad input, and the ML-100K config."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch

from fedrec.config import load_config
from fedrec.errors import FedrecError
from fedrec.runtime.checkpoint import CHECKPOINT_NAME, load_checkpoint
from fedrec.runtime.trainer import train
from tests.test_cli import invoke

ROOT = Path(__file__).resolve().parent.parent
TINY = ["data.name=synthetic", "data.num_users=12", "data.num_items=25", "data.mean_interactions=8",
        "data.split=leave_last_out", "model.name=lora_bpr", "model.dim=8", "model.negatives=2",
        "model.text_max_length=12", "lora.r=2", "lora.top_layers=1", "lora.local_steps=2",
        "lora.refit_steps=5", "train.batch_size=4", "train.client_fraction=0.25", "train.server_optimizer=adam",
        "train.server_lr=0.01", "eval.ks=[5]", "eval.sampled_negatives=0"]


def _sets(overrides: list[str]) -> list[str]:
    return [part for item in overrides for part in ("--set", item)]


def _stop_after(round_: int):
    def on_round(record: dict) -> None:
        if record["round"] == round_:
            raise KeyboardInterrupt

    return on_round


def test_tiny_run_end_to_end_and_resume_matches_uninterrupted(tmp_path, monkeypatch):
    monkeypatch.setenv("FEDREC_CACHE", str(tmp_path / "cache"))  # the frozen embeddings: encoded once, then cached
    straight = tmp_path / "straight"
    toml = tmp_path / "lora.toml"
    toml.write_text('[model]\nname = "lora_bpr"\n')
    result = invoke(["train", str(toml), "--quiet", *_sets([*TINY, "train.rounds=2"]), "--out", str(straight)])
    metrics = json.loads((straight / "metrics.json").read_text())
    assert metrics["model"] == "lora_bpr" and metrics["rounds"] == 2
    for key in ("hr@5", "ndcg@5", "frozen_hr@5", "frozen_ndcg@5", "popularity_ndcg@5"):
        assert 0.0 <= metrics[key] <= 1.0, key
    assert metrics["upload_ratio"] == metrics["upload_bytes_per_client"] / metrics["encoder_bytes"] <= 0.01
    assert metrics["bytes_up"] == 2 * 3 * metrics["upload_bytes_per_client"]  # 2 rounds x 3 clients (25% of 12)
    assert metrics["lora_layers"] == "5"
    assert "rounds=2" in result.stdout and "upload_ratio=0.0" in result.stdout  # the summary line
    history = [json.loads(line) for line in (straight / "history.jsonl").read_text().splitlines()]
    assert [h["round"] for h in history] == [1, 2]

    resumed = tmp_path / "resumed"
    config = load_config(None, [*TINY, "train.rounds=2"])
    with pytest.raises(KeyboardInterrupt):
        train(config, resumed, on_round=_stop_after(1))
    tensors, meta = load_checkpoint(resumed / CHECKPOINT_NAME)
    assert meta["round"] == 1 and any(k.startswith("server/") for k in tensors)  # server Adam state is saved
    with pytest.raises(FedrecError, match="--resume"):
        train(config, resumed)
    resumed_metrics = train(config, resumed, resume=True)
    got, _ = load_checkpoint(resumed / CHECKPOINT_NAME)
    expected, _ = load_checkpoint(straight / CHECKPOINT_NAME)
    assert sorted(got) == sorted(expected)
    for key, value in expected.items():
        torch.testing.assert_close(got[key], value, atol=1e-6, rtol=0, msg=lambda m, k=key: f"{k}: {m}")
    for key in ("ndcg@5", "hr@5", "bytes_up", "frozen_ndcg@5"):
        assert resumed_metrics[key] == pytest.approx(metrics[key], abs=1e-6), key
    assert [json.loads(line)["round"] for line in (resumed / "history.jsonl").read_text().splitlines()] == [1, 2]


def test_finished_run_is_served_as_the_model_it_evaluated(tmp_path, monkeypatch):
    """load_run serves the evaluated tower saved with the last round (no encoder needed); an older checkpoint
    without it is served by re-encoding the items with the trained adapters and refitting users as evaluation does."""
    from fedrec.runtime.checkpoint import save_checkpoint
    from fedrec.runtime.experiment import prepare
    from fedrec.serving.recommend import load_run, recommend_for_user
    from fedrec.text import lora_run

    monkeypatch.setenv("FEDREC_CACHE", str(tmp_path / "cache"))
    run_dir = tmp_path / "run"
    config = load_config(None, [*TINY, "train.rounds=2", "lora.compare_frozen=false"])
    metrics = train(config, run_dir)
    exp = prepare(lora_run.tower_config(config))
    tensors, meta = load_checkpoint(run_dir / CHECKPOINT_NAME)

    def no_encoder(*_args, **_kwargs):
        raise AssertionError("the finished run should be served without loading the encoder")

    with monkeypatch.context() as patch:
        patch.setattr(lora_run, "encoder_for", no_encoder)
        saved_run = load_run(run_dir)
    assert saved_run.model_name == "lora_bpr" and saved_run.model.config.item_ids is False  # the text tower
    without_saved = {k: v for k, v in tensors.items() if not k.startswith("served/")}
    assert len(without_saved) == len(tensors) - 2  # the item table and the refitted user vectors (head: shared/)
    save_checkpoint(run_dir / CHECKPOINT_NAME, without_saved, meta)
    reencoded_run = load_run(run_dir)
    for run in (saved_run, reencoded_run):
        # the adapters are in: the served item embeddings are not the frozen encoder's
        assert not torch.allclose(run.params["item_text"], exp.text.embeddings, atol=1e-4)
        assert not torch.equal(run.params["user_vec"], tensors["private/user_vec"])  # refitted, as evaluate() does
        # and the served model is the evaluated one: the same ranking metrics from the served parameters
        served = exp.evaluator(run.params)
        for key in ("hr@5", "ndcg@5", "mrr@5"):
            assert served[key] == pytest.approx(metrics[key], abs=1e-6), key
    for name, value in saved_run.params.items():
        torch.testing.assert_close(reencoded_run.params[name], value, atol=1e-5, rtol=0)
    user = str(reencoded_run.dataset.user_ids[0])
    result = invoke(["recommend", str(run_dir), "--user", user, "-k", "3", "--json"])
    assert [e["item"] for e in json.loads(result.stdout)["items"]] == [
        str(reencoded_run.dataset.item_ids[i]) for i in recommend_for_user(reencoded_run, 0, 3).items]

    without_saved.pop("shared/adapter_w")
    save_checkpoint(run_dir / CHECKPOINT_NAME, without_saved, meta)
    with pytest.raises(FedrecError, match=r"missing shared/adapter_w\); was the dataset or the lora settings changed"):
        load_run(run_dir)


@pytest.mark.parametrize("extra, message", [
    (["train.mode=centralized"], "trains federated only"),
    (["model.text_dim=64"], "set model.text_dim=0"),
    (["model.variant=gmf"], "does not take model.variant"),
    (["model.loss=softmax"], "does not take model.loss"),  # its local steps train with BPR only
    (["privacy.noise_multiplier=1.0", "privacy.delta=1e-5"], "[privacy] settings (privacy.delta) are not supported"),
    (["train.local_epochs=2"], "train.local_epochs does not apply to model 'lora_bpr'"),
    (["eval.finetune_epochs=1"], "eval.finetune_epochs does not apply"),
])
def test_unsupported_settings_are_one_line_errors(extra, message, tmp_path):
    with pytest.raises(FedrecError, match=re.escape(message)):
        train(load_config(None, [*TINY, *extra]), tmp_path / "run")


def test_config_file_is_valid_and_routes_to_lora():
    config = load_config(ROOT / "configs" / "ml100k-lora-fedavg.toml")
    assert config.model.name == "lora_bpr" and config.lora.r == 8 and config.model.cold_start_items == 0.1


@pytest.mark.slow
def test_ml100k_lora_config_short_run(ml100k_dir, tmp_path):
    """Three rounds of the shipped config on ML-100K: metrics, cold-start numbers, bytes <= 1% of the encoder."""
    config = load_config(ROOT / "configs" / "ml100k-lora-fedavg.toml",
                         [f"data.data_dir={json.dumps(str(ml100k_dir))}", "train.rounds=3", "train.eval_every=3"])
    metrics = train(config, tmp_path / "run")
    assert metrics["dataset"] == "ml-100k" and metrics["rounds"] == 3
    assert metrics["upload_ratio"] <= 0.01
    assert metrics["upload_bytes_per_client"] * 8 * 3 == metrics["bytes_up"]
    for key in ("hr@10", "ndcg@10", "cold_ndcg@10", "frozen_ndcg@10", "frozen_cold_ndcg@10"):
        assert 0.0 <= metrics[key] <= 1.0, key
    # text towers rank held-out items far better than chance, with or without LoRA
    assert metrics["cold_ndcg@10"] > 2 * metrics["cold_random_ndcg@10"]
    assert metrics["ndcg@10"] > 0.01
    # the finished run serves the model it evaluated, on real data too
    from fedrec.serving.recommend import load_run, recommend_for_user

    from fedrec.runtime.experiment import prepare
    from fedrec.text.lora_run import tower_config

    run = load_run(tmp_path / "run")
    served = prepare(tower_config(config)).evaluator(run.params)
    assert served["ndcg@10"] == pytest.approx(metrics["ndcg@10"], abs=1e-6)
    top = recommend_for_user(run, 0, 10)
    assert len(set(top.items.tolist())) == 10 and not run.seen[0, top.items].toarray().any()
