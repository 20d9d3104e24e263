"""What a SuperNode does: hold a partition of clients, train its part of each cohort, evaluate its users.

A node is given the job config and its partition (``partition-id`` of ``num-partitions``). It keeps
only the interactions of its own clients' users; their private rows (user vectors) live in the
node's state between rounds and never leave it. Training calls the simulator's backend on the
node's part of the cohort with the same (seed, round, client) keyed randomness, so each client
computes exactly what it computes in the simulator. Constant tables (the text models' item
embeddings) are built on the node from the public item data and reported once, in the query reply.

The handlers take and return Flower ``RecordDict`` s and are used unchanged by the Flower
ClientApp (:mod:`fedrec.flower.app`) and by the in-process transport of the tests.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from flwr.app import ArrayRecord, ConfigRecord, RecordDict
from torch import Tensor

from fedrec.config import RunConfig, config_to_json
from fedrec.data.dataset import Interactions, Split
from fedrec.errors import FedrecError
from fedrec.eval.protocol import Evaluator
from fedrec.federated.aggregation import CohortUpdate
from fedrec.federated.cohort import ClientData
from fedrec.federated.personalize import Personalization, finetune, refit_private_rows
from fedrec.federated.rng import seeded_torch
from fedrec.federated.server import BACKENDS, write_private_rows
from fedrec.flower.codec import record_to_tensors, tensors_to_record, update_to_record
from fedrec.models.base import ParamKind, RecModel
from fedrec.models.registry import IMPLICIT_MODELS
from fedrec.models.sequence import SASRec, SequenceEvaluator, prepare_sequence
from fedrec.runtime.checkpoint import load_checkpoint, save_checkpoint, tensors_under

# record names used in messages and node state
INFO, TASK, SHARED, UPDATE, RESULT, METRICS, CLIENTS, PRIVATE = (
    "info", "task", "shared", "update", "result", "metrics", "clients", "private")
ITEM_INPUTS = "item_inputs"  # in a query reply: the public item tensors the model is built from (item_text)
RESIDUALS = "residuals"  # node state: its clients' compression residuals
JOB = "job"  # in a query: the job's token (names the node's saved states), the round a resumed run continues
# after (0: a fresh run) and the partitions dropped before it; kept in the node state under the same name
FINAL_REFIT = "final_refit"  # in an evaluate message: refit the private rows first (train.refit_private_epochs)
FINETUNE = "finetune"  # in an evaluate message: also report every client fine-tuned locally (eval.finetune_epochs)
RANKING_KEYS = ("hr", "ndcg", "recall", "mrr")  # per-user means that combine exactly across nodes


def node_clients(num_clients: int, partition_id: int, num_partitions: int) -> np.ndarray:
    """The clients of partition ``partition_id``: contiguous blocks of nearly equal size."""
    if num_partitions < 1 or not 0 <= partition_id < num_partitions:
        raise FedrecError(f"node config partition-id={partition_id} num-partitions={num_partitions} is invalid; "
                          "use 0 <= partition-id < num-partitions")
    if num_partitions > num_clients:
        raise FedrecError(f"num-partitions={num_partitions} exceeds the job's {num_clients} clients; use fewer nodes")
    return np.array_split(np.arange(num_clients), num_partitions)[partition_id]


@dataclass(frozen=True)
class NodeView:
    """Everything one node holds: its clients' data (indexed by global client id) and its users."""

    config: RunConfig
    model: RecModel
    partition_id: int
    num_partitions: int
    clients: np.ndarray  # global ids of this node's clients
    users: np.ndarray  # global ids of their users, sorted
    data: ClientData  # all clients' offsets; only this node's clients have examples
    split: Split  # train/test/validation of this node's users only
    evaluator: Evaluator
    num_clients: int
    num_users: int
    num_items: int
    ranking: bool
    constants: dict[str, Tensor] = field(default_factory=dict)  # constant shared tables, built here, never sent
    item_inputs: dict[str, Tensor] = field(default_factory=dict)  # public item tensors the model is built from
    client_of_user: np.ndarray | None = None  # (num_users,) every user's client (fine-tuning maps users to copies)
    state_dir: Path | None = None  # where the node keeps its state after every round, for a resumed run


def load_node(config: RunConfig, partition_id: int, num_partitions: int, state_dir: Path | None = None) -> NodeView:
    """Load the job's data and keep this partition's clients; the rest is dropped at once. With ``state_dir``
    the node saves its state (private rows, compression residuals) after every round, so that a resumed
    run (``fedrec deploy --resume``) continues from it."""
    from fedrec.runtime.experiment import prepare, recency_emphasis

    torch.use_deterministic_algorithms(True, warn_only=True)  # as fedrec train: same seed, same floats
    exp = prepare(config)
    clients = node_clients(exp.partition.num_clients, partition_id, num_partitions)
    is_own_user = np.isin(exp.partition.client_of_user, clients)

    def own(part: Interactions) -> Interactions:
        return part.subset(is_own_user[part.users])

    validation = own(exp.split.validation) if exp.split.validation is not None else None
    split = Split(own(exp.split.train), own(exp.split.test), validation, exp.split.name)
    ranking = config.model.name in IMPLICIT_MODELS
    model = exp.model
    if isinstance(model, SASRec):  # its own users' training windows; it ranks from their latest histories
        data, model, validation_histories, _ = prepare_sequence(model, split, exp.partition.client_of_user,
                                                                exp.partition.num_clients)
        evaluator: Evaluator = SequenceEvaluator(model, split, ranking, exp.dataset.rating_range, config.eval.ks,
                                                 config.eval.sampled_negatives, config.eval.seed,
                                                 validation_histories=validation_histories)
    else:
        local_train = own(recency_emphasis(config, exp.split.train, exp.dataset))  # the simulator's examples, own rows
        data = ClientData.from_interactions(local_train, exp.partition.client_of_user, exp.partition.num_clients,
                                            num_items=exp.dataset.num_items)
        evaluator = Evaluator(model, split, ranking, exp.dataset.rating_range, config.eval.ks,
                              config.eval.sampled_negatives, config.eval.seed)
    return NodeView(config, model, partition_id, num_partitions, clients, np.flatnonzero(is_own_user), data,
                    split, evaluator, exp.partition.num_clients, exp.dataset.num_users, exp.dataset.num_items, ranking,
                    constant_tables(model, config.train.seed), item_inputs(model), exp.partition.client_of_user,
                    _writable(state_dir, partition_id))


def describe(view: NodeView, state: RecordDict, content: RecordDict) -> RecordDict:
    """The node's answer to the server's query (the start of a run): partition, population sizes, its clients'
    sizes. A fresh run starts from the initial private rows and clears this job's saved states; a resumed one
    restores the node's state after the server's last finished round (unless the node had been dropped)."""
    job = content.config_records[JOB] if JOB in content.config_records else ConfigRecord({})
    token, resume_round = str(job.get("token", "job")), int(job.get("resume_round", 0))
    dropped = [int(p) for p in job.get("dropped", [])]
    state.config_records[JOB] = ConfigRecord({"token": token})
    for name in (PRIVATE, RESIDUALS):
        if name in state.array_records:
            del state.array_records[name]
    if resume_round and view.partition_id not in dropped:
        restore_node_state(view, state, resume_round)
    elif not resume_round and view.state_dir is not None:
        for path in _saved_rounds(view, state).values():
            path.unlink()  # a fresh run of this job: an earlier attempt's state must not be resumed into it
    ratings = view.split.train.ratings.astype(np.float64)
    info = ConfigRecord({
        "partition_id": view.partition_id, "num_partitions": view.num_partitions, "num_clients": view.num_clients,
        "num_users": view.num_users, "num_items": view.num_items,
        "rating_sum": float(ratings.sum()), "rating_count": int(len(ratings)),
    })
    if view.evaluator.rating_range is not None:  # the public rating scale (DP starts the global bias mid-scale)
        info["rating_low"], info["rating_high"] = (float(v) for v in view.evaluator.rating_range)
    clients = ArrayRecord({"clients": torch.from_numpy(view.clients.astype(np.int64)),
                           "sizes": torch.from_numpy(view.data.sizes[view.clients].astype(np.int64))})
    content = {INFO: info, CLIENTS: clients}
    if view.item_inputs:  # built from public item data on the node (the encoder's item embeddings)
        content[ITEM_INPUTS] = tensors_to_record(view.item_inputs)
    return RecordDict(content)


def item_inputs(model: RecModel) -> dict[str, Tensor]:
    """What the model was built from besides its sizes: the item text embeddings of the text models and of
    SASRec with ``item_init = "text"`` (public item data, so the server may take them from the nodes)."""
    item_text = getattr(model, "item_text", None)
    return {"item_text": item_text} if item_text is not None else {}


def _writable(state_dir: Path | None, partition_id: int) -> Path | None:
    """``state_dir``, created and checked writable at start-up (a one-line error now, not a dropped node later)."""
    if state_dir is None:
        return None
    probe = state_dir / f".write-check-{partition_id}"
    try:
        state_dir.mkdir(parents=True, exist_ok=True)
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as error:
        raise FedrecError(f"the SuperNode cannot write its state-dir {state_dir} ({error.strerror}); "
                          "give --node-config state-dir a writable folder") from None
    return state_dir


def constant_tables(model: RecModel, seed: int = 0) -> dict[str, Tensor]:
    """The model's shared tables that nobody trains (``trainable=False``), at their fixed values."""
    names = model.constant_names()
    if not names:
        return {}
    values = model.init_params(torch.Generator().manual_seed(seed))
    return {name: values[name] for name in names}


def private_rows(view: NodeView, state: RecordDict) -> dict[str, Tensor]:
    """This node's users' private rows: from the node state, else the run's initial values."""
    if PRIVATE in state.array_records:
        return record_to_tensors(state.array_records[PRIVATE])
    initial = view.model.init_params(torch.Generator().manual_seed(view.config.train.seed))
    users = torch.from_numpy(view.users)
    return {spec.name: initial[spec.name][users].clone() for spec in view.model.specs_by_kind(ParamKind.PRIVATE_ROWS)}


def store_private_rows(view: NodeView, state: RecordDict, params: dict[str, Tensor]) -> None:
    """Keep this node's users' private rows of full-shape ``params`` in the node state (read by :func:`private_rows`)."""
    users = torch.from_numpy(view.users)
    state.array_records[PRIVATE] = tensors_to_record(
        {spec.name: params[spec.name][users] for spec in view.model.specs_by_kind(ParamKind.PRIVATE_ROWS)})


def full_params(view: NodeView, shared: dict[str, Tensor], private: dict[str, Tensor]) -> dict[str, Tensor]:
    """Model parameters with full shapes: the server's shared tensors, the node's own constant tables and
    its private rows (other users' rows are zero and never read)."""
    params = {**view.constants, **shared}
    users = torch.from_numpy(view.users)
    for spec in view.model.specs_by_kind(ParamKind.PRIVATE_ROWS):
        table = torch.zeros(spec.shape, dtype=private[spec.name].dtype)
        params[spec.name] = table.index_copy(0, users, private[spec.name])
    return params


def handle_train(view: NodeView, state: RecordDict, content: RecordDict) -> RecordDict:
    """Train this node's part of the cohort; reply with its CohortUpdate, keep its private rows (and, with
    a state directory, save the node's state after the round).

    Under secure aggregation (``secure`` in the task) the reply carries no update: the node keeps the
    ring sum of its clients' encoded uploads for the protocol's rounds (:mod:`fedrec.flower.secure`).
    """
    reply = _train_round(view, state, content)
    save_node_state(view, state, int(content.config_records[TASK]["round"]) + 1)
    return reply


def _state_stem(view: NodeView, state: RecordDict, num_partitions: int | str | None = None) -> str:
    """The file-name stem of this node's saved states for the job named in ``state`` (see :data:`JOB`)."""
    token = str(state.config_records[JOB]["token"]) if JOB in state.config_records else "job"
    return f"{token}-partition-{view.partition_id}-of-{num_partitions or view.num_partitions}"


def _saved_rounds(view: NodeView, state: RecordDict) -> dict[int, Path]:
    assert view.state_dir is not None
    return {int(path.stem.rsplit("-", 1)[1]): path
            for path in view.state_dir.glob(f"{_state_stem(view, state)}-round-*.safetensors")}


def _needs_saved_state(view: NodeView) -> bool:
    """Whether a resumed run needs this node's saved state: its users' private rows, or error-feedback residuals."""
    from fedrec.runtime.trainer import compression_settings

    compression = compression_settings(view.config)
    return bool(view.model.specs_by_kind(ParamKind.PRIVATE_ROWS)) or bool(compression and compression.error_feedback)


def save_node_state(view: NodeView, state: RecordDict, rounds_done: int) -> None:
    """Save the node's state after ``rounds_done`` rounds to its state directory (atomically), keeping the
    states of as many rounds as the server's checkpoint may lag behind (train.checkpoint_every)."""
    if view.state_dir is None or not _needs_saved_state(view):
        return
    tensors = {f"private/{name}": value for name, value in private_rows(view, state).items()}
    if RESIDUALS in state.array_records:
        tensors.update({f"residuals/{k}": v for k, v in record_to_tensors(state.array_records[RESIDUALS]).items()})
    save_checkpoint(view.state_dir / f"{_state_stem(view, state)}-round-{rounds_done}.safetensors", tensors,
                    {"round": rounds_done, "config": config_to_json(view.config)})
    kept = view.config.train.checkpoint_every + 1
    for saved_round, path in _saved_rounds(view, state).items():
        if saved_round <= rounds_done - kept:
            path.unlink(missing_ok=True)


def restore_node_state(view: NodeView, state: RecordDict, rounds_done: int) -> None:
    """Put the node's saved state after ``rounds_done`` rounds back into ``state``; a one-line error without it."""
    if not _needs_saved_state(view):
        return
    node = f"SuperNode partition {view.partition_id}"
    if view.state_dir is None:
        raise FedrecError(f"{node} keeps no state, so its users' private rows cannot be resumed; start it with "
                          "--node-config 'state-dir=DIR' (fedrec deploy does) or start the run over")
    saved = _saved_rounds(view, state)
    if rounds_done not in saved:
        others = sorted({path.stem.split("-of-")[1].split("-")[0]
                         for path in view.state_dir.glob(f"{_state_stem(view, state, '*')}-round-*.safetensors")}
                        - {str(view.num_partitions)})
        if others:
            raise FedrecError(f"{node} saved its state as one of {' or '.join(others)} partitions; resume with "
                              f"--nodes {others[0]} (num-partitions={others[0]})")
        raise FedrecError(f"{node} has no saved state after round {rounds_done} in {view.state_dir}; give it the "
                          "state-dir of the interrupted run, or start the run over")
    path = saved[rounds_done]
    from fedrec.runtime.trainer import comparable_config

    tensors, meta = load_checkpoint(path)
    if comparable_config(str(meta.get("config", "{}"))) != comparable_config(config_to_json(view.config)):
        raise FedrecError(f"{node}: the state in {path} was saved by a different job; resume with the same config "
                          "or start the run over")
    state.array_records[PRIVATE] = tensors_to_record(
        tensors_under(tensors, "private/"))
    residuals = tensors_under(tensors, "residuals/")
    if residuals:
        state.array_records[RESIDUALS] = tensors_to_record(residuals)
    for later, stale in saved.items():  # states of the abandoned rounds after it: this run redoes them
        if later > rounds_done:
            stale.unlink(missing_ok=True)


def _train_round(view: NodeView, state: RecordDict, content: RecordDict) -> RecordDict:
    task = content.config_records[TASK]
    round_index = int(task["round"])
    cohort = np.asarray(record_to_tensors(content.array_records[CLIENTS])["cohort"].numpy(), dtype=np.int64)
    foreign = np.setdiff1d(cohort, view.clients)
    if len(foreign):
        raise FedrecError(f"node {view.partition_id} was asked to train clients it does not hold: {foreign[:5].tolist()}")
    private = private_rows(view, state)
    if len(cohort) == 0:
        return RecordDict({RESULT: ConfigRecord({"round": round_index, "loss_sum": 0.0, "steps": 0, "clients": 0})})
    shared = record_to_tensors(content.array_records[SHARED])
    params = full_params(view, shared, private)
    from fedrec.runtime.trainer import local_training

    train = BACKENDS[view.config.train.backend]
    with seeded_torch(view.config.train.seed, round_index):
        result = train(view.model, params, view.data, np.sort(cohort), local_training(view.config), view.config.train.seed,
                       round_index)
    store_private_rows(view, state, write_private_rows(params, result))
    reply = ConfigRecord({"round": round_index, "loss_sum": float(result.loss_sum), "steps": int(result.steps),
                          "clients": len(cohort)})
    if task.get("secure", False):  # secure aggregation: the upload leaves only masked, in the protocol's rounds
        from fedrec.flower.secure import keep_contribution

        keep_contribution(view, state, result.update, task, round_index)
        return RecordDict({RESULT: reply})
    from fedrec.flower.local_dp import local_privacy, node_noise_generator, noisy_local_sum

    local_dp = local_privacy(view.config)
    if local_dp is not None:  # local DP: only this node's noisy sum of clipped uploads leaves it
        generator = node_noise_generator(view.config.train.seed, round_index, view.partition_id)
        upload = tensors_to_record(noisy_local_sum(view.model, result.update, local_dp, generator))
        return RecordDict({UPDATE: upload, RESULT: reply})
    return RecordDict({UPDATE: upload_record(view, state, result.update, np.sort(cohort), round_index), RESULT: reply})


def upload_record(view: NodeView, state: RecordDict, update: CohortUpdate, clients: np.ndarray,
                  round_index: int) -> ArrayRecord:
    """The node's upload: its clients' CohortUpdate as it is, or compressed per client with the clients'
    error-feedback residuals kept in the node state (fedrec/federated/compression.py)."""
    from fedrec.federated.compression import UploadLayout, encode_upload
    from fedrec.flower.codec import encoded_to_record
    from fedrec.runtime.trainer import compression_settings

    compression = compression_settings(view.config)
    if compression is None:
        return update_to_record(update)
    residuals = record_to_tensors(state.array_records[RESIDUALS]) if RESIDUALS in state.array_records else {}
    compressed = encode_upload(update, clients, UploadLayout.of(view.model), compression, residuals,
                               view.config.train.seed, round_index)
    if compression.error_feedback:
        state.array_records[RESIDUALS] = tensors_to_record(compressed.residuals)
    return encoded_to_record(compressed.encoded)


def handle_evaluate(view: NodeView, state: RecordDict, content: RecordDict) -> RecordDict:
    """Metrics of the received shared model with this node's private rows, on this node's users.

    With ``FINAL_REFIT`` in the message (the run's last evaluation and train.refit_private_epochs > 0),
    the node first refits its users' private rows to this shared model, as the simulator does after
    its last round, keeps them, and reports the metrics before the refit under ``before_refit_``.
    With ``FINETUNE`` (eval.finetune_epochs > 0), it also fine-tunes a copy of the model for each of its
    clients, as the simulator's final metrics do, and reports those under ``finetuned_``.
    """
    shared = record_to_tensors(content.array_records[SHARED])
    params = full_params(view, shared, private_rows(view, state))
    train = view.config.train
    if FINAL_REFIT in content.config_records and train.refit_private_epochs:
        before = node_metrics(view, params, prefix="before_refit_")
        params = refit_private_rows(view.model, params, view.data, train.refit_private_epochs, train.refit_lr,
                                    train.batch_size, train.seed)
        store_private_rows(view, state, params)
        metrics = {**before, **node_metrics(view, params)}
    else:
        metrics = node_metrics(view, params)
    if FINETUNE in content.config_records and view.config.eval.finetune_epochs:
        from fedrec.runtime.trainer import local_training

        personal = finetune(view.model, params, view.data, view.client_of_user,
                            local_training(view.config, finetune=True), train.seed, mix_beta=view.config.eval.mix_beta)
        metrics.update(node_metrics(view, params, prefix="finetuned_", personal=personal, validation=False))
    return RecordDict({METRICS: ConfigRecord({"json": json.dumps(metrics)})})


def node_metrics(view: NodeView, params: dict[str, Tensor], prefix: str = "", personal: Personalization | None = None,
                 validation: bool = True) -> dict[str, float]:
    """Metrics on this node's users plus the counts :func:`combine_metrics` weights them by; ``personal``:
    of each client's fine-tuned copy."""
    if not view.ranking:
        out = dict(view.evaluator(params, personal, prefix=prefix, validation=validation))
        out["count"] = len(view.split.test)
        out["val_count"] = len(view.split.validation) if view.split.validation is not None else 0
        return out
    metrics = view.evaluator(params, personal, validation=False)
    out = {prefix + k: v for k, v in metrics.items() if k.split("@")[0] in RANKING_KEYS}
    out["evaluated_users"] = int(metrics.get("evaluated_users", 0))
    return out


def combine_metrics(parts: list[dict[str, float]], ranking: bool) -> dict[str, float]:
    """The whole population's metrics from per-node metrics and counts (exact for these metrics).

    RMSE: sqrt of the count-weighted mean of squared node RMSEs; MAE: count-weighted mean; ranking
    metrics (per-user means): weighted by each node's evaluated users.
    """
    out: dict[str, float] = {}
    if ranking:
        total = sum(int(p.get("evaluated_users", 0)) for p in parts)
        keys = sorted({k for p in parts for k in p if k != "evaluated_users"})
        for key in keys:
            weighted = [(p[key], p["evaluated_users"]) for p in parts if key in p and p["evaluated_users"]]
            out[key] = sum(v * w for v, w in weighted) / total if total else math.nan
        out["evaluated_users"] = total
        return out
    for prefix, count_key in ((stage + part, count) for stage in ("", "before_refit_", "finetuned_")
                              for part, count in (("val_", "val_count"), ("", "count"))):
        weighted = [(p, int(p.get(count_key, 0))) for p in parts if p.get(count_key, 0)]
        total = sum(w for _, w in weighted)
        if not total or f"{prefix}rmse" not in weighted[0][0]:
            continue
        out[f"{prefix}rmse"] = math.sqrt(sum(p[f"{prefix}rmse"] ** 2 * w for p, w in weighted) / total)
        out[f"{prefix}mae"] = sum(p[f"{prefix}mae"] * w for p, w in weighted) / total
    return out


class InProcessNodes:
    """A :class:`~fedrec.flower.federation.Transport` running the node handlers in this process.

    Same handlers and records as the ClientApp, no Flower runtime: for tests and for checking a
    partition quickly. Node ids are large unsigned 64-bit numbers, as Flower's are. ``fail`` maps a
    view's position to the round from which that node stops answering (it still answers the query);
    ``fail_at`` maps it to (round, message type) from which on it stops, e.g. (1, "train.secagg_unmask")
    for a node that leaves a secure-aggregation round after sending its masked input.
    """

    def __init__(self, views: list[NodeView], fail: dict[int, int] | None = None,
                 fail_at: dict[int, tuple[int, str]] | None = None) -> None:
        ids = [(1 << 63) + 12345 * index for index in range(len(views))]
        self.views = dict(zip(ids, views))
        self.states = {node: RecordDict() for node in self.views}
        self.fail = {ids[index]: first_round for index, first_round in (fail or {}).items()}
        self.fail_at = {ids[index]: when for index, when in (fail_at or {}).items()}

    def node_ids(self) -> list[int]:
        return list(self.views)

    def exchange(self, requests: dict[int, RecordDict], message_type: str, round_index: int,
                 timeout: float) -> dict[int, RecordDict]:
        from fedrec.flower.secure import NODE_HANDLERS, STAGES

        handlers = {"query": describe, "train": handle_train,
                    "evaluate": handle_evaluate}
        handlers.update({kind: (lambda view, state, content, stage=stage: stage(view.config, state, content))
                         for kind, stage in NODE_HANDLERS.items()})
        order = ["train", *(f"train.secagg_{stage}" for stage in STAGES), "evaluate"]  # message types in a round
        replies = {}
        for node, content in requests.items():
            if message_type != "query" and node in self.fail and round_index >= self.fail[node]:
                continue
            if message_type != "query" and node in self.fail_at:
                first_round, first_type = self.fail_at[node]
                if (round_index, order.index(message_type)) >= (first_round, order.index(first_type)):
                    continue
            replies[node] = handlers[message_type](self.views[node], self.states[node], content)
        return replies
