"""DP runs end to end: epsilon per round in history.jsonl, stop on budget, resume with DP, CLI errors."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file
from typer.testing import CliRunner

from fedrec.cli import app
from fedrec.config import load_config
from fedrec.errors import FedrecError
from fedrec.runtime.checkpoint import CHECKPOINT_NAME
from fedrec.runtime.trainer import train

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_TOML = ROOT / "configs" / "default.toml"
SMALL = ["data.num_users=150", "data.num_items=100", "model.dim=8", "train.eval_every=100"]
DP8 = ["privacy.epsilon=8", "privacy.delta=1e-4"]


def history(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "history.jsonl").read_text().splitlines() if line.strip()]


def test_cli_trains_the_default_with_dp(tmp_path: Path) -> None:
    """`fedrec train configs/default.toml --set privacy.epsilon=8 --set privacy.delta=1e-4` (made smaller)."""
    out = tmp_path / "run"
    args = ["train", str(DEFAULT_TOML), "--out", str(out), "--quiet"]
    for assignment in [*SMALL, "train.rounds=3", "train.batch_size=32", *DP8]:
        args += ["--set", assignment]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    lines = history(out)
    assert [line["round"] for line in lines] == [1, 2, 3]
    spent = [line["epsilon"] for line in lines]
    assert all(0 < a < b for a, b in zip(spent, spent[1:]))  # grows every round
    assert spent[-1] <= 8.0 and spent[-1] > 7.9  # the noise was calibrated to exactly these 3 rounds
    assert all(line["epsilon_pld"] <= line["epsilon"] for line in lines)
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["epsilon"] == spent[-1] and metrics["delta"] == 1e-4 and metrics["rounds"] == 3
    assert metrics["noise_multiplier"] > 1.0 and metrics["privacy_mode"] == "central"
    assert 0.5 < metrics["rmse"] < 1.5


def test_stops_cleanly_when_the_budget_would_be_exceeded(tmp_path: Path, capfd) -> None:
    out = tmp_path / "run"
    first = train(load_config(None, [*SMALL, "train.rounds=3", *DP8]), out)
    assert first["rounds"] == 3 and first["epsilon"] <= 8.0
    # the same run resumed with more rounds: its noise was calibrated to 3 rounds, so round 4 would overspend
    metrics = train(load_config(None, [*SMALL, "train.rounds=6", *DP8]), out, resume=True)
    assert "privacy budget reached" in capfd.readouterr().err
    assert metrics["rounds"] == 3 and metrics["epsilon"] == first["epsilon"]
    assert "round 4 would spend epsilon" in metrics["stopped"]
    assert json.loads((out / "metrics.json").read_text())["rounds"] == 3
    assert [line["round"] for line in history(out)] == [1, 2, 3]
    with safe_open(str(out / CHECKPOINT_NAME), framework="pt") as handle:
        assert json.loads(handle.metadata()["fedrec"])["round"] == 3


def test_resume_with_dp_equals_an_uninterrupted_run(tmp_path: Path) -> None:
    """Poisson cohorts, noise and the adaptive clip norm all come back from (seed, round) and the checkpoint."""
    settings = [*SMALL, "train.rounds=4", "train.client_fraction=0.5", "train.server_optimizer=adam",
                "train.server_lr=0.05", "privacy.noise_multiplier=1.0", "privacy.delta=1e-4", "privacy.adaptive_clip=true",
                "privacy.clip_norm=0.2", "privacy.clip_count_stddev=5.0"]
    config = load_config(None, settings)
    straight = train(config, tmp_path / "straight")

    def stop_after_two(record: dict) -> None:
        if record["round"] == 2:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train(config, tmp_path / "resumed", on_round=stop_after_two)
    resumed = train(config, tmp_path / "resumed", resume=True)
    a, b = load_file(str(tmp_path / "straight" / CHECKPOINT_NAME)), load_file(str(tmp_path / "resumed" / CHECKPOINT_NAME))
    assert sorted(a) == sorted(b) and "privacy/clip_norm" in a
    for key in a:
        torch.testing.assert_close(b[key], a[key], atol=1e-6, rtol=0)
    assert float(a["privacy/clip_norm"]) != 0.2
    assert resumed["rmse"] == pytest.approx(straight["rmse"], abs=1e-6)
    assert resumed["epsilon"] == straight["epsilon"]
    assert [line["clip_norm"] for line in history(tmp_path / "resumed")] == [line["clip_norm"] for line in history(tmp_path / "straight")]
    clients = [line["clients"] for line in history(tmp_path / "straight")]
    assert len(set(clients)) > 1  # Poisson sampling: the cohort size varies


def test_local_dp_reports_its_per_round_epsilon(tmp_path: Path) -> None:
    metrics = train(load_config(None, [*SMALL, "train.rounds=2", "privacy.mode=local", "privacy.epsilon=4",
                                       "privacy.delta=1e-5", "privacy.clip_norm=0.5"]), tmp_path / "run")
    assert metrics["local_epsilon"] == 4.0 and metrics["local_epsilon_total"] == 8.0
    assert metrics["local_noise_stddev"] > 0 and "epsilon" not in metrics
    assert all(line["local_epsilon"] == 4.0 for line in history(tmp_path / "run"))


def test_without_privacy_nothing_changes(tmp_path: Path) -> None:
    plain = train(load_config(None, [*SMALL, "train.rounds=1"]), tmp_path / "plain")
    assert "epsilon" not in plain and "privacy_mode" not in plain
    switched_off = train(load_config(None, [*SMALL, "train.rounds=1", *DP8, "privacy.mode=off"]), tmp_path / "off")
    assert switched_off["rmse"] == plain["rmse"] and "epsilon" not in switched_off


@pytest.mark.parametrize(("overrides", "message"), [
    (["privacy.epsilon=8"], "privacy.epsilon needs privacy.delta"),
    (["privacy.epsilon=8", "privacy.delta=1e-4", "privacy.noise_multiplier=1.0"], "either privacy.epsilon"),
    (["privacy.epsilon=8", "privacy.delta=1e-4", "train.mode=centralized"], "needs train.mode = 'federated'"),
    (["privacy.noise_multiplier=3.0", "privacy.delta=1e-4", "privacy.adaptive_clip=true", "privacy.clip_count_stddev=1.0"],
     "clip_count_stddev"),
    (["privacy.epsilon=0"], "privacy.epsilon=0"),
    (["privacy.noise_multiplier=1e-6", "privacy.delta=1e-4"], "privacy.noise_multiplier=1e-06: Input should be greater than or equal to 0.05"),
    (["privacy.epsilon=1e6", "privacy.delta=1e-4"], "is below 0.05: epsilon would be in the hundreds"),
])
def test_bad_privacy_settings_are_one_line_errors(tmp_path: Path, overrides: list[str], message: str) -> None:
    with pytest.raises(FedrecError, match=message.replace("(", r"\(").replace(".", r"\.")):
        train(load_config(None, [*SMALL, *overrides]), tmp_path / "run")


def test_cli_prints_the_error_line(tmp_path: Path) -> None:
    result = subprocess.run([sys.executable, "-m", "fedrec.cli", "train", str(DEFAULT_TOML), "--out", str(tmp_path / "x"),
                             "--set", "privacy.epsilon=8"], capture_output=True, text=True, timeout=120)
    assert result.returncode == 2
    assert result.stderr.strip() == "error: privacy.epsilon needs privacy.delta (e.g. --set privacy.delta=1e-4)"


@pytest.mark.slow
def test_full_default_with_dp(tmp_path: Path) -> None:
    """The synthetic default exactly as documented, with DP at epsilon 8: every round within budget."""
    metrics = train(load_config(DEFAULT_TOML, DP8), tmp_path / "run")
    assert all(line["epsilon"] <= 8.0 for line in history(tmp_path / "run"))
    assert metrics["rounds"] == 20 and metrics["rmse"] < 1.0
