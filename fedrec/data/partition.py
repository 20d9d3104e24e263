"""Which users belong to which federated client: one per user (cross-device), silos by a user feature,
random silos, or Dirichlet silos skewed over item categories (cross-silo)."""

from __future__ import annotations

import re
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


# Silo features a dataset does not store but derives from one it does.
DERIVED_SILO_FEATURES = {"zip_region": ("zip", zip_region)}


def silo_feature_values(user_features: dict[str, np.ndarray], feature: str, dataset: str = "the dataset") -> np.ndarray:
    """One value per user of a silo feature: a stored user feature, or a derived one (``zip_region``)."""
    if feature in user_features:
        return user_features[feature]
    if feature in DERIVED_SILO_FEATURES and DERIVED_SILO_FEATURES[feature][0] in user_features:
        source, derive = DERIVED_SILO_FEATURES[feature]
        return derive(user_features[source])
    derivable = [name for name, (source, _) in DERIVED_SILO_FEATURES.items() if source in user_features]
    available = ", ".join(sorted([*user_features, *derivable])) or "none"
    raise FedrecError(f"data.silo_feature={feature!r} is not a user feature of {dataset}; available: {available}")


_GENRES = re.compile(r"Genres:\s*(.+?)\.?\s*$")


def item_categories_from_texts(texts: list[str]) -> tuple[np.ndarray, list[str]]:
    """(num_items, G) 0/1 category flags read from item texts' "Genres: A, B" part, and the category names.

    MovieLens and the synthetic data describe each item's genres that way (fedrec/data/movielens.py).
    """
    per_item = []
    for text in texts:
        match = _GENRES.search(text or "")
        per_item.append([g.strip() for g in match.group(1).split(",") if g.strip()] if match else [])
    names = sorted({g for genres in per_item for g in genres})
    column = {name: k for k, name in enumerate(names)}
    flags = np.zeros((len(texts), len(names)), dtype=np.float32)
    for item, genres in enumerate(per_item):
        flags[item, [column[g] for g in genres]] = 1.0
    return flags, names


def dominant_category(users: np.ndarray, items: np.ndarray, item_categories: np.ndarray, num_users: int) -> np.ndarray:
    """Each user's most frequent item category among its interactions (ties: lowest index; -1: none)."""
    counts = np.zeros((num_users, item_categories.shape[1]))
    np.add.at(counts, np.asarray(users, dtype=np.int64), item_categories[np.asarray(items, dtype=np.int64)])
    return np.where(counts.sum(1) > 0, counts.argmax(1), -1).astype(np.int64)


def dirichlet_silos(labels: np.ndarray, num_silos: int, alpha: float, seed: int, attempts: int = 100) -> Partition:
    """Cross-silo with label skew: users grouped by a category label (e.g. their dominant item genre;
    -1 counts as one more category), each category's users shared among ``num_silos`` silos in
    proportions drawn from Dirichlet(alpha) (Hsu et al., 2019). Redrawn until no silo is empty."""
    from fedrec.generic.data import assign_by_proportions, dirichlet_proportions  # the same draws as the generic API

    labels = np.asarray(labels, dtype=np.int64)
    if not 1 <= num_silos <= len(labels):
        raise FedrecError(f"data.num_silos={num_silos} must be between 1 and the number of users ({len(labels)})")
    if alpha <= 0:
        raise FedrecError(f"data.dirichlet_alpha={alpha} must be positive (e.g. 0.5)")
    classes = np.unique(labels, return_inverse=True)[1].reshape(-1)  # -1 and the used categories as 0..K-1
    num_classes = int(classes.max()) + 1
    for attempt in range(attempts):
        draw_seed = seed + attempt * 7919
        owner = assign_by_proportions(classes, dirichlet_proportions(num_classes, num_silos, alpha, draw_seed), draw_seed)
        if np.bincount(owner, minlength=num_silos).min() >= 1:
            return Partition.from_assignment(owner)
    raise FedrecError(f"a Dirichlet(alpha={alpha}) split left a silo without users in {attempts} draws; "
                      "raise data.dirichlet_alpha or lower data.num_silos")
