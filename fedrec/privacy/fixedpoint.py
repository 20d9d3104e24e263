"""Fixed-point encoding of float vectors into the ring Z_{2^bits}, for masking and summing.

A value x with |x| <= max_abs becomes round(x * 2^fraction_bits) mod 2^bits (two's complement);
the sum of n encodings decodes exactly to the sum of the rounded values as long as
n * round(max_abs * 2^fraction_bits) <= 2^(bits-1) - 1 (the signed range does not wrap).
:func:`check_capacity` enforces that bound before anything is encoded. Each value carries a
rounding error of at most 2^-(fraction_bits+1), so a sum of n values is within n * 2^-(fraction_bits+1)
of the float sum. Arithmetic runs on numpy uint64, which wraps modulo 2^64; for bits < 64 the
results are reduced with a bit mask.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from fedrec.errors import FedrecError


@dataclass(frozen=True)
class FixedPoint:
    """The encoding: ring Z_{2^bits}, resolution 2^-fraction_bits, inputs within [-max_abs, max_abs]."""

    bits: int = 64
    fraction_bits: int = 24
    max_abs: float = 1000.0

    def __post_init__(self) -> None:
        if not 8 <= self.bits <= 64:
            raise FedrecError(f"fixed-point bits={self.bits} is out of range; use 8..64")
        if not 0 <= self.fraction_bits < self.bits - 1:
            raise FedrecError(f"fixed-point fraction_bits={self.fraction_bits} must be in [0, bits-1) = [0, {self.bits - 1})")
        if not (np.isfinite(self.max_abs) and self.max_abs > 0):
            raise FedrecError(f"fixed-point max_abs={self.max_abs} must be a positive finite number")
        if self.max_abs * 2.0 ** self.fraction_bits >= 2.0 ** (self.bits - 1):
            raise FedrecError(f"fixed-point max_abs={self.max_abs:g} x 2^{self.fraction_bits} does not fit in "
                              f"{self.bits} bits; lower max_abs or fraction_bits, or raise bits")

    @property
    def scale(self) -> float:
        return float(2 ** self.fraction_bits)

    @property
    def modulus_mask(self) -> np.uint64:
        return np.uint64((1 << self.bits) - 1)

    @property
    def max_level(self) -> int:
        """The largest encoded magnitude, round(max_abs * scale)."""
        return int(round(self.max_abs * self.scale))

    @property
    def bytes_per_value(self) -> int:
        return (self.bits + 7) // 8

    def max_clients(self) -> int:
        """The largest cohort whose sum cannot wrap around."""
        return ((1 << (self.bits - 1)) - 1) // max(self.max_level, 1)

    def sum_error_bound(self, num_clients: int) -> float:
        """Worst-case |decoded sum - float sum| per coordinate for ``num_clients`` inputs."""
        return num_clients * 0.5 / self.scale


def check_capacity(codec: FixedPoint, num_clients: int) -> None:
    """Refuse when ``num_clients`` inputs of magnitude max_abs could wrap around Z_{2^bits}."""
    if num_clients > codec.max_clients():
        raise FedrecError(
            f"fixed-point overflow: {num_clients} clients x max_abs {codec.max_abs:g} x 2^{codec.fraction_bits} "
            f"exceeds 2^{codec.bits - 1} (at most {codec.max_clients()} clients fit); lower fraction_bits or "
            f"max_abs, or raise bits")


def quantize(values: np.ndarray, codec: FixedPoint, clip: bool = False) -> np.ndarray:
    """Float vector -> int64 levels round(x * scale) in [-max_level, max_level]. Values beyond max_abs
    are refused, or clipped when ``clip``."""
    values = np.asarray(values, dtype=np.float64)
    if not np.all(np.isfinite(values)):
        raise FedrecError("aggregation input holds NaN or infinite values; check the client update")
    if clip:
        values = np.clip(values, -codec.max_abs, codec.max_abs)
    else:
        largest = float(np.max(np.abs(values))) if values.size else 0.0
        if largest > codec.max_abs:
            raise FedrecError(f"aggregation input value {largest:g} exceeds max_abs={codec.max_abs:g}; "
                              f"raise max_abs (and check the overflow bound) or clip the updates")
    return np.clip(np.rint(values * codec.scale), -codec.max_level, codec.max_level).astype(np.int64)


def encode(values: np.ndarray, codec: FixedPoint, clip: bool = False) -> np.ndarray:
    """Float vector -> uint64 ring elements (two's complement of the levels of :func:`quantize`)."""
    return quantize(values, codec, clip).view(np.uint64) & codec.modulus_mask


def decode_sum(ring_sum: np.ndarray, codec: FixedPoint) -> np.ndarray:
    """A sum of encodings (reduced mod 2^bits) -> float64, reading the ring as signed."""
    ring_sum = np.asarray(ring_sum, dtype=np.uint64) & codec.modulus_mask
    signed = ring_sum.view(np.int64)  # two's complement for bits = 64; values < 2^63 otherwise
    if codec.bits < 64:
        half = np.int64(1 << (codec.bits - 1))
        signed = np.where(signed >= half, signed - np.int64(1 << codec.bits), signed)
    return signed.astype(np.float64) / codec.scale
