"""Randomness as a pure function of counters, so every backend sees identical draws.

Every random choice in a federated run (which clients take part, how a client shuffles its
examples, which negatives it samples) is ``hash64(seed, stream, round, client, ...)``: a
splitmix64-style mix of the counters. The reference backend asks for one client's draws, the
vectorised backend for the whole cohort's at once; the answers are the same numbers, which is what
makes their exact equivalence testable, and a resumed run sees exactly the draws it would have seen.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import numpy as np
import torch

# Stream identifiers keep unrelated draws independent.
STREAM_COHORT = 1
STREAM_SHUFFLE = 2
STREAM_NEGATIVES = 3
STREAM_DROPOUT = 4
STREAM_TORCH = 21  # the seed of torch's own generator during a round's local training (model dropout)

_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_MIX1 = np.uint64(0xBF58476D1CE4E5B9)
_MIX2 = np.uint64(0x94D049BB133111EB)


def _mix(x: np.ndarray) -> np.ndarray:
    """The splitmix64 finaliser on uint64 arrays (wrapping arithmetic)."""
    x = (x ^ (x >> np.uint64(30))) * _MIX1
    x = (x ^ (x >> np.uint64(27))) * _MIX2
    return x ^ (x >> np.uint64(31))


def hash64(*counters: int | np.ndarray) -> np.ndarray:
    """Mix integer counters (scalars or broadcastable arrays) into uniformly distributed uint64."""
    with np.errstate(over="ignore"):
        state = np.uint64(0x6A09E667F3BCC909)
        for counter in counters:
            value = np.asarray(counter).astype(np.uint64)
            state = _mix(state + _GOLDEN + value)
        return np.asarray(state, dtype=np.uint64)


def uniform01(*counters: int | np.ndarray) -> np.ndarray:
    """Uniform floats in [0, 1) from counters (53 random bits)."""
    return (hash64(*counters) >> np.uint64(11)).astype(np.float64) * (1.0 / (1 << 53))


@contextmanager
def seeded_torch(seed: int, round_index: int) -> Iterator[None]:
    """Run a block with torch's global generator seeded from (seed, round), restoring it afterwards.

    Models that draw from torch's generator (dropout in the sequence model) then repeat exactly in a
    fresh run, a resumed run and a Flower node.
    """
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(int(hash64(seed, STREAM_TORCH, round_index) >> np.uint64(1)))
        yield
