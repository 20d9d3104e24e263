"""The Flower app (Message API): ``server_app`` and ``client_app``, as named in the app's pyproject.

Run config (``flwr run --run-config``): ``job`` (the resolved fedrec config as JSON), ``out-dir``
(where the server writes its outputs), ``nodes`` (SuperNodes to wait for), ``round-timeout`` and
``connect-timeout`` (seconds), ``resume`` (continue the run in ``out-dir`` from its checkpoint). Node
config (``flower-supernode --node-config``): ``partition-id``, ``num-partitions`` and optionally
``data-dir`` (the folder holding the datasets on that machine) and ``state-dir`` (where the node saves
its users' private rows after every round, for a resume).

Message types the ClientApp answers: ``query`` (partition), ``train``, ``evaluate``, and under secure
aggregation ``train.secagg_advertise``, ``train.secagg_share_keys``, ``train.secagg_masked_input`` and
``train.secagg_unmask`` (:mod:`fedrec.flower.secure`; they need the job only, not the node's data).
"""

from __future__ import annotations

import json
import logging
import traceback
from pathlib import Path
from typing import Any

from flwr.app import ConfigRecord, Context, Message, RecordDict
from flwr.clientapp import ClientApp
from flwr.serverapp import Grid, ServerApp
from pydantic import ValidationError

from fedrec.config import RunConfig
from fedrec.errors import FedrecError
from fedrec.flower import node as node_handlers
from fedrec.flower.federation import run_federation

ERROR = "error"
SERVER_ERROR_FILE = "server_error.txt"  # written into out-dir when the ServerApp fails
log = logging.getLogger("fedrec.flower")

server_app = ServerApp()
client_app = ClientApp()


def job_config(run_config: dict[str, Any]) -> RunConfig:
    """The fedrec job carried in the run config's ``job`` value."""
    text = str(run_config.get("job", "") or "")
    if not text:
        raise FedrecError("the Flower run config has no job; pass --run-config with job = '<fedrec config JSON>' "
                          "(fedrec deploy writes one)")
    try:
        return RunConfig.model_validate(json.loads(text))
    except (json.JSONDecodeError, ValidationError) as error:
        raise FedrecError(f"the Flower run config's job is not a valid fedrec config ({error}); "
                          "regenerate it with fedrec deploy --app-only") from None


class GridTransport:
    """The server's view of the nodes through a Flower Grid (SuperLink)."""

    def __init__(self, grid: Grid) -> None:
        self.grid = grid

    def node_ids(self) -> list[int]:
        return list(self.grid.get_node_ids())

    def exchange(self, requests: dict[int, RecordDict], message_type: str, round_index: int,
                 timeout: float) -> dict[int, RecordDict]:
        messages = [Message(content, dst_node_id=node, message_type=message_type, group_id=str(round_index),
                            ttl=timeout)
                    for node, content in requests.items()]
        replies: dict[int, RecordDict] = {}
        for reply in self.grid.send_and_receive(messages, timeout=timeout):
            node = reply.metadata.src_node_id
            if reply.has_error():
                log.warning("SuperNode %s failed %s in round %s: %s", node, message_type, round_index, reply.error.reason)
                continue
            content = reply.content
            if ERROR in content.config_records:
                raise FedrecError(str(content.config_records[ERROR]["message"]))
            replies[node] = content
        return replies


@server_app.main()
def server_main(grid: Grid, context: Context) -> None:
    """Run the job; on failure leave a one-line reason in out-dir for ``fedrec deploy`` to show."""
    run_config = dict(context.run_config)
    out_dir = Path(str(run_config.get("out-dir", "runs/flower")))
    try:
        config = job_config(run_config)
        run_federation(config, GridTransport(grid), out_dir, int(run_config.get("nodes", 1)),
                       float(run_config.get("round-timeout", 300.0)), float(run_config.get("connect-timeout", 120.0)),
                       resume=str(run_config.get("resume", False)).strip().lower() in ("true", "1", "yes"))
    except Exception as error:
        out_dir.mkdir(parents=True, exist_ok=True)
        reason = str(error) if isinstance(error, FedrecError) else f"{type(error).__name__}: {error}"
        (out_dir / SERVER_ERROR_FILE).write_text(reason.replace("\n", " ") + "\n")
        if not isinstance(error, FedrecError):
            traceback.print_exc()
        raise


_views: dict[tuple[int, str], node_handlers.NodeView] = {}


def node_view(context: Context) -> node_handlers.NodeView:
    """This node's partition of the job (loaded once per process and run)."""
    key = (context.run_id, json.dumps(dict(context.node_config), sort_keys=True, default=str))
    if key not in _views:
        node_config = dict(context.node_config)
        if "partition-id" not in node_config or "num-partitions" not in node_config:
            raise FedrecError("the SuperNode has no partition; start it with "
                              "--node-config 'partition-id=K num-partitions=N'")
        config = job_config(dict(context.run_config))
        if node_config.get("data-dir"):
            config = config.model_copy(update={"data": config.data.model_copy(
                update={"data_dir": str(node_config["data-dir"])})})
        _views.clear()
        state_dir = Path(str(node_config["state-dir"])) if node_config.get("state-dir") else None
        _views[key] = node_handlers.load_node(config, int(node_config["partition-id"]), int(node_config["num-partitions"]),
                                              state_dir)
    return _views[key]


def _reply(message: Message, context: Context, handler: Any, needs_data: bool = True) -> Message:
    """The handler's reply; it gets this node's view (its data loaded), or only the job when ``needs_data`` is off."""
    try:
        holder = node_view(context) if needs_data else job_config(dict(context.run_config))
        content = handler(holder, context.state, message.content)
    except FedrecError as error:  # a user error: tell the server in one line instead of a log entry
        content = RecordDict({ERROR: ConfigRecord({"message": f"SuperNode {dict(context.node_config)}: {error}"})})
    return Message(content, reply_to=message)


@client_app.query()
def query(message: Message, context: Context) -> Message:
    return _reply(message, context, node_handlers.describe)


@client_app.train()
def train(message: Message, context: Context) -> Message:
    return _reply(message, context, node_handlers.handle_train)


@client_app.evaluate()
def evaluate(message: Message, context: Context) -> Message:
    return _reply(message, context, node_handlers.handle_evaluate)


def _register_secagg_stages() -> None:
    """One ClientApp train action per secure-aggregation stage (message types ``train.secagg_<stage>``)."""
    from fedrec.flower.secure import MESSAGE_TYPES, NODE_HANDLERS

    for message_type in MESSAGE_TYPES.values():
        handler = NODE_HANDLERS[message_type]

        def stage(message: Message, context: Context, handler: Any = handler) -> Message:
            return _reply(message, context, handler, needs_data=False)  # the protocol needs the job, not the data

        client_app.train(message_type.split(".", 1)[1])(stage)


_register_secagg_stages()
