"""Partitions of users into federated clients."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fedrec.data import Partition, per_user_partition, random_silos, silos_by_feature, zip_region
from fedrec.errors import FedrecError

SETTINGS = settings(max_examples=60, deadline=None)


def assert_consistent(p: Partition, num_users: int) -> None:
    assert p.num_users == num_users and p.offsets[0] == 0 and p.offsets[-1] == num_users
    assert np.array_equal(np.sort(p.users), np.arange(num_users))  # every user exactly once
    assert np.all(p.sizes >= 1)  # no empty client
    for client in range(p.num_clients):
        members = p.users_of(client)
        assert np.all(p.client_of_user[members] == client)
        assert np.all(np.diff(members) > 0)


@given(st.integers(1, 300))
def test_per_user_partition(num_users: int) -> None:
    p = per_user_partition(num_users)
    assert_consistent(p, num_users)
    assert p.num_clients == num_users
    assert np.array_equal(p.client_of_user, np.arange(num_users))


@SETTINGS
@given(st.integers(1, 300), st.data(), st.integers(0, 2**32 - 1))
def test_random_silos(num_users: int, data: st.DataObject, seed: int) -> None:
    num_silos = data.draw(st.integers(1, num_users))
    p = random_silos(num_users, num_silos, seed)
    assert_consistent(p, num_users)
    assert p.num_clients == num_silos
    assert p.sizes.max() - p.sizes.min() <= 1
    assert np.array_equal(random_silos(num_users, num_silos, seed).client_of_user, p.client_of_user)


def test_random_silos_depend_on_seed() -> None:
    assert not np.array_equal(random_silos(100, 4, 0).client_of_user, random_silos(100, 4, 1).client_of_user)


@SETTINGS
@given(st.lists(st.sampled_from(["a", "b", "c", "d", "e"]), min_size=1, max_size=80), st.integers(1, 6))
def test_silos_by_feature(values: list[str], max_silos: int) -> None:
    array = np.asarray(values)
    full = silos_by_feature(array, feature="job")
    assert_consistent(full, len(values))
    assert full.labels == tuple(f"job={v}" for v in sorted(set(values)))
    for client in range(full.num_clients):
        assert len(set(array[full.users_of(client)].tolist())) == 1  # one value per silo
    merged = silos_by_feature(array, max_silos=max_silos, feature="job")
    assert_consistent(merged, len(values))
    assert merged.num_clients == min(max_silos, len(set(values)))
    # users sharing a value always share a silo
    for value in set(values):
        assert len(set(merged.client_of_user[array == value].tolist())) == 1


def test_silos_by_feature_keeps_the_largest_groups() -> None:
    values = np.array(["z"] * 5 + ["y"] * 3 + ["a"] * 2 + ["w"])
    p = silos_by_feature(values, max_silos=3, feature="f", other_label="rest")
    assert p.labels == ("f=y", "f=z", "f=rest")  # kept silos in value order, merged one last
    assert p.sizes.tolist() == [3, 5, 3]
    assert p.client_of_user.tolist() == [1] * 5 + [0] * 3 + [2] * 3


def test_zip_region() -> None:
    assert zip_region(np.array(["94043", " 10001", "T8H1N", ""])).tolist() == ["9", "1", "intl", "intl"]


@pytest.mark.parametrize(
    "call",
    [
        lambda: per_user_partition(0),
        lambda: random_silos(10, 0, 0),
        lambda: random_silos(10, 11, 0),
        lambda: silos_by_feature(np.array([])),
        lambda: silos_by_feature(np.zeros((2, 2))),
        lambda: silos_by_feature(np.array(["a"]), max_silos=0),
        lambda: Partition.from_assignment(np.array([0, 2])),
    ],
)
def test_partition_errors(call) -> None:
    with pytest.raises(FedrecError) as info:
        call()
    assert "\n" not in str(info.value)
