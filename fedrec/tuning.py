"""Hyperparameter search for ``fedrec train`` configs with Optuna (TPE), on validation metrics only.

Every trial is a full ``fedrec train`` run of the config with the trial's values as ``--set``
overrides. Trials are scored on a ``val_*`` metric of the final model (validation interactions
carved from the training data with ``data.validation_ratio``, or the second-to-last interaction of
each user under ``leave_last_out`` / ``leave_one_out``); test metrics never enter the search.
Outputs in ``--out``: one run folder per trial (``trial-000``...) and ``tuning.json`` with every
trial, the best values and the ``--set`` line that reproduces the best run.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Optional

import typer

from fedrec.errors import FedrecError

#: searched when no --param is given: the knobs that matter most for every federated model
DEFAULT_SPACE = ("train.local_lr=0.005:0.5:log", "train.server_lr=0.3:3.0:log", "train.local_epochs=1:3:int")


@dataclass(frozen=True)
class ParamRange:
    """One searched setting: ``key`` in [low, high], sampled on a log scale or as an integer."""

    key: str
    low: float
    high: float
    log: bool = False
    integer: bool = False


def parse_param(spec: str) -> ParamRange:
    """``section.key=low:high[:log|:int|:int:log]`` -> ParamRange."""
    if "=" not in spec:
        raise FedrecError(f"--param expects section.key=low:high[:log|int] (e.g. train.local_lr=0.001:0.5:log), got '{spec}'")
    key, text = (part.strip() for part in spec.split("=", 1))
    parts = text.split(":")
    flags = set(parts[2:])
    if len(key.split(".")) != 2 or len(parts) < 2 or not flags <= {"log", "int"}:
        raise FedrecError(f"--param expects section.key=low:high[:log|int] (e.g. train.local_lr=0.001:0.5:log), got '{spec}'")
    try:
        low, high = float(parts[0]), float(parts[1])
    except ValueError:
        raise FedrecError(f"--param {key}: bounds {parts[0]!r}, {parts[1]!r} must be numbers") from None
    if not low < high or ("log" in flags and low <= 0):
        raise FedrecError(f"--param {key}: need low < high (and low > 0 with log), got {low}:{high}")
    return ParamRange(key, low, high, "log" in flags, "int" in flags)


def default_metric(model_name: str) -> tuple[str, str]:
    """(metric, direction): val_rmse for rating models, val_ndcg@10 for ranking models."""
    from fedrec.models.registry import IMPLICIT_MODELS

    return ("val_ndcg@10", "maximize") if model_name in IMPLICIT_MODELS else ("val_rmse", "minimize")


def _suggest(trial: Any, space: list[ParamRange]) -> dict[str, float | int]:
    values: dict[str, float | int] = {}
    for p in space:
        if p.integer:
            values[p.key] = trial.suggest_int(p.key, int(math.ceil(p.low)), int(math.floor(p.high)), log=p.log)
        else:
            values[p.key] = trial.suggest_float(p.key, p.low, p.high, log=p.log)
    return values


def tune(config_path: Path, overrides: list[str], trials: int, out_dir: Path, space: list[ParamRange] | None = None,
         metric: str | None = None, seed: int = 0, on_trial: Any = None) -> dict[str, Any]:
    """Search the space for the best validation metric; writes and returns the tuning summary."""
    import optuna

    from fedrec.config import load_config
    from fedrec.runtime.trainer import train

    if trials < 1:
        raise FedrecError(f"--trials must be at least 1, got {trials}")
    from fedrec.generic import is_classification_config

    if is_classification_config(config_path):
        raise FedrecError(f"{config_path} is a classification config; fedrec tune searches recommender configs only")
    overrides = list(overrides)
    base = load_config(config_path, overrides)
    if base.train.mode != "federated" and any(p.key in ("train.local_lr", "train.server_lr", "train.local_epochs")
                                              for p in (space or [])):
        raise FedrecError("the searched keys are federated settings but train.mode is centralized; choose --param keys")
    if base.data.train_on_validation:
        raise FedrecError("fedrec tune scores trials on validation, but data.train_on_validation trains on it; "
                          "tune without it, then set it for the final fit")
    if base.data.split in ("official", "ratio") and base.data.validation_ratio == 0:
        overrides.append("data.validation_ratio=0.1")  # tune on validation data, never on test
    space = space or [parse_param(spec) for spec in DEFAULT_SPACE]
    for p in space:
        load_config(config_path, overrides + [f"{p.key}={p.low if not p.integer else int(p.low)}"])  # key exists, low valid
    chosen_metric, direction = default_metric(base.model.name)
    if metric is not None:
        if not metric.startswith(("val_", "finetuned_val_")):
            raise FedrecError(f"--metric {metric} is not a validation metric; tune on val_* metrics (e.g. val_rmse) "
                              "or finetuned_val_* (with eval.finetune_epochs)")
        chosen_metric = metric
        direction = "minimize" if metric.removeprefix("finetuned_") in ("val_rmse", "val_mae") else "maximize"
    if (out_dir / "trial-000").exists() or (out_dir / "tuning.json").exists():
        raise FedrecError(f"{out_dir} already holds a tuning run; choose another --out")
    out_dir.mkdir(parents=True, exist_ok=True)
    records: list[dict[str, Any]] = []

    def objective(trial: Any) -> float:
        values = _suggest(trial, space)
        assignments = [f"{k}={v}" for k, v in values.items()]
        config = load_config(config_path, overrides + assignments)
        run_dir = out_dir / f"trial-{trial.number:03d}"
        metrics = train(config, run_dir)
        if chosen_metric not in metrics:
            available = ", ".join(sorted(k for k in metrics if k.startswith(("val_", "finetuned_val_")))) or "none"
            raise FedrecError(f"the runs report no {chosen_metric}; choose --metric from: {available}")
        value = float(metrics[chosen_metric])
        record = {"trial": trial.number, "params": values, chosen_metric: value, "run": str(run_dir)}
        records.append(record)
        if on_trial is not None:
            on_trial(record)
        return value

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(direction=direction, sampler=optuna.samplers.TPESampler(seed=seed))
    study.optimize(objective, n_trials=trials)
    best = study.best_trial
    summary = {
        "metric": chosen_metric,
        "direction": direction,
        "best_value": best.value,
        "best_params": best.params,
        "best_trial": best.number,
        "best_overrides": " ".join(f"--set {k}={v}" for k, v in best.params.items()),
        "base_overrides": overrides,
        "trials": records,
    }
    (out_dir / "tuning.json").write_text(json.dumps(summary, indent=2) + "\n")
    return summary


def register(app: typer.Typer) -> None:
    """Add ``fedrec tune`` to the CLI."""

    @app.command("tune")
    def tune_command(
        config: Annotated[Path, typer.Argument(help="TOML config file (see configs/).")],
        trials: Annotated[int, typer.Option("--trials", help="Number of training runs to try.")] = 20,
        param: Annotated[Optional[list[str]], typer.Option("--param", help="Search section.key=low:high[:log|int] (repeatable); default: local_lr, server_lr, local_epochs.")] = None,
        metric: Annotated[Optional[str], typer.Option("--metric", help="Validation metric to optimise (default val_rmse or val_ndcg@10; finetuned_val_* with eval.finetune_epochs).")] = None,
        set_: Annotated[Optional[list[str]], typer.Option("--set", help="Fixed override: section.key=value (repeatable).")] = None,
        out_dir: Annotated[Path, typer.Option("--out", help="Folder for the trial runs and tuning.json.")] = Path("runs/tune"),
        data_dir: Annotated[Optional[Path], typer.Option("--data-dir", help="Folder with the dataset (or its parent).")] = None,
        seed: Annotated[int, typer.Option("--seed", help="Seed of the search (TPE sampler).")] = 0,
    ) -> None:
        """Search hyperparameters with Optuna on validation metrics only; writes --out/tuning.json."""
        from rich.console import Console

        overrides = list(set_ or []) + ([f"data.data_dir={json.dumps(str(data_dir))}"] if data_dir else [])
        space = [parse_param(spec) for spec in param] if param else None
        console, out = Console(stderr=True), Console()

        def on_trial(record: dict[str, Any]) -> None:
            shown = " ".join(f"{k}={v:.4g}" for k, v in record["params"].items())
            value = next(v for k, v in record.items() if k.startswith("val_"))
            console.print(f"trial {record['trial']}: {shown} -> {value:.4f}", highlight=False)

        summary = tune(config, overrides, trials, out_dir, space, metric, seed, on_trial)
        out.print(f"best {summary['metric']}={summary['best_value']:.4f} (trial {summary['best_trial']}): "
                  f"{summary['best_overrides']}", soft_wrap=True, highlight=False)
        out.print(f"outputs: {out_dir}/tuning.json, {out_dir}/trial-*/", soft_wrap=True, highlight=False)
