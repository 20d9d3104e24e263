"""``fedrec train`` for classification configs (``[task] kind = "classification"``).

The same outputs as the recommender runs, in the run directory, each written atomically:
``config.json``, ``history.jsonl`` (one line per round), ``checkpoint.safetensors`` (global
parameters, server-optimiser state and, with mixing, each client's local model) and
``metrics.json`` (``accuracy``, ``loss``, ``majority_accuracy``, and ``personal_accuracy`` with
``train.mixing_beta``). ``--resume`` continues from the checkpoint to the same model an
uninterrupted run reaches (randomness is a pure function of (seed, round)).
"""

from __future__ import annotations

import difflib
import json
import time
import tomllib
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

import torch
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator
from torch import Tensor, nn

from fedrec.config import parse_override
from fedrec.errors import FedrecError
from fedrec.federated.server_opt import ServerOptimizer
from fedrec.generic.data import ClassificationTask, digits_arrays, majority_baseline, ml100k_genre_task, mnist_arrays, partition_task
from fedrec.generic.federated import (GenericSettings, GenericState, LocalSGD, classification_metrics, model_params,
                                      personalised_accuracy, run_generic_round)
from fedrec.runtime.checkpoint import (CHECKPOINT_NAME, atomic_write_text, check_resumable, discard_stale_metrics,
                                       finished_history, load_checkpoint, save_checkpoint, tensors_under)

RoundCallback = Callable[[dict[str, Any]], None]


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True, strict=True)


class TaskSection(_Section):
    kind: Literal["classification"]


class ClassifierData(_Section):
    """Which dataset and how it is dealt to clients."""

    dataset: Literal["digits", "mnist", "ml100k-genre"] = "digits"
    data_dir: str | None = None  # mnist: folder with the idx files; ml100k-genre: folder with ml-100k/
    download: bool = False  # ml100k-genre: fetch the official archive into the cache
    split: Literal["iid", "dirichlet", "per_user"] = "iid"  # per_user: ml100k-genre, one client per user
    alpha: float = Field(default=0.5, gt=0.0)  # Dirichlet concentration (split = "dirichlet")
    clients: int = Field(default=10, ge=1)  # iid / dirichlet
    test_ratio: float = Field(default=0.2, gt=0.0, lt=1.0)  # digits, ml100k-genre (MNIST has an official test set)
    split_seed: int = 0


class ClassifierModel(_Section):
    """An MLP: input features -> hidden layers (ReLU) -> classes."""

    hidden: list[int] = Field(default_factory=lambda: [128])


class ClassifierTrain(_Section):
    rounds: int = Field(default=30, ge=1)
    seed: int = 0
    local_epochs: int = Field(default=1, ge=1)
    lr: float = Field(default=0.05, gt=0.0)
    batch_size: int = Field(default=32, ge=1)
    client_fraction: float = Field(default=1.0, gt=0.0, le=1.0)
    server_optimizer: Literal["sgd", "adam", "yogi", "adagrad"] = "sgd"
    server_lr: float = Field(default=1.0, gt=0.0)
    server_momentum: float = Field(default=0.0, ge=0.0, lt=1.0)
    server_beta1: float = Field(default=0.9, ge=0.0, lt=1.0)
    server_beta2: float = Field(default=0.99, ge=0.0, lt=1.0)
    server_tau: float = Field(default=1e-3, gt=0.0)
    fedprox_mu: float = Field(default=0.0, ge=0.0)
    mixing_beta: float | None = Field(default=None, ge=0.0, le=1.0)  # personalisation: theta_g + beta (theta_i - theta_g)
    eval_every: int = Field(default=1, ge=1)
    checkpoint_every: int = Field(default=1, ge=1)


class ClassifierConfig(_Section):
    task: TaskSection
    data: ClassifierData = Field(default_factory=ClassifierData)
    model: ClassifierModel = Field(default_factory=ClassifierModel)
    train: ClassifierTrain = Field(default_factory=ClassifierTrain)

    @model_validator(mode="after")
    def _check(self) -> ClassifierConfig:
        if self.data.split == "per_user" and self.data.dataset != "ml100k-genre":
            raise ValueError("data.split = 'per_user' needs data.dataset = 'ml100k-genre'; use iid or dirichlet")
        if self.data.split == "per_user" and self.train.mixing_beta is not None:
            raise ValueError("train.mixing_beta needs clients with test data; use data.split = iid or dirichlet")
        if any(width < 1 for width in self.model.hidden):
            raise ValueError("model.hidden layer sizes must be positive")
        return self


def load_classifier_config(path: Path, overrides: list[str] | None = None) -> ClassifierConfig:
    """Read a classification TOML config, apply ``section.key=value`` overrides, validate strictly."""
    try:
        raw = tomllib.loads(Path(path).read_text())
    except OSError:
        raise FedrecError(f"config file {path} not found; pass a TOML file such as configs/digits-mlp-fedavg.toml") from None
    except tomllib.TOMLDecodeError as error:
        raise FedrecError(f"config file {path} is not valid TOML ({error}); fix the syntax") from None
    for assignment in overrides or []:
        (section, key), value = parse_override(assignment)
        if not isinstance(raw.setdefault(section, {}), dict):
            raise FedrecError(f"config [{section}] must be a table of settings")
        if key == "data_dir" and not isinstance(value, str):
            value = assignment.split("=", 1)[1].strip()
        raw[section][key] = value
    sections = ClassifierConfig.model_fields
    for name, value in raw.items():
        if name not in sections:
            hint = difflib.get_close_matches(name, sections, n=1)
            raise FedrecError(f"unknown config section [{name}]" + (f"; did you mean [{hint[0]}]?" if hint else
                                                                   f"; sections are {', '.join(sections)}"))
        if not isinstance(value, dict):
            raise FedrecError(f"config [{name}] must be a table of settings, got {value!r}")
        fields = list(sections[name].annotation.model_fields)  # type: ignore[union-attr]
        for key in value:
            if key not in fields:
                hint = difflib.get_close_matches(key, fields, n=1)
                fix = f"did you mean {name}.{hint[0]}?" if hint else f"valid keys: {', '.join(fields)}"
                raise FedrecError(f"unknown config key '{name}.{key}'; {fix}")
    try:
        return ClassifierConfig.model_validate(raw)
    except ValidationError as error:
        first = error.errors()[0]
        where = ".".join(str(part) for part in first["loc"])
        message = first["msg"].rstrip(".").removeprefix("Value error, ")
        given = f"={first['input']!r}" if where and "input" in first else ""
        raise FedrecError(f"invalid config value {where}{given}: {message}" if where else f"invalid config: {message}") from None


def build_task(config: ClassifierConfig) -> ClassificationTask:
    """The configured dataset, split and dealt to clients."""
    data = config.data
    data_dir = Path(data.data_dir) if data.data_dir else None
    if data.dataset == "ml100k-genre":
        return ml100k_genre_task(data_dir, data.download, data.split, data.clients, data.alpha, data.test_ratio,
                                 data.split_seed)
    if data.download:
        raise FedrecError(f"data.download is not available for {data.dataset}; "
                          + ("digits ship with scikit-learn" if data.dataset == "digits" else
                             "put the MNIST idx files in a folder and pass --data-dir DIR"))
    if data.dataset == "digits":
        arrays = digits_arrays(data.test_ratio, data.split_seed)
    else:
        arrays = mnist_arrays(data_dir)
    x_train, y_train, x_test, y_test = arrays
    return partition_task(data.dataset, x_train, y_train, x_test, y_test, 10, data.split, data.clients, data.alpha,
                          data.split_seed)


def build_mlp(num_features: int, hidden: list[int], num_classes: int, seed: int) -> nn.Module:
    """An MLP with ReLU between layers, initialised deterministically from ``seed``."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        widths = [num_features, *hidden]
        layers: list[nn.Module] = []
        for a, b in zip(widths[:-1], widths[1:]):
            layers += [nn.Linear(a, b), nn.ReLU()]
        layers.append(nn.Linear(widths[-1], num_classes))
        return nn.Sequential(*layers)


def generic_settings(config: ClassifierConfig) -> GenericSettings:
    train = config.train
    return GenericSettings(
        local=LocalSGD(train.local_epochs, train.lr, train.batch_size, train.fedprox_mu),
        client_fraction=train.client_fraction,
        server=ServerOptimizer(train.server_optimizer, train.server_lr, train.server_momentum, train.server_beta1,
                               train.server_beta2, train.server_tau),
        mixing_beta=train.mixing_beta,
    )


def _config_json(config: ClassifierConfig) -> str:
    return json.dumps(config.model_dump(mode="json"), indent=2, sort_keys=True)


def _comparable(config_json: str) -> dict[str, Any]:
    settings = json.loads(config_json)
    for key in ("rounds", "eval_every", "checkpoint_every"):
        settings["train"].pop(key, None)
    for key in ("data_dir", "download"):
        settings["data"].pop(key, None)
    return settings


def _evaluate(model: nn.Module, state: GenericState, task: ClassificationTask, beta: float | None) -> dict[str, float]:
    metrics = classification_metrics(model, state.params, task.test_inputs, task.test_targets)
    if beta is not None and task.test_owners is not None:
        metrics["personal_accuracy"] = personalised_accuracy(model, state, beta, task.test_inputs, task.test_targets,
                                                             task.test_owners)
    return metrics


def _save(path: Path, state: GenericState, counters: dict[str, Any], config: ClassifierConfig) -> None:
    tensors: dict[str, Tensor] = {f"param/{k}": v for k, v in state.params.items()}
    tensors.update({f"server/{k}": v for k, v in state.optimizer_state.items()})
    for client, params in state.local_models.items():
        tensors.update({f"local/{client}/{k}": v for k, v in params.items()})
    save_checkpoint(path, tensors, dict(counters, round=state.round, config=_config_json(config)))


def _restore(path: Path, state: GenericState, config: ClassifierConfig) -> tuple[GenericState, dict[str, Any]]:
    tensors, meta = load_checkpoint(path)
    missing = any(f"param/{k}" not in tensors for k in state.params)
    check_resumable(path, meta, missing, _config_json(config), _comparable, config.train.rounds,
                    "a checkpoint of this classifier")
    params = {k: tensors[f"param/{k}"] for k in state.params}
    server = tensors_under(tensors, "server/")
    local: dict[int, dict[str, Tensor]] = {}
    for key, value in tensors.items():
        if key.startswith("local/"):
            _, client, name = key.split("/", 2)
            local.setdefault(int(client), {})[name] = value
    counters = {k: meta[k] for k in ("seconds", "bytes_up", "bytes_down")}
    return GenericState(int(meta["round"]), params, server, local), counters


def train_classifier(config_path: Path, overrides: list[str] | None, out_dir: Path, resume: bool = False,
                     on_round: RoundCallback | None = None,
                     on_start: Callable[[int, int], None] | None = None) -> dict[str, Any]:
    """Run (or resume) a classification config; returns the final metrics also written to metrics.json."""
    config = load_classifier_config(Path(config_path), overrides)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    checkpoint = out_dir / CHECKPOINT_NAME
    if checkpoint.exists() and not resume:
        raise FedrecError(f"{out_dir} already holds a run; pass --resume to continue it or choose another --out")
    task = build_task(config)
    model = build_mlp(task.num_features, config.model.hidden, task.num_classes, config.train.seed)
    settings = generic_settings(config)
    state = GenericState(0, model_params(model))
    counters: dict[str, Any] = {"seconds": 0.0, "bytes_up": 0, "bytes_down": 0}
    history: list[dict[str, Any]] = []
    history_path = out_dir / "history.jsonl"
    if resume and checkpoint.exists():
        state, counters = _restore(checkpoint, state, config)
        history = finished_history(history_path, state.round)
        discard_stale_metrics(out_dir, state.round, config.train.rounds)
    atomic_write_text(out_dir / "config.json", _config_json(config) + "\n")
    if on_start is not None:
        on_start(state.round, config.train.rounds)
    rounds = config.train.rounds
    while state.round < rounds:
        began = time.perf_counter()
        state, stats = run_generic_round(model, state, task.clients, settings, config.train.seed)
        counters["bytes_up"] += stats.bytes_up
        counters["bytes_down"] += stats.bytes_down
        record: dict[str, Any] = {"round": state.round, "train_loss": stats.train_loss, "clients": stats.clients,
                                  "bytes_up": stats.bytes_up, "bytes_down": stats.bytes_down}
        counters["seconds"] += time.perf_counter() - began
        if state.round % config.train.eval_every == 0 or state.round == rounds:
            record.update(_evaluate(model, state, task, config.train.mixing_beta))
        record["seconds"] = round(counters["seconds"], 4)
        history.append(record)
        atomic_write_text(history_path, "".join(json.dumps(entry) + "\n" for entry in history))
        if state.round % config.train.checkpoint_every == 0 or state.round == rounds:
            _save(checkpoint, state, counters, config)
        if on_round is not None:
            on_round(record)
    metrics: dict[str, Any] = dict(_evaluate(model, state, task, config.train.mixing_beta))
    metrics.update(
        majority_accuracy=majority_baseline(task),
        rounds=state.round,
        seconds=round(counters["seconds"], 3),
        bytes_up=counters["bytes_up"],
        bytes_down=counters["bytes_down"],
        dataset=task.name,
        split=config.data.split,
        clients=len(task.clients),
        train_examples=task.train_size,
        test_examples=len(task.test_targets),
        architecture="-".join(str(w) for w in [task.num_features, *config.model.hidden, task.num_classes]),
    )
    atomic_write_text(out_dir / "metrics.json", json.dumps(metrics, indent=2) + "\n")
    return metrics
