"""Additive homomorphic aggregation (Paillier, via ``phe``) for cross-silo federations: few, large clients.

Each silo encodes its update in fixed point (:mod:`fedrec.privacy.fixedpoint`), packs several values
into one Paillier plaintext and encrypts it under a shared public key. The server multiplies the
ciphertexts (which adds the plaintexts) and never sees a plaintext; the holder of the private key
decrypts only the sum. Packing: each value is shifted to [0, 2L] (L = max_level of the codec) and
given a slot of ``slot_bits`` bits, enough for the sum of ``num_clients`` values, so the slots
cannot carry into each other; a 2048-bit key holds about 2047 / slot_bits values per ciphertext.

Trust assumptions, plainly:

- **Who holds the private key.** One party outside the server (a key authority or one silo chosen
  for the round) generates the key pair and gives the public key to every silo and to the server.
  The key holder must not collude with the server: given one silo's ciphertext it could decrypt
  that silo's update. ``phe`` has no threshold decryption; if no single party may hold the key, use
  secure aggregation (:mod:`fedrec.privacy.secagg`) instead.
- **Honest but curious server.** It adds what it receives and forwards the encrypted sum. Paillier
  gives no integrity: a malicious server could drop, repeat or replace ciphertexts, so the sum is
  only as honest as the server.
- **What the sum reveals.** The decrypted sum is in the clear for the key holder (and whoever it
  shares it with); with two silos, each learns the other's update from the sum and its own. Add
  differential privacy (fedrec.privacy.dp) when the sum itself must not reveal a silo.
- **Security level.** 2048-bit keys (about 112-bit security) by default; the tests use 1024-bit keys
  for speed only.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np
from fedrec.errors import FedrecError

try:
    from phe import EncryptedNumber, PaillierPrivateKey, PaillierPublicKey, generate_paillier_keypair
except ImportError:  # pragma: no cover - depends on the environment
    raise FedrecError("homomorphic aggregation needs the 'phe' package: pip install phe gmpy2") from None
from fedrec.privacy.fixedpoint import FixedPoint, quantize


@dataclass(frozen=True)
class Packing:
    """How values share a plaintext: ``slots`` values of ``slot_bits`` bits each, summing at most
    ``num_clients`` vectors."""

    codec: FixedPoint
    num_clients: int
    slot_bits: int
    slots: int


@dataclass(frozen=True)
class EncryptedVector:
    """A vector of ``length`` values as Paillier ciphertexts (ints mod n^2), summing ``count`` clients."""

    ciphertexts: tuple[int, ...]
    length: int
    count: int = 1

    def nbytes(self, public_key: PaillierPublicKey) -> int:
        return len(self.ciphertexts) * ((2 * public_key.n.bit_length() + 7) // 8)


@dataclass(frozen=True)
class PaillierSettings:
    key_bits: int = 2048
    codec: FixedPoint = field(default_factory=FixedPoint)
    clip: bool = False


def generate_keys(key_bits: int = 2048) -> tuple[PaillierPublicKey, PaillierPrivateKey]:
    """A fresh Paillier key pair (the key holder keeps the private key)."""
    if key_bits < 512:
        raise FedrecError(f"Paillier key_bits={key_bits} is too small; use 2048 (512 at the very least, for tests)")
    return generate_paillier_keypair(n_length=key_bits)


def plan_packing(codec: FixedPoint, num_clients: int, public_key: PaillierPublicKey) -> Packing:
    """Slots wide enough for the sum of ``num_clients`` shifted values; refuses if one does not fit."""
    if num_clients < 1:
        raise FedrecError(f"Paillier aggregation needs at least one client, got {num_clients}")
    slot_bits = (2 * num_clients * codec.max_level).bit_length()
    plaintext_bits = public_key.n.bit_length() - 1  # every packed sum stays below 2^plaintext_bits < n
    if slot_bits > plaintext_bits:
        raise FedrecError(f"Paillier plaintext overflow: {num_clients} clients x max_abs {codec.max_abs:g} x "
                          f"2^{codec.fraction_bits} needs {slot_bits} bits but the key holds {plaintext_bits}; "
                          f"use a larger key or lower fraction_bits or max_abs")
    return Packing(codec, num_clients, slot_bits, plaintext_bits // slot_bits)


def encrypt_vector(values: np.ndarray, public_key: PaillierPublicKey, packing: Packing,
                   clip: bool = False) -> EncryptedVector:
    """One client's float vector, packed and encrypted (fresh randomness per ciphertext)."""
    levels = quantize(values, packing.codec, clip) + packing.codec.max_level  # in [0, 2L]
    ciphertexts = []
    for start in range(0, len(levels), packing.slots):
        plaintext = 0
        for offset, level in enumerate(levels[start:start + packing.slots].tolist()):
            plaintext |= level << (offset * packing.slot_bits)
        ciphertexts.append(public_key.raw_encrypt(plaintext))
    return EncryptedVector(tuple(ciphertexts), len(levels))


def add_encrypted(a: EncryptedVector, b: EncryptedVector, public_key: PaillierPublicKey) -> EncryptedVector:
    """The encryption of the sum, computed on ciphertexts only (what the server does)."""
    if a.length != b.length:
        raise FedrecError(f"cannot add encrypted vectors of lengths {a.length} and {b.length}; every client must "
                          f"upload the same parameters")
    summed = [(EncryptedNumber(public_key, x) + EncryptedNumber(public_key, y)).ciphertext(be_secure=False)
              for x, y in zip(a.ciphertexts, b.ciphertexts)]
    return EncryptedVector(tuple(summed), a.length, a.count + b.count)


def decrypt_sum(encrypted: EncryptedVector, private_key: PaillierPrivateKey, packing: Packing) -> np.ndarray:
    """Decrypt and unpack a sum of ``encrypted.count`` vectors back to floats."""
    if encrypted.count > packing.num_clients:
        raise FedrecError(f"the encrypted sum holds {encrypted.count} clients but the packing was planned for "
                          f"{packing.num_clients}; plan_packing with the real cohort size")
    mask = (1 << packing.slot_bits) - 1
    levels = []
    for ciphertext in encrypted.ciphertexts:
        plaintext = private_key.raw_decrypt(ciphertext)
        remaining = min(packing.slots, encrypted.length - len(levels))
        levels += [(plaintext >> (i * packing.slot_bits)) & mask for i in range(remaining)]
    shift = encrypted.count * packing.codec.max_level
    return np.array([level - shift for level in levels], dtype=np.float64) / packing.codec.scale


@dataclass(frozen=True)
class HeSumResult:
    sum: np.ndarray
    encrypt_seconds: float  # per client
    add_seconds: float  # server, whole cohort
    decrypt_seconds: float
    ciphertext_bytes_per_client: int
    values_per_ciphertext: int


def he_sum(vectors: np.ndarray, settings: PaillierSettings = PaillierSettings(),
           keys: tuple[PaillierPublicKey, PaillierPrivateKey] | None = None) -> HeSumResult:
    """The sum of a cohort's (C, D) float ``vectors`` through Paillier, all parties in one process."""
    vectors = np.asarray(vectors)
    if vectors.ndim != 2:
        raise FedrecError(f"he_sum expects a (clients, values) array, got shape {vectors.shape}")
    public_key, private_key = keys if keys is not None else generate_keys(settings.key_bits)
    packing = plan_packing(settings.codec, vectors.shape[0], public_key)
    began = time.perf_counter()
    uploads = [encrypt_vector(row, public_key, packing, settings.clip) for row in vectors]
    encrypt_seconds = (time.perf_counter() - began) / len(uploads)
    began = time.perf_counter()
    total = uploads[0]
    for upload in uploads[1:]:
        total = add_encrypted(total, upload, public_key)
    add_seconds = time.perf_counter() - began
    began = time.perf_counter()
    result = decrypt_sum(total, private_key, packing)
    return HeSumResult(result, encrypt_seconds, add_seconds, time.perf_counter() - began,
                       uploads[0].nbytes(public_key), packing.slots)


def measure_paillier(num_clients: int, length: int, key_bits: int = 2048, seed: int = 0) -> dict[str, float]:
    """Seconds and bytes of one Paillier round (bench/bench_secagg.py --he)."""
    vectors = np.random.default_rng(seed).uniform(-1.0, 1.0, size=(num_clients, length))
    result = he_sum(vectors, PaillierSettings(key_bits=key_bits))
    return {"clients": num_clients, "encrypt_s": result.encrypt_seconds, "add_s": result.add_seconds,
            "decrypt_s": result.decrypt_seconds, "ciphertext_bytes": result.ciphertext_bytes_per_client,
            "values_per_ciphertext": result.values_per_ciphertext}
