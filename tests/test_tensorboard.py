"""Optional TensorBoard logging: the records of a real (tiny) run become scalars with the expected tags."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from fedrec.config import load_config
from fedrec.errors import FedrecError
from fedrec.report.tensorboard import INSTALL_HINT, TensorBoardLogger, scalar_tag, scalars

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_TOML = ROOT / "configs" / "default.toml"
TINY = ["data.num_users=100", "data.num_items=80", "train.rounds=2", "model.dim=4"]


def test_scalar_tags():
    assert [scalar_tag(k) for k in ("val_rmse", "rmse", "ndcg@10", "val_ndcg@10", "train_loss", "bytes_up",
                                    "epsilon", "seconds", "clients")] == [
        "val/rmse", "test/rmse", "test/ndcg@10", "val/ndcg@10", "train/loss", "communication/bytes_up",
        "privacy/epsilon", "time/seconds", "train/clients"]
    record = {"round": 3, "rmse": 0.9, "bytes_up": 10, "flag": True, "bad": float("nan"), "name": "x"}
    assert scalars(record) == {"test/rmse": 0.9, "communication/bytes_up": 10.0}


def test_missing_tensorboard_is_one_clear_error(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)  # import now raises ImportError
    with pytest.raises(FedrecError, match="pip install tensorboard") as error:
        TensorBoardLogger(tmp_path / "tb")
    assert str(error.value) == INSTALL_HINT and "\n" not in INSTALL_HINT


def test_training_writes_round_scalars(tmp_path):
    pytest.importorskip("tensorboard", reason="tensorboard is not installed (optional): pip install tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from fedrec.runtime.trainer import train

    records = []
    log_dir = tmp_path / "tb"
    with TensorBoardLogger(log_dir) as logger:
        def on_round(record):
            records.append(record)
            logger(record)

        train(load_config(DEFAULT_TOML, TINY), tmp_path / "run", on_round=on_round)
    events = EventAccumulator(str(log_dir))
    events.Reload()
    tags = set(events.Tags()["scalars"])
    assert {"train/loss", "val/rmse", "val/mae", "test/rmse", "test/mae", "communication/bytes_up",
            "communication/bytes_down", "train/clients", "time/seconds"} == tags
    for tag in tags:
        written = [(event.step, event.value) for event in events.Scalars(tag)]
        key = next(k for k in records[0] if scalar_tag(k) == tag)
        assert written == [(r["round"], pytest.approx(float(r[key]), rel=1e-6)) for r in records], tag
    assert [event.step for event in events.Scalars("test/rmse")] == [1, 2]


def test_cli_train_tensorboard_flag_logs_every_round(tmp_path):
    pytest.importorskip("tensorboard", reason="tensorboard is not installed (optional): pip install tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from typer.testing import CliRunner

    from fedrec.cli import app

    args = ["train", str(DEFAULT_TOML), "--out", str(tmp_path / "run"), "--tensorboard", str(tmp_path / "tb"), "--quiet"]
    for override in TINY:
        args += ["--set", override]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    events = EventAccumulator(str(tmp_path / "tb"))
    events.Reload()
    assert [event.step for event in events.Scalars("train/loss")] == [1, 2]
