"""Secure aggregation: the server learns the sum of the cohort's uploads and nothing else.

The protocol of Bonawitz et al. (2017, "Practical Secure Aggregation for Privacy-Preserving Machine
Learning", honest-but-curious variant) with the sparse neighbour graph of SecAgg+ (Bell et al., 2020,
"Secure Single-Server Aggregation with (Poly)Logarithmic Overhead"): each client is paired with k
neighbours in a random Harary graph, k = O(log n), and masks and shares secrets only with them; the
Shamir threshold t applies per neighbourhood. With k >= n-1 it is the original complete-graph protocol.

Rounds (the message types below are what would travel over the network):

0. **Advertise keys.** Each client u makes two X25519 key pairs, (c_u) for encrypting shares and
   (s_u) for pairwise masks, and sends both public keys. The server sends every client its
   neighbours' public keys.
1. **Share keys.** u draws a 32-byte self-mask seed b_u, splits b_u and its mask private key s_u^SK
   into t-of-k Shamir shares over GF(2^521-1), and encrypts each neighbour's pair of shares with
   ChaCha20-Poly1305 under HKDF-SHA256(X25519(c_u^SK, c_v^PK)). The server routes the ciphertexts.
2. **Masked input.** u encodes its vector in fixed point (:mod:`fedrec.privacy.fixedpoint`) and
   adds, modulo 2^bits, PRG(b_u) and, for every neighbour v that shared keys, +PRG(s_uv) if u < v
   else -PRG(s_uv), where s_uv = HKDF-SHA256(X25519(s_u^SK, s_v^PK)) and PRG is the ChaCha20
   keystream of the 32-byte seed. Pairwise masks cancel in the sum; self-masks do not.
3. **Unmasking.** The server tells each survivor which of its neighbours dropped before sending input
   and which sent it. Survivors return shares of the dropped clients' mask keys (the server
   recomputes and removes their pairwise masks with survivors) and of the senders' self-mask
   seeds (the server removes the self-masks). A client never reveals both shares of one client:
   with both, the server could unmask that client's input alone (:class:`SecAggRefusal`).

Fewer than t shares for any secret needed, or fewer than t clients in the sum, abort the round with
:class:`SecAggAbort` rather than return a wrong sum. Keys are fresh per round (never reuse a
ClientState across rounds). Every party's state is an explicit frozen dataclass and every round is a
function (state, messages in) -> (state, messages out), so the same code can run with clients in
separate processes; :func:`secure_sum` simulates all parties in one process.

Entry point for the simulator: ``secure_sum(vectors, SecAggSettings(...), seed=..., drop_before_input=...,
drop_after_input=...)`` with ``vectors`` the (C, D) float uploads of the cohort (flattened shared
parameters); ``result.sum`` is their sum over ``result.survivors`` to within
``settings.codec.sum_error_bound(C)`` per coordinate; ``result.survivors`` (clients whose input is in
the sum, including those that dropped after sending it) gives the denominator of the average.
:func:`secure_sum_tensors` does the same for named torch tensors of shape (C, *shape). Pass a seed
derived from (run seed, round) so that every round draws fresh keys.
"""

from __future__ import annotations

import math
import os
import time
from dataclasses import dataclass, field, replace
from typing import Callable, Iterable, Mapping, Sequence

import numpy as np
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from cryptography.exceptions import InvalidTag

from fedrec.errors import FedrecError
from fedrec.privacy.fixedpoint import FixedPoint, check_capacity, decode_sum, encode
from fedrec.privacy.shamir import (MERSENNE_521, Share, reconstruct_secret, share_from_bytes, share_to_bytes,
                                   split_secret)

RandomBytes = Callable[[int], bytes]

HKDF_INFO_SHARES = b"fedrec secagg v1: share encryption key"
HKDF_INFO_MASK = b"fedrec secagg v1: pairwise mask seed"
KEY_BYTES = 32
NONCE_BYTES = 12
ID_BYTES = 4
SHARE_WIRE_BYTES = 4 + 66  # x (4 bytes) and y (66 bytes) of one GF(2^521-1) share


class SecAggAbort(FedrecError):
    """The round cannot finish correctly (too few shares or clients); no sum is returned."""


class SecAggRefusal(FedrecError):
    """A client refused a request that would let the server unmask an individual input."""


# -- settings ------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SecAggSettings:
    """Fixed-point encoding, neighbours per client and the Shamir threshold per neighbourhood.

    ``degree`` None picks k = 2 * ceil(2 * log2 n) (capped at n-1, the complete graph); ``threshold``
    None picks t = max(2, ceil(threshold_fraction * k)). A t above k/2 also protects against a server
    that lies to clients about who dropped; a lower t tolerates more dropouts.
    """

    codec: FixedPoint = field(default_factory=FixedPoint)
    degree: int | None = None
    threshold: int | None = None
    threshold_fraction: float = 0.5
    clip: bool = False  # clip inputs to [-max_abs, max_abs] instead of refusing larger values

    def __post_init__(self) -> None:
        if self.degree is not None and self.degree < 2:
            raise FedrecError(f"secure aggregation degree={self.degree} must be at least 2 neighbours per client")
        if self.threshold is not None and self.threshold < 2:
            raise FedrecError(f"secure aggregation threshold={self.threshold} must be at least 2 "
                              f"(with 1, any single neighbour can unmask a client)")
        if not 0.0 < self.threshold_fraction <= 1.0:
            raise FedrecError(f"secure aggregation threshold_fraction={self.threshold_fraction} must be in (0, 1]")


def neighbour_degree(num_clients: int, settings: SecAggSettings) -> int:
    """Neighbours per client k for a cohort of ``num_clients`` (even, or n-1 for the complete graph)."""
    if num_clients < 3:
        raise FedrecError(f"secure aggregation needs a cohort of at least 3 clients, got {num_clients}; "
                          f"raise train.client_fraction or switch secure aggregation off")
    wanted = settings.degree if settings.degree is not None else 2 * math.ceil(2 * math.log2(num_clients))
    if wanted >= num_clients - 1:
        return num_clients - 1
    return wanted + (wanted % 2)  # Harary graphs with an even degree exist for every n > k


def share_threshold(degree: int, settings: SecAggSettings) -> int:
    """Shares t needed to recover a client's secret, out of its ``degree`` neighbours."""
    threshold = settings.threshold if settings.threshold is not None else max(2, math.ceil(settings.threshold_fraction * degree))
    if threshold > degree:
        raise FedrecError(f"secure aggregation threshold {threshold} exceeds the {degree} neighbours per client; "
                          f"lower the threshold or raise the degree")
    return threshold


def neighbour_graph(num_clients: int, degree: int, seed: int | None) -> tuple[tuple[int, ...], ...]:
    """A random Harary graph H(k, n): the ring with each node joined to its k/2 nearest on either
    side, nodes relabelled by a random permutation (public; chosen by the server)."""
    if degree >= num_clients - 1:
        return tuple(tuple(v for v in range(num_clients) if v != u) for u in range(num_clients))
    order = np.random.default_rng(seed).permutation(num_clients)
    position = np.empty(num_clients, dtype=np.int64)
    position[order] = np.arange(num_clients)
    half = degree // 2
    graph = []
    for u in range(num_clients):
        p = int(position[u])
        graph.append(tuple(sorted(int(order[(p + d) % num_clients]) for d in range(-half, half + 1) if d != 0)))
    return tuple(graph)


# -- cryptographic building blocks --------------------------------------------------------------------


def generate_keypair(random_bytes: RandomBytes) -> tuple[bytes, bytes]:
    """(private, public) raw X25519 keys from 32 random bytes."""
    private = X25519PrivateKey.from_private_bytes(random_bytes(KEY_BYTES))
    return _private_raw(private), private.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)


def _private_raw(private: X25519PrivateKey) -> bytes:
    from cryptography.hazmat.primitives.serialization import NoEncryption, PrivateFormat

    return private.private_bytes(Encoding.Raw, PrivateFormat.Raw, NoEncryption())


def public_from_private(private_raw: bytes) -> bytes:
    return X25519PrivateKey.from_private_bytes(private_raw).public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)


def derive_key(private: bytes | X25519PrivateKey, peer_public_raw: bytes, info: bytes) -> bytes:
    """HKDF-SHA256 (no salt, 32 bytes, ``info``) of the X25519 shared secret of the two keys."""
    if isinstance(private, bytes):
        private = X25519PrivateKey.from_private_bytes(private)
    shared = private.exchange(X25519PublicKey.from_public_bytes(peer_public_raw))
    return HKDF(algorithm=hashes.SHA256(), length=KEY_BYTES, salt=None, info=info).derive(shared)


def mask_vector(seed: bytes, length: int, codec: FixedPoint) -> np.ndarray:
    """The mask PRG: ``length`` ring elements from the ChaCha20 keystream of a 32-byte seed (nonce and
    counter zero, little-endian 64-bit words, reduced mod 2^bits)."""
    keystream = Cipher(algorithms.ChaCha20(seed, b"\x00" * 16), mode=None).encryptor().update(bytes(8 * length))
    words = np.frombuffer(keystream, dtype="<u8")
    return words if codec.bits == 64 else words & codec.modulus_mask


def _secret_int(secret: bytes) -> int:
    return int.from_bytes(secret, "big")


def _secret_bytes(value: int) -> bytes:
    if value >= 1 << (8 * KEY_BYTES):
        raise SecAggAbort("secure aggregation reconstructed a secret longer than 32 bytes: the shares are inconsistent")
    return value.to_bytes(KEY_BYTES, "big")


def _ids(sender: int, recipient: int) -> bytes:
    return sender.to_bytes(ID_BYTES, "big") + recipient.to_bytes(ID_BYTES, "big")


# -- messages ------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class KeyAdvertisement:
    client: int
    cipher_public: bytes
    mask_public: bytes

    @property
    def nbytes(self) -> int:
        return ID_BYTES + 2 * KEY_BYTES


@dataclass(frozen=True)
class EncryptedShares:
    """Shares of the sender's mask key and self-mask seed, encrypted to the recipient."""

    sender: int
    recipient: int
    nonce: bytes
    ciphertext: bytes

    @property
    def nbytes(self) -> int:
        return 2 * ID_BYTES + NONCE_BYTES + len(self.ciphertext)


@dataclass(frozen=True)
class MaskedInput:
    client: int
    vector: np.ndarray  # uint64 ring elements

    def nbytes(self, codec: FixedPoint) -> int:
        return ID_BYTES + int(self.vector.shape[0]) * codec.bytes_per_value


@dataclass(frozen=True)
class UnmaskRequest:
    """The neighbours the server says dropped before input, and those whose input is in the sum."""

    dropped: tuple[int, ...]
    survivors: tuple[int, ...]

    @property
    def nbytes(self) -> int:
        return ID_BYTES * (len(self.dropped) + len(self.survivors))


@dataclass(frozen=True)
class UnmaskResponse:
    client: int
    mask_key_shares: Mapping[int, Share]  # dropped neighbour -> my share of its mask private key
    self_mask_shares: Mapping[int, Share]  # surviving neighbour -> my share of its self-mask seed

    @property
    def nbytes(self) -> int:
        return ID_BYTES + (ID_BYTES + SHARE_WIRE_BYTES) * (len(self.mask_key_shares) + len(self.self_mask_shares))


# -- client ----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ClientState:
    """One client's secrets and what it has received and revealed in this round."""

    client: int
    neighbours: tuple[int, ...]
    threshold: int
    cipher_private: bytes
    mask_private: bytes
    self_mask_seed: bytes = b""
    peer_keys: Mapping[int, KeyAdvertisement] = field(default_factory=dict)
    share_keys: Mapping[int, bytes] = field(default_factory=dict)  # v -> AEAD key shared with v
    held_shares: Mapping[int, tuple[Share, Share]] = field(default_factory=dict)  # v -> (mask-key share, seed share)
    masked_with: tuple[int, ...] = ()
    revealed_mask_keys: frozenset[int] = frozenset()
    revealed_self_masks: frozenset[int] = frozenset()


def client_advertise(client: int, neighbours: Sequence[int], threshold: int,
                     random_bytes: RandomBytes) -> tuple[ClientState, KeyAdvertisement]:
    """Round 0: fresh key pairs; the public halves go to the server."""
    cipher_private, cipher_public = generate_keypair(random_bytes)
    mask_private, mask_public = generate_keypair(random_bytes)
    state = ClientState(client, tuple(neighbours), threshold, cipher_private, mask_private)
    return state, KeyAdvertisement(client, cipher_public, mask_public)


def client_share_keys(state: ClientState, peer_keys: Mapping[int, KeyAdvertisement],
                      random_bytes: RandomBytes) -> tuple[ClientState, list[EncryptedShares]]:
    """Round 1: t-of-k shares of the mask key and a fresh self-mask seed, encrypted to each neighbour."""
    peers = {v: key for v, key in peer_keys.items() if v in state.neighbours and v != state.client}
    if len(peers) < state.threshold:
        raise SecAggAbort(f"secure aggregation aborted: client {state.client} has {len(peers)} neighbours with keys, "
                          f"fewer than the threshold {state.threshold}")
    publics = [key.cipher_public for key in peers.values()] + [key.mask_public for key in peers.values()]
    if len(set(publics)) != len(publics):
        raise SecAggAbort(f"secure aggregation aborted: client {state.client} received duplicate public keys")
    seed = random_bytes(KEY_BYTES)
    order = sorted(peers)
    xs = [v + 1 for v in order]
    key_shares = split_secret(_secret_int(state.mask_private), state.threshold, xs, random_bytes)
    seed_shares = split_secret(_secret_int(seed), state.threshold, xs, random_bytes)
    cipher_private = X25519PrivateKey.from_private_bytes(state.cipher_private)
    aead_keys = {v: derive_key(cipher_private, peers[v].cipher_public, HKDF_INFO_SHARES) for v in order}
    messages = []
    for v, key_share, seed_share in zip(order, key_shares, seed_shares):
        aead = ChaCha20Poly1305(aead_keys[v])
        nonce = random_bytes(NONCE_BYTES)
        plaintext = _ids(state.client, v) + share_to_bytes(key_share) + share_to_bytes(seed_share)
        messages.append(EncryptedShares(state.client, v, nonce, aead.encrypt(nonce, plaintext, _ids(state.client, v))))
    return replace(state, self_mask_seed=seed, peer_keys=peers, share_keys=aead_keys), messages


def client_masked_input(state: ClientState, inbox: Sequence[EncryptedShares], values: np.ndarray,
                        codec: FixedPoint, clip: bool = False) -> tuple[ClientState, MaskedInput]:
    """Round 2: store the neighbours' shares and send the input masked with the self-mask and one
    pairwise mask per neighbour that shared keys."""
    return _masked(_receive_shares(state, inbox), encode(values, codec, clip=clip), codec)


def client_masked_encoded(state: ClientState, inbox: Sequence[EncryptedShares], encoded: np.ndarray,
                          codec: FixedPoint) -> tuple[ClientState, MaskedInput]:
    """Round 2 for an input already in the ring Z_{2^bits} (e.g. the sum of several clients' encodings,
    made by a node that speaks for them): as :func:`client_masked_input`, without the encoding."""
    return _masked(_receive_shares(state, inbox), np.asarray(encoded, dtype=np.uint64) & codec.modulus_mask, codec)


def _receive_shares(state: ClientState, inbox: Sequence[EncryptedShares]) -> ClientState:
    """Decrypt and keep the neighbours' shares; abort on a forged or misrouted message or too few shares."""
    held: dict[int, tuple[Share, Share]] = {}
    for message in inbox:
        v = message.sender
        if message.recipient != state.client or v not in state.peer_keys or v in held:
            raise SecAggAbort(f"secure aggregation aborted: client {state.client} got a share message it should not "
                              f"(from {v} to {message.recipient})")
        aead = ChaCha20Poly1305(state.share_keys[v])
        try:
            plaintext = aead.decrypt(message.nonce, message.ciphertext, _ids(v, state.client))
        except InvalidTag:
            raise SecAggAbort(f"secure aggregation aborted: client {state.client} could not authenticate the shares "
                              f"from client {v}") from None
        if plaintext[:2 * ID_BYTES] != _ids(v, state.client):
            raise SecAggAbort(f"secure aggregation aborted: share message from {v} names the wrong parties")
        body = plaintext[2 * ID_BYTES:]
        held[v] = (share_from_bytes(body[:SHARE_WIRE_BYTES]), share_from_bytes(body[SHARE_WIRE_BYTES:]))
    if len(held) < state.threshold:
        raise SecAggAbort(f"secure aggregation aborted: only {len(held)} neighbours of client {state.client} shared "
                          f"keys, fewer than the threshold {state.threshold}")
    return replace(state, held_shares=held)


def _masked(state: ClientState, vector: np.ndarray, codec: FixedPoint) -> tuple[ClientState, MaskedInput]:
    """The ring vector plus the self-mask and the pairwise masks with every neighbour whose shares are held."""
    held = state.held_shares
    length = int(vector.shape[0])
    vector = vector.copy()  # a fresh array: updated in place below
    vector += mask_vector(state.self_mask_seed, length, codec)
    mask_private = X25519PrivateKey.from_private_bytes(state.mask_private)
    for v in sorted(held):
        mask = mask_vector(derive_key(mask_private, state.peer_keys[v].mask_public, HKDF_INFO_MASK), length, codec)
        if state.client < v:
            vector += mask
        else:
            vector -= mask
    state = replace(state, held_shares=held, masked_with=tuple(sorted(held)))
    return state, MaskedInput(state.client, vector & codec.modulus_mask)


def client_unmask(state: ClientState, request: UnmaskRequest) -> tuple[ClientState, UnmaskResponse]:
    """Round 3: shares of dropped neighbours' mask keys and of survivors' self-mask seeds; never both
    kinds for one client, within this request or across requests."""
    dropped, survivors = set(request.dropped), set(request.survivors)
    both = (dropped & survivors) | (dropped & state.revealed_self_masks) | (survivors & state.revealed_mask_keys)
    if both:
        raise SecAggRefusal(f"client {state.client} refuses to reveal both the mask-key share and the self-mask share "
                            f"of client {min(both)}: that would unmask its input")
    if state.client in dropped:
        raise SecAggRefusal(f"client {state.client} refuses a request that lists itself as dropped")
    alive = len((survivors & set(state.neighbours)) | {state.client})
    if alive < state.threshold:
        raise SecAggAbort(f"secure aggregation aborted: client {state.client} sees {alive} surviving clients in its "
                          f"neighbourhood, fewer than the threshold {state.threshold}")
    key_shares = {v: state.held_shares[v][0] for v in sorted(dropped) if v in state.held_shares}
    seed_shares = {v: state.held_shares[v][1] for v in sorted(survivors) if v in state.held_shares}
    state = replace(state, revealed_mask_keys=state.revealed_mask_keys | frozenset(key_shares),
                    revealed_self_masks=state.revealed_self_masks | frozenset(seed_shares))
    return state, UnmaskResponse(state.client, key_shares, seed_shares)


# -- server ----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ServerState:
    """What the server holds: the public graph, the keys, who reached each round, the masked sum."""

    codec: FixedPoint
    graph: tuple[tuple[int, ...], ...]
    threshold: int
    keys: Mapping[int, KeyAdvertisement] = field(default_factory=dict)  # U1: advertised keys
    shared: frozenset[int] = frozenset()  # U2: sent shares
    inputs: frozenset[int] = frozenset()  # U3: sent masked input
    masked_sum: np.ndarray | None = None

    @property
    def num_clients(self) -> int:
        return len(self.graph)


def server_start(num_clients: int, settings: SecAggSettings, graph_seed: int | None) -> ServerState:
    """A fresh round: the neighbour graph and threshold for this cohort; refuses settings that could overflow."""
    check_capacity(settings.codec, num_clients)
    degree = neighbour_degree(num_clients, settings)
    threshold = share_threshold(degree, settings)
    return ServerState(settings.codec, neighbour_graph(num_clients, degree, graph_seed), threshold)


def server_route_keys(state: ServerState, adverts: Iterable[KeyAdvertisement]
                      ) -> tuple[ServerState, dict[int, dict[int, KeyAdvertisement]]]:
    """Round 0: each advertising client gets the keys of its neighbours that advertised."""
    keys = {a.client: a for a in adverts}
    _require(len(keys), state.threshold, "clients advertised keys")
    outbox = {u: {v: keys[v] for v in state.graph[u] if v in keys} for u in keys}
    return replace(state, keys=keys), outbox


def server_route_shares(state: ServerState, messages: Iterable[EncryptedShares]
                        ) -> tuple[ServerState, dict[int, list[EncryptedShares]]]:
    """Round 1: forward each ciphertext to its recipient; U2 is the set of clients that sent shares."""
    messages = list(messages)
    shared = frozenset(m.sender for m in messages)
    if not shared <= state.keys.keys():
        raise SecAggAbort(f"secure aggregation aborted: shares from clients that advertised no keys: "
                          f"{sorted(shared - state.keys.keys())}")
    _require(len(shared), state.threshold, "clients shared keys")
    inbox: dict[int, list[EncryptedShares]] = {u: [] for u in shared}
    for message in messages:
        if message.recipient in shared and message.recipient in state.graph[message.sender]:
            inbox[message.recipient].append(message)
    return replace(state, shared=shared), inbox


def server_add_input(state: ServerState, masked: MaskedInput) -> ServerState:
    """Round 2, one message: add a masked input to the running sum (the server keeps no single input)."""
    if masked.client not in state.shared or masked.client in state.inputs:
        raise SecAggAbort(f"secure aggregation aborted: unexpected masked input from client {masked.client}")
    total = masked.vector.copy() if state.masked_sum is None else state.masked_sum + masked.vector
    return replace(state, inputs=state.inputs | {masked.client}, masked_sum=total & state.codec.modulus_mask)


def server_request_unmasking(state: ServerState) -> tuple[ServerState, dict[int, UnmaskRequest]]:
    """End of round 2: ask every sender for the shares the unmasking needs, naming its neighbours
    that dropped before input and those whose input is in the sum."""
    _require(len(state.inputs), state.threshold, "clients sent masked input")
    dropped = state.shared - state.inputs
    requests = {u: UnmaskRequest(tuple(sorted(dropped.intersection(state.graph[u]))),
                                 tuple(sorted(state.inputs.intersection(state.graph[u]))))
                for u in sorted(state.inputs)}
    return state, requests


def server_collect_inputs(state: ServerState, inputs: Iterable[MaskedInput]
                          ) -> tuple[ServerState, dict[int, UnmaskRequest]]:
    """Round 2: add up the masked inputs, then ask for the shares (:func:`server_add_input` for streaming)."""
    for masked in inputs:
        state = server_add_input(state, masked)
    return server_request_unmasking(state)


def server_unmask(state: ServerState, responses: Iterable[UnmaskResponse]) -> np.ndarray:
    """Round 3: reconstruct the secrets, remove every mask that does not cancel, decode the sum."""
    responses = [r for r in responses if r.client in state.inputs]
    if state.masked_sum is None:
        raise SecAggAbort("secure aggregation aborted: unmasking was asked before any masked input arrived")
    length = int(state.masked_sum.shape[0])
    codec = state.codec
    total = state.masked_sum.copy()
    for v in sorted(state.inputs):  # self-masks of everyone whose input is in the sum
        shares = [r.self_mask_shares[v] for r in responses if v in r.self_mask_shares]
        seed = _reconstruct(shares, state.threshold, f"the self-mask seed of client {v}")
        total -= mask_vector(seed, length, codec)
    for v in sorted(state.shared - state.inputs):  # pairwise masks of survivors with clients that dropped
        shares = [r.mask_key_shares[v] for r in responses if v in r.mask_key_shares]
        mask_private = _reconstruct(shares, state.threshold, f"the mask key of dropped client {v}")
        if public_from_private(mask_private) != state.keys[v].mask_public:
            raise SecAggAbort(f"secure aggregation aborted: the shares of client {v}'s mask key are inconsistent")
        mask_key = X25519PrivateKey.from_private_bytes(mask_private)
        for u in sorted(state.inputs.intersection(state.graph[v])):
            mask = mask_vector(derive_key(mask_key, state.keys[u].mask_public, HKDF_INFO_MASK), length, codec)
            if u < v:  # u added +mask
                total -= mask
            else:
                total += mask
    return decode_sum(total, codec)


def _require(count: int, threshold: int, what: str) -> None:
    if count < threshold:
        raise SecAggAbort(f"secure aggregation aborted: only {count} {what}, fewer than the threshold {threshold}; "
                          f"retry the round with more clients or a lower threshold")


def _reconstruct(shares: Sequence[Share], threshold: int, what: str) -> bytes:
    if len(shares) < threshold:
        raise SecAggAbort(f"secure aggregation aborted: {len(shares)} shares of {what} arrived, fewer than the "
                          f"threshold {threshold} (too many dropouts in its neighbourhood); no sum is returned")
    return _secret_bytes(reconstruct_secret(shares, threshold, MERSENNE_521))


# -- in-process driver -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class SecureSumResult:
    """The unmasked sum over ``survivors`` (clients whose inputs are in it) and what it cost."""

    sum: np.ndarray
    survivors: tuple[int, ...]
    dropped: tuple[int, ...]
    degree: int
    threshold: int
    bytes_up_per_client: float  # mean over clients that took part in every round
    bytes_down_per_client: float
    input_bytes_per_client: int  # of which the masked vector itself
    client_seconds: float  # mean compute per client, all rounds
    server_seconds: float
    bytes_up_total: int = 0  # every message all clients sent (including those that dropped later)
    bytes_down_total: int = 0  # every message the server sent to clients


def seeded_random_bytes(seed: int, party: int) -> RandomBytes:
    """Deterministic randomness for party ``party`` (simulation and tests only; not for real keys)."""
    return np.random.default_rng([seed, party]).bytes


class RowsOnDemand:
    """A (clients, values) input whose rows are made when the protocol asks for them (one client's
    vector in memory at a time, as on real devices)."""

    ndim = 2

    def __init__(self, num_clients: int, length: int, make_row: Callable[[int], np.ndarray]) -> None:
        self.shape = (num_clients, length)
        self.make_row = make_row

    def __getitem__(self, client: int) -> np.ndarray:
        row = np.asarray(self.make_row(int(client)))
        if row.shape != (self.shape[1],):
            raise FedrecError(f"client {client}'s secure-aggregation vector has shape {row.shape}, expected ({self.shape[1]},)")
        return row


def secure_sum(vectors: np.ndarray | RowsOnDemand, settings: SecAggSettings = SecAggSettings(), seed: int | None = None,
               drop_before_shares: Iterable[int] = (), drop_before_input: Iterable[int] = (),
               drop_after_input: Iterable[int] = ()) -> SecureSumResult:
    """Run the whole protocol in process for a cohort's (C, D) float ``vectors``.

    Clients listed in ``drop_before_shares`` leave after advertising keys, ``drop_before_input``
    after sharing keys, ``drop_after_input`` after sending their masked input (their input stays in
    the sum). ``seed`` None draws keys from os.urandom; an int makes the run reproducible. ``vectors``
    is read one row per client (float32 is fine, and a broadcast view costs no memory).
    """
    if not isinstance(vectors, RowsOnDemand):
        vectors = np.asarray(vectors)
    if vectors.ndim != 2:
        raise FedrecError(f"secure_sum expects a (clients, values) array, got shape {vectors.shape}")
    num_clients, length = vectors.shape
    drops = [frozenset(int(c) for c in d) for d in (drop_before_shares, drop_before_input, drop_after_input)]
    for d in drops:
        if any(not 0 <= c < num_clients for c in d):
            raise FedrecError(f"dropout client ids must lie in [0, {num_clients}), got {sorted(d)}")
    if sum(len(d) for d in drops) != len(frozenset().union(*drops)):
        raise FedrecError("a client can drop out only once: the dropout sets must be disjoint")
    before_shares, before_input, after_input = drops

    def randomness(party: int) -> RandomBytes:
        return os.urandom if seed is None else seeded_random_bytes(seed, party)

    up = np.zeros(num_clients)
    down = np.zeros(num_clients)
    client_time = np.zeros(num_clients)
    server_time = 0.0

    def timed(party: int | None, fn, *args):
        nonlocal server_time
        began = time.perf_counter()
        result = fn(*args)
        if party is None:
            server_time += time.perf_counter() - began
        else:
            client_time[party] += time.perf_counter() - began
        return result

    server = timed(None, server_start, num_clients, settings, None if seed is None else seed)
    rngs = {u: randomness(u + 1) for u in range(num_clients)}
    clients: dict[int, ClientState] = {}
    adverts = []
    for u in range(num_clients):
        clients[u], advert = timed(u, client_advertise, u, server.graph[u], server.threshold, rngs[u])
        adverts.append(advert)
        up[u] += advert.nbytes
    server, key_outbox = timed(None, server_route_keys, server, adverts)

    share_messages = []
    for u in range(num_clients):
        down[u] += sum(a.nbytes for a in key_outbox[u].values())
        if u in before_shares:
            continue
        clients[u], messages = timed(u, client_share_keys, clients[u], key_outbox[u], rngs[u])
        share_messages += messages
        up[u] += sum(m.nbytes for m in messages)
    server, inbox = timed(None, server_route_shares, server, share_messages)

    for u in sorted(server.shared):
        down[u] += sum(m.nbytes for m in inbox[u])
        if u in before_input:
            continue
        clients[u], masked = timed(u, client_masked_input, clients[u], inbox[u], vectors[u], settings.codec,
                                   settings.clip)
        up[u] += masked.nbytes(settings.codec)
        server = timed(None, server_add_input, server, masked)
    server, requests = timed(None, server_request_unmasking, server)

    responses = []
    for u, request in requests.items():
        down[u] += request.nbytes
        if u in after_input:
            continue
        clients[u], response = timed(u, client_unmask, clients[u], request)
        responses.append(response)
        up[u] += response.nbytes
    total = timed(None, server_unmask, server, responses)

    finishers = sorted(set(requests) - after_input)
    return SecureSumResult(
        sum=total, survivors=tuple(sorted(server.inputs)),
        dropped=tuple(sorted(set(range(num_clients)) - server.inputs)),
        degree=len(server.graph[0]), threshold=server.threshold,
        bytes_up_per_client=float(up[finishers].mean()), bytes_down_per_client=float(down[finishers].mean()),
        input_bytes_per_client=ID_BYTES + length * settings.codec.bytes_per_value,
        client_seconds=float(client_time[finishers].mean()), server_seconds=server_time,
        bytes_up_total=int(up.sum()), bytes_down_total=int(down.sum()))


def secure_sum_tensors(uploads: Mapping[str, object], settings: SecAggSettings = SecAggSettings(),
                       seed: int | None = None, drop_before_input: Iterable[int] = (),
                       drop_after_input: Iterable[int] = ()) -> tuple[dict[str, object], SecureSumResult]:
    """:func:`secure_sum` for named torch tensors, each (C, *shape) with one row per client: returns
    each tensor summed over ``result.survivors`` (shape ``shape``, float32) and the protocol result."""
    import torch

    names = list(uploads)
    tensors = [uploads[name] for name in names]
    if not tensors:
        raise FedrecError("secure_sum_tensors got no tensors to sum")
    num_clients = int(tensors[0].shape[0])
    if any(int(t.shape[0]) != num_clients for t in tensors):
        raise FedrecError("secure_sum_tensors needs one row per client in every tensor (same first dimension)")
    dtype = torch.float64 if any(t.dtype == torch.float64 for t in tensors) else torch.float32
    flat = np.concatenate([t.detach().reshape(num_clients, -1).to(dtype).cpu().numpy() for t in tensors], axis=1)
    result = secure_sum(flat, settings, seed, drop_before_input=drop_before_input, drop_after_input=drop_after_input)
    sums, offset = {}, 0
    for name, t in zip(names, tensors):
        size = int(np.prod(t.shape[1:], dtype=np.int64))
        sums[name] = torch.from_numpy(result.sum[offset:offset + size].copy()).to(torch.float32).reshape(t.shape[1:])
        offset += size
    return sums, result
