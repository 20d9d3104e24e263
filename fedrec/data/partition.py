"""Which users belong to which federated client: one per user (cross-device) or silos (cross-silo)."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from fedrec.errors import FedrecError


@dataclass(frozen=True)
class Partition:
    """Users grouped by client in CSR form; clients are known only by their index 0..num_clients-1.

    ``users[offsets[k]:offsets[k + 1]]`` are the (sorted) users of client ``k``;
    ``client_of_user[u]`` is the client of user ``u``. ``labels`` optionally names each client
    (e.g. the occupation of a silo) for reports; it is empty for per-user partitions.
    """

    offsets: np.ndarray  # (num_clients + 1,) int64
    users: np.ndarray  # (num_users,) int64
    client_of_user: np.ndarray  # (num_users,) int64
    labels: tuple[str, ...] = field(default=())

    def __post_init__(self) -> None:
        if len(self.offsets) < 2 or self.offsets[0] != 0 or self.offsets[-1] != len(self.users):
            raise ValueError("Partition.offsets must start at 0 and end at len(users)")
        if np.any(np.diff(self.offsets) <= 0):
            raise ValueError("Partition has an empty client")
        if len(self.client_of_user) != len(self.users):
            raise ValueError("Partition.client_of_user must have one entry per user")
        if self.labels and len(self.labels) != self.num_clients:
            raise ValueError("Partition.labels must have one entry per client")

    @property
    def num_clients(self) -> int:
        return len(self.offsets) - 1

    @property
    def num_users(self) -> int:
        return len(self.users)

    @property
    def sizes(self) -> np.ndarray:
        """Number of users of each client."""
        return np.diff(self.offsets)

    def users_of(self, client: int) -> np.ndarray:
        """The users of client ``client``."""
        return self.users[self.offsets[client] : self.offsets[client + 1]]

    @staticmethod
    def from_assignment(client_of_user: np.ndarray, labels: tuple[str, ...] = ()) -> Partition:
        """Build a partition from each user's client index (every index 0..max must be used)."""
        client_of_user = np.asarray(client_of_user, dtype=np.int64)
        if len(client_of_user) == 0:
            raise FedrecError("cannot partition zero users; the dataset has no users")
        num_clients = int(client_of_user.max()) + 1
        counts = np.bincount(client_of_user, minlength=num_clients)
        if client_of_user.min() < 0 or np.any(counts == 0):
            raise FedrecError("client assignment leaves a client without users; every client needs one")
        users = np.argsort(client_of_user, kind="stable").astype(np.int64)
        offsets = np.r_[0, np.cumsum(counts)].astype(np.int64)
        return Partition(offsets, users, client_of_user, labels)


def per_user_partition(num_users: int) -> Partition:
    """Cross-device: client ``k`` holds exactly user ``k``."""
    if num_users < 1:
        raise FedrecError(f"num_users={num_users}: need at least one user to partition")
    users = np.arange(num_users, dtype=np.int64)
    return Partition(np.arange(num_users + 1, dtype=np.int64), users, users.copy())


def random_silos(num_users: int, num_silos: int, seed: int) -> Partition:
    """Cross-silo: users shuffled with ``seed`` and dealt into ``num_silos`` silos of near-equal size."""
    if num_users < 1:
        raise FedrecError(f"num_users={num_users}: need at least one user to partition")
    if not 1 <= num_silos <= num_users:
        raise FedrecError(f"num_silos={num_silos} must be between 1 and the number of users ({num_users})")
    shuffled = np.random.default_rng(seed).permutation(num_users)
    client_of_user = np.empty(num_users, dtype=np.int64)
    for silo, members in enumerate(np.array_split(shuffled, num_silos)):
        client_of_user[members] = silo
    return Partition.from_assignment(client_of_user)


def silos_by_feature(
    values: np.ndarray, max_silos: int | None = None, other_label: str = "(other values)", feature: str = "feature"
) -> Partition:
    """Cross-silo: one silo per distinct value of a categorical user feature (e.g. occupation).

    Silos are ordered by value. With ``max_silos``, the ``max_silos - 1`` largest groups keep their
    own silo and the rest are merged into one labelled ``other_label``. Every silo is non-empty.
    """
    values = np.asarray(values)
    if values.ndim != 1 or len(values) == 0:
        raise FedrecError(f"{feature}: expected one value per user, got an array of shape {values.shape}")
    text = values.astype(str)
    names, group = np.unique(text, return_inverse=True)
    group = group.reshape(-1)
    if max_silos is not None:
        if max_silos < 1:
            raise FedrecError(f"max_silos={max_silos} must be at least 1")
        if len(names) > max_silos:
            counts = np.bincount(group, minlength=len(names))
            by_size = np.lexsort((np.arange(len(names)), -counts))  # largest first, ties by value
            kept = np.sort(by_size[: max_silos - 1])
            new_index = np.full(len(names), len(kept), dtype=np.int64)
            new_index[kept] = np.arange(len(kept))
            group = new_index[group]
            names = np.r_[names[kept], [other_label]]
    labels = tuple(f"{feature}={name}" for name in names.tolist())
    return Partition.from_assignment(group, labels)


def zip_region(zips: np.ndarray) -> np.ndarray:
    """A coarse region per US zip code: its first digit ("0".."9"), or "intl" when it is not a digit."""
    text = np.char.strip(np.asarray(zips).astype(str))
    first = np.array([z[:1] for z in text.tolist()], dtype=object)
    return np.where([f.isdigit() for f in first], first, "intl").astype(str)
