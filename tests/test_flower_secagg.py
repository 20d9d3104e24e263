"""Secure aggregation in a Flower deployment: the SuperNodes run the real protocol as Message API round trips.

Server and nodes in one process (the same handlers and records the Flower apps use, through
``InProcessNodes``). The unmasked sum is the simulator's ring sum, so a secure deployment reaches the
plain deployment's and the simulator's (with secure aggregation) model for the same seed, to
fixed-point precision; nodes that drop at any stage are recovered from while enough remain.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from flwr.app import ArrayRecord, ConfigRecord

from fedrec.config import load_config
from fedrec.errors import FedrecError
from fedrec.flower.federation import check_deployable, run_federation
from fedrec.flower.node import InProcessNodes, load_node
from fedrec.flower.secagg_messages import (advert_to_record, adverts_to_record, client_state_to_record,
                                           masked_to_records, record_to_advert, record_to_adverts,
                                           record_to_client_state, record_to_request, record_to_response,
                                           record_to_shares, records_to_masked, request_to_record,
                                           response_to_record, shares_to_record)
from fedrec.privacy.fixedpoint import FixedPoint
from fedrec.privacy.secagg import (SecAggSettings, UnmaskRequest, client_advertise, client_masked_input,
                                   client_share_keys, client_unmask, seeded_random_bytes, server_route_keys,
                                   server_route_shares, server_start)
from fedrec.runtime.checkpoint import CHECKPOINT_NAME, load_checkpoint
from fedrec.runtime.trainer import train

SYNTHETIC = ["data.name='synthetic'", "data.num_users=80", "data.num_items=50", "data.mean_interactions=10",
             "model.dim=6", "train.rounds=3", "train.client_fraction=0.5", "train.batch_size=4",
             "train.server_optimizer='adam'", "train.server_lr=0.05", "train.eval_every=3"]
SECURE = ["privacy.secure_aggregation=true"]
FIXED_POINT_ATOL = 1e-5  # 2^-24 per client value, through a few Adam steps


def _shared(path: Path) -> dict[str, torch.Tensor]:
    tensors, _ = load_checkpoint(path / CHECKPOINT_NAME)
    return {k: v for k, v in tensors.items() if k.startswith(("param/", "server/", "privacy/"))}


def _assert_same(first: Path, second: Path, atol: float = FIXED_POINT_ATOL) -> None:
    a, b = _shared(first), _shared(second)  # first: a deployment (its private rows stay on the nodes)
    assert any(k.startswith("param/item") for k in a) and not any(k.startswith("param/user") for k in a)
    for name, value in a.items():
        torch.testing.assert_close(value, b[name], atol=atol, rtol=0, msg=name)


def _history(path: Path) -> list[dict]:
    return [json.loads(line) for line in (path / "history.jsonl").read_text().splitlines()]


def _deploy(config, out: Path, nodes: int, **failures) -> dict:
    return run_federation(config, InProcessNodes([load_node(config, k, nodes) for k in range(nodes)], **failures),
                          out, expected_nodes=nodes)


# -- the records ----------------------------------------------------------------------------------------------


def _through_the_wire(record):
    """The record as a receiver gets it: serialised and parsed back (an ArrayRecord's arrays are its children)."""
    children = {key: _through_the_wire(child) for key, child in (record.children or {}).items()}
    return type(record).inflate(record.deflate(), children) if children else type(record).inflate(record.deflate())


def test_protocol_messages_and_client_state_survive_serialisation():
    settings = SecAggSettings(FixedPoint(max_abs=10.0))
    server = server_start(4, settings, graph_seed=3)
    rngs = {u: seeded_random_bytes(7, u) for u in range(4)}
    states, adverts = {}, []
    for u in range(4):
        states[u], advert = client_advertise(u, server.graph[u], server.threshold, rngs[u])
        assert record_to_advert(_through_the_wire(advert_to_record(advert))) == advert
        adverts.append(advert)
    server, outbox = server_route_keys(server, adverts)
    assert record_to_adverts(_through_the_wire(adverts_to_record(outbox[0]))) == outbox[0]
    sent = []
    for u in range(4):
        states[u], messages = client_share_keys(states[u], outbox[u], rngs[u])
        assert record_to_shares(_through_the_wire(shares_to_record(messages))) == messages
        sent += messages
    assert record_to_shares(_through_the_wire(shares_to_record([]))) == []
    server, inbox = server_route_shares(server, sent)
    state, masked = client_masked_input(states[0], inbox[0], np.array([1.5, -2.25, 0.0]), settings.codec)
    config, vector = masked_to_records(masked)
    back = records_to_masked(_through_the_wire(config), _through_the_wire(vector))
    assert back.client == 0 and back.vector.dtype == np.uint64 and np.array_equal(back.vector, masked.vector)
    assert masked.vector.max() >= 1 << 63  # the full 64-bit range survives
    request = UnmaskRequest(dropped=(2,), survivors=(1, 3))
    assert record_to_request(_through_the_wire(request_to_record(request))) == request
    state, response = client_unmask(state, request)
    assert response.mask_key_shares and response.self_mask_shares
    assert record_to_response(_through_the_wire(response_to_record(response))) == response
    # the whole client state, at every stage of its life (fresh, after sharing, after unmasking)
    for client_state in (client_advertise(1, (0, 2, 3), 2, rngs[1])[0], states[1], state):
        assert record_to_client_state(_through_the_wire(client_state_to_record(client_state))) == client_state


def test_malformed_records_are_refused_in_one_line():
    with pytest.raises(FedrecError, match="lists of different lengths"):
        record_to_shares(ConfigRecord({"senders": [1, 2], "recipients": [0], "nonces": [], "ciphertexts": []}))
    with pytest.raises(FedrecError, match="uint64"):
        records_to_masked(ConfigRecord({"client": 0}), ArrayRecord({"vector": torch.zeros(3)}))


# -- whole runs ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("extra, nodes", [
    ([], 3),  # 3 nodes of ~27 users each: the server learns only the sum over all of them
    (["data.num_users=10", "train.client_fraction=0.6", "train.rounds=2", "train.eval_every=2"], 10),  # a user per node
    (["privacy.noise_multiplier=0.8", "privacy.delta=1e-3", "privacy.clip_norm=0.5", "privacy.adaptive_clip=true",
      "privacy.clip_count_stddev=2.0", "train.rounds=2", "train.eval_every=1"], 3),  # central DP on the unmasked sum
], ids=["silos-of-users", "one-user-per-node", "central-dp-adaptive"])
def test_secure_deployment_equals_the_plain_deployment_and_the_secure_simulator(tmp_path, extra, nodes):
    plain = load_config(None, SYNTHETIC + extra)
    secure = load_config(None, SYNTHETIC + extra + SECURE)
    train(secure, tmp_path / "sim")
    _deploy(plain, tmp_path / "plain", nodes)
    metrics = _deploy(secure, tmp_path / "secure", nodes)
    _assert_same(tmp_path / "secure", tmp_path / "sim")
    _assert_same(tmp_path / "secure", tmp_path / "plain")
    simulated = json.loads((tmp_path / "sim" / "metrics.json").read_text())
    assert metrics["rmse"] == pytest.approx(simulated["rmse"], abs=1e-5)
    history = _history(tmp_path / "secure")
    assert len(history) == secure.train.rounds
    for record in history:
        assert record["secagg_nodes"] == record["secagg_in_sum"] >= 3 and "secagg_skipped" not in record
    plain_up = sum(r["bytes_up"] for r in _history(tmp_path / "plain"))
    assert metrics["bytes_up"] > 0 and metrics["bytes_up"] != plain_up  # the protocol's messages, measured


def test_nodes_never_upload_an_update_under_secure_aggregation(tmp_path):
    """What reaches the server from a node: train results and protocol messages, no update or private row."""
    config = load_config(None, SYNTHETIC + SECURE + ["train.rounds=1", "train.eval_every=1"])
    nodes = InProcessNodes([load_node(config, k, 3) for k in range(3)])
    seen: list[tuple[str, set[str], set[str]]] = []
    exchange = nodes.exchange

    def spying(requests, message_type, round_index, timeout):
        replies = exchange(requests, message_type, round_index, timeout)
        seen.extend((message_type, set(r.config_records), set(r.array_records)) for r in replies.values())
        return replies

    nodes.exchange = spying
    run_federation(config, nodes, tmp_path / "dep", expected_nodes=3)
    arrays = {(kind, name) for kind, _, names in seen for name in names}
    assert arrays == {("query", "clients"), ("train.secagg_masked_input", "secagg_vector")}
    kinds = [kind for kind, _, _ in seen]
    for stage in ("advertise", "share_keys", "masked_input", "unmask"):
        assert kinds.count(f"train.secagg_{stage}") == 3
    for state in nodes.states.values():  # each node's protocol state stayed with it, its input is spent
        assert "secagg_client" in state.config_records and "secagg_contribution" not in state.array_records


@pytest.mark.parametrize("stage, same_as_plain_failing_from", [
    ("train.secagg_share_keys", 1),  # left before sharing keys: its clients are out of round 2
    ("train.secagg_masked_input", 1),  # shared keys, sent no input: its pairwise masks are recovered
    ("train.secagg_unmask", 2),  # sent its masked input, then left: its self-mask is recovered, its input counts
])
def test_a_node_dropping_mid_protocol_is_recovered_from(tmp_path, stage, same_as_plain_failing_from):
    extra = ["train.client_fraction=1.0", "train.rounds=3", "train.eval_every=1"]
    plain = load_config(None, SYNTHETIC + extra)
    secure = load_config(None, SYNTHETIC + extra + SECURE)
    _deploy(plain, tmp_path / "plain", 4, fail={3: same_as_plain_failing_from})
    metrics = _deploy(secure, tmp_path / "secure", 4, fail_at={3: (1, stage)})
    _assert_same(tmp_path / "secure", tmp_path / "plain")
    history = _history(tmp_path / "secure")
    assert metrics["rounds"] == 3 and metrics["nodes_finished"] == 3
    assert history[1]["lost_nodes"] == 1 and history[1]["secagg_nodes"] == 4
    assert history[1]["secagg_in_sum"] == (4 if stage == "train.secagg_unmask" else 3)
    assert history[2]["secagg_nodes"] == history[2]["secagg_in_sum"] == 3


def test_too_many_dropouts_stop_the_run_with_a_clear_error(tmp_path):
    config = load_config(None, SYNTHETIC + SECURE + ["train.client_fraction=1.0", "train.eval_every=1"])
    with pytest.raises(FedrecError, match=r"round 2: secure aggregation aborted: only 1 clients sent masked input, "
                                          r"fewer than the threshold 2"):
        _deploy(config, tmp_path / "dep", 3, fail_at={1: (1, "train.secagg_masked_input"),
                                                     2: (1, "train.secagg_masked_input")})
    assert len(_history(tmp_path / "dep")) == 1 and (tmp_path / "dep" / CHECKPOINT_NAME).is_file()


def test_deployment_refuses_what_it_cannot_run_securely(tmp_path):
    check_deployable(load_config(None, SYNTHETIC + SECURE))
    for settings, message in [(["privacy.secagg_dropout=0.2"], "secagg_dropout"),
                              (["privacy.epsilon=2.0", "privacy.delta=1e-3", "privacy.mode='local'"], "mode='local'"),
                              (["privacy.hiding='pseudo'"], "privacy.hiding")]:
        with pytest.raises(FedrecError, match=message):
            check_deployable(load_config(None, SYNTHETIC + SECURE + settings))
    config = load_config(None, SYNTHETIC + SECURE)
    with pytest.raises(FedrecError, match="at least 3 SuperNodes"):
        _deploy(config, tmp_path / "two", 2)


# -- on a real Flower deployment -----------------------------------------------------------------------------


@pytest.mark.slow
def test_loopback_deployment_with_secure_aggregation_equals_the_simulator(tmp_path):
    """SuperLink + 3 SuperNodes on loopback: every protocol stage is a Message API round trip to a ClientApp
    (a fresh process per message, the client state carried in the node's context.state)."""
    from fedrec.flower.deploy import deploy

    config = load_config(None, SYNTHETIC + SECURE + ["train.rounds=2", "train.eval_every=2"])
    train(config, tmp_path / "sim")
    metrics = deploy(config, 3, tmp_path / "dep", round_timeout=240.0, connect_timeout=120.0)
    _assert_same(tmp_path / "dep", tmp_path / "sim")
    simulated = json.loads((tmp_path / "sim" / "metrics.json").read_text())
    assert metrics["rmse"] == pytest.approx(simulated["rmse"], abs=1e-5)
    assert metrics["nodes_finished"] == 3
    assert [(h["secagg_nodes"], h["secagg_in_sum"]) for h in _history(tmp_path / "dep")] == [(3, 3), (3, 3)]
