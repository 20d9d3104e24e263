"""Privacy with the text models end to end (``fedrec train``): central DP spends exactly the asked epsilon,
local DP reports its own, secure aggregation and dense hiding reach the plain model, and in every case the
frozen text embeddings come out of training bit-identical (never noised, masked or stepped)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from fedrec.config import load_config
from fedrec.runtime.experiment import prepare
from fedrec.runtime.trainer import train

TEXT_MODELS = ("text_bpr", "tower_bpr", "text_mf", "tower_mf")


def tiny(model: str) -> list[str]:
    return ["data.name=synthetic", "data.num_users=30", "data.num_items=24", "data.mean_interactions=8",
            "data.split=leave_last_out", f"model.name={model}", "model.dim=6", "model.text_dim=5",
            "model.text_max_length=12", "model.negatives=2", "train.rounds=3", "train.batch_size=4",
            "train.eval_every=100", "eval.ks=[5]", "eval.sampled_negatives=0"]


@pytest.fixture(autouse=True)
def shared_cache(tmp_path_factory, monkeypatch):
    """One embedding cache for the module: the encoder runs once, then every run reads the cache."""
    monkeypatch.setenv("FEDREC_CACHE", str(tmp_path_factory.getbasetemp() / "text-privacy-cache"))


def quality(metrics: dict) -> float:
    """The run's headline metric: NDCG@5 for the ranking models, RMSE for the rating ones."""
    return metrics["ndcg@5"] if "ndcg@5" in metrics else metrics["rmse"]


def params_of(run: Path) -> dict[str, torch.Tensor]:
    return {k[len("param/"):]: v for k, v in load_file(run / "checkpoint.safetensors").items() if k.startswith("param/")}


def assert_text_untouched(run: Path, overrides: list[str]) -> None:
    start = prepare(load_config(None, overrides)).text
    assert start is not None
    assert torch.equal(params_of(run)["item_text"], start.embeddings.float())


@pytest.mark.parametrize("model", TEXT_MODELS)
def test_central_dp_spends_the_asked_epsilon_and_leaves_the_text_alone(model, tmp_path):
    overrides = [*tiny(model), "privacy.epsilon=8", "privacy.delta=1e-3", "privacy.clip_norm=0.5"]
    metrics = train(load_config(None, overrides), tmp_path / "dp")
    assert 7.9 < metrics["epsilon"] <= 8.0 and metrics["privacy_mode"] == "central"
    assert metrics["noise_multiplier"] > 0.3
    assert 0.0 <= quality(metrics) < 5.0
    assert_text_untouched(tmp_path / "dp", overrides)
    plain = train(load_config(None, tiny(model)), tmp_path / "plain")
    assert "epsilon" not in plain
    assert not torch.allclose(params_of(tmp_path / "dp")["adapter_w"], params_of(tmp_path / "plain")["adapter_w"])


@pytest.mark.parametrize("model", TEXT_MODELS)
def test_local_dp_reports_its_epsilon_and_leaves_the_text_alone(model, tmp_path):
    overrides = [*tiny(model), "privacy.mode=local", "privacy.epsilon=4", "privacy.delta=1e-5", "privacy.clip_norm=0.5"]
    metrics = train(load_config(None, overrides), tmp_path / "ldp")
    assert metrics["local_epsilon"] == 4.0 and metrics["local_epsilon_total"] == 12.0
    assert_text_untouched(tmp_path / "ldp", overrides)


@pytest.mark.parametrize("model", TEXT_MODELS)
@pytest.mark.parametrize("option", [["privacy.secure_aggregation=true"], ["privacy.hiding='dense'"]])
def test_secure_aggregation_and_dense_hiding_reach_the_plain_model(model, option, tmp_path):
    plain = train(load_config(None, tiny(model)), tmp_path / "plain")
    private = train(load_config(None, [*tiny(model), *option]), tmp_path / "private")
    a, b = params_of(tmp_path / "plain"), params_of(tmp_path / "private")
    assert a.keys() == b.keys()
    for name in a:
        torch.testing.assert_close(b[name], a[name], rtol=0, atol=1e-5, msg=lambda m, n=name: f"{n}: {m}")
    assert quality(private) == pytest.approx(quality(plain), abs=1e-5)
    assert_text_untouched(tmp_path / "private", [*tiny(model), *option])
