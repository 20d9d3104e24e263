"""Counter-based randomness: deterministic, broadcastable, and roughly uniform."""

import numpy as np

from fedrec.federated import rng


def test_hash_is_deterministic_and_broadcasts():
    batch = rng.hash64(7, rng.STREAM_SHUFFLE, 3, np.arange(10))
    assert batch.dtype == np.uint64
    assert [int(rng.hash64(7, rng.STREAM_SHUFFLE, 3, i)) for i in range(10)] == [int(x) for x in batch]
    assert len(set(batch.tolist())) == 10


def test_different_counters_give_different_streams():
    a = rng.hash64(0, 1, np.arange(1000))
    b = rng.hash64(0, 2, np.arange(1000))
    c = rng.hash64(1, 1, np.arange(1000))
    assert not np.array_equal(a, b) and not np.array_equal(a, c)


def test_uniform01_is_uniform():
    values = rng.uniform01(3, 4, np.arange(200_000))
    assert values.min() >= 0.0 and values.max() < 1.0
    counts = np.histogram(values, bins=10, range=(0, 1))[0]
    # chi-square with 9 degrees of freedom; 27.9 is the 0.999 quantile
    expected = len(values) / 10
    assert ((counts - expected) ** 2 / expected).sum() < 27.9
