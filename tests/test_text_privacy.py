"""Privacy with the text models end to end (``fedrec train``): central DP spends exactly the asked epsilon,
local DP reports its own (and both really add noise), secure aggregation reaches the plain model, and in every
case the frozen text embeddings come out of training bit-identical (never noised, masked or stepped). Item hiding
is refused: the adapter update is a function of the client's items' public text, so hiding rows hides nothing."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from fedrec.config import load_config
from fedrec.errors import FedrecError
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
    # the same clipping and Poisson cohorts with a sixth of the noise or less: what is left is mostly the noise itself
    quiet = [*tiny(model), "privacy.noise_multiplier=0.1", "privacy.delta=1e-3", "privacy.clip_norm=0.5"]
    train(load_config(None, quiet), tmp_path / "quiet")
    assert_noised(tmp_path / "dp", tmp_path / "quiet", metrics["noise_multiplier"] * 0.5 / 30)


def assert_noised(noised: Path, quiet: Path, stddev: float) -> None:
    """Every trained shared tensor of 8+ values moved away from the quiet run's by about the noise (max > a tenth
    of its stddev; a single value, e.g. the global bias, can draw a small number by chance)."""
    a, b = params_of(noised), params_of(quiet)
    shared = [name for name in a if name.startswith(("adapter_", "item_vec", "item_bias", "global_bias"))
              and a[name].numel() >= 8]
    assert shared
    for name in shared:
        assert (a[name] - b[name]).abs().max() > 0.1 * stddev, name


@pytest.mark.parametrize("model", TEXT_MODELS)
def test_local_dp_reports_its_epsilon_and_leaves_the_text_alone(model, tmp_path):
    overrides = [*tiny(model), "privacy.mode=local", "privacy.epsilon=4", "privacy.delta=1e-5", "privacy.clip_norm=0.5"]
    metrics = train(load_config(None, overrides), tmp_path / "ldp")
    assert metrics["local_epsilon"] == 4.0 and metrics["local_epsilon_total"] == 12.0
    assert_text_untouched(tmp_path / "ldp", overrides)
    quiet = [*tiny(model), "privacy.mode=local", "privacy.epsilon=1e9", "privacy.delta=1e-5", "privacy.clip_norm=0.5"]
    train(load_config(None, quiet), tmp_path / "quiet")
    assert_noised(tmp_path / "ldp", tmp_path / "quiet", metrics["local_noise_stddev"] / 30)


@pytest.mark.parametrize("model", TEXT_MODELS)
def test_secure_aggregation_reaches_the_plain_model(model, tmp_path):
    option = ["privacy.secure_aggregation=true"]
    plain = train(load_config(None, tiny(model)), tmp_path / "plain")
    private = train(load_config(None, [*tiny(model), *option]), tmp_path / "private")
    a, b = params_of(tmp_path / "plain"), params_of(tmp_path / "private")
    assert a.keys() == b.keys()
    for name in a:
        torch.testing.assert_close(b[name], a[name], rtol=0, atol=1e-5, msg=lambda m, n=name: f"{n}: {m}")
    assert quality(private) == pytest.approx(quality(plain), abs=1e-5)
    rounds = [json.loads(line) for line in (tmp_path / "private" / "history.jsonl").read_text().splitlines()]
    assert len(rounds) == 3 and all(r["secagg_seconds"] > 0 for r in rounds)  # the protocol really ran
    assert_text_untouched(tmp_path / "private", [*tiny(model), *option])


@pytest.mark.parametrize("model", TEXT_MODELS)
def test_item_hiding_is_refused_because_the_adapter_update_reveals_the_items(model):
    with pytest.raises(FedrecError, match="adapter update is computed from the public text"):
        load_config(None, [*tiny(model), "privacy.hiding='dense'"])
