"""Read run folders and derive what a report shows: per-round series, fed-vs-central groups, the final table.

Everything here is a pure function of the files ``fedrec train`` writes (``config.json``,
``history.jsonl``, ``metrics.json``); nothing draws or writes.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass
from itertools import accumulate
from pathlib import Path
from typing import Any, Literal

from fedrec.errors import FedrecError

RUN_HINT = "pass a folder written by `fedrec train --out DIR`"
# settings that say where the data live, not what they are: runs differing only here are comparable
_LOCATION_KEYS = ("data_dir", "download")


@dataclass(frozen=True)
class Run:
    """One run folder as read from disk; ``metrics`` is None while the run is unfinished."""

    path: Path
    label: str
    config: dict[str, Any]
    history: list[dict[str, Any]]
    metrics: dict[str, Any] | None

    @property
    def finished(self) -> bool:
        return self.metrics is not None

    @property
    def mode(self) -> str:
        return str(self.config.get("train", {}).get("mode", "federated"))

    @property
    def federated(self) -> bool:
        return self.mode == "federated"

    @property
    def planned_rounds(self) -> int | None:
        rounds = self.config.get("train", {}).get("rounds")
        return int(rounds) if isinstance(rounds, int) else None

    @property
    def rounds_done(self) -> int:
        return int(self.history[-1]["round"])

    @property
    def dataset(self) -> str:
        if self.metrics and "dataset" in self.metrics:
            return str(self.metrics["dataset"])
        return str(self.config.get("data", {}).get("name", "?"))

    @property
    def model(self) -> str:
        model = self.config.get("model", {})
        name = str(model.get("name", "?"))
        return f"{name} ({model['variant']})" if model.get("variant") else name

    @property
    def status(self) -> str:
        if self.finished:
            return "finished"
        planned = f" of {self.planned_rounds}" if self.planned_rounds else ""
        return f"unfinished: {self.rounds_done}{planned} rounds"

    def final(self) -> dict[str, Any]:
        """metrics.json, or for an unfinished run the latest value of each key in its history."""
        if self.metrics is not None:
            return dict(self.metrics)
        latest: dict[str, Any] = {}
        for record in self.history:
            latest.update(record)
        latest.pop("round", None)
        latest.pop("clients", None)  # per round: the sampled cohort, not the number of clients metrics.json reports
        # per-round traffic adds up; the trainer's seconds are already cumulative
        for key in ("bytes_up", "bytes_down"):
            if any(key in record for record in self.history):
                latest[key] = sum(int(record.get(key, 0)) for record in self.history)
        latest["rounds"] = self.rounds_done
        latest["mode"] = self.mode
        return latest


def _read_json(path: Path, what: str) -> Any:
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as error:
        raise FedrecError(f"{path} is not valid JSON ({error.msg} at line {error.lineno}); "
                          f"the {what} is damaged: re-run the training or remove the folder from the report") from None
    except OSError as error:
        raise FedrecError(f"cannot read {path} ({error.strerror}); check its permissions") from None


def read_history(path: Path) -> list[dict[str, Any]]:
    """The records of history.jsonl, in order; a one-line error when the file is empty or damaged."""
    try:
        lines = path.read_text().splitlines()
    except OSError as error:
        raise FedrecError(f"cannot read {path} ({error.strerror}); check its permissions") from None
    records: list[dict[str, Any]] = []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            raise FedrecError(f"{path} line {number} is not valid JSON; the history is damaged: "
                              "re-run the training or remove the folder from the report") from None
        if not isinstance(record, dict) or not isinstance(record.get("round"), int):
            raise FedrecError(f"{path} line {number} has no round number; {RUN_HINT}")
        records.append(record)
    if not records:
        raise FedrecError(f"{path} is empty: the run has not finished a round yet; "
                          "train it for at least one round before reporting on it")
    return records


def load_run(path: Path, label: str | None = None) -> Run:
    """Read one run folder; a one-line FedrecError when it is not one."""
    if not path.exists():
        raise FedrecError(f"run folder {path} does not exist; {RUN_HINT}")
    if not path.is_dir():
        raise FedrecError(f"{path} is not a folder; {RUN_HINT}")
    history_path = path / "history.jsonl"
    if not history_path.is_file():
        raise FedrecError(f"{path} is not a fedrec run folder (no history.jsonl); {RUN_HINT}")
    config_path = path / "config.json"
    if not config_path.is_file():
        raise FedrecError(f"{path} has no config.json, so it is not a complete fedrec run folder; {RUN_HINT}")
    config = _read_json(config_path, "run's config")
    if not isinstance(config, dict):
        raise FedrecError(f"{config_path} does not hold a config object; {RUN_HINT}")
    history = read_history(history_path)
    metrics_path = path / "metrics.json"
    metrics = _read_json(metrics_path, "run's final metrics file") if metrics_path.is_file() else None
    if metrics is not None and not isinstance(metrics, dict):
        raise FedrecError(f"{metrics_path} does not hold a metrics object; re-run the training")
    return Run(path, label or path.resolve().name, config, history, metrics)


def load_runs(paths: Sequence[Path]) -> list[Run]:
    """Read several run folders (each once), labelled by folder name, or by path where names clash."""
    if not paths:
        raise FedrecError(f"no run folder given; {RUN_HINT}")
    unique: list[Path] = []
    for path in paths:
        if all(path.resolve() != seen.resolve() for seen in unique):
            unique.append(path)
    names = [path.resolve().name for path in unique]
    return [load_run(path, name if names.count(name) == 1 else str(path)) for path, name in zip(unique, names)]


# -- series --------------------------------------------------------------------------------------------


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def series(history: Sequence[dict[str, Any]], key: str) -> tuple[list[int], list[float]]:
    """(rounds, values) of the records that hold a finite number under ``key``."""
    points = [(int(record["round"]), float(record[key])) for record in history if _is_number(record.get(key))]
    return [r for r, _ in points], [v for _, v in points]


def cumulative(values: Sequence[float]) -> list[float]:
    """Running totals: [a, a+b, a+b+c, ...]."""
    return list(accumulate(values))


def has_key(history: Sequence[dict[str, Any]], key: str) -> bool:
    return any(_is_number(record.get(key)) for record in history)


_RANKING_KEY = re.compile(r"^(ndcg|hr)@(\d+)$")


def headline_k(keys: Sequence[str]) -> int | None:
    """The K of the ranking metrics a report leads with: 10 when present, else the smallest."""
    ks = sorted({int(match.group(2)) for key in keys if (match := _RANKING_KEY.match(key))})
    if not ks:
        return None
    return 10 if 10 in ks else ks[0]


def headline_metrics(run: Run) -> list[str]:
    """Test metrics plotted per round: rmse and mae for rating runs, ndcg@K and hr@K for ranking runs."""
    keys = {key for record in run.history for key in record} | set(run.metrics or {})
    if "rmse" in keys:
        return [key for key in ("rmse", "mae") if has_key(run.history, key)]
    k = headline_k(sorted(keys))
    if k is None:
        return []
    return [key for key in (f"ndcg@{k}", f"hr@{k}") if has_key(run.history, key)]


# -- federated vs centralised --------------------------------------------------------------------------


def _comparable_setting(run: Run) -> str:
    data = {k: v for k, v in run.config.get("data", {}).items() if k not in _LOCATION_KEYS}
    return json.dumps({"data": data, "model": run.config.get("model", {})}, sort_keys=True)


def mode_groups(runs: Sequence[Run]) -> list[list[Run]]:
    """Runs on the same data and model (same config sections) that differ in train.mode, in input order."""
    groups: dict[str, list[Run]] = {}
    for run in runs:
        groups.setdefault(_comparable_setting(run), []).append(run)
    return [group for group in groups.values() if len({run.mode for run in group}) > 1]


# -- comparison table ----------------------------------------------------------------------------------

Better = Literal["lower", "higher"] | None


@dataclass(frozen=True)
class Column:
    key: str
    better: Better  # None: no best is marked (a baseline, or a setting rather than a result)
    federated_only: bool = False  # best among federated runs only (centralised runs send no updates)


@dataclass(frozen=True)
class Table:
    """Final metrics, one row per run; ``best[c]`` holds the row indices with the best value of column c."""

    columns: list[Column]
    rows: list[list[float | int | None]]
    best: list[set[int]]


def table_columns(runs: Sequence[Run]) -> list[Column]:
    """The columns present in at least one run, in a fixed order: quality, privacy, cost."""
    finals = [run.final() for run in runs]
    keys = {key for final in finals for key, value in final.items() if _is_number(value)}
    k = headline_k(sorted(keys)) or 10
    candidates = [
        Column("rmse", "lower"), Column("mae", "lower"), Column("finetuned_rmse", "lower"),
        Column("finetuned_mae", "lower"),
        *(Column(f"{name}@{k}", "higher") for name in ("hr", "ndcg", "recall", "mrr")), Column("auc", "higher"),
        Column(f"coverage@{k}", "higher"), Column(f"sampled_hr@{k}", "higher"), Column(f"sampled_ndcg@{k}", "higher"),
        Column(f"finetuned_hr@{k}", "higher"), Column(f"finetuned_ndcg@{k}", "higher"),
        Column(f"popularity_hr@{k}", None), Column(f"popularity_ndcg@{k}", None),
        Column("epsilon", "lower"), Column("delta", None),
        Column("rounds", None), Column("seconds", "lower"),
        Column("bytes_up", "lower", federated_only=True), Column("bytes_down", "lower", federated_only=True),
    ]
    return [column for column in candidates if column.key in keys]


def _best_rows(values: list[float | int | None], eligible: list[bool], better: Better) -> set[int]:
    candidates = [(i, v) for i, v in enumerate(values) if v is not None and eligible[i]]
    if better is None or len(candidates) < 2:
        return set()
    pick = min if better == "lower" else max
    target = pick(v for _, v in candidates)
    return {i for i, v in candidates if v == target}


def comparison_table(runs: Sequence[Run]) -> Table:
    """Final metrics of every run, the best per column marked among finished runs (only when 2+ compete)."""
    columns = table_columns(runs)
    finals = [run.final() for run in runs]
    rows = [[final[c.key] if _is_number(final.get(c.key)) else None for c in columns] for final in finals]
    best = []
    for index, column in enumerate(columns):
        eligible = [run.finished and (run.federated or not column.federated_only) for run in runs]
        best.append(_best_rows([row[index] for row in rows], eligible, column.better))
    return Table(columns, rows, best)
