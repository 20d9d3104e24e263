"""The training loop behind ``fedrec train``: rounds (or epochs), evaluation, outputs, resume.

Outputs in the run directory, each written atomically:
``config.json`` (resolved config), ``history.jsonl`` (one line per finished round),
``checkpoint.safetensors`` (parameters and optimiser state after the last finished round) and,
at the end, ``metrics.json`` (final test metrics with flat keys).
With central DP (``[privacy]``), every history line carries the epsilon spent so far (``epsilon``
from the RDP accountant, ``epsilon_pld`` alongside) and a run with a target epsilon stops cleanly
before a round that would exceed it.
Randomness is a pure function of (seed, round), so a resumed run reaches the same model as an
uninterrupted one.
"""

from __future__ import annotations

import json
import math
import sys
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from fedrec.config import RunConfig, config_to_json
from fedrec.errors import FedrecError
from fedrec.federated.attacks import Adversary
from fedrec.federated.compression import Compression
from fedrec.federated.local import LocalTraining
from fedrec.federated.participation import Participation
from fedrec.federated.personalize import finetune, refit_private_rows
from fedrec.federated.robust import DefenceSettings, RobustSettings, ValidationSettings
from fedrec.federated.server import FedAvgSettings, ServerState, download_bytes, run_round
from fedrec.federated.server_opt import ServerOptimizer
from fedrec.runtime.centralized import CentralSettings, make_optimizer, train_epoch, trained_leaves
from fedrec.runtime.checkpoint import (CHECKPOINT_NAME, atomic_write_text, check_resumable, discard_stale_metrics,
                                       finished_history, load_checkpoint, save_checkpoint, tensors_under)
from fedrec.runtime.experiment import Experiment, prepare
from fedrec.models.base import ParamKind
from fedrec.privacy.dp import CentralDP
from fedrec.privacy.ldp import LocalDP
from fedrec.privacy.cohort_sum import SecureAggregation
from fedrec.privacy.hiding_settings import HidingSettings

RoundCallback = Callable[[dict[str, Any]], None]


def privacy_settings(config: RunConfig, eligible_clients: int, noise_multiplier: float | None = None) -> CentralDP | LocalDP | None:
    """The DP mechanism of a run (None when privacy is off).

    Central DP with a target epsilon calibrates the noise multiplier to train.rounds rounds at
    sampling rate train.client_fraction, unless ``noise_multiplier`` (e.g. from a checkpoint) is given.
    """
    privacy = config.privacy
    if not privacy.enabled or config.train.mode != "federated":
        return None
    from fedrec.privacy.accountant import (  # here: runs without privacy never import dp_accounting
        calibrate_noise, check_noise_multiplier)

    assert privacy.delta is not None  # checked by the config
    if privacy.mode == "local":
        assert privacy.epsilon is not None
        return LocalDP(privacy.epsilon, privacy.delta, privacy.clip_norm)
    q = config.train.client_fraction
    if noise_multiplier is None:
        noise_multiplier = privacy.noise_multiplier
    if noise_multiplier is None:
        assert privacy.epsilon is not None
        noise_multiplier = calibrate_noise(privacy.epsilon, privacy.delta, q, config.train.rounds)
    check_noise_multiplier(noise_multiplier)
    settings = CentralDP(noise_multiplier, privacy.clip_norm, q * eligible_clients, privacy.adaptive_clip,
                         privacy.target_quantile, privacy.clip_lr, privacy.clip_count_stddev)
    _ = settings.update_noise  # refuse an impossible adaptive-clipping split before training
    return settings


def local_training(config: RunConfig, finetune: bool = False) -> LocalTraining:
    """The clients' local SGD as configured; ``finetune``: the eval.finetune_epochs pass (no FedProx pull)."""
    train = config.train
    if finetune:
        return LocalTraining(config.eval.finetune_epochs, train.local_lr, train.batch_size, train.private_lr,
                             clip_norm=train.local_clip_norm)
    return LocalTraining(train.local_epochs, train.local_lr, train.batch_size, train.private_lr, train.prox_mu,
                         train.local_clip_norm)


def fedavg_settings(config: RunConfig, privacy: CentralDP | LocalDP | None = None,
                    attack: Adversary | None = None) -> FedAvgSettings:
    train = config.train
    return FedAvgSettings(
        local=local_training(config),
        client_fraction=train.client_fraction,
        server=ServerOptimizer(train.server_optimizer, train.server_lr, train.server_momentum,
                               train.server_beta1, train.server_beta2, train.server_tau, train.server_lazy_rows,
                               tuple(sorted(train.server_lr_by_tensor.items()))),
        row_weighting=train.row_weighting,
        backend=train.backend,
        sampling="poisson" if isinstance(privacy, CentralDP) else "fixed",
        privacy=privacy,
        defence=defence_settings(config),
        attack=attack,
        client_weighting=train.client_weighting,
        participation=participation_settings(config),
        hiding=hiding_settings(config),
        secure_aggregation=secure_aggregation_settings(config),
        compression=compression_settings(config),
    )


def compression_settings(config: RunConfig) -> Compression | None:
    """Upload compression from ``[compression]`` (None when off)."""
    c = config.compression
    return Compression(c.topk, c.bits, c.error_feedback, c.rounding, c.scale) if c.enabled else None


def hiding_settings(config: RunConfig) -> HidingSettings | None:
    """Item hiding from ``privacy.hiding`` (None when off)."""
    p = config.privacy
    if p.hiding == "none":
        return None
    return HidingSettings(p.hiding, p.pseudo_items, p.pseudo_ratio, p.pseudo_per_round, p.pseudo_values)


def secure_aggregation_settings(config: RunConfig) -> SecureAggregation | None:
    """Secure aggregation from ``privacy.secure_aggregation`` (None when off)."""
    p = config.privacy
    if not p.secure_aggregation:
        return None
    from fedrec.privacy.fixedpoint import FixedPoint
    from fedrec.privacy.secagg import SecAggSettings

    return SecureAggregation(SecAggSettings(FixedPoint(max_abs=p.secagg_max_abs), threshold_fraction=p.secagg_threshold),
                             p.secagg_dropout)


def participation_settings(config: RunConfig) -> Participation | None:
    """Stragglers and dropouts from ``train.*``; None when neither is simulated."""
    train = config.train
    settings = Participation(train.client_dropout, train.speed_sigma, train.seconds_per_example,
                             train.deadline_quantile, train.deadline_seconds, train.late_updates)
    return settings if settings.active else None


def defence_settings(config: RunConfig) -> DefenceSettings | None:
    """Validation and robust aggregation from ``[defence]``; None when neither is on."""
    defence = config.defence
    if not defence.enabled:
        return None
    validation = (ValidationSettings(defence.max_norm_ratio, defence.max_norm, norm_scaling=defence.norm_scaling)
                  if defence.check_uploads
                  else ValidationSettings(None, None))
    robust = RobustSettings(defence.aggregator or "mean", defence.trim_fraction, defence.byzantine_fraction,
                            defence.clip_norm, defence.dense_clip_norm)
    return DefenceSettings(validation, robust)


_RESUME_FREE = {"train": ("rounds", "eval_every", "checkpoint_every"), "data": ("data_dir", "download")}


def comparable_config(config_json: str) -> dict[str, Any]:
    """Config fields that must match for a resume (rounds may grow; data may move)."""
    settings = json.loads(config_json)
    for section, keys in _RESUME_FREE.items():
        for key in keys:
            settings[section].pop(key, None)
    return settings


def public_start(params: dict[str, Tensor], exp: Experiment) -> dict[str, Tensor]:
    """Initial parameters that depend on no client's data: under DP the global bias starts at the middle
    of the (public) rating scale instead of the training mean, which no mechanism protects."""
    return public_start_params(params, exp.dataset.rating_range)


def public_start_params(params: dict[str, Tensor], rating_range: tuple[float, float] | None) -> dict[str, Tensor]:
    """:func:`public_start` given the rating scale (also used by the Flower server, which has no dataset)."""
    if "global_bias" not in params or rating_range is None:
        return params
    low, high = rating_range
    return {**params, "global_bias": torch.full_like(params["global_bias"], (low + high) / 2)}


def privacy_spent(config: RunConfig, privacy: CentralDP | LocalDP | None, rounds: int,
                  privacy_state: dict[str, Tensor]) -> dict[str, Any]:
    """Privacy spent after ``rounds`` rounds, as history.jsonl records it (empty when privacy is off)."""
    from fedrec.privacy.accountant import epsilon, epsilon_pld

    delta = config.privacy.delta
    if isinstance(privacy, LocalDP):
        return {"local_epsilon": privacy.epsilon, "local_delta": privacy.delta}
    if not isinstance(privacy, CentralDP):
        return {}
    assert delta is not None
    q = config.train.client_fraction
    record: dict[str, Any] = {
        "epsilon": epsilon(privacy.noise_multiplier, q, rounds, delta),
        "epsilon_pld": epsilon_pld(privacy.noise_multiplier, q, rounds, delta),
        "delta": delta,
    }
    if privacy.adaptive:
        record["clip_norm"] = float(privacy_state.get("clip_norm", torch.tensor(privacy.clip_norm)))
    return record


def check_training_loss(config: RunConfig, round_number: int, loss: float) -> None:
    """Stop a run whose training loss stopped being a number, in one line, instead of training on NaNs."""
    if math.isfinite(loss):
        return
    train = config.train
    rates = (f"train.central_lr (now {train.central_lr})" if train.mode == "centralized" else
             f"train.local_lr (now {train.local_lr}) or train.server_lr (now {train.server_lr})")
    kept = " (the checkpoint keeps the last round saved before it)" if round_number > 1 else ""
    raise FedrecError(f"training diverged in round {round_number} (training loss {loss}); lower {rates} and start "
                      f"the run again{kept}")


def budget_stop_reason(config: RunConfig, privacy: CentralDP | LocalDP | None, finished_rounds: int) -> str | None:
    """Why the run stops before round ``finished_rounds + 1`` (it would exceed privacy.epsilon), else None."""
    from fedrec.privacy.accountant import epsilon

    target, delta = config.privacy.epsilon, config.privacy.delta
    if not isinstance(privacy, CentralDP) or target is None or delta is None:
        return None
    q = config.train.client_fraction
    spent = epsilon(privacy.noise_multiplier, q, finished_rounds + 1, delta)
    if spent <= target * (1 + 1e-9):
        return None
    return (f"privacy budget reached: round {finished_rounds + 1} would spend epsilon {spent:.3f} > "
            f"privacy.epsilon = {target:g}; stopped after {finished_rounds} rounds")


def privacy_summary(config: RunConfig, privacy: CentralDP | LocalDP | None, rounds: int,
                    privacy_state: dict[str, Tensor], stop_reason: str | None) -> dict[str, Any]:
    """Privacy entries of metrics.json: the epsilon actually spent (central) or per round (local)."""
    if privacy is None:
        return {}
    entries: dict[str, Any] = {"privacy_mode": config.privacy.mode, "clip_norm": config.privacy.clip_norm}
    entries.update(privacy_spent(config, privacy, rounds, privacy_state))
    if isinstance(privacy, CentralDP):
        entries.update(noise_multiplier=privacy.noise_multiplier, sampling_prob=config.train.client_fraction,
                       expected_clients=privacy.expected_clients)
        if privacy.adaptive:
            entries["update_noise_multiplier"] = privacy.update_noise
    else:
        entries.update(local_noise_stddev=privacy.stddev, local_epsilon_total=privacy.epsilon * rounds)
    if stop_reason is not None:
        entries.update(stopped=stop_reason)
    for key, value in list(entries.items()):
        if isinstance(value, float) and math.isinf(value):
            entries[key] = "inf"
    return entries


class _Run:
    """The mutable state of one run: parameters, optimiser state, counters, history."""

    def __init__(self, config: RunConfig, exp: Experiment, out_dir: Path) -> None:
        self.config, self.exp, self.out_dir = config, exp, out_dir
        self.federated = config.train.mode == "federated"
        self.eligible = exp.clients.sizes > 0  # clients with no training data are never sampled
        self.privacy = privacy_settings(config, int(self.eligible.sum()))
        self.settings = fedavg_settings(config, self.privacy, exp.attack)
        self.privacy_state: dict[str, Tensor] = {}
        self.stop_reason: str | None = None
        self.params = exp.model.init_params(torch.Generator().manual_seed(config.train.seed))
        if self.privacy is not None:
            self.params = public_start(self.params, exp)
        self.server_state: dict[str, Tensor] = {}
        self.client_state: dict[str, Tensor] = {}  # the simulated clients' own state (compression residuals)
        self.central_optimizer: torch.optim.Optimizer | None = None
        if not self.federated:
            self.central_optimizer = make_optimizer(trained_leaves(exp.model, self.params), self.central_settings())
        self.round = 0
        self.seconds = 0.0
        self.bytes_up = 0
        self.bytes_down = 0
        self.history: list[dict[str, Any]] = []
        self.before_refit: dict[str, Any] | None = None  # metrics before the private rows' final refit, once done
        self.trained_private: dict[str, Tensor] = {}  # the private rows as training left them (before the refit)

    def central_settings(self) -> CentralSettings:
        train = self.config.train
        return CentralSettings(train.central_optimizer, train.central_lr, train.central_batch_size)

    # -- checkpoint ---------------------------------------------------------------------------
    def save(self) -> None:
        tensors = {f"param/{k}": v.detach() for k, v in self.params.items()}
        tensors.update({f"server/{k}": v for k, v in self.server_state.items()})
        tensors.update({f"privacy/{k}": v for k, v in self.privacy_state.items()})
        tensors.update({f"client/{k}": v for k, v in self.client_state.items()})
        tensors.update({f"trained/{k}": v for k, v in self.trained_private.items()})
        meta: dict[str, Any] = {
            "round": self.round, "seconds": self.seconds, "bytes_up": self.bytes_up, "bytes_down": self.bytes_down,
            "config": config_to_json(self.config),
        }
        if self.before_refit is not None:
            meta["before_refit"] = self.before_refit
        if isinstance(self.privacy, CentralDP):
            meta["noise_multiplier"] = self.privacy.noise_multiplier
        if self.central_optimizer is not None:
            state = self.central_optimizer.state_dict()
            for index, entries in state["state"].items():
                for key, value in entries.items():
                    tensors[f"optim/{index}/{key}"] = torch.as_tensor(value).reshape(-1) if key == "step" else value
            meta["optim_groups"] = state["param_groups"]
        save_checkpoint(self.out_dir / CHECKPOINT_NAME, tensors, meta)

    def restore(self, path: Path) -> None:
        tensors, meta = load_checkpoint(path)
        missing = any(f"param/{name}" not in tensors for name in self.params)
        check_resumable(path, meta, missing, config_to_json(self.config), comparable_config, self.config.train.rounds,
                        "a fedrec checkpoint for this model")
        with torch.no_grad():
            for name, value in self.params.items():
                value.copy_(tensors[f"param/{name}"])
        self.server_state = tensors_under(tensors, "server/")
        self.privacy_state = tensors_under(tensors, "privacy/")
        self.client_state = tensors_under(tensors, "client/")
        if isinstance(self.privacy, CentralDP) and "noise_multiplier" in meta:
            # the noise was calibrated to the rounds first configured; a resume with more rounds keeps it
            self.privacy = privacy_settings(self.config, int(self.eligible.sum()), float(meta["noise_multiplier"]))
            self.settings = fedavg_settings(self.config, self.privacy, self.exp.attack)
        if self.central_optimizer is not None and "optim_groups" in meta:
            state: dict[int, dict[str, Tensor]] = {}
            for key, value in tensors.items():
                if key.startswith("optim/"):
                    _, index, field = key.split("/")
                    state.setdefault(int(index), {})[field] = value.reshape(()) if field == "step" else value
            try:
                self.central_optimizer.load_state_dict({"state": state, "param_groups": meta["optim_groups"]})
            except ValueError:  # e.g. saved before constant tables (item_text) left the optimiser
                raise FedrecError(f"the optimiser state in {self.out_dir} does not match this model's trainable "
                                  "tensors (saved by an older fedrec?); start the run again without --resume") from None
        self.round, self.seconds = int(meta["round"]), float(meta["seconds"])
        self.bytes_up, self.bytes_down = int(meta["bytes_up"]), int(meta["bytes_down"])
        self.history = finished_history(self.out_dir / "history.jsonl", self.round)
        self.before_refit = meta.get("before_refit")
        self.trained_private = tensors_under(tensors, "trained/")
        if self.before_refit is not None and self.round < self.config.train.rounds:
            # extending a finished run: training continues from the private rows it left, not the refitted ones
            with torch.no_grad():
                for name, value in self.trained_private.items():
                    self.params[name].copy_(value)
            self.before_refit, self.trained_private = None, {}
            self.bytes_down -= download_bytes(self.exp.model, int(self.eligible.sum()))  # the refit's download

    # -- one round ----------------------------------------------------------------------------
    def step(self) -> dict[str, Any]:
        began = time.perf_counter()
        record: dict[str, Any] = {"round": self.round + 1}
        if self.federated:
            state = ServerState(self.round, self.params, self.server_state, self.privacy_state, self.client_state)
            # the run owns its parameters: the round writes the clients' new private rows into them in place
            state, stats = run_round(self.exp.model, state, self.exp.clients,
                                     replace(self.settings, private_rows_in_place=True),
                                     self.config.train.seed, self.eligible)
            self.params, self.server_state, self.privacy_state = state.params, state.optimizer_state, state.privacy_state
            self.client_state = state.client_state
            self.bytes_up += stats.bytes_up
            self.bytes_down += stats.bytes_down
            record.update(train_loss=stats.train_loss, clients=stats.clients, bytes_up=stats.bytes_up,
                          bytes_down=stats.bytes_down)
            if self.settings.defence is not None:
                record.update(rejected=sum(stats.rejected.values()), rejected_by_reason=stats.rejected)
            if self.settings.participation is not None:
                record.update(dropped=stats.dropped, late=stats.late)
            if self.settings.secure_aggregation is not None:
                record.update(secagg_seconds=round(stats.secagg_seconds, 4))
        else:
            assert self.central_optimizer is not None
            loss = train_epoch(self.exp.model, self.params, self.central_optimizer, self.exp.clients,
                               self.config.train.central_batch_size, self.config.train.seed, self.round)
            record.update(train_loss=loss)
        check_training_loss(self.config, self.round + 1, record["train_loss"])
        self.round += 1
        record.update(self.privacy_record(self.round))
        self.seconds += time.perf_counter() - began
        last = self.round == self.config.train.rounds
        if self.round % self.config.train.eval_every == 0 or last:
            record.update(self.exp.evaluator(self.detached()))
        record["seconds"] = round(self.seconds, 4)
        return record

    # -- privacy ------------------------------------------------------------------------------
    def privacy_record(self, rounds: int) -> dict[str, Any]:
        """Privacy spent after ``rounds`` rounds (empty when privacy is off)."""
        return privacy_spent(self.config, self.privacy, rounds, self.privacy_state)

    def budget_exceeded(self) -> bool:
        """Whether one more round would spend more than the target epsilon (sets ``stop_reason``)."""
        self.stop_reason = budget_stop_reason(self.config, self.privacy, self.round)
        return self.stop_reason is not None

    def refit_private(self) -> None:
        """The final refit of every client's private rows (train.refit_private_epochs), once per run."""
        train = self.config.train
        began = time.perf_counter()
        self.before_refit = dict(self.exp.evaluator(self.detached(), prefix="before_refit_"))
        self.trained_private = {spec.name: self.params[spec.name].detach().clone()
                                for spec in self.exp.model.specs_by_kind(ParamKind.PRIVATE_ROWS)}
        refitted = refit_private_rows(self.exp.model, self.detached(), self.exp.clients, train.refit_private_epochs,
                                      train.refit_lr, train.batch_size, train.seed)
        with torch.no_grad():
            for name in self.trained_private:  # only the private rows changed
                self.params[name].copy_(refitted[name])
        self.bytes_down += download_bytes(self.exp.model, int(self.eligible.sum()))  # the final model, to every client
        self.seconds += time.perf_counter() - began
        self.save()

    def detached(self) -> dict[str, Tensor]:
        return {k: v.detach() for k, v in self.params.items()}


def train(config: RunConfig, out_dir: Path, resume: bool = False, on_round: RoundCallback | None = None,
          on_start: Callable[[int, int], None] | None = None) -> dict[str, Any]:
    """Run (or resume) the configured job; returns the final metrics also written to metrics.json."""
    if config.model.name == "lora_bpr":  # federated LoRA of the text encoder: its own round loop (fedrec/text/lora_run.py)
        from fedrec.text.lora_run import train_lora

        return train_lora(config, out_dir, resume=resume, on_round=on_round, on_start=on_start)
    # Same seed, same model: some CPU kernels (embedding backward with repeated indices) otherwise
    # accumulate in a thread-dependent order. Measured cost here: none (BENCHMARKS.md machine).
    torch.use_deterministic_algorithms(True, warn_only=True)
    out_dir.mkdir(parents=True, exist_ok=True)
    checkpoint = out_dir / CHECKPOINT_NAME
    if checkpoint.exists() and not resume:
        raise FedrecError(f"{out_dir} already holds a run; pass --resume to continue it or choose another --out")
    exp = prepare(config)
    run = _Run(config, exp, out_dir)
    if resume and checkpoint.exists():
        run.restore(checkpoint)
        discard_stale_metrics(out_dir, run.round, config.train.rounds)
    atomic_write_text(out_dir / "config.json", config_to_json(config) + "\n")
    if on_start is not None:
        on_start(run.round, config.train.rounds)
    history_path = out_dir / "history.jsonl"
    while run.round < config.train.rounds:
        if run.budget_exceeded():
            run.save()
            print(f"{run.stop_reason} (checkpoint and metrics written to {out_dir})", file=sys.stderr)
            break
        record = run.step()
        run.history.append(record)
        atomic_write_text(history_path, "".join(json.dumps(entry) + "\n" for entry in run.history))
        if run.round % config.train.checkpoint_every == 0 or run.round == config.train.rounds:
            run.save()
        if on_round is not None:
            on_round(record)
    if (run.federated and config.train.refit_private_epochs and run.round == config.train.rounds
            and run.before_refit is None):
        run.refit_private()
    metrics = final_metrics(run)
    atomic_write_text(out_dir / "metrics.json", json.dumps(metrics, indent=2) + "\n")
    return metrics


def final_metrics(run: _Run) -> dict[str, Any]:
    exp = run.exp
    params = run.detached()
    metrics: dict[str, Any] = dict(exp.evaluator(params))
    if run.config.eval.finetune_epochs and run.federated:
        personal = finetune(exp.model, params, exp.clients, exp.partition.client_of_user,
                            local_training(run.config, finetune=True), run.config.train.seed,
                            mix_beta=run.config.eval.mix_beta)
        metrics.update(exp.evaluator(params, personal, prefix="finetuned_"))  # finetuned_val_*: choose epochs on it
    if run.before_refit is not None:  # the headline metrics are after the refit; these are before it
        metrics.update(run.before_refit)
    metrics.update(exp.evaluator.popularity_baseline())
    metrics.update(
        mode=run.config.train.mode,
        rounds=run.round,
        seconds=round(run.seconds, 3),
        bytes_up=run.bytes_up,
        bytes_down=run.bytes_down,
        dataset=exp.dataset.name,
        split=exp.split.name or run.config.data.split,
        train_interactions=len(exp.split.train),
        test_interactions=len(exp.split.test),
        clients=exp.partition.num_clients,
        idle_clients=exp.idle_clients,
        excluded_users=exp.excluded_users,
    )
    targets = getattr(exp.evaluator, "exposure_targets", None)
    if targets is not None:  # [attack]: which items er@K measures, and who attacked them (fedrec/federated/attacks.py)
        metrics.update(attack=run.config.attack.method, malicious_clients=exp.attack.num_malicious if exp.attack else 0,
                       target_items=[str(exp.dataset.item_ids[i]) for i in targets])
    metrics.update(final_privacy(run))
    return metrics


def final_privacy(run: _Run) -> dict[str, Any]:
    """Privacy entries of metrics.json: the epsilon actually spent (central) or per round (local)."""
    return privacy_summary(run.config, run.privacy, run.round, run.privacy_state, run.stop_reason)
