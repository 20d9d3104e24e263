"""Paillier aggregation (fedrec/privacy/he.py): exact sums, packing bounds, randomised ciphertexts.

1024-bit keys keep the tests fast; the default is 2048."""

from __future__ import annotations

import numpy as np
import pytest
from phe import PaillierPublicKey
from hypothesis import given, settings
from hypothesis import strategies as st

from fedrec.errors import FedrecError
from fedrec.privacy.fixedpoint import FixedPoint
from fedrec.privacy.he import (EncryptedVector, PaillierSettings, add_encrypted, decrypt_sum, encrypt_vector,
                               generate_keys, he_sum, plan_packing)


KEYS = generate_keys(1024)  # one key pair for the module: generation is the slow part


@pytest.fixture()
def keys():
    return KEYS


@settings(max_examples=15, deadline=None)
@given(clients=st.integers(1, 5), length=st.integers(1, 70), seed=st.integers(0, 2**16))
def test_encrypted_sum_equals_plain_sum(clients: int, length: int, seed: int) -> None:
    codec = FixedPoint(bits=64, fraction_bits=20, max_abs=50.0)
    vectors = np.random.default_rng(seed).uniform(-50, 50, size=(clients, length))
    result = he_sum(vectors, PaillierSettings(key_bits=1024, codec=codec), keys=KEYS)
    rounded = np.rint(vectors * codec.scale).sum(axis=0) / codec.scale
    np.testing.assert_array_equal(result.sum, rounded)  # exact in fixed point
    assert np.abs(result.sum - vectors.sum(axis=0)).max() <= codec.sum_error_bound(clients)


@pytest.mark.parametrize("sign", [1.0, -1.0])
def test_extreme_values_do_not_carry_between_slots(keys, sign: float) -> None:
    codec = FixedPoint(fraction_bits=24, max_abs=1000.0)
    public, private = keys
    packing = plan_packing(codec, 4, public)
    assert packing.slots * packing.slot_bits < public.n.bit_length()
    vectors = np.tile(np.array([sign, -sign, sign, 0.0]) * codec.max_abs, (4, 10))[:, :37]
    total = encrypt_vector(vectors[0], public, packing)
    for row in vectors[1:]:
        total = add_encrypted(total, encrypt_vector(row, public, packing), public)
    np.testing.assert_array_equal(decrypt_sum(total, private, packing), vectors.sum(axis=0))


def test_the_same_vector_encrypts_differently_each_time(keys) -> None:
    public, _ = keys
    packing = plan_packing(FixedPoint(), 2, public)
    a, b = (encrypt_vector(np.zeros(5), public, packing) for _ in range(2))
    assert a.ciphertexts != b.ciphertexts
    assert all(c < public.nsquare for c in a.ciphertexts)


def test_packing_and_cohort_bounds_are_enforced(keys) -> None:
    public, private = keys
    toy_key = PaillierPublicKey(61 * 53)  # 12-bit modulus: 11-bit plaintexts
    codec = FixedPoint(bits=16, fraction_bits=4, max_abs=10.0)  # sums of n values need bits(2 n 160)
    assert plan_packing(codec, 3, toy_key).slot_bits == 10
    with pytest.raises(FedrecError, match="Paillier plaintext overflow: 10 clients.*use a larger key"):
        plan_packing(codec, 10, toy_key)
    packing = plan_packing(FixedPoint(), 2, public)
    parts = [encrypt_vector(np.ones(3), public, packing) for _ in range(3)]
    total = add_encrypted(add_encrypted(parts[0], parts[1], public), parts[2], public)
    with pytest.raises(FedrecError, match="planned for 2"):
        decrypt_sum(total, private, packing)
    with pytest.raises(FedrecError, match="lengths 3 and 4"):
        add_encrypted(parts[0], EncryptedVector(parts[0].ciphertexts, 4), public)
    with pytest.raises(FedrecError, match="exceeds max_abs"):
        encrypt_vector(np.array([2000.0]), public, packing)
