"""The server side of a deployed run: the simulator's round, with the clients on remote nodes.

Each round the server samples the cohort exactly as the simulator does (``sample_cohort`` with the
same seed and eligibility), sends every live node the shared parameters and the cohort clients it
holds, merges the uploads into cohort order, and applies the same ``server_update``
(aggregation and server optimiser). Same seed, same cohort, same model as ``fedrec train``.

Under ``privacy.secure_aggregation`` the nodes upload nothing after training: the server runs the
Bonawitz/SecAgg+ protocol with them as parties (:mod:`fedrec.flower.secure`, four more round trips per
round) and steps from the decoded cohort sum alone, as the simulator does.

Nodes are reached through a :class:`Transport` (the Flower Grid in :mod:`fedrec.flower.app`, an
in-process one in tests). A node that does not answer a round within the timeout is dropped: the
round (and the rest of the run) goes on with the other nodes' clients, and the history says so.
When no node answers, the run stops with a one-line error.

Outputs, in the run directory, as ``fedrec train`` writes them: ``config.json``, ``history.jsonl``,
``checkpoint.safetensors`` (shared parameters and server optimiser state only: the private rows stay
on the nodes) and ``metrics.json``.
"""

from __future__ import annotations

import hashlib
import json
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np
import torch
from flwr.app import ArrayRecord, ConfigRecord, RecordDict
from torch import Tensor

from fedrec.config import RunConfig, config_to_json
from fedrec.errors import FedrecError
from fedrec.federated.cohort import sample_cohort
from fedrec.federated.server import (FedAvgSettings, ServerState, clip_norm_of, empty_update, server_update,
                                     shared_shapes)
from fedrec.flower.codec import (merge_in_cohort_order, record_to_tensors, record_to_update, serialized_bytes,
                                 tensors_to_record)
from fedrec.flower.codec import record_to_upload
from fedrec.flower.local_dp import mean_of_noisy_sums
from fedrec.flower.node import (CLIENTS, FINAL_REFIT, FINETUNE, INFO, METRICS, RESULT, JOB, SHARED, TASK, UPDATE,
                                ITEM_INPUTS, combine_metrics)
from fedrec.models.base import RecModel, num_catalogue_items
from fedrec.models.registry import IMPLICIT_MODELS, build_model, model_options
from fedrec.privacy.cohort_sum import sum_layout
from fedrec.privacy.dp import CentralDP
from fedrec.privacy.ldp import LocalDP
from fedrec.runtime.checkpoint import (CHECKPOINT_NAME, atomic_write_text, check_resumable, discard_stale_metrics,
                                       finished_history, load_checkpoint, save_checkpoint, tensors_under)

if TYPE_CHECKING:
    from fedrec.flower.secure import SecureRound

RoundCallback = Callable[[dict[str, Any]], None]


class Transport(Protocol):
    """How the server reaches the nodes; replies come back keyed by node id, missing ones absent."""

    def node_ids(self) -> list[int]:
        """The nodes connected now."""

    def exchange(self, requests: dict[int, RecordDict], message_type: str, round_index: int,
                 timeout: float) -> dict[int, RecordDict]:
        """Send each node its request; return the replies that arrived within ``timeout`` seconds."""


@dataclass(frozen=True)
class Population:
    """What the server learns from the nodes' answers: who holds which client, and the model sizes."""

    nodes: list[int]  # node ids (Flower's, unsigned 64-bit)
    owner: np.ndarray  # (num_clients,) index into ``nodes`` of the node holding each client
    sizes: np.ndarray  # (num_clients,) training examples per client
    num_users: int
    num_items: int
    global_mean: float
    rating_range: tuple[float, float] | None = None  # the public rating scale, when the data has one
    item_inputs: dict[str, Tensor] = field(default_factory=dict)  # public item tensors the model is built from
    partitions: list[int] = field(default_factory=list)  # the partition id of each of ``nodes``

    def lost(self, live: list[int]) -> list[int]:
        """The partition ids of the nodes not in ``live`` (dropped during the run)."""
        return sorted(partition for node, partition in zip(self.nodes, self.partitions) if node not in live)


def wait_for_nodes(transport: Transport, expected: int, timeout: float, poll: float = 0.25) -> list[int]:
    """The connected node ids once ``expected`` are there; a clear error after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        nodes = sorted(transport.node_ids())
        if len(nodes) >= expected:
            return nodes
        if time.monotonic() > deadline:
            raise FedrecError(f"only {len(nodes)} of {expected} SuperNodes connected within {timeout:.0f} s; "
                              "check that they run and reach the SuperLink address")
        time.sleep(poll)


def discover(transport: Transport, nodes: list[int], timeout: float, job: str = "job", resume_round: int = 0,
             dropped: list[int] | None = None) -> Population:
    """Ask every node for its partition and check that together they hold every client exactly once.

    ``job`` names the nodes' saved states; ``resume_round``: the run resumes after that many rounds and the
    nodes restore their state from then, except those of the ``dropped`` partitions (lost before it).
    """
    query = RecordDict({JOB: ConfigRecord({"token": job, "resume_round": resume_round, "dropped": list(dropped or [])})})
    replies = transport.exchange({node: query for node in nodes}, "query", 0, timeout)
    missing = [node for node in nodes if node not in replies]
    if missing:
        raise FedrecError(f"{len(missing)} SuperNode(s) did not describe their partition within {timeout:.0f} s; "
                          "see the SuperNode logs (is the data path in --node-config right?)")
    infos = {node: reply.config_records[INFO] for node, reply in replies.items()}
    first = next(iter(infos.values()))
    for key in ("num_clients", "num_users", "num_items", "num_partitions"):
        values = {int(info[key]) for info in infos.values()}
        if len(values) != 1:
            raise FedrecError(f"the SuperNodes disagree on {key} ({sorted(values)}); give every node the same job and data")
    num_clients, num_partitions = int(first["num_clients"]), int(first["num_partitions"])
    partition_ids = sorted(int(info["partition_id"]) for info in infos.values())
    if partition_ids != list(range(num_partitions)):
        raise FedrecError(f"SuperNodes hold partitions {partition_ids} of {num_partitions}; start exactly one node per "
                          f"partition-id 0..{num_partitions - 1}")
    owner = np.full(num_clients, -1, dtype=np.int64)
    sizes = np.zeros(num_clients, dtype=np.int64)
    for index, node in enumerate(nodes):
        arrays = replies[node].array_records[CLIENTS].to_torch_state_dict()
        clients = arrays["clients"].numpy()
        owner[clients] = index
        sizes[clients] = arrays["sizes"].numpy()
    if (owner < 0).any():
        raise FedrecError(f"{int((owner < 0).sum())} clients are held by no SuperNode; check the node partitions")
    total = sum(float(info["rating_sum"]) for info in infos.values())
    count = sum(int(info["rating_count"]) for info in infos.values())
    rating_range = (float(first["rating_low"]), float(first["rating_high"])) if "rating_low" in first else None
    return Population(list(nodes), owner, sizes, int(first["num_users"]), int(first["num_items"]), total / max(count, 1),
                      rating_range, agreed_item_inputs(replies),
                      [int(infos[node]["partition_id"]) for node in nodes])


def agreed_item_inputs(replies: dict[int, RecordDict]) -> dict[str, Tensor]:
    """The public item tensors every node built the model from (the item text embeddings); they must agree."""
    tables = [record_to_tensors(reply.array_records[ITEM_INPUTS]) if ITEM_INPUTS in reply.array_records else {}
              for reply in replies.values()]
    first = tables[0]
    for other in tables[1:]:
        if sorted(other) != sorted(first) or not all(_same_table(other[name], first[name]) for name in first):
            raise FedrecError("the SuperNodes built different item text embeddings; give every node the same job, "
                              "item data and text encoder (model.text_encoder)")
    return first


def _same_table(a: Tensor, b: Tensor) -> bool:
    """Equal up to the last bits that machines with other CPUs or BLAS may disagree on."""
    return a.shape == b.shape and torch.allclose(a, b, atol=1e-4, rtol=0)


def sent_record(shared: dict[str, Tensor], model: RecModel) -> ArrayRecord:
    """The shared tensors the server sends: every node already holds the constant tables it built."""
    constant = set(model.constant_names())
    return tensors_to_record({name: value for name, value in shared.items() if name not in constant})


def server_model(config: RunConfig, population: Population) -> RecModel:
    """The job's model, sized and initialised as the simulator's (global mean from the nodes' sums)."""
    options = config.model.options()
    if "global_mean" in model_options(config.model.name):
        options["global_mean"] = float(np.float32(population.global_mean))
    return build_model(config.model.name, options, population.num_users, population.num_items,
                       item_text=population.item_inputs.get("item_text"))


def _save(out_dir: Path, shared: dict[str, Tensor], server_state: dict[str, Tensor], meta: dict[str, Any],
          privacy_state: dict[str, Tensor] | None = None) -> None:
    tensors = {f"param/{k}": v for k, v in shared.items()}
    tensors.update({f"server/{k}": v for k, v in server_state.items()})
    tensors.update({f"privacy/{k}": v for k, v in (privacy_state or {}).items()})
    save_checkpoint(out_dir / CHECKPOINT_NAME, tensors, meta)


def _evaluate(transport: Transport, nodes: list[int], shared_record: ArrayRecord, round_index: int, timeout: float,
              ranking: bool, final_refit: bool = False, finetune: bool = False) -> dict[str, float]:
    """Metrics of the shared model over every live node's users; ``final_refit``: the nodes first refit their
    users' private rows to it (train.refit_private_epochs, the run's last evaluation); ``finetune``: they
    also report each client's fine-tuned copy (eval.finetune_epochs, the run's final metrics)."""
    content: dict[str, Any] = {SHARED: shared_record}
    if final_refit:
        content[FINAL_REFIT] = ConfigRecord({"refit": 1})
    if finetune:
        content[FINETUNE] = ConfigRecord({"finetune": 1})
    replies = transport.exchange({n: RecordDict(content) for n in nodes}, "evaluate", round_index, timeout)
    parts = [json.loads(str(reply.config_records[METRICS]["json"])) for reply in replies.values()]
    if not parts:
        raise FedrecError(f"no SuperNode answered the evaluation after round {round_index} within {timeout:.0f} s; "
                          "see the SuperNode logs")
    return combine_metrics(parts, ranking)


DEPLOYABLE_MODELS = ("mf", "bpr", "ncf", "text_bpr", "text_mf", "tower_bpr", "tower_mf", "sasrec")


def check_deployable(config: RunConfig) -> None:
    """Refuse, in one line, settings the deployment does not implement (rather than train something else)."""
    if config.train.mode != "federated":
        raise FedrecError("deployment runs federated jobs; set train.mode=federated (centralised runs use fedrec train)")
    if config.model.name not in DEPLOYABLE_MODELS:
        raise FedrecError(f"model.name={config.model.name!r} is not supported in deployment yet; "
                          f"use one of {', '.join(DEPLOYABLE_MODELS)} or fedrec train")
    if getattr(config.model, "cold_start_items", 0):
        raise FedrecError("model.cold_start_items is not supported in deployment yet; set it to 0 or use fedrec train")
    if config.attack.enabled:  # simulated attackers would silently be left out of a deployment
        raise FedrecError("[attack] simulates malicious clients in fedrec train only; remove attack.method to deploy "
                          "(in a deployment, attackers are real nodes)")
    from fedrec.runtime.trainer import participation_settings

    if participation_settings(config) is not None:  # simulated stragglers/dropouts; real nodes are late by themselves
        raise FedrecError("train.client_dropout / train.deadline_* simulate stragglers in fedrec train only; remove them "
                          "to deploy (a deployment drops nodes that miss --round-timeout)")
    if config.privacy.hiding != "none":
        raise FedrecError("privacy.hiding is not supported in deployment yet; remove it or use fedrec train "
                          "(privacy.secure_aggregation hides the touched items in deployment too)")
    from fedrec.flower.secure import check_secure_deployment

    check_secure_deployment(config)


def run_federation(config: RunConfig, transport: Transport, out_dir: Path, expected_nodes: int,
                   round_timeout: float = 300.0, connect_timeout: float = 120.0,
                   on_round: RoundCallback | None = None, resume: bool = False) -> dict[str, Any]:
    """Run the configured federated job over the nodes behind ``transport``; returns the final metrics.

    ``resume`` continues from the checkpoint in ``out_dir`` (shared parameters, server optimiser and privacy
    state, history): the nodes restore their private rows from their state directories (``load_node``), so
    the run reaches the model an uninterrupted one does.

    Privacy and defences are the simulator's: central DP (Poisson sampling, noise calibrated before the
    run, epsilon per round in the history, a stop before a round that would exceed privacy.epsilon) and
    [defence] act in :func:`server_update`; local DP noises on the nodes (:mod:`fedrec.flower.local_dp`);
    secure aggregation runs the protocol among the nodes (:mod:`fedrec.flower.secure`) and the server
    steps from the unmasked sum (central DP then noises that sum).
    """
    from fedrec.runtime.experiment import check_server_tensors
    from fedrec.runtime.trainer import budget_stop_reason, check_training_loss, fedavg_settings, privacy_settings, \
        privacy_spent, privacy_summary, public_start_params

    check_deployable(config)
    torch.use_deterministic_algorithms(True, warn_only=True)
    out_dir.mkdir(parents=True, exist_ok=True)
    if not resume and (out_dir / CHECKPOINT_NAME).exists():
        raise FedrecError(f"{out_dir} already holds a run; resume it (fedrec deploy --resume, or resume = true in the "
                          "run config) or choose another out-dir")
    saved = load_deployment(out_dir, config) if resume else None
    resume_round = int(saved[1]["round"]) if saved is not None else 0
    dropped = [int(p) for p in saved[1].get("dropped_partitions", [])] if saved is not None else []
    began = time.perf_counter() - (float(saved[1]["seconds"]) if saved is not None else 0.0)
    nodes = wait_for_nodes(transport, expected_nodes, connect_timeout)
    from fedrec.flower.secure import check_secure_deployment

    check_secure_deployment(config, len(nodes))
    population = discover(transport, nodes, max(round_timeout, connect_timeout),  # start-up: first ClientApp imports
                          job_token(config, out_dir), resume_round, dropped)
    if saved is not None:  # the nodes are back with their states: only now is the earlier finish out of date
        _check_item_inputs(saved[0], population)
        discard_stale_metrics(out_dir, resume_round, config.train.rounds)
    atomic_write_text(out_dir / "config.json", config_to_json(config) + "\n")
    model = server_model(config, population)
    check_server_tensors(config, model)
    eligible = population.sizes > 0  # as the simulator: clients without training data are never sampled
    # calibrated once, before the first round (a resumed run keeps the noise it was calibrated to)
    privacy = privacy_settings(config, int(eligible.sum()),
                               float(saved[1]["noise_multiplier"]) if saved and "noise_multiplier" in saved[1] else None)
    settings = fedavg_settings(config, privacy)
    initial = model.init_params(torch.Generator().manual_seed(config.train.seed))
    if privacy is not None:
        initial = public_start_params(initial, population.rating_range)
    shared = {name: initial[name] for name in model.shared_names()}
    del initial
    ranking = config.model.name in IMPLICIT_MODELS
    num_items = num_catalogue_items(model)
    shapes = shared_shapes(model)
    server_state: dict[str, Tensor] = {}
    privacy_state: dict[str, Tensor] = {}
    live = [node for node, partition in zip(population.nodes, population.partitions) if partition not in dropped]
    history: list[dict[str, Any]] = []
    bytes_up = bytes_down = 0
    if saved is not None:
        tensors, meta = saved
        shared = {name: tensors[f"param/{name}"] for name in shared}
        server_state = tensors_under(tensors, "server/")
        privacy_state = tensors_under(tensors, "privacy/")
        bytes_up, bytes_down = int(meta["bytes_up"]), int(meta["bytes_down"])
        history = finished_history(out_dir / "history.jsonl", resume_round)
    stop_reason: str | None = None
    rounds_done, final_round, final = resume_round, -1, {}
    for round_index in range(resume_round, config.train.rounds):
        stop_reason = budget_stop_reason(config, privacy, round_index)
        if stop_reason is not None:
            print(f"{stop_reason} (checkpoint and metrics written to {out_dir})", file=sys.stderr)
            break
        cohort = sample_cohort(len(population.sizes), settings.client_fraction, config.train.seed, round_index, eligible,
                               settings.sampling)
        shared_record = sent_record(shared, model)
        requests: dict[int, RecordDict] = {}
        positions: dict[int, np.ndarray] = {}
        for node in live:
            positions[node] = np.flatnonzero(population.owner[cohort] == population.nodes.index(node))
            part = torch.from_numpy(cohort[positions[node]].astype(np.int64))
            task = ConfigRecord({"round": round_index})
            if settings.secure_aggregation is not None:  # nodes keep their contribution for the protocol
                task.update(_secure_task(model, settings, privacy, privacy_state))
            requests[node] = RecordDict({SHARED: shared_record, TASK: task, CLIENTS: ArrayRecord({"cohort": part})})
        replies = transport.exchange(requests, "train", round_index, round_timeout)
        lost = [node for node in live if node not in replies or RESULT not in replies[node].config_records]
        live = [node for node in live if node not in lost]
        if not live:
            raise FedrecError(f"no SuperNode answered round {round_index + 1} within {round_timeout:.0f} s; "
                              "see the SuperNode logs")
        round_down = sum(serialized_bytes(requests[node]) for node in requests)
        round_up = sum(serialized_bytes(replies[node]) for node in live)
        secure = None
        if settings.secure_aggregation is not None:  # the protocol's rounds: the server learns only the sum
            secure = _secure_sum(transport, model, settings, privacy, privacy_state,
                                 {node: int(replies[node].config_records[RESULT]["clients"]) for node in live},
                                 config, round_index, round_timeout, out_dir)
            round_up, round_down = round_up + secure.bytes_up, round_down + secure.bytes_down
            live = [node for node in live if node not in secure.silent]
            lost += list(secure.silent)
        results = [replies[node].config_records[RESULT] for node in live]
        loss_sum = sum(float(r["loss_sum"]) for r in results)
        steps = sum(int(r["steps"]) for r in results)
        clients = sum(int(r["clients"]) for r in results)
        uploaded = [node for node in live if UPDATE in replies[node].array_records]
        record: dict[str, Any] = {"round": round_index + 1}
        state = ServerState(round_index, shared, server_state, privacy_state)
        if secure is not None:  # secure aggregation: server_update steps from the decoded sum alone
            next_state, rejected = server_update(model, state, secure.total, settings, config.train.seed)
            record.update(secagg_nodes=secure.parties, secagg_in_sum=secure.in_sum)
            if secure.skipped:
                record["secagg_skipped"] = True
        elif isinstance(privacy, LocalDP):  # the nodes sent noisy sums: average them, step the server optimiser
            sums = [record_to_tensors(replies[node].array_records[UPDATE]) for node in uploaded]
            deltas = mean_of_noisy_sums(sums, shapes, clients)
            params, optimizer_state = settings.server.step(shared, deltas, server_state)
            next_state, rejected = ServerState(round_index + 1, params, optimizer_state, privacy_state), {}
        else:
            parts = [(positions[node], record_to_upload(replies[node].array_records[UPDATE], model, settings.compression))
                     for node in uploaded]
            update = merge_in_cohort_order(parts, num_items) if parts else empty_update(shapes)
            next_state, rejected = server_update(model, state, update, settings, config.train.seed)
        shared, server_state, privacy_state = next_state.params, next_state.optimizer_state, next_state.privacy_state
        record.update(train_loss=loss_sum / max(steps, 1), clients=clients)
        check_training_loss(config, round_index + 1, record["train_loss"])
        if settings.defence is not None:
            record.update(rejected=sum(rejected.values()), rejected_by_reason=rejected)
        bytes_up += round_up
        bytes_down += round_down
        record.update(bytes_up=round_up, bytes_down=round_down, nodes=len(live))
        if lost:
            record["lost_nodes"] = len(lost)
        rounds_done = round_index + 1
        record.update(privacy_spent(config, privacy, rounds_done, privacy_state))
        last = rounds_done == config.train.rounds
        if rounds_done % config.train.eval_every == 0 or last:
            final = _evaluate(transport, live, sent_record(shared, model), rounds_done, round_timeout, ranking,
                              final_refit=last and bool(config.train.refit_private_epochs),
                              finetune=last and bool(config.eval.finetune_epochs))
            final_round = rounds_done
            record.update({key: value for key, value in final.items() if not key.startswith("finetuned_")})
        record["seconds"] = round(time.perf_counter() - began, 4)
        history.append(record)
        # the history first: a resume keeps the lines up to its checkpoint's round and redoes the rest
        atomic_write_text(out_dir / "history.jsonl", "".join(json.dumps(entry) + "\n" for entry in history))
        if rounds_done % config.train.checkpoint_every == 0 or last:
            _save(out_dir, shared, server_state,
                  _checkpoint_meta(config, record, bytes_up, bytes_down, privacy, population.lost(live)), privacy_state)
        if on_round is not None:
            on_round(record)
    finetuned = any(key.startswith("finetuned_") for key in final)
    if final_round != rounds_done or (config.eval.finetune_epochs and not finetuned):
        # stopped by the privacy budget: evaluate the final model (and its fine-tuned copies) once more
        final = _evaluate(transport, live, sent_record(shared, model), rounds_done, round_timeout, ranking,
                          final_refit=(final_round != rounds_done and rounds_done == config.train.rounds
                                       and bool(config.train.refit_private_epochs)),  # resumed after the last round
                          finetune=bool(config.eval.finetune_epochs))
    if stop_reason is not None:
        _save(out_dir, shared, server_state, _checkpoint_meta(config, {"round": rounds_done, "seconds": round(
            time.perf_counter() - began, 4)}, bytes_up, bytes_down, privacy, population.lost(live)), privacy_state)
    metrics: dict[str, Any] = dict(final)
    metrics.update(
        mode="federated", runtime="flower", rounds=rounds_done, seconds=round(time.perf_counter() - began, 3),
        bytes_up=bytes_up, bytes_down=bytes_down, dataset=config.data.name, clients=len(population.sizes),
        nodes=len(nodes), nodes_finished=len(live),
    )
    metrics.update(privacy_summary(config, privacy, rounds_done, privacy_state, stop_reason))
    atomic_write_text(out_dir / "metrics.json", json.dumps(metrics, indent=2) + "\n")
    return metrics


def _round_clip_norm(privacy: CentralDP | LocalDP | None, privacy_state: dict[str, Tensor]) -> float | None:
    """The clip norm the clients apply before encoding this round (the adapted one under adaptive DP)."""
    if isinstance(privacy, CentralDP):
        return clip_norm_of(ServerState(0, {}, {}, privacy_state), privacy)
    return privacy.clip_norm if isinstance(privacy, LocalDP) else None


def _secure_task(model: RecModel, settings: FedAvgSettings, privacy: CentralDP | LocalDP | None,
                 privacy_state: dict[str, Tensor]) -> dict[str, Any]:
    """TASK entries of a train request under secure aggregation: the sum layout and the clip norm."""
    from fedrec.flower.secure import layout_task

    layout = sum_layout(shared_shapes(model), settings.row_weighting, settings.privacy)
    return layout_task(layout, _round_clip_norm(privacy, privacy_state))


def _secure_sum(transport: Transport, model: RecModel, settings: FedAvgSettings, privacy: CentralDP | LocalDP | None,
                privacy_state: dict[str, Tensor], clients_of: dict[int, int], config: RunConfig, round_index: int,
                timeout: float, out_dir: Path) -> SecureRound:
    """The round's secure aggregation among the nodes that trained cohort clients; an abort stops the run."""
    from fedrec.flower.secure import secure_round
    from fedrec.privacy.secagg import SecAggAbort

    assert settings.secure_aggregation is not None
    layout = sum_layout(shared_shapes(model), settings.row_weighting, settings.privacy)
    try:
        return secure_round(transport, clients_of, layout, settings.secure_aggregation.protocol, config.train.seed,
                            round_index, timeout)
    except SecAggAbort as error:
        raise FedrecError(f"round {round_index + 1}: {error}; the run stopped (rounds up to the last checkpoint are "
                          f"in {out_dir})") from None


def job_token(config: RunConfig, out_dir: Path) -> str:
    """A short name for this job (its resumable settings and run directory): the nodes' saved states carry it."""
    from fedrec.runtime.trainer import comparable_config

    text = json.dumps(comparable_config(config_to_json(config)), sort_keys=True) + str(out_dir.resolve())
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _check_item_inputs(tensors: dict[str, Tensor], population: Population) -> None:
    """A resumed text model's nodes must have built the item text embeddings the checkpoint was trained with."""
    saved, built = tensors.get("param/item_text"), population.item_inputs.get("item_text")
    if saved is not None and built is not None and not _same_table(saved, built):
        raise FedrecError("the SuperNodes built other item text embeddings than the interrupted run used; give them "
                          "the same item data and text encoder (model.text_encoder), or start the run over")


def load_deployment(out_dir: Path, config: RunConfig) -> tuple[dict[str, Tensor], dict[str, Any]] | None:
    """The checkpoint of an interrupted deployment in ``out_dir`` (None: none there, the run starts fresh)."""
    from fedrec.runtime.trainer import comparable_config

    path = out_dir / CHECKPOINT_NAME
    if not path.exists():
        return None
    tensors, meta = load_checkpoint(path)
    check_resumable(path, meta, meta.get("runtime") != "flower" or not any(k.startswith("param/") for k in tensors),
                    config_to_json(config), comparable_config, config.train.rounds,
                    "a checkpoint of a fedrec deployment")
    if int(meta["round"]) == config.train.rounds and (out_dir / "metrics.json").exists():
        raise FedrecError(f"the deployment in {out_dir} has finished its {meta['round']} rounds; "
                          "set train.rounds higher to extend it")
    return tensors, meta


def _checkpoint_meta(config: RunConfig, record: dict[str, Any], bytes_up: int, bytes_down: int,
                     privacy: CentralDP | LocalDP | None, dropped_partitions: list[int]) -> dict[str, Any]:
    meta: dict[str, Any] = {"round": record["round"], "seconds": record["seconds"], "bytes_up": bytes_up,
                            "bytes_down": bytes_down, "config": config_to_json(config), "runtime": "flower",
                            "dropped_partitions": dropped_partitions}  # a resume keeps them dropped
    if isinstance(privacy, CentralDP):
        meta["noise_multiplier"] = privacy.noise_multiplier
    return meta
