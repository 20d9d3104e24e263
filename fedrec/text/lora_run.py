"""``fedrec train`` for ``model.name = "lora_bpr"``: federated LoRA of the text encoder (fedrec/text/lora.py).

Routed from :func:`fedrec.runtime.trainer.train`, with the same config file, outputs and resume as
every recommender run: data, split, clients, item texts, cold-start protocol and evaluator come
from :func:`fedrec.runtime.experiment.prepare` (as for ``tower_bpr``, whose text tower this model
is), and the run directory gets ``config.json``, ``history.jsonl`` (one line per finished round),
``checkpoint.safetensors`` (adapters, head, user vectors, server-optimiser state) and
``metrics.json``. A resumed run reaches the same model as an uninterrupted one: every draw is a
pure function of (seed, round, client).

``metrics.json`` adds to the ranking metrics the communication figures
(``upload_bytes_per_client``: the safetensors bytes of one client's upload per round,
``encoder_bytes``: the full encoder's parameter bytes, ``upload_ratio`` = their ratio) and, with
``lora.compare_frozen``, ``frozen_*``: the same model, training and budget with the encoder frozen.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from fedrec.config import RunConfig, config_to_json
from fedrec.errors import FedrecError
from fedrec.federated.server_opt import ServerOptimizer
from fedrec.runtime.checkpoint import (CHECKPOINT_NAME, atomic_write_text, check_resumable, discard_stale_metrics,
                                       finished_history, load_checkpoint, save_checkpoint, tensors_under)
from fedrec.runtime.experiment import Experiment, prepare
from fedrec.text.encoder import TextEncoder
from fedrec.text.lora import (HEAD_NAMES, FrozenTable, ItemEmbedder, LocalSteps, LoraEncoder, LoraSettings, LoraState,
                              adapter_layers, refit_user_vectors, run_lora_round, serialize,
                              tensor_bytes)

RoundCallback = Callable[[dict[str, Any]], None]
MODEL_NAME = "lora_bpr"
SERVED = "served"  # checkpoint prefix of the final evaluated model (tower parameters), what load_run serves
#: [model] keys lora_bpr reads (besides name); anything else set explicitly is refused
_MODEL_KEYS = {"dim", "l2", "init_std", "negatives", "text_encoder", "text_max_length", "text_batch_size", "text_cache",
               "cold_start_items", "text_adapter", "text_dim"}

#: [train] and [eval] keys lora_bpr reads (local_epochs: lora.local_steps instead; backend: one loop)
_SECTION_KEYS = {
    "train": {"mode", "rounds", "seed", "backend", "local_lr", "private_lr", "batch_size", "client_fraction",
              "server_optimizer", "server_lr", "server_momentum", "server_beta1", "server_beta2", "server_tau",
              "eval_every", "checkpoint_every"},
    "eval": {"ks", "sampled_negatives", "seed"},
}


def check_lora_config(config: RunConfig) -> None:
    """Refuse settings lora_bpr cannot honour, with the fix."""
    model = config.model
    unused = sorted(set(model.model_fields_set) - _MODEL_KEYS - {"name"})
    if unused:
        raise FedrecError(f"model '{MODEL_NAME}' does not take {', '.join('model.' + k for k in unused)}; it takes: "
                          f"{', '.join(sorted(_MODEL_KEYS))}")
    if model.text_adapter not in (None, "linear"):
        raise FedrecError(f"model '{MODEL_NAME}' has a linear head; remove model.text_adapter={model.text_adapter!r}")
    if "text_dim" in model.model_fields_set and model.text_dim != 0:
        raise FedrecError(f"model '{MODEL_NAME}' fine-tunes the encoder, whose full embedding feeds the head; "
                          "set model.text_dim=0 or remove it")
    if config.train.mode != "federated":
        raise FedrecError(f"model '{MODEL_NAME}' trains federated only; set train.mode='federated' "
                          "(tower_bpr is the centralised-capable text tower)")
    for section in ("train", "eval"):
        unused = sorted(set(getattr(config, section).model_fields_set) - _SECTION_KEYS[section])
        if unused:
            known = ", ".join(f"{section}.{key}" for key in sorted(_SECTION_KEYS[section]))
            raise FedrecError(f"{section}.{unused[0]} does not apply to model '{MODEL_NAME}'; remove it (it reads {known})")
    for section in RunConfig.model_fields:
        if section in ("data", "model", "train", "eval", "lora"):
            continue
        settings = getattr(config, section)
        given = {key for key in settings.model_fields_set if not (key == "mode" and getattr(settings, key) == "off")}
        if given:
            raise FedrecError(f"[{section}] settings ({section}.{sorted(given)[0]}) are not supported with model "
                              f"'{MODEL_NAME}' yet; remove them")


def tower_config(config: RunConfig) -> RunConfig:
    """The same run as the text tower ``tower_bpr`` on the full encoder embedding (what prepare() builds)."""
    model = config.model.model_copy(update={"name": "tower_bpr", "text_dim": 0, "text_adapter": "linear"})
    return config.model_copy(update={"model": model})


def lora_settings(config: RunConfig) -> LoraSettings:
    lora = config.lora
    return LoraSettings(lora.r, lora.alpha, lora.dropout, tuple(lora.target_modules), lora.top_layers)


def local_steps(config: RunConfig, exp: Experiment) -> LocalSteps:
    train, model_config = config.train, exp.model.config  # type: ignore[attr-defined]
    return LocalSteps(steps=config.lora.local_steps, batch_size=train.batch_size, negatives=model_config.negatives,
                      adapter_lr=config.lora.adapter_lr, head_lr=train.local_lr,
                      private_lr=train.private_lr if train.private_lr is not None else train.local_lr,
                      l2=model_config.l2, refit_steps=config.lora.refit_steps, refit_lr=config.lora.refit_lr)


def server_optimizer(config: RunConfig) -> ServerOptimizer:
    train = config.train
    return ServerOptimizer(train.server_optimizer, train.server_lr, train.server_momentum, train.server_beta1,
                           train.server_beta2, train.server_tau)


def initial_state(exp: Experiment, embedder: ItemEmbedder, seed: int) -> LoraState:
    """Round-0 state: the tower's user vectors and head as tower_bpr draws them, then fresh adapters."""
    generator = torch.Generator().manual_seed(seed)
    params = exp.model.init_params(generator)
    adapters = embedder.init_adapters(generator) if isinstance(embedder, LoraEncoder) else {}
    return LoraState(0, {**adapters, **{name: params[name] for name in HEAD_NAMES}}, params["user_vec"])


def tower_params(exp: Experiment, embedder: ItemEmbedder, state: LoraState, config: RunConfig) -> dict[str, Tensor]:
    """The global model as ``tower_bpr`` parameters: every item's embedding from its text through the adapted encoder.

    With ``lora.refit_steps``, every client first refits its private user vector to the global item
    tower (:func:`refit_user_vectors`); the run's state keeps the vectors training left.
    """
    embedder.load_adapters(state.shared)
    head = {name: state.shared[name] for name in HEAD_NAMES}
    text = embedder.embed_all(config.model.text_batch_size)
    user_vec = state.user_vec
    if config.lora.refit_steps:
        item_vectors = text @ head["adapter_w"] + head["adapter_b"]
        model_config = exp.model.config  # type: ignore[attr-defined]
        user_vec = refit_user_vectors(item_vectors, user_vec, exp.clients, config.lora.refit_steps,
                                      config.lora.refit_lr, model_config.l2, model_config.negatives, config.train.seed)
    return {"user_vec": user_vec, "item_text": text, **head}


def evaluate(exp: Experiment, embedder: ItemEmbedder, state: LoraState, config: RunConfig) -> dict[str, Any]:
    """Ranking metrics of the global model (:func:`tower_params`) through the tower's evaluator."""
    return dict(exp.evaluator(tower_params(exp, embedder, state, config)))


def encoder_for(config: RunConfig, exp: Experiment) -> LoraEncoder:
    """The run's encoder with fresh LoRA adapters on the item texts of ``exp``."""
    assert exp.text is not None
    model_config = config.model
    encoder = TextEncoder(model_config.text_encoder, max_length=model_config.text_max_length,
                          batch_size=model_config.text_batch_size)
    return LoraEncoder(encoder, exp.text.items.texts, lora_settings(config), batch_size=model_config.text_batch_size)


def served_params(config: RunConfig, exp: Experiment, tensors: dict[str, Tensor], path: Path) -> dict[str, Tensor]:
    """``tower_bpr`` parameters of a finished run's checkpoint (``exp`` from ``prepare(tower_config(config))``).

    The model the run evaluated: the ``served/`` tensors a finished run saves with its last round (no
    encoder needed). A checkpoint without them (an older run) is served by re-encoding the item texts
    with the trained adapters and, with ``lora.refit_steps``, refitting the user vectors the way
    evaluation does (same seed, same result).
    """
    saved = {k: v.float() for k, v in tensors_under(tensors, f"{SERVED}/").items()}
    if saved:
        saved.update({name: tensors[f"shared/{name}"].float() for name in HEAD_NAMES if f"shared/{name}" in tensors})
        if {k: tuple(v.shape) for k, v in saved.items()} != {spec.name: spec.shape for spec in exp.model.param_specs()}:
            raise FedrecError(f"{path} does not match its {MODEL_NAME} config (served/ tensors {sorted(saved)} with "
                              "other shapes than the config's); was the dataset changed since training? retrain the run")
        return saved
    embedder = encoder_for(config, exp)
    state = initial_state(exp, embedder, config.train.seed)
    missing = _missing_state(tensors, state)
    shapes_differ = not missing and (tuple(tensors["private/user_vec"].shape) != tuple(state.user_vec.shape) or any(
        tuple(tensors[f"shared/{k}"].shape) != tuple(v.shape) for k, v in state.shared.items()))
    if missing or shapes_differ:
        found = f"missing {', '.join(missing)}" if missing else "tensor shapes differ"
        raise FedrecError(f"{path} does not match its {MODEL_NAME} config ({found}); was the dataset or the lora "
                          "settings changed since training? retrain the run")
    state = LoraState(0, {k: tensors[f"shared/{k}"].float() for k in state.shared}, tensors["private/user_vec"].float())
    return {k: v.detach() for k, v in tower_params(exp, embedder, state, config).items()}


def communication(embedder: LoraEncoder, state: LoraState) -> dict[str, Any]:
    """What travels per client per round, measured from the serialised upload, and the encoder it adapts."""
    upload = len(serialize(state.shared))
    adapters = {name: state.shared[name] for name in embedder.names}
    return {
        "upload_bytes_per_client": upload,
        "download_bytes_per_client": upload,
        "encoder_bytes": embedder.encoder_bytes,
        "encoder_params": embedder.encoder_params,
        "upload_ratio": upload / embedder.encoder_bytes,
        "adapter_params": sum(v.numel() for v in adapters.values()),
        "head_params": sum(state.shared[name].numel() for name in HEAD_NAMES),
        "adapter_bytes": tensor_bytes(adapters),
        "lora_layers": ",".join(str(k) for k in adapter_layers(embedder.names)),
    }


def communication_note(comm: dict[str, Any], config: RunConfig) -> str:
    return (f"federated LoRA: r={config.lora.r} adapters on {', '.join(config.lora.target_modules)} of layers "
            f"{comm['lora_layers']} ({comm['adapter_params']:,} values) + head ({comm['head_params']:,}); each client "
            f"sends {comm['upload_bytes_per_client']:,} bytes per round (safetensors) = "
            f"{100 * comm['upload_ratio']:.3f}% of the encoder's {comm['encoder_bytes']:,} parameter bytes")


def _comparable(config_json: str) -> dict[str, Any]:
    from fedrec.runtime.trainer import comparable_config as comparable  # the recommender runs' rule: rounds may grow

    return comparable(config_json)


def _save(path: Path, state: LoraState, counters: dict[str, Any], config: RunConfig,
          served: dict[str, Tensor] | None = None) -> None:
    """Checkpoint the state; ``served``: the evaluated model as tower parameters, of which the tensors the state
    does not hold (the item table and the refitted user vectors) are saved as ``served/<name>``."""
    tensors = {f"shared/{k}": v for k, v in state.shared.items()}
    tensors["private/user_vec"] = state.user_vec
    tensors.update({f"{SERVED}/{k}": v.detach().clone() for k, v in (served or {}).items() if k not in state.shared})
    tensors.update({f"server/{k}": v for k, v in state.optimizer_state.items()})
    save_checkpoint(path, tensors, dict(counters, round=state.round, config=config_to_json(config)))


def _missing_state(tensors: dict[str, Tensor], state: LoraState) -> list[str]:
    """Checkpoint keys of ``state`` (adapters, head, user vectors) that ``tensors`` lacks."""
    keys = [f"shared/{k}" for k in state.shared] + ["private/user_vec"]
    return [key for key in keys if key not in tensors]


def _restore(path: Path, state: LoraState, config: RunConfig) -> tuple[LoraState, dict[str, Any]]:
    tensors, meta = load_checkpoint(path)
    check_resumable(path, meta, bool(_missing_state(tensors, state)), config_to_json(config), _comparable, config.train.rounds,
                    f"a checkpoint of this {MODEL_NAME} run")
    shared = {k: tensors[f"shared/{k}"] for k in state.shared}
    server = tensors_under(tensors, "server/")
    counters = {k: meta[k] for k in ("seconds", "bytes_up", "bytes_down")}
    return LoraState(int(meta["round"]), shared, tensors["private/user_vec"], server), counters


def train_rounds(embedder: ItemEmbedder, state: LoraState, exp: Experiment, config: RunConfig,
                 rounds: int) -> LoraState:
    """``rounds`` rounds from ``state`` without outputs (the frozen-encoder comparison)."""
    local, server = local_steps(config, exp), server_optimizer(config)
    eligible = exp.clients.sizes > 0
    while state.round < rounds:
        state, _ = run_lora_round(embedder, state, exp.clients, local, config.train.client_fraction, server,
                                  config.train.seed, eligible)
    return state


def train_lora(config: RunConfig, out_dir: Path, resume: bool = False, on_round: RoundCallback | None = None,
               on_start: Callable[[int, int], None] | None = None) -> dict[str, Any]:
    """Run (or resume) a lora_bpr config; returns the final metrics also written to metrics.json."""
    check_lora_config(config)
    torch.use_deterministic_algorithms(True, warn_only=True)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    checkpoint = out_dir / CHECKPOINT_NAME
    if checkpoint.exists() and not resume:
        raise FedrecError(f"{out_dir} already holds a run; pass --resume to continue it or choose another --out")
    exp = prepare(tower_config(config))
    assert exp.text is not None
    embedder = encoder_for(config, exp)
    state = initial_state(exp, embedder, config.train.seed)
    counters: dict[str, Any] = {"seconds": 0.0, "bytes_up": 0, "bytes_down": 0}
    history: list[dict[str, Any]] = []
    history_path = out_dir / "history.jsonl"
    if resume and checkpoint.exists():
        state, counters = _restore(checkpoint, state, config)
        history = finished_history(history_path, state.round)
        discard_stale_metrics(out_dir, state.round, config.train.rounds)
    comm = communication(embedder, state)
    _print(communication_note(comm, config))
    atomic_write_text(out_dir / "config.json", config_to_json(config) + "\n")
    if on_start is not None:
        on_start(state.round, config.train.rounds)
    local, server = local_steps(config, exp), server_optimizer(config)
    eligible = exp.clients.sizes > 0
    rounds = config.train.rounds
    final: dict[str, Any] | None = None  # the last round's evaluation, reused for metrics.json
    while state.round < rounds:
        began = time.perf_counter()
        state, stats = run_lora_round(embedder, state, exp.clients, local, config.train.client_fraction, server,
                                      config.train.seed, eligible)
        counters["bytes_up"] += stats.bytes_up
        counters["bytes_down"] += stats.bytes_down
        record: dict[str, Any] = {"round": state.round, "train_loss": stats.train_loss, "clients": stats.clients,
                                  "bytes_up": stats.bytes_up, "bytes_down": stats.bytes_down,
                                  "upload_bytes_per_client": stats.upload_bytes_per_client}
        counters["seconds"] += time.perf_counter() - began
        served: dict[str, Tensor] | None = None
        if state.round % config.train.eval_every == 0 or state.round == rounds:
            served = tower_params(exp, embedder, state, config)
            final = dict(exp.evaluator(served))
            record.update(final)
        record["seconds"] = round(counters["seconds"], 4)
        history.append(record)
        atomic_write_text(history_path, "".join(json.dumps(entry) + "\n" for entry in history))
        if state.round % config.train.checkpoint_every == 0 or state.round == rounds:
            _save(checkpoint, state, counters, config, served if state.round == rounds else None)
        if on_round is not None:
            on_round(record)
    metrics: dict[str, Any] = dict(final) if final is not None and state.round == rounds else evaluate(
        exp, embedder, state, config)
    metrics.update(exp.evaluator.popularity_baseline())
    if config.lora.compare_frozen:
        frozen = FrozenTable(exp.text.embeddings)
        frozen_state = train_rounds(frozen, initial_state(exp, frozen, config.train.seed), exp, config, state.round)
        frozen_metrics = evaluate(exp, frozen, frozen_state, config)
        metrics.update({f"frozen_{k}": v for k, v in frozen_metrics.items() if not _is_count(k)})
    metrics.update(comm)
    metrics.update(
        mode="federated", model=MODEL_NAME, rounds=state.round, seconds=round(counters["seconds"], 3),
        bytes_up=counters["bytes_up"], bytes_down=counters["bytes_down"], dataset=exp.dataset.name,
        split=exp.split.name or config.data.split, train_interactions=len(exp.split.train),
        test_interactions=len(exp.split.test), clients=exp.partition.num_clients, idle_clients=exp.idle_clients,
        excluded_users=exp.excluded_users,
    )
    atomic_write_text(out_dir / "metrics.json", json.dumps(metrics, indent=2) + "\n")
    return metrics


def _is_count(key: str) -> bool:
    return key.endswith(("_users", "dropped_positives", "interactions"))


def _print(message: str) -> None:
    from rich.console import Console

    Console(stderr=True).print(message, highlight=False, markup=False, soft_wrap=True)

