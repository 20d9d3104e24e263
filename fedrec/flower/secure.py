"""Secure aggregation in a deployment: the SuperNodes run the protocol of :mod:`fedrec.privacy.secagg`.

The parties are the SuperNodes that hold clients of the round's cohort. After training, a node does
not upload its clients' updates: it lays out each client's upload as the simulator does
(:class:`~fedrec.privacy.cohort_sum.SumLayout`, :func:`~fedrec.privacy.cohort_sum.contributions`),
encodes each in fixed point and keeps their sum in the ring Z_{2^64} in its state -- the sum of
every node's ring vector is exactly the ring sum the simulator's protocol unmasks, so the server
decodes the same :class:`~fedrec.privacy.cohort_sum.CohortSum`. With one user per node this is
per-client secure aggregation; with several, the server learns only the sum over all nodes' clients.

The server then drives the protocol's rounds as Flower Message API round trips (message types
``train.secagg_<stage>``), with the protocol's own message-level functions on both sides:

1. ``advertise``: each party gets its index, neighbours and threshold, makes fresh key pairs
   (``os.urandom``) and returns its public keys (:func:`~fedrec.privacy.secagg.client_advertise`).
2. ``share_keys``: each gets its neighbours' keys and returns its encrypted Shamir shares, which the
   server routes (:func:`~fedrec.privacy.secagg.server_route_shares`).
3. ``masked_input``: each gets the ciphertexts addressed to it and returns its masked ring vector.
4. ``unmask``: each sender gets the list of dropped and surviving neighbours and returns the shares
   the server needs (:func:`~fedrec.privacy.secagg.server_unmask`).

A node's :class:`~fedrec.privacy.secagg.ClientState` stays in its ``context.state`` between the
messages (:mod:`fedrec.flower.secagg_messages`). A node that does not answer a stage in time is
treated as dropped (the protocol recovers while at least the threshold remain; otherwise
:class:`~fedrec.privacy.secagg.SecAggAbort` stops the run with a one-line error). A cohort held by
fewer than 3 nodes is skipped, as the simulator skips a cohort of fewer than 3 clients: nobody's
input reaches the server that round.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
from flwr.app import ConfigRecord, RecordDict

from fedrec.errors import FedrecError
from fedrec.federated.aggregation import CohortUpdate, weigh_clients
from fedrec.flower.codec import serialized_bytes
from fedrec.flower.secagg_messages import (advert_to_record, adverts_to_record, client_state_to_record,
                                           masked_to_records, record_to_advert, record_to_adverts,
                                           record_to_client_state, record_to_request,
                                           record_to_response, record_to_shares, records_to_masked,
                                           request_to_record, response_to_record, shares_to_record)
from fedrec.privacy.cohort_sum import ClientVectors, CohortSum, SumLayout, contributions, protocol_seed
from fedrec.privacy.fixedpoint import check_capacity, encode
from fedrec.privacy.secagg import (ClientState, MaskedInput, SecAggAbort, SecAggSettings, client_advertise, client_masked_encoded,
                                   client_share_keys, client_unmask, server_add_input, server_request_unmasking,
                                   server_route_keys, server_route_shares, server_start, server_unmask)

if TYPE_CHECKING:
    from fedrec.config import RunConfig
    from fedrec.flower.federation import Transport
    from fedrec.flower.node import NodeView

log = logging.getLogger("fedrec.flower")

STAGES = ("advertise", "share_keys", "masked_input", "unmask")
MESSAGE_TYPES = {stage: f"train.secagg_{stage}" for stage in STAGES}
SECURE = "secure"  # TASK flag of a train request: keep the contribution, upload nothing
SECAGG, SECAGG_VECTOR, ABORTED = "secagg", "secagg_vector", "secagg_aborted"  # message records
STATE_CLIENT, STATE_CONTRIBUTION, STATE_ROUND = "secagg_client", "secagg_contribution", "secagg_round"  # node state
MIN_PARTIES = 3  # the protocol's smallest cohort (fedrec.privacy.upload.MIN_SECURE_COHORT)


# -- what the server tells a node about the layout, and the node's contribution -----------------------------


def layout_task(layout: SumLayout, clip_norm: float | None) -> dict[str, object]:
    """TASK entries that tell a node how to lay out its clients' uploads this round."""
    task: dict[str, object] = {SECURE: True, "layout_weighted": layout.weighted, "layout_clipped": layout.clipped,
                               "layout_count_unclipped": layout.count_unclipped, "layout_length": layout.length}
    if clip_norm is not None:
        task["clip_norm"] = float(clip_norm)
    return task


def task_layout(view: NodeView, task: ConfigRecord) -> tuple[SumLayout, float | None]:
    """The round's layout (and DP clip norm) from the server's TASK; refuses one of another length."""
    from fedrec.federated.server import shared_shapes

    shapes = shared_shapes(view.model)
    layout = SumLayout(dict(shapes.rows), dict(shapes.dense), bool(task["layout_weighted"]),
                       bool(task["layout_clipped"]), bool(task["layout_count_unclipped"]))
    if layout.length != int(task["layout_length"]):
        raise FedrecError(f"the server's secure-aggregation layout has {int(task['layout_length'])} values, this "
                          f"node's model {layout.length}; give the server and the nodes the same job")
    return layout, (float(task["clip_norm"]) if "clip_norm" in task else None)


def protocol_settings(config: RunConfig) -> SecAggSettings:
    """The job's protocol settings (fixed-point codec, threshold), as the simulator builds them."""
    from fedrec.runtime.trainer import secure_aggregation_settings

    secure = secure_aggregation_settings(config)
    if secure is None:
        raise FedrecError("the server asked for secure aggregation but this node's job has "
                          "privacy.secure_aggregation off; give the server and the nodes the same job")
    return secure.protocol


def node_contribution(update: CohortUpdate, layout: SumLayout, settings: SecAggSettings, row_weighting: str,
                      client_weighting: str, clip_norm: float | None) -> np.ndarray:
    """The ring sum of this node's clients' encoded uploads: each client's vector under ``layout``
    encoded in fixed point exactly as the simulator's client encodes it, then added mod 2^bits."""
    weighted = weigh_clients(update, client_weighting)  # clients weigh before encoding (privacy_upload)
    vectors = ClientVectors(contributions(weighted, layout, row_weighting, clip_norm), layout)
    total = np.zeros(layout.length, dtype=np.uint64)
    for client in range(len(vectors)):
        total += encode(vectors[client], settings.codec, clip=settings.clip)  # wraps mod 2^64
    return total & settings.codec.modulus_mask


def keep_contribution(view: NodeView, state: RecordDict, update: CohortUpdate, task: ConfigRecord,
                      round_index: int) -> None:
    """After training under secure aggregation: keep the node's ring vector in its state for the protocol."""
    from flwr.app import Array, ArrayRecord

    layout, clip_norm = task_layout(view, task)
    ring = node_contribution(update, layout, protocol_settings(view.config), view.config.train.row_weighting,
                             view.config.train.client_weighting, clip_norm)
    state.array_records[STATE_CONTRIBUTION] = ArrayRecord({"ring": Array(ring)})
    state.config_records[STATE_ROUND] = ConfigRecord({"round": round_index})
    state.config_records.pop(STATE_CLIENT, None)  # keys are fresh every round


# -- node side: one handler per protocol stage ------------------------------------------------------------


def _check_round(state: RecordDict, request: ConfigRecord, stage: str) -> int:
    round_index = int(request["round"])
    held = state.config_records.get(STATE_ROUND)
    if held is None or int(held["round"]) != round_index:
        raise FedrecError(f"secure aggregation {stage} for round {round_index + 1} reached a node that did not train "
                          "that round; restart the run")
    if stage != "advertise" and STATE_CLIENT not in state.config_records:
        raise FedrecError(f"secure aggregation {stage} reached a node that advertised no keys this round")
    return round_index


def _protocol_step(stage: str, step: Callable[[RunConfig, RecordDict, ConfigRecord], RecordDict]
                   ) -> Callable[[RunConfig, RecordDict, RecordDict], RecordDict]:
    """A node handler (job config, node state, request) -> reply: checks the round; a protocol abort on
    this node makes it drop out of the round (it tells the server why) instead of failing the run -- the
    protocol decides whether enough parties remain. The stages need the job, not the node's data."""

    def handler(config: RunConfig, state: RecordDict, content: RecordDict) -> RecordDict:
        request = content.config_records[SECAGG]
        _check_round(state, request, stage)
        try:
            return step(config, state, request)
        except SecAggAbort as error:
            return RecordDict({ABORTED: ConfigRecord({"reason": str(error)})})

    handler.__name__ = f"handle_secagg_{stage}"
    return handler


def _keep_client(state: RecordDict, client_state: ClientState) -> None:
    state.config_records[STATE_CLIENT] = client_state_to_record(client_state)


def _advertise(config: RunConfig, state: RecordDict, request: ConfigRecord) -> RecordDict:
    neighbours = [int(v) for v in request["neighbours"]]
    client_state, advert = client_advertise(int(request["party"]), neighbours, int(request["threshold"]), os.urandom)
    _keep_client(state, client_state)
    return RecordDict({SECAGG: advert_to_record(advert)})


def _share_keys(config: RunConfig, state: RecordDict, request: ConfigRecord) -> RecordDict:
    client_state = record_to_client_state(state.config_records[STATE_CLIENT])
    client_state, messages = client_share_keys(client_state, record_to_adverts(request), os.urandom)
    _keep_client(state, client_state)
    return RecordDict({SECAGG: shares_to_record(messages)})


def _masked_input(config: RunConfig, state: RecordDict, request: ConfigRecord) -> RecordDict:
    client_state = record_to_client_state(state.config_records[STATE_CLIENT])
    if STATE_CONTRIBUTION not in state.array_records:
        raise FedrecError("secure aggregation asked this node for its masked input twice in one round; restart the run")
    ring = state.array_records[STATE_CONTRIBUTION]["ring"].numpy()
    client_state, masked = client_masked_encoded(client_state, record_to_shares(request), ring,
                                                 protocol_settings(config).codec)
    _keep_client(state, client_state)
    del state.array_records[STATE_CONTRIBUTION]  # the input leaves only masked, and only once
    config, vector = masked_to_records(masked)
    return RecordDict({SECAGG: config, SECAGG_VECTOR: vector})


def _unmask(config: RunConfig, state: RecordDict, request: ConfigRecord) -> RecordDict:
    client_state = record_to_client_state(state.config_records[STATE_CLIENT])
    client_state, response = client_unmask(client_state, record_to_request(request))
    _keep_client(state, client_state)  # what it revealed: it never reveals the other kind for the same client
    return RecordDict({SECAGG: response_to_record(response)})


NODE_HANDLERS: dict[str, Callable[[RunConfig, RecordDict, RecordDict], RecordDict]] = {
    MESSAGE_TYPES[stage]: _protocol_step(stage, step)
    for stage, step in zip(STAGES, (_advertise, _share_keys, _masked_input, _unmask))
}


# -- server side -------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SecureRound:
    """The decoded cohort sum and what the protocol cost and lost."""

    total: CohortSum
    bytes_up: int  # serialised replies of every stage
    bytes_down: int  # serialised requests of every stage
    parties: int  # nodes that took part (held cohort clients and trained)
    in_sum: int  # nodes whose input is in the sum
    silent: tuple[int, ...] = ()  # nodes that did not answer a stage (dropped for the rest of the run)
    skipped: bool = False  # fewer than 3 parties: nobody's input reached the server


def secure_round(transport: Transport, clients_of: dict[int, int], layout: SumLayout, settings: SecAggSettings,
                 seed: int, round_index: int, timeout: float) -> SecureRound:
    """Run the protocol among the nodes in ``clients_of`` (node id -> cohort clients it trained) and
    decode the sum of their contributions; raises :class:`SecAggAbort` when too many drop out."""
    nodes = sorted(node for node, count in clients_of.items() if count > 0)
    if len(nodes) < MIN_PARTIES:
        return SecureRound(CohortSum.zeros(layout), 0, 0, len(nodes), 0, skipped=True)
    check_capacity(settings.codec, sum(clients_of[node] for node in nodes))  # the ring sum over every client
    party = {node: index for index, node in enumerate(nodes)}
    server = server_start(len(nodes), settings, protocol_seed(seed, round_index))
    cost = {"up": 0, "down": 0}
    silent: set[int] = set()

    def stage(name: str, requests: dict[int, RecordDict]) -> dict[int, RecordDict]:
        replies = transport.exchange(requests, MESSAGE_TYPES[name], round_index, timeout)
        cost["down"] += sum(serialized_bytes(content) for content in requests.values())
        cost["up"] += sum(serialized_bytes(content) for content in replies.values())
        silent.update(node for node in requests if node not in replies)
        answered = {}
        for node, reply in replies.items():
            if ABORTED in reply.config_records:
                log.warning("SuperNode %s left secure aggregation at %s in round %s: %s", node, name, round_index + 1,
                            reply.config_records[ABORTED]["reason"])
            elif SECAGG in reply.config_records:
                answered[node] = reply
        return answered

    def request(**values: object) -> RecordDict:
        return RecordDict({SECAGG: ConfigRecord({"round": round_index, **values})})

    def sender(node: int, claimed: int) -> int:
        if claimed != party[node]:
            raise SecAggAbort(f"secure aggregation aborted: SuperNode {node} answered as party {claimed}, "
                              f"it is party {party[node]}")
        return claimed

    replies = stage("advertise", {node: request(party=party[node], neighbours=list(server.graph[party[node]]),
                                                threshold=server.threshold) for node in nodes})
    adverts = [record_to_advert(reply.config_records[SECAGG]) for reply in replies.values()]
    for node, advert in zip(replies, adverts):
        sender(node, advert.client)
    server, key_outbox = server_route_keys(server, adverts)

    replies = stage("share_keys", {nodes[u]: _with_round(adverts_to_record(key_outbox[u]), round_index)
                                   for u in sorted(key_outbox)})
    messages = []
    for node, reply in replies.items():
        for message in record_to_shares(reply.config_records[SECAGG]):
            sender(node, message.sender)
            messages.append(message)
    server, inbox = server_route_shares(server, messages)

    replies = stage("masked_input", {nodes[u]: _with_round(shares_to_record(inbox[u]), round_index)
                                     for u in sorted(inbox)})
    for node, reply in replies.items():
        masked = records_to_masked(reply.config_records[SECAGG], reply.array_records[SECAGG_VECTOR])
        if masked.vector.shape != (layout.length,):
            raise SecAggAbort(f"secure aggregation aborted: SuperNode {node}'s masked input has "
                              f"{masked.vector.shape[0]} values, the layout {layout.length}")
        server = server_add_input(server, MaskedInput(sender(node, masked.client), masked.vector))
    server, unmask_requests = server_request_unmasking(server)

    replies = stage("unmask", {nodes[u]: _with_round(request_to_record(r), round_index)
                               for u, r in unmask_requests.items()})
    responses = []
    for node, reply in replies.items():
        response = record_to_response(reply.config_records[SECAGG])
        sender(node, response.client)
        responses.append(response)
    vector = server_unmask(server, responses)
    in_sum = sorted(server.inputs)
    total = CohortSum.from_vector(vector, layout, sum(clients_of[nodes[u]] for u in in_sum))
    return SecureRound(total, cost["up"], cost["down"], len(nodes), len(in_sum), tuple(sorted(silent)))


def _with_round(record: ConfigRecord, round_index: int) -> RecordDict:
    record["round"] = round_index
    return RecordDict({SECAGG: record})


def check_secure_deployment(config: RunConfig, num_nodes: int | None = None) -> None:
    """Refuse secure-aggregation settings a deployment cannot honour, in one line."""
    p = config.privacy
    if not p.secure_aggregation:
        return
    if p.secagg_dropout:
        raise FedrecError("privacy.secagg_dropout simulates dropouts in fedrec train only; set it to 0 to deploy "
                          "(a deployment's nodes drop out for real and the protocol recovers)")
    if p.enabled and p.mode == "local":
        raise FedrecError("privacy.mode='local' with privacy.secure_aggregation is not supported in deployment yet; "
                          "use central DP (the server noises the unmasked sum) or drop one of them")
    if num_nodes is not None and num_nodes < MIN_PARTIES:
        raise FedrecError(f"secure aggregation in deployment needs at least {MIN_PARTIES} SuperNodes (the parties of "
                          f"the protocol), got {num_nodes}; start more nodes or switch privacy.secure_aggregation off")
