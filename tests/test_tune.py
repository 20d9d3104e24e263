"""``fedrec tune``: Optuna search over a small synthetic config, scored on validation metrics only."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from fedrec.errors import FedrecError
from fedrec.tuning import ParamRange, parse_param, tune

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_TOML = ROOT / "configs" / "default.toml"
SMALL = ["data.num_users=60", "data.num_items=50", "data.mean_interactions=15", "train.rounds=1", "model.dim=4"]


def test_parse_param():
    assert parse_param("train.local_lr=0.001:0.5:log") == ParamRange("train.local_lr", 0.001, 0.5, log=True)
    assert parse_param("train.local_epochs=1:4:int") == ParamRange("train.local_epochs", 1, 4, integer=True)
    for bad in ("train.local_lr", "local_lr=0:1", "train.local_lr=1:0", "train.local_lr=0:1:log", "train.x=a:b",
                "train.local_lr=0.1:1:cubic"):
        with pytest.raises(FedrecError):
            parse_param(bad)


def test_tune_scores_trials_on_validation_only(tmp_path):
    space = [parse_param("train.local_lr=0.01:0.3:log"), parse_param("train.local_epochs=1:2:int")]
    summary = tune(DEFAULT_TOML, SMALL + ["data.validation_ratio=0"], 3, tmp_path / "t", space, seed=1)
    assert summary["metric"] == "val_rmse" and summary["direction"] == "minimize"
    assert "data.validation_ratio=0.1" in summary["base_overrides"]  # carved from train, test untouched
    assert len(summary["trials"]) == 3
    for record in summary["trials"]:
        metrics = json.loads((Path(record["run"]) / "metrics.json").read_text())
        assert record["val_rmse"] == metrics["val_rmse"] != metrics["rmse"]  # the validation number, not test
        config = json.loads((Path(record["run"]) / "config.json").read_text())
        assert config["train"]["local_epochs"] == record["params"]["train.local_epochs"]
        assert config["data"]["validation_ratio"] == 0.1
    assert summary["best_value"] == min(r["val_rmse"] for r in summary["trials"])
    assert json.loads((tmp_path / "t" / "tuning.json").read_text())["best_params"] == summary["best_params"]
    with pytest.raises(FedrecError, match="already holds a tuning run"):
        tune(DEFAULT_TOML, SMALL, 1, tmp_path / "t", space)
    with pytest.raises(FedrecError, match="not a validation metric"):
        tune(DEFAULT_TOML, SMALL, 1, tmp_path / "u", space, metric="rmse")
    with pytest.raises(FedrecError, match="classification config"):
        tune(ROOT / "configs" / "digits-mlp-fedavg.toml", [], 1, tmp_path / "w", space)
    with pytest.raises(FedrecError, match="unknown config key 'train.local_rate'"):
        tune(DEFAULT_TOML, SMALL, 1, tmp_path / "v", [parse_param("train.local_rate=0.1:0.2")])


def test_tune_cli(tmp_path):
    from fedrec.cli import app

    sets = [arg for s in SMALL for arg in ("--set", s)]
    result = CliRunner().invoke(app, ["tune", str(DEFAULT_TOML), "--trials", "2", "--param", "train.local_lr=0.01:0.2:log",
                                      "--out", str(tmp_path / "cli"), *sets])
    assert result.exit_code == 0, result.output
    assert "best val_rmse=" in result.output and "--set train.local_lr=" in result.output
    assert (tmp_path / "cli" / "tuning.json").is_file()


def test_tune_refuses_the_final_fit_on_validation(tmp_path):
    with pytest.raises(FedrecError, match="data.train_on_validation trains on it"):
        tune(DEFAULT_TOML, SMALL + ["data.split=leave_last_out", "data.train_on_validation=true"], 1, tmp_path / "t")
    assert not (tmp_path / "t").exists()  # refused before any trial


def test_tune_chooses_fine_tuning_on_the_fine_tuned_validation_metric(tmp_path):
    space = [parse_param("eval.mix_beta=0.0:1.0")]
    summary = tune(DEFAULT_TOML, SMALL + ["eval.finetune_epochs=1"], 2, tmp_path / "t", space,
                   metric="finetuned_val_rmse", seed=0)
    assert summary["metric"] == "finetuned_val_rmse" and summary["direction"] == "minimize"
    for record in summary["trials"]:
        metrics = json.loads((Path(record["run"]) / "metrics.json").read_text())
        assert record["finetuned_val_rmse"] == metrics["finetuned_val_rmse"] != metrics["finetuned_rmse"]
