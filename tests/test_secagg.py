"""Secure aggregation (Bonawitz et al. 2017 with the SecAgg+ neighbour graph): exactness, dropouts,
thresholds, the refusal rule, fixed test vectors for the primitives, and what the server sees."""

from __future__ import annotations

import hashlib
import hmac
import itertools
from collections import Counter

import numpy as np
import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from scipy import stats

from fedrec.errors import FedrecError
from fedrec.privacy.fixedpoint import FixedPoint, check_capacity, decode_sum, encode
from fedrec.privacy.secagg import (HKDF_INFO_MASK, HKDF_INFO_SHARES, EncryptedShares, SecAggAbort, SecAggRefusal,
                                   SecAggSettings, UnmaskRequest, client_advertise, client_masked_input,
                                   client_share_keys, client_unmask, derive_key, mask_vector, neighbour_degree,
                                   neighbour_graph, public_from_private, secure_sum, secure_sum_tensors,
                                   seeded_random_bytes, server_collect_inputs, server_route_keys, server_route_shares,
                                   server_start, server_unmask, share_threshold)
from fedrec.privacy.shamir import MERSENNE_521, Share, evaluate_polynomial, reconstruct_secret, split_secret

# RFC 7748 section 6.1: Alice's and Bob's X25519 keys and their shared secret.
ALICE_PRIVATE = bytes.fromhex("77076d0a7318a57d3c16c17251b26645df4c2f87ebc0992ab177fba51db92c2a")
ALICE_PUBLIC = bytes.fromhex("8520f0098930a754748b7ddcb43ef75a0dbf3a0d26381af4eba4a98eaa9b4e6a")
BOB_PRIVATE = bytes.fromhex("5dab087e624a8a4b79e17f8b83800ee66f3bb1292618b6fd1c2f8b27ff88e0eb")
BOB_PUBLIC = bytes.fromhex("de9edb7d7b7dc1b4d35b61c2ece435373f8343c85b78674dadfc7e146f882b4f")
SHARED_SECRET = bytes.fromhex("4a5d9d5ba4ce2de1728e3bf480350f25e07e21c947d19e3376f09b3c1e161742")


def hkdf_sha256_reference(secret: bytes, info: bytes, length: int = 32) -> bytes:
    """RFC 5869 with the standard library, no salt (= HashLen zero bytes)."""
    prk = hmac.new(b"\x00" * 32, secret, hashlib.sha256).digest()
    okm, block = b"", b""
    for counter in range(1, -(-length // 32) + 1):
        block = hmac.new(prk, block + info + bytes([counter]), hashlib.sha256).digest()
        okm += block
    return okm[:length]


def plain_sum(vectors: np.ndarray, clients) -> np.ndarray:
    return vectors[list(clients)].sum(axis=0)


# -- fixed test vectors ------------------------------------------------------------------------------------


def test_key_derivation_matches_rfc7748_and_rfc5869() -> None:
    assert public_from_private(ALICE_PRIVATE) == ALICE_PUBLIC
    assert public_from_private(BOB_PRIVATE) == BOB_PUBLIC
    share_key = derive_key(ALICE_PRIVATE, BOB_PUBLIC, HKDF_INFO_SHARES)
    mask_seed = derive_key(BOB_PRIVATE, ALICE_PUBLIC, HKDF_INFO_MASK)
    assert share_key.hex() == "22522eb56a495b526a5efb6829b87e0f5a6a3f75dd68ea0bc28c3f4c6c0a73fc"
    assert mask_seed.hex() == "1785b7d9660b61f7bf176f9f36a694547ac4a51ddd541fb006cbe443d95f5bce"
    assert share_key == hkdf_sha256_reference(SHARED_SECRET, HKDF_INFO_SHARES)
    assert mask_seed == hkdf_sha256_reference(SHARED_SECRET, HKDF_INFO_MASK)
    assert derive_key(BOB_PRIVATE, ALICE_PUBLIC, HKDF_INFO_SHARES) == share_key  # both ends agree


def test_mask_generator_is_the_chacha20_keystream() -> None:
    # RFC 8439 appendix A.1, test vectors 1 and 2: all-zero key and nonce, blocks 0 and 1.
    expected = bytes.fromhex(
        "76b8e0ada0f13d90405d6ae55386bd28bdd219b8a08ded1aa836efcc8b770dc7da41597c5157488d7724e03fb8d84a376a43b8f41518a11cc387b669b2ee6586"
        "9f07e7be5551387a98ba977c732d080dcb0f29a048e3656912c6533e32ee7aed29b721769ce64e43d57133b074d839d531ed1f28510afb45ace10a1f4b794d6f")
    mask = mask_vector(bytes(32), 16, FixedPoint(bits=64))
    assert mask.dtype == np.uint64
    assert mask.astype("<u8").tobytes() == expected
    assert [int(v) for v in mask_vector(bytes(range(32)), 2, FixedPoint())] == [0x6A19C5D97D2BFD39, 0x494ADCB87703BD8D]
    low = mask_vector(bytes(32), 16, FixedPoint(bits=32, fraction_bits=16, max_abs=1.0))
    np.testing.assert_array_equal(low, mask & np.uint64(0xFFFFFFFF))


# -- Shamir --------------------------------------------------------------------------------------------------


@settings(max_examples=30, deadline=None)
@given(secret=st.integers(0, 2**256 - 1), threshold=st.integers(1, 8), extra=st.integers(0, 5), data=st.data())
def test_any_threshold_shares_recover_the_secret(secret: int, threshold: int, extra: int, data) -> None:
    n = threshold + extra
    shares = split_secret(secret, threshold, list(range(1, n + 1)), seeded_random_bytes(secret % 1000, n))
    subset = data.draw(st.permutations(shares)).copy()[:threshold]
    assert reconstruct_secret(subset, threshold) == secret


def test_fewer_than_threshold_shares_are_refused() -> None:
    shares = split_secret(12345, 4, [1, 2, 3, 4, 5], seeded_random_bytes(0, 0))
    with pytest.raises(FedrecError, match="needs 4 shares, got 3"):
        reconstruct_secret(shares[:3], 4)


def test_t_minus_one_shares_are_independent_of_the_secret() -> None:
    """Exhaustively over GF(11), t = 3 of 3 shares: for every secret, the t-1 = 2 shares at x = 1, 2 take
    every value pair exactly once over all random coefficients, so their distribution is the same for all
    secrets (while all 3 shares recover it)."""
    prime, threshold = 11, 3
    distributions = []
    for secret in range(prime):
        counts = Counter()
        for coefficients in itertools.product(range(prime), repeat=threshold - 1):
            feed = iter([bytes([c]) for c in coefficients])  # split_secret's random coefficients, enumerated
            shares = split_secret(secret, threshold, [1, 2, 3], lambda n: next(feed), prime=prime)
            assert shares[0].y == evaluate_polynomial((secret, *coefficients), 1, prime)
            assert reconstruct_secret(shares, threshold, prime=prime) == secret
            counts[(shares[0].y, shares[1].y)] += 1
        distributions.append(counts)
        assert len(counts) == prime ** 2 and set(counts.values()) == {1}
    assert all(d == distributions[0] for d in distributions)


@settings(max_examples=20, deadline=None)
@given(secret=st.integers(0, 2**256 - 1), candidate=st.integers(0, 2**256 - 1), threshold=st.integers(2, 6))
def test_t_minus_one_shares_are_consistent_with_every_candidate_secret(secret: int, candidate: int, threshold: int) -> None:
    shares = split_secret(secret, threshold, list(range(1, threshold + 1)), seeded_random_bytes(threshold, secret % 97))
    seen = shares[: threshold - 1]
    # The polynomial of degree < t through (0, candidate) and the seen shares could have made them:
    # completed with its value at a fresh point, the t shares reconstruct the candidate.
    fresh = threshold + 7
    completed = seen + [Share(fresh, value_through(Share(0, candidate), seen, fresh))]
    assert reconstruct_secret(completed, threshold) == candidate
    if candidate != secret:
        genuine = seen + [shares[-1]]
        assert reconstruct_secret(genuine, threshold) == secret


def value_through(origin: Share, points: list[Share], x: int) -> int:
    """The value at ``x`` of the degree < len(points)+1 polynomial through ``origin`` and ``points``."""
    nodes = [origin] + list(points)
    total = 0
    for i, node in enumerate(nodes):
        numerator, denominator = 1, 1
        for j, other in enumerate(nodes):
            if j != i:
                numerator = numerator * (x - other.x) % MERSENNE_521
                denominator = denominator * (node.x - other.x) % MERSENNE_521
        total = (total + node.y * numerator * pow(denominator, -1, MERSENNE_521)) % MERSENNE_521
    return total


# -- fixed point ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("codec", [FixedPoint(), FixedPoint(bits=32, fraction_bits=16, max_abs=8.0)])
def test_fixed_point_sum_is_exact_to_rounding(codec: FixedPoint) -> None:
    rng = np.random.default_rng(0)
    values = rng.uniform(-codec.max_abs, codec.max_abs, size=(50, 40))
    ring = np.zeros(40, dtype=np.uint64)
    for row in values:
        ring = ring + encode(row, codec)
    decoded = decode_sum(ring, codec)
    rounded = np.rint(values * codec.scale).sum(axis=0) / codec.scale
    np.testing.assert_array_equal(decoded, rounded)
    assert np.abs(decoded - values.sum(axis=0)).max() <= codec.sum_error_bound(50)


@pytest.mark.parametrize("sign", [1.0, -1.0])
def test_fixed_point_extremes_at_the_capacity_bound_do_not_wrap(sign: float) -> None:
    codec = FixedPoint(bits=16, fraction_bits=4, max_abs=10.0)  # level 160: at most 32767 // 160 = 204 clients
    n = codec.max_clients()
    assert n == 204
    check_capacity(codec, n)
    ring = np.zeros(3, dtype=np.uint64)
    for _ in range(n):
        ring = ring + encode(np.full(3, sign * codec.max_abs), codec)
    np.testing.assert_array_equal(decode_sum(ring, codec), np.full(3, sign * codec.max_abs * n))
    with pytest.raises(FedrecError, match="fixed-point overflow: 205 clients.*lower fraction_bits or max_abs, or raise bits"):
        check_capacity(codec, n + 1)


def test_secure_sum_refuses_settings_that_could_overflow() -> None:
    codec = FixedPoint(bits=16, fraction_bits=8, max_abs=64.0)
    with pytest.raises(FedrecError, match="fixed-point overflow"):
        secure_sum(np.zeros((3, 2)), SecAggSettings(codec=codec), seed=0)


def test_a_single_value_must_fit_the_ring() -> None:
    with pytest.raises(FedrecError, match="does not fit in 32 bits; lower max_abs or fraction_bits"):
        FixedPoint(bits=32, fraction_bits=24, max_abs=128.0)


def test_inputs_beyond_max_abs_are_refused_or_clipped() -> None:
    codec = FixedPoint(max_abs=1.0)
    vectors = np.array([[0.5, 3.0], [0.25, -2.0], [0.0, 0.5]])
    with pytest.raises(FedrecError, match="exceeds max_abs=1; raise max_abs"):
        secure_sum(vectors, SecAggSettings(codec=codec), seed=0)
    result = secure_sum(vectors, SecAggSettings(codec=codec, clip=True), seed=0)
    np.testing.assert_allclose(result.sum, [0.75, 0.5], atol=codec.sum_error_bound(3))
    with pytest.raises(FedrecError, match="NaN"):
        encode(np.array([np.nan]), codec)


# -- neighbour graph -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("n", [3, 10, 57, 1000])
def test_neighbour_graph_is_symmetric_and_regular(n: int) -> None:
    degree = neighbour_degree(n, SecAggSettings())
    graph = neighbour_graph(n, degree, seed=3)
    assert all(len(set(neighbours)) == degree and u not in neighbours for u, neighbours in enumerate(graph))
    assert all(u in graph[v] for u, neighbours in enumerate(graph) for v in neighbours)
    if n == 1000:
        assert degree == 40 and share_threshold(degree, SecAggSettings()) == 20
    if n <= 10:
        assert degree == n - 1  # small cohorts: the complete graph of Bonawitz et al.
    with pytest.raises(FedrecError, match="at least 3 clients"):
        neighbour_degree(2, SecAggSettings())


# -- the protocol ----------------------------------------------------------------------------------------


def expected_to_finish(n: int, result_graph, threshold: int, before_shares, before_input, after_input) -> bool:
    """Whether every share the unmasking needs can arrive, computed from the sets alone."""
    shared = set(range(n)) - set(before_shares)
    inputs = shared - set(before_input)
    answering = inputs - set(after_input)
    if len(shared) < threshold or len(inputs) < threshold:
        return False
    if any(len(shared.intersection(result_graph[u])) < threshold for u in inputs):
        return False
    if any(len(inputs.intersection(result_graph[u])) + 1 < threshold for u in answering):
        return False
    return all(len(answering.intersection(result_graph[v])) >= threshold for v in shared)


@settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(n=st.integers(3, 14), length=st.integers(1, 5), degree=st.sampled_from([None, 2, 4, 6]),
       fraction=st.sampled_from([0.34, 0.5, 0.75, 1.0]), seed=st.integers(0, 2**16), data=st.data())
def test_secure_sum_equals_plain_sum_or_aborts(n: int, length: int, degree, fraction: float, seed: int, data) -> None:
    settings_ = SecAggSettings(degree=degree, threshold_fraction=fraction)
    order = data.draw(st.permutations(range(n)))
    cuts = sorted(data.draw(st.lists(st.integers(0, n // 2), min_size=3, max_size=3)))
    before_shares, before_input, after_input = order[:cuts[0]], order[cuts[0]:cuts[1]], order[cuts[1]:cuts[2]]
    vectors = np.random.default_rng(seed).uniform(-5, 5, size=(n, length))
    k = neighbour_degree(n, settings_)
    t = share_threshold(k, settings_)
    graph = neighbour_graph(n, k, seed)
    finishes = expected_to_finish(n, graph, t, before_shares, before_input, after_input)
    event("finishes" if finishes else "aborts")
    run = lambda: secure_sum(vectors, settings_, seed=seed, drop_before_shares=before_shares,  # noqa: E731
                             drop_before_input=before_input, drop_after_input=after_input)
    if not finishes:
        with pytest.raises(SecAggAbort):
            run()
        return
    result = run()
    survivors = sorted(set(range(n)) - set(before_shares) - set(before_input))
    assert list(result.survivors) == survivors
    np.testing.assert_allclose(result.sum, plain_sum(vectors, survivors), rtol=0,
                               atol=settings_.codec.sum_error_bound(n) + 1e-9)


def test_hundred_clients_with_30_percent_dropouts() -> None:
    rng = np.random.default_rng(7)
    vectors = rng.normal(0, 1, size=(100, 6))
    dropped = rng.permutation(100)[:30]
    settings_ = SecAggSettings(threshold_fraction=0.4)
    result = secure_sum(vectors, settings_, seed=7, drop_before_input=dropped[:15], drop_after_input=dropped[15:])
    assert result.degree == 28 and result.threshold == 12
    survivors = sorted(set(range(100)) - set(dropped[:15].tolist()))
    assert list(result.survivors) == survivors
    np.testing.assert_allclose(result.sum, plain_sum(vectors, survivors), rtol=0, atol=settings_.codec.sum_error_bound(100))
    assert result.bytes_up_per_client > result.input_bytes_per_client == 4 + 6 * 8


@pytest.mark.slow
def test_thousand_clients_with_30_percent_dropouts() -> None:
    rng = np.random.default_rng(11)
    vectors = rng.uniform(-1, 1, size=(1000, 4))
    dropped = rng.permutation(1000)[:300]
    settings_ = SecAggSettings(threshold_fraction=0.4)
    result = secure_sum(vectors, settings_, seed=11, drop_before_input=dropped[:150], drop_after_input=dropped[150:])
    assert (result.degree, result.threshold) == (40, 16)
    survivors = sorted(set(range(1000)) - set(dropped[:150].tolist()))
    np.testing.assert_allclose(result.sum, plain_sum(vectors, survivors), rtol=0, atol=settings_.codec.sum_error_bound(1000))


def test_secure_sum_of_named_tensors() -> None:
    import torch

    uploads = {"item_emb": torch.randn(8, 5, 3), "bias": torch.randn(8, 5), "global": torch.randn(8)}
    sums, result = secure_sum_tensors(uploads, SecAggSettings(), seed=4, drop_before_input=[2], drop_after_input=[5])
    keep = list(result.survivors)
    assert 2 not in keep and 5 in keep
    for name, tensor in uploads.items():
        assert sums[name].shape == tensor.shape[1:]
        torch.testing.assert_close(sums[name], tensor[keep].sum(0), rtol=0, atol=1e-5)


def test_too_many_dropouts_fail_clearly() -> None:
    vectors = np.ones((10, 3))
    strict = SecAggSettings(threshold=6)  # complete graph, 9 neighbours, 6 shares needed
    with pytest.raises(SecAggAbort, match="fewer than the threshold 6"):
        secure_sum(vectors, strict, seed=0, drop_after_input=[0, 1, 2, 3])  # survivors see 5 other answers
    with pytest.raises(SecAggAbort, match="fewer than the threshold 6"):
        secure_sum(vectors, strict, seed=0, drop_before_input=[0, 1, 2, 3, 4])
    result = secure_sum(vectors, strict, seed=0, drop_after_input=[0, 1, 2])  # 6 others answer: enough
    np.testing.assert_allclose(result.sum, np.full(3, 10.0), atol=1e-6)


def small_round(n: int = 6, seed: int = 0):
    """Run rounds 0-2 by hand; client 0 drops before input. Returns the parties and the requests."""
    settings_ = SecAggSettings(threshold=3)
    server = server_start(n, settings_, seed)
    clients, adverts = {}, []
    for u in range(n):
        clients[u], advert = client_advertise(u, server.graph[u], server.threshold, seeded_random_bytes(seed, u))
        adverts.append(advert)
    server, keys = server_route_keys(server, adverts)
    messages = []
    for u in range(n):
        clients[u], sent = client_share_keys(clients[u], keys[u], seeded_random_bytes(seed, 100 + u))
        messages += sent
    server, inbox = server_route_shares(server, messages)
    vectors = np.arange(n * 2, dtype=float).reshape(n, 2)
    inputs = []
    for u in range(1, n):
        clients[u], masked = client_masked_input(clients[u], inbox[u], vectors[u], settings_.codec)
        inputs.append(masked)
    server, requests = server_collect_inputs(server, inputs)
    return clients, server, requests, vectors, inbox


def test_a_client_refuses_to_reveal_both_shares_of_one_client() -> None:
    clients, server, requests, vectors, _ = small_round()
    assert requests[1] == UnmaskRequest(dropped=(0,), survivors=(2, 3, 4, 5))
    with pytest.raises(SecAggRefusal, match="both the mask-key share and the self-mask share of client 0"):
        client_unmask(clients[1], UnmaskRequest(dropped=(0,), survivors=(0, 2, 3)))
    state, response = client_unmask(clients[1], requests[1])
    assert set(response.mask_key_shares) == {0} and set(response.self_mask_shares) == {2, 3, 4, 5}
    with pytest.raises(SecAggRefusal, match="of client 0"):  # a later request for 0's self-mask share
        client_unmask(state, UnmaskRequest(dropped=(), survivors=(0, 2, 3)))
    with pytest.raises(SecAggRefusal, match="of client 2"):  # or for a survivor's mask-key share
        client_unmask(state, UnmaskRequest(dropped=(2,), survivors=(3, 4, 5)))
    responses = [client_unmask(clients[u], requests[u])[1] for u in requests]
    np.testing.assert_allclose(server_unmask(server, responses), vectors[1:].sum(axis=0), atol=1e-6)


def test_tampered_shares_are_rejected() -> None:
    settings_ = SecAggSettings(threshold=2)
    server = server_start(3, settings_, 0)
    clients, adverts = {}, []
    for u in range(3):
        clients[u], advert = client_advertise(u, server.graph[u], 2, seeded_random_bytes(1, u))
        adverts.append(advert)
    server, keys = server_route_keys(server, adverts)
    messages = []
    for u in range(3):
        clients[u], sent = client_share_keys(clients[u], keys[u], seeded_random_bytes(2, u))
        messages += sent
    server, inbox = server_route_shares(server, messages)
    bad = inbox[0][0]
    forged = EncryptedShares(bad.sender, bad.recipient, bad.nonce, bytes([bad.ciphertext[0] ^ 1]) + bad.ciphertext[1:])
    with pytest.raises(SecAggAbort, match="could not authenticate"):
        client_masked_input(clients[0], [forged] + inbox[0][1:], np.zeros(2), settings_.codec)


# -- what the server sees ------------------------------------------------------------------------------


@pytest.mark.parametrize("codec", [FixedPoint(), FixedPoint(bits=32, fraction_bits=16, max_abs=8.0)])
def test_a_masked_input_alone_looks_uniform_whatever_the_input(codec: FixedPoint) -> None:
    n, length = 4, 20000
    inputs = {"zeros": np.zeros((n, length)),
              "large": np.full((n, length), codec.max_abs * 0.9) * np.where(np.arange(length) % 2, 1, -1)}
    top_bytes = {}
    for seed, (name, vectors) in enumerate(inputs.items()):
        masked = run_to_inputs(vectors, codec, seed)  # the first client's masked vector, as the server sees it
        top = (masked >> np.uint64(codec.bits - 8)).astype(np.int64)
        top_bytes[name] = top
        assert stats.chisquare(np.bincount(top, minlength=256)).pvalue > 1e-4, name
        if vectors[0].std():
            assert abs(np.corrcoef(masked.astype(np.float64), vectors[0])[0, 1]) < 0.05
    assert stats.ks_2samp(top_bytes["zeros"], top_bytes["large"]).pvalue > 1e-4


def run_to_inputs(vectors: np.ndarray, codec: FixedPoint, seed: int):
    """Rounds 0-2 by hand; returns the first client's masked vector."""
    n = vectors.shape[0]
    settings_ = SecAggSettings(codec=codec)
    server = server_start(n, settings_, seed)
    clients, adverts = {}, []
    for u in range(n):
        clients[u], advert = client_advertise(u, server.graph[u], server.threshold, seeded_random_bytes(seed, u))
        adverts.append(advert)
    server, keys = server_route_keys(server, adverts)
    messages = []
    for u in range(n):
        clients[u], sent = client_share_keys(clients[u], keys[u], seeded_random_bytes(seed, 50 + u))
        messages += sent
    server, inbox = server_route_shares(server, messages)
    _, masked = client_masked_input(clients[0], inbox[0], vectors[0], codec)
    return masked.vector
