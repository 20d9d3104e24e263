"""Shamir secret sharing (Shamir, 1979) over a prime field, with Python integers.

A secret s in GF(p) is hidden as the constant term of a random polynomial f of degree t-1; share
``i`` is (x_i, f(x_i)) for a nonzero x_i. Any t shares determine f (Lagrange interpolation at 0);
any t-1 shares are uniformly distributed whatever s is, so they reveal nothing about it.
The default field is GF(2^521 - 1) (a Mersenne prime), larger than any 32-byte secret.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

from fedrec.errors import FedrecError

MERSENNE_521 = (1 << 521) - 1
SHARE_BYTES = 66  # a field element of GF(2^521 - 1) fits in 66 bytes

RandomBytes = Callable[[int], bytes]


@dataclass(frozen=True)
class Share:
    """One point (x, y) of the sharing polynomial; x is nonzero."""

    x: int
    y: int


def random_field_element(random_bytes: RandomBytes, prime: int = MERSENNE_521) -> int:
    """A uniform element of GF(prime) by rejection sampling (no modulo bias)."""
    bits = prime.bit_length()
    nbytes = (bits + 7) // 8
    while True:
        value = int.from_bytes(random_bytes(nbytes), "big") & ((1 << bits) - 1)
        if value < prime:
            return value


def split_secret(secret: int, threshold: int, xs: Sequence[int], random_bytes: RandomBytes,
                 prime: int = MERSENNE_521) -> list[Share]:
    """Shares of ``secret`` at the points ``xs``; any ``threshold`` of them recover it."""
    if not 0 <= secret < prime:
        raise FedrecError(f"Shamir secret must lie in [0, p) for p of {prime.bit_length()} bits; use a larger prime")
    if threshold < 1 or threshold > len(xs):
        raise FedrecError(f"Shamir threshold {threshold} must be between 1 and the number of shares ({len(xs)})")
    if len(set(x % prime for x in xs)) != len(xs) or any(x % prime == 0 for x in xs):
        raise FedrecError("Shamir share points must be distinct and nonzero in the field")
    coefficients = [secret] + [random_field_element(random_bytes, prime) for _ in range(threshold - 1)]
    return [Share(x, evaluate_polynomial(coefficients, x, prime)) for x in xs]


def evaluate_polynomial(coefficients: Sequence[int], x: int, prime: int = MERSENNE_521) -> int:
    """f(x) mod prime for f = sum_j coefficients[j] x^j (Horner's rule)."""
    value = 0
    for coefficient in reversed(coefficients):
        value = (value * x + coefficient) % prime
    return value


def lagrange_at_zero(shares: Sequence[Share], prime: int = MERSENNE_521) -> int:
    """The value at 0 of the unique polynomial of degree < len(shares) through ``shares``."""
    xs = [share.x % prime for share in shares]
    if len(set(xs)) != len(xs):
        raise FedrecError("Shamir reconstruction got two shares for the same point; pass distinct shares")
    total = 0
    for i, share in enumerate(shares):
        numerator, denominator = 1, 1
        for j, x_j in enumerate(xs):
            if j != i:
                numerator = numerator * x_j % prime
                denominator = denominator * (x_j - xs[i]) % prime
        total = (total + share.y * numerator * pow(denominator, -1, prime)) % prime
    return total


def reconstruct_secret(shares: Sequence[Share], threshold: int, prime: int = MERSENNE_521) -> int:
    """The secret from at least ``threshold`` shares; refuses with fewer (the result would be noise)."""
    if len(shares) < threshold:
        raise FedrecError(f"Shamir reconstruction needs {threshold} shares, got {len(shares)}")
    return lagrange_at_zero(list(shares)[:threshold], prime)


def share_to_bytes(share: Share) -> bytes:
    """Share as 4-byte x and 66-byte y, big-endian (GF(2^521-1) elements)."""
    return share.x.to_bytes(4, "big") + share.y.to_bytes(SHARE_BYTES, "big")


def share_from_bytes(data: bytes) -> Share:
    return Share(int.from_bytes(data[:4], "big"), int.from_bytes(data[4:4 + SHARE_BYTES], "big"))
