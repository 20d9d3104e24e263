"""The secure-aggregation protocol's messages and client state as Flower records, and back.

Each dataclass of :mod:`fedrec.privacy.secagg` travels as one ``ConfigRecord`` (ids as integer
lists, keys, nonces, ciphertexts and Shamir shares as bytes) -- except a masked input, whose ring
vector is an ``ArrayRecord`` of uint64. A node keeps its :class:`~fedrec.privacy.secagg.ClientState`
between messages the same way, in its ``context.state``. Decoders check the lists line up and
raise :class:`~fedrec.errors.FedrecError` naming the record otherwise.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord

from fedrec.errors import FedrecError
from fedrec.privacy.secagg import (ClientState, EncryptedShares, KeyAdvertisement, MaskedInput, UnmaskRequest,
                                   UnmaskResponse)
from fedrec.privacy.shamir import Share, share_from_bytes, share_to_bytes

VECTOR = "vector"  # the ArrayRecord key of a masked input's ring vector


def _ints(record: ConfigRecord, key: str) -> list[int]:
    return [int(v) for v in record.get(key, [])]


def _bytes_list(record: ConfigRecord, key: str) -> list[bytes]:
    return [bytes(v) for v in record.get(key, [])]


def _same_lengths(record: ConfigRecord, *keys: str) -> None:
    lengths = {key: len(record.get(key, [])) for key in keys}
    if len(set(lengths.values())) > 1:
        raise FedrecError(f"malformed secure-aggregation record: lists of different lengths {lengths}; "
                          "give the server and the SuperNodes the same fedrec version")


def adverts_to_record(adverts: Mapping[int, KeyAdvertisement]) -> ConfigRecord:
    """Several clients' public keys (what the server sends a client: its neighbours' keys)."""
    order = sorted(adverts)
    return ConfigRecord({"clients": order, "cipher_publics": [adverts[c].cipher_public for c in order],
                         "mask_publics": [adverts[c].mask_public for c in order]})


def record_to_adverts(record: ConfigRecord) -> dict[int, KeyAdvertisement]:
    _same_lengths(record, "clients", "cipher_publics", "mask_publics")
    return {c: KeyAdvertisement(c, cipher, mask) for c, cipher, mask in
            zip(_ints(record, "clients"), _bytes_list(record, "cipher_publics"), _bytes_list(record, "mask_publics"))}


def advert_to_record(advert: KeyAdvertisement) -> ConfigRecord:
    """One client's public keys (its reply to the advertise request)."""
    return adverts_to_record({advert.client: advert})


def record_to_advert(record: ConfigRecord) -> KeyAdvertisement:
    adverts = record_to_adverts(record)
    if len(adverts) != 1:
        raise FedrecError(f"malformed secure-aggregation key advertisement: {len(adverts)} clients instead of 1")
    return next(iter(adverts.values()))


def shares_to_record(messages: Sequence[EncryptedShares]) -> ConfigRecord:
    """Encrypted share messages (a client's outgoing shares, or the ones the server routes to it)."""
    return ConfigRecord({"senders": [m.sender for m in messages], "recipients": [m.recipient for m in messages],
                         "nonces": [m.nonce for m in messages], "ciphertexts": [m.ciphertext for m in messages]})


def record_to_shares(record: ConfigRecord) -> list[EncryptedShares]:
    _same_lengths(record, "senders", "recipients", "nonces", "ciphertexts")
    return [EncryptedShares(s, r, n, c) for s, r, n, c in zip(
        _ints(record, "senders"), _ints(record, "recipients"), _bytes_list(record, "nonces"),
        _bytes_list(record, "ciphertexts"))]


def masked_to_records(masked: MaskedInput) -> tuple[ConfigRecord, ArrayRecord]:
    """A masked input: the sender in a ConfigRecord, the uint64 ring vector in an ArrayRecord."""
    vector = np.ascontiguousarray(masked.vector, dtype=np.uint64)
    return ConfigRecord({"client": int(masked.client)}), ArrayRecord({VECTOR: Array(vector)})


def records_to_masked(config: ConfigRecord, arrays: ArrayRecord) -> MaskedInput:
    if VECTOR not in arrays or "client" not in config:
        raise FedrecError("malformed secure-aggregation masked input: no sender or no vector")
    vector = arrays[VECTOR].numpy()
    if vector.dtype != np.uint64 or vector.ndim != 1:
        raise FedrecError(f"malformed secure-aggregation masked input: {vector.dtype} array of shape {vector.shape}, "
                          "expected a uint64 vector")
    return MaskedInput(int(config["client"]), vector)


def request_to_record(request: UnmaskRequest) -> ConfigRecord:
    return ConfigRecord({"dropped": list(request.dropped), "survivors": list(request.survivors)})


def record_to_request(record: ConfigRecord) -> UnmaskRequest:
    return UnmaskRequest(tuple(_ints(record, "dropped")), tuple(_ints(record, "survivors")))


def _share_map(owners: Sequence[int], shares: Sequence[bytes]) -> dict[int, Share]:
    return {owner: share_from_bytes(data) for owner, data in zip(owners, shares)}


def response_to_record(response: UnmaskResponse) -> ConfigRecord:
    keys, seeds = sorted(response.mask_key_shares), sorted(response.self_mask_shares)
    return ConfigRecord({
        "client": int(response.client),
        "mask_key_owners": keys, "mask_key_shares": [share_to_bytes(response.mask_key_shares[v]) for v in keys],
        "self_mask_owners": seeds, "self_mask_shares": [share_to_bytes(response.self_mask_shares[v]) for v in seeds],
    })


def record_to_response(record: ConfigRecord) -> UnmaskResponse:
    _same_lengths(record, "mask_key_owners", "mask_key_shares")
    _same_lengths(record, "self_mask_owners", "self_mask_shares")
    return UnmaskResponse(int(record["client"]),
                          _share_map(_ints(record, "mask_key_owners"), _bytes_list(record, "mask_key_shares")),
                          _share_map(_ints(record, "self_mask_owners"), _bytes_list(record, "self_mask_shares")))


def client_state_to_record(state: ClientState) -> ConfigRecord:
    """A client's whole protocol state (its secrets included: it never leaves the node)."""
    peers = sorted(state.peer_keys)
    keyed = sorted(state.share_keys)
    held = sorted(state.held_shares)
    return ConfigRecord({
        "client": int(state.client), "neighbours": list(state.neighbours), "threshold": int(state.threshold),
        "cipher_private": state.cipher_private, "mask_private": state.mask_private,
        "self_mask_seed": state.self_mask_seed,
        "peers": peers, "peer_cipher_publics": [state.peer_keys[v].cipher_public for v in peers],
        "peer_mask_publics": [state.peer_keys[v].mask_public for v in peers],
        "share_key_peers": keyed, "share_keys": [state.share_keys[v] for v in keyed],
        "held_from": held, "held_mask_key_shares": [share_to_bytes(state.held_shares[v][0]) for v in held],
        "held_self_mask_shares": [share_to_bytes(state.held_shares[v][1]) for v in held],
        "masked_with": list(state.masked_with),
        "revealed_mask_keys": sorted(state.revealed_mask_keys),
        "revealed_self_masks": sorted(state.revealed_self_masks),
    })


def record_to_client_state(record: ConfigRecord) -> ClientState:
    _same_lengths(record, "peers", "peer_cipher_publics", "peer_mask_publics")
    _same_lengths(record, "share_key_peers", "share_keys")
    _same_lengths(record, "held_from", "held_mask_key_shares", "held_self_mask_shares")
    peers = {v: KeyAdvertisement(v, cipher, mask) for v, cipher, mask in zip(
        _ints(record, "peers"), _bytes_list(record, "peer_cipher_publics"), _bytes_list(record, "peer_mask_publics"))}
    held = {v: (share_from_bytes(key), share_from_bytes(seed)) for v, key, seed in zip(
        _ints(record, "held_from"), _bytes_list(record, "held_mask_key_shares"),
        _bytes_list(record, "held_self_mask_shares"))}
    return ClientState(
        client=int(record["client"]), neighbours=tuple(_ints(record, "neighbours")), threshold=int(record["threshold"]),
        cipher_private=bytes(record["cipher_private"]), mask_private=bytes(record["mask_private"]),
        self_mask_seed=bytes(record["self_mask_seed"]), peer_keys=peers,
        share_keys=dict(zip(_ints(record, "share_key_peers"), _bytes_list(record, "share_keys"))),
        held_shares=held, masked_with=tuple(_ints(record, "masked_with")),
        revealed_mask_keys=frozenset(_ints(record, "revealed_mask_keys")),
        revealed_self_masks=frozenset(_ints(record, "revealed_self_masks")),
    )
