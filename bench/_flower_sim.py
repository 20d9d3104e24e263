"""The bench suite's workloads and its Flower app: one Flower client per user, fedrec's own functions inside.

Imported by ``bench_suite.py`` and, by name, by the Ray workers of Flower's simulation engine (so the
ClientApp travels to them as a reference, not with the driver's data). Each Flower client is one user:
it runs :func:`fedrec.federated.reference.train_client` (the device-side update both simulator backends
are tested against) on its own examples and keeps its private rows (user vector and bias) in its node
state; the ServerApp samples the cohort with :func:`fedrec.federated.cohort.sample_cohort`, puts the
uploads back in cohort order and calls :func:`fedrec.federated.server.server_update`, as ``run_round`` does.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch
from flwr.app import ConfigRecord, Context, Message, RecordDict
from flwr.clientapp import ClientApp
from flwr.serverapp import Grid, ServerApp
from torch import Tensor

from fedrec.config import RunConfig, load_config
from fedrec.federated.aggregation import CohortUpdate
from fedrec.federated.cohort import sample_cohort
from fedrec.federated.reference import train_client
from fedrec.federated.server import FedAvgSettings, ServerState, server_update
from fedrec.flower.codec import record_to_tensors, record_to_update, tensors_to_record, update_to_record
from fedrec.models.base import ParamKind
from fedrec.runtime.experiment import Experiment, prepare
from fedrec.runtime.trainer import fedavg_settings

ROOT = Path(__file__).resolve().parent.parent
FED_CONFIG = ROOT / "configs/ml100k-mf-fedavg.toml"
ML100K_USERS = 943
SYNTHETIC_USERS = 5000
# ML-100K-like: 1,682 items, 106 ratings per user on average, 80/20 split like the official folds.
SYNTHETIC = ["data.name=synthetic", f"data.num_users={SYNTHETIC_USERS}", "data.num_items=1682",
             "data.mean_interactions=106", "data.split=ratio", "data.test_ratio=0.2", "data.validation_ratio=0"]


QUICK = 20  # the smoke-run workload: 20 of 200 synthetic users per round


def workload_overrides(clients_per_round: int) -> list[str]:
    """Config overrides of the workload with this many clients per round (100, 943, 5000; QUICK)."""
    if clients_per_round == SYNTHETIC_USERS:
        return list(SYNTHETIC)
    if clients_per_round == QUICK:
        return [*SYNTHETIC, "data.num_users=200", "train.client_fraction=0.1"]
    return [f"train.client_fraction={min(1.0, clients_per_round / ML100K_USERS)!r}"]


@dataclass(frozen=True)
class Workload:
    config: RunConfig
    exp: Experiment
    settings: FedAvgSettings
    init: dict[str, Tensor]  # the run's initial parameters (seed 0), shared and private


@lru_cache(maxsize=2)
def load_workload(clients_per_round: int) -> Workload:
    """The FedAvg-MF workload (configs/ml100k-mf-fedavg.toml's model and local settings), cached per process."""
    config = load_config(FED_CONFIG, workload_overrides(clients_per_round))
    exp = prepare(config)
    return Workload(config, exp, fedavg_settings(config), exp.model.init_params(torch.Generator().manual_seed(0)))


# -- the Flower app ---------------------------------------------------------------------------------------
TASK, SHARED, UPDATE, META, PRIVATE = "task", "shared", "update", "meta", "private"
client_app = ClientApp()
server_app = ServerApp()


@lru_cache(maxsize=2)
def _private_scratch(clients_per_round: int) -> dict[str, Tensor]:
    """Per worker: full-size private tables the one user's rows are written into before it trains."""
    work = load_workload(clients_per_round)
    return {s.name: work.init[s.name].clone() for s in work.exp.model.specs_by_kind(ParamKind.PRIVATE_ROWS)}


@client_app.query()
def client_query(message: Message, context: Context) -> Message:
    """Start-up: load the workload in this worker and tell the server which client (user) this node is."""
    torch.set_num_threads(1)  # one worker per core
    load_workload(int(message.content.config_records[TASK]["workload"]))
    return Message(RecordDict({META: ConfigRecord({"client": int(context.node_config["partition-id"])})}),
                   reply_to=message)


@client_app.train()
def client_train(message: Message, context: Context) -> Message:
    """One user's local training with fedrec's client update; its private rows stay in the node state."""
    torch.set_num_threads(1)
    task = message.content.config_records[TASK]
    key, round_index, seed = int(task["workload"]), int(task["round"]), int(task["seed"])
    work = load_workload(key)
    client = int(context.node_config["partition-id"])
    data = work.exp.clients
    scratch = _private_scratch(key)
    users = torch.from_numpy(np.unique(data.users[data.client_slice(client)]))
    own = record_to_tensors(context.state.array_records[PRIVATE]) if PRIVATE in context.state.array_records else \
        {name: table[users] for name, table in work.init.items() if name in scratch}
    for name, rows in own.items():
        scratch[name].index_copy_(0, users, rows)
    params = {**record_to_tensors(message.content.array_records[SHARED]), **scratch}
    result = train_client(work.exp.model, params, data, client, work.settings.local, seed, round_index)
    context.state.array_records[PRIVATE] = tensors_to_record(result.private_rows)
    meta = ConfigRecord({"client": client, "loss": float(result.loss_sum), "steps": int(result.steps)})
    return Message(RecordDict({UPDATE: update_to_record(result.update), META: meta}), reply_to=message)


@dataclass
class FlowerRun:
    """What the ServerApp is asked to do and what it measured (the ServerApp runs in the driver process)."""

    workload: int
    rounds: int
    seed: int = 0
    began: float = 0.0  # perf_counter when run_simulation was called
    startup_seconds: float = 0.0  # run_simulation call -> every node known and loaded
    round_seconds: list[float] = field(default_factory=list)
    shared_after_first_round: dict[str, Tensor] = field(default_factory=dict)
    error: str = ""


CURRENT: list[FlowerRun] = []  # set by the bench before run_simulation


WAVE = 1000  # messages in flight at once: each carries the whole shared model (0.9 MB for ML-100K)


def _exchange(grid: Grid, messages: list[Message]) -> list[Message]:
    """Send and receive, in waves of WAVE messages, so the queued models stay within memory at 5,000 clients."""
    replies = [reply for begin in range(0, len(messages), WAVE)
               for reply in grid.send_and_receive(messages[begin:begin + WAVE], timeout=3600)]
    failed = [reply for reply in replies if reply.has_error()]
    if failed or len(replies) != len(messages):
        reason = failed[0].error.reason if failed else f"{len(replies)} of {len(messages)} replies"
        raise RuntimeError(f"Flower clients failed: {reason}")
    return replies


@server_app.main()
def server_main(grid: Grid, context: Context) -> None:
    run = CURRENT[-1]
    try:
        _serve(grid, run)
    except Exception as error:  # run_simulation only logs exceptions: hand the reason to the bench
        run.error = f"{type(error).__name__}: {error}"
        raise


def _serve(grid: Grid, run: FlowerRun) -> None:
    work = load_workload(run.workload)
    num_clients = work.exp.clients.num_clients
    deadline = time.perf_counter() + 600
    while len(nodes := list(grid.get_node_ids())) < num_clients:
        if time.perf_counter() > deadline:
            raise RuntimeError(f"only {len(nodes)} of {num_clients} Flower nodes registered within 600 s")
        time.sleep(0.05)
    task = ConfigRecord({"workload": run.workload})
    queries = [Message(RecordDict({TASK: task}), dst_node_id=node, message_type="query") for node in nodes]
    node_of = {int(r.content.config_records[META]["client"]): r.metadata.src_node_id for r in _exchange(grid, queries)}
    run.startup_seconds = time.perf_counter() - run.began
    model = work.exp.model
    shared_names = model.shared_names()
    state = ServerState(0, {name: work.init[name] for name in shared_names})
    for round_index in range(run.rounds):
        began = time.perf_counter()
        cohort = sample_cohort(num_clients, work.settings.client_fraction, run.seed, round_index)
        shared = tensors_to_record(state.params)
        task = ConfigRecord({"workload": run.workload, "round": round_index, "seed": run.seed})
        messages = [Message(RecordDict({SHARED: shared, TASK: task}), dst_node_id=node_of[int(c)], message_type="train")
                    for c in cohort]
        by_client = {int(r.content.config_records[META]["client"]): record_to_update(r.content.array_records[UPDATE])
                     for r in _exchange(grid, messages)}
        update = CohortUpdate.concat([by_client[int(c)] for c in cohort])
        state, _ = server_update(model, state, update, work.settings, run.seed)
        run.round_seconds.append(time.perf_counter() - began)
        if round_index == 0:
            run.shared_after_first_round = {name: value.clone() for name, value in state.params.items()}

