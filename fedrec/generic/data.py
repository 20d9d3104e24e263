"""The seeds' classification tasks: MNIST (idx files), scikit-learn digits, ML-100K favourite genre.

Each task becomes a :class:`ClassificationTask`: per-client training tensors, a test set, and for
each test example the client it belongs to (for personalised evaluation). Partitions:

- ``iid``: examples shuffled and dealt to the clients in near-equal parts;
- ``dirichlet``: for every class, its examples are shared among clients in proportions drawn from
  Dirichlet(alpha); small alpha gives each client few classes (Hsu et al., 2019). Test examples
  are given owners with the same per-class proportions, so a client's test data looks like its
  training data;
- ``per_user`` (ML-100K genre only): each user is one client holding its own single example.
"""

from __future__ import annotations

import gzip
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from fedrec.errors import FedrecError
from fedrec.generic.federated import ClientTensors

# -------------------------------------------------------------------------------------- idx files

_IDX_TYPES = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}
MNIST_FILES = {
    "train_images": "train-images-idx3-ubyte",
    "train_labels": "train-labels-idx1-ubyte",
    "test_images": "t10k-images-idx3-ubyte",
    "test_labels": "t10k-labels-idx1-ubyte",
}


def load_idx(path: Path) -> np.ndarray:
    """An array from an idx file (the MNIST format), gzip-compressed or not."""
    path = Path(path)
    try:
        raw = path.read_bytes()
    except OSError as error:
        raise FedrecError(f"cannot read idx file {path} ({error.strerror}); check the path") from None
    if raw[:2] == b"\x1f\x8b":
        try:
            raw = gzip.decompress(raw)
        except (OSError, EOFError) as error:
            raise FedrecError(f"{path} is a damaged gzip file ({error}); download it again") from None
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] not in _IDX_TYPES:
        raise FedrecError(f"{path} is not an idx file (bad magic number); expected an MNIST-style idx file")
    ndim = raw[3]
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise FedrecError(f"{path} is truncated inside its idx header; download it again")
    shape = tuple(int(d) for d in np.frombuffer(raw, dtype=">u4", count=ndim, offset=4))
    dtype = np.dtype(_IDX_TYPES[raw[2]])
    expected = int(np.prod(shape)) * dtype.itemsize
    if len(raw) - header != expected:
        raise FedrecError(f"{path} holds {len(raw) - header} data bytes but its header {shape} needs {expected}; "
                          "the file is truncated or damaged, download it again")
    return np.frombuffer(raw, dtype=dtype, offset=header).reshape(shape).astype(dtype.newbyteorder("="))


def find_mnist(data_dir: Path | None) -> dict[str, Path]:
    """The four MNIST idx files (plain or .gz) in data_dir, data_dir/mnist, $FEDREC_DATA(/mnist)."""
    bases = [Path(data_dir).expanduser()] if data_dir else []
    if os.environ.get("FEDREC_DATA"):
        bases.append(Path(os.environ["FEDREC_DATA"]).expanduser())
    folders = [folder for base in bases for folder in (base, base / "mnist", base / "MNIST" / "raw")]
    for folder in folders:
        found = {}
        for key, name in MNIST_FILES.items():
            for candidate in (folder / name, folder / f"{name}.gz"):
                if candidate.is_file():
                    found[key] = candidate
                    break
        if len(found) == len(MNIST_FILES):
            return found
    names = ", ".join(f"{n}[.gz]" for n in MNIST_FILES.values())
    where = ", ".join(str(f) for f in folders) or "nowhere (no data.data_dir and FEDREC_DATA unset)"
    raise FedrecError(f"MNIST not found: expected {names} in {where}; put the idx files in a folder and pass "
                      "--data-dir DIR (or use data.dataset=digits, which needs no files)")


# ------------------------------------------------------------------------------------- the task


@dataclass(frozen=True)
class ClassificationTask:
    """A federated classification problem: per-client training data and an owned test set."""

    name: str
    clients: list[ClientTensors]
    test_inputs: Tensor
    test_targets: Tensor
    test_owners: Tensor | None  # (n_test,) owning client of each test example; None: no owners (per_user)
    num_features: int
    num_classes: int
    class_names: list[str]

    @property
    def train_size(self) -> int:
        return sum(len(c) for c in self.clients)


def iid_partition(num_examples: int, num_clients: int, seed: int) -> np.ndarray:
    """Client of each example: a seeded shuffle dealt round-robin (sizes differ by at most one)."""
    order = np.random.default_rng(seed).permutation(num_examples)
    owner = np.empty(num_examples, dtype=np.int64)
    owner[order] = np.arange(num_examples) % num_clients
    return owner


def dirichlet_proportions(num_classes: int, num_clients: int, alpha: float, seed: int) -> np.ndarray:
    """(num_classes, num_clients): each class's shares among the clients, rows ~ Dirichlet(alpha)."""
    return np.random.default_rng(seed).dirichlet(np.full(num_clients, alpha), size=num_classes)


def assign_by_proportions(labels: np.ndarray, proportions: np.ndarray, seed: int) -> np.ndarray:
    """Client of each example: every class's examples (shuffled) cut into runs sized by its proportions."""
    gen = np.random.default_rng(seed)
    owner = np.empty(len(labels), dtype=np.int64)
    num_clients = proportions.shape[1]
    for label in range(proportions.shape[0]):  # a loop over classes (10 or 18), not examples
        members = gen.permutation(np.flatnonzero(labels == label))
        cuts = np.round(np.cumsum(proportions[label]) * len(members)).astype(np.int64)
        counts = np.diff(np.concatenate([[0], cuts]))
        owner[members] = np.repeat(np.arange(num_clients), counts)
    return owner


def dirichlet_partition(labels: np.ndarray, num_classes: int, num_clients: int, alpha: float, seed: int,
                        min_size: int = 1, attempts: int = 100) -> tuple[np.ndarray, np.ndarray]:
    """Client of each example and the class proportions used; redrawn until every client has ``min_size``."""
    for attempt in range(attempts):
        proportions = dirichlet_proportions(num_classes, num_clients, alpha, seed + attempt * 7919)
        owner = assign_by_proportions(labels, proportions, seed + attempt * 7919)
        if np.bincount(owner, minlength=num_clients).min() >= min_size:
            return owner, proportions
    raise FedrecError(f"a Dirichlet(alpha={alpha}) split left a client with fewer than {min_size} examples "
                      f"in {attempts} draws; raise data.alpha or lower data.clients")


def partition_task(name: str, x_train: np.ndarray, y_train: np.ndarray, x_test: np.ndarray, y_test: np.ndarray,
                   num_classes: int, split: str, num_clients: int, alpha: float, seed: int,
                   class_names: list[str] | None = None) -> ClassificationTask:
    """Deal a centralised train/test set to clients (iid or dirichlet) as a ClassificationTask."""
    if num_clients > len(y_train):
        raise FedrecError(f"data.clients={num_clients} exceeds the {len(y_train)} training examples; lower it")
    if split == "iid":
        owner = iid_partition(len(y_train), num_clients, seed)
        test_owner = iid_partition(len(y_test), num_clients, seed + 1)
    elif split == "dirichlet":
        owner, proportions = dirichlet_partition(y_train, num_classes, num_clients, alpha, seed)
        test_owner = assign_by_proportions(y_test, proportions, seed + 1)
    else:
        raise FedrecError(f"data.split={split!r} is not available for {name}; use iid or dirichlet")
    xt, yt = torch.from_numpy(x_train), torch.from_numpy(y_train)
    clients = [ClientTensors(xt[owner == k], yt[owner == k]) for k in range(num_clients)]
    return ClassificationTask(name, clients, torch.from_numpy(x_test), torch.from_numpy(y_test),
                              torch.from_numpy(test_owner), int(x_train.shape[1]), num_classes,
                              class_names or [str(k) for k in range(num_classes)])


def load_digits_arrays() -> tuple[np.ndarray, np.ndarray]:
    """scikit-learn's bundled 8x8 digits: (1797, 64) pixel values 0..16 and (1797,) labels, offline.

    Read straight from the CSV scikit-learn ships (``sklearn/datasets/data/digits.csv.gz``, the
    file ``sklearn.datasets.load_digits`` reads) without importing scikit-learn, whose import costs
    seconds.
    """
    import importlib.util

    spec = importlib.util.find_spec("sklearn")
    if spec is None or not spec.submodule_search_locations:
        raise FedrecError("the digits dataset ships with scikit-learn, which is not installed; pip install scikit-learn")
    path = Path(list(spec.submodule_search_locations)[0]) / "datasets" / "data" / "digits.csv.gz"
    try:
        table = np.loadtxt(path, delimiter=",", dtype=np.float32)
    except (OSError, ValueError) as error:
        raise FedrecError(f"cannot read scikit-learn's digits file {path} ({error}); reinstall scikit-learn") from None
    return table[:, :-1], table[:, -1].astype(np.int64)


def stratified_split(labels: np.ndarray, test_ratio: float, seed: int) -> np.ndarray:
    """A boolean test mask holding round(test_ratio * n_c) seeded-random examples of every class c."""
    gen = np.random.default_rng(seed)
    test = np.zeros(len(labels), dtype=bool)
    for label in np.unique(labels):
        members = gen.permutation(np.flatnonzero(labels == label))
        test[members[:int(round(test_ratio * len(members)))]] = True
    return test


def digits_arrays(test_ratio: float, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """The digits scaled to [0, 1] (64 features: the native 8x8, not upsampled), stratified train/test split."""
    pixels, labels = load_digits_arrays()
    x = pixels / 16.0
    test = stratified_split(labels, test_ratio, seed)
    return x[~test], labels[~test], x[test], labels[test]


def mnist_arrays(data_dir: Path | None) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """MNIST from local idx files: 784 pixels scaled to [0, 1], the official 60k/10k split."""
    files = find_mnist(data_dir)
    arrays = {key: load_idx(path) for key, path in files.items()}
    for part in ("train", "test"):
        images, labels = arrays[f"{part}_images"], arrays[f"{part}_labels"]
        if images.ndim != 3 or labels.ndim != 1 or len(images) != len(labels):
            raise FedrecError(f"MNIST {part} files disagree: images {images.shape}, labels {labels.shape}; "
                              "expected (n, 28, 28) images and n labels")
    def flat(images: np.ndarray) -> np.ndarray:
        return (images.reshape(len(images), -1).astype(np.float32) / 255.0)
    return (flat(arrays["train_images"]), arrays["train_labels"].astype(np.int64),
            flat(arrays["test_images"]), arrays["test_labels"].astype(np.int64))


# ---------------------------------------------------------------------- ML-100K favourite genre


def item_genres_100k(folder: Path, item_ids: np.ndarray) -> tuple[np.ndarray, list[str]]:
    """(num_items, 18) 0/1 genre flags of ML-100K items (the 'unknown' flag dropped) and the genre names."""
    import pandas as pd

    from fedrec.data.movielens import GENRES_100K

    path = folder / "u.item"
    try:
        table = pd.read_csv(path, sep="|", header=None, encoding="latin-1")
    except (OSError, pd.errors.ParserError) as error:
        raise FedrecError(f"cannot read {path} ({error}); check the ML-100K folder") from None
    if table.shape[1] != 5 + len(GENRES_100K):
        raise FedrecError(f"{path} has {table.shape[1]} columns, expected {5 + len(GENRES_100K)}; is it ML-100K's u.item?")
    flags = table.iloc[:, 6:].to_numpy(dtype=np.float32)  # column 5 is 'unknown'
    position = {int(raw): row for row, raw in enumerate(table.iloc[:, 0])}
    genres = np.zeros((len(item_ids), flags.shape[1]), dtype=np.float32)
    for index, raw in enumerate(item_ids):
        if int(raw) in position:
            genres[index] = flags[position[int(raw)]]
    return genres, list(GENRES_100K[1:])


def genre_examples(users: np.ndarray, items: np.ndarray, ratings: np.ndarray, timestamps: np.ndarray,
                   genres: np.ndarray, num_users: int, history_fraction: float = 0.8,
                   like_threshold: float = 4.0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Features and label of each user for the favourite-genre task: (features, labels, kept users).

    Each user's ratings are ordered by time; the first ``history_fraction`` is the *history*, the
    rest the *future*. Features (2 x genres) come from the history only: the share of the user's
    ratings falling in each genre, and the user's mean rating in the genre minus their overall mean
    (0 where unrated). The label is the genre with the most future ratings >= ``like_threshold``
    (all future ratings if none is that high; ties: the lowest genre index). Label and features use
    disjoint interactions, so the label is what the user goes on to like, not a recount of the
    features. Users with fewer than 5 ratings are dropped.
    """
    order = np.lexsort((timestamps, users))
    users, items, ratings = users[order], items[order], ratings[order]
    counts = np.bincount(users, minlength=num_users)
    start = np.concatenate([[0], np.cumsum(counts)[:-1]])
    rank = np.arange(len(users)) - start[users]
    cut = np.floor(history_fraction * counts).astype(np.int64)
    history = rank < cut[users]
    num_genres = genres.shape[1]
    g = genres[items]  # (n, G)

    def per_user(mask: np.ndarray, values: np.ndarray) -> np.ndarray:
        out = np.zeros((num_users, num_genres))
        np.add.at(out, users[mask], values[mask])
        return out

    hist_counts = per_user(history, g)
    hist_total = np.bincount(users[history], minlength=num_users).astype(np.float64)
    user_mean = np.bincount(users[history], weights=ratings[history], minlength=num_users) / np.maximum(hist_total, 1)
    centred = (ratings - user_mean[users])[:, None] * g
    mean_dev = per_user(history, centred) / np.maximum(hist_counts, 1)
    share = hist_counts / np.maximum(hist_total, 1)[:, None]
    future = ~history
    liked = future & (ratings >= like_threshold)
    liked_counts = per_user(liked, g)
    any_liked = liked_counts.sum(1) > 0
    future_counts = np.where(any_liked[:, None], liked_counts, per_user(future, g))
    labels = future_counts.argmax(1)
    keep = (counts >= 5) & (future_counts.sum(1) > 0) & (hist_total > 0)
    features = np.concatenate([share, mean_dev], axis=1).astype(np.float32)
    return features[keep], labels[keep].astype(np.int64), np.flatnonzero(keep)


def ml100k_genre_task(data_dir: Path | None, download: bool, split: str, num_clients: int, alpha: float,
                      test_ratio: float, seed: int) -> ClassificationTask:
    """The seeds' user-interest task on ML-100K as a federated classification problem.

    Users are split into training and test users (``test_ratio``, seeded). ``per_user``: each
    training user is a client with their one example (cross-device); ``iid``/``dirichlet``: the
    training users are dealt to ``num_clients`` silos.
    """
    from fedrec.data.registry import find_dataset, load_dataset

    dataset = load_dataset("ml-100k", data_dir=data_dir, download=download, progress=False)
    folder = find_dataset("ml-100k", data_dir)
    if folder is None:
        raise FedrecError("ML-100K's folder with u.item was not found; pass --data-dir DIR or set FEDREC_DATA")
    genres, names = item_genres_100k(folder, dataset.item_ids)
    inter = dataset.interactions
    features, labels, _users = genre_examples(inter.users, inter.items, inter.ratings, inter.timestamps, genres,
                                              dataset.num_users)
    test = np.random.default_rng(seed).random(len(labels)) < test_ratio
    x_train, y_train, x_test, y_test = features[~test], labels[~test], features[test], labels[test]
    if split == "per_user":
        xt, yt = torch.from_numpy(x_train), torch.from_numpy(y_train)
        clients = [ClientTensors(xt[k:k + 1], yt[k:k + 1]) for k in range(len(yt))]
        return ClassificationTask("ml100k-genre", clients, torch.from_numpy(x_test), torch.from_numpy(y_test), None,
                                  features.shape[1], len(names), names)
    return partition_task("ml100k-genre", x_train, y_train, x_test, y_test, len(names), split, num_clients, alpha,
                          seed, names)


def majority_baseline(task: ClassificationTask) -> float:
    """Test accuracy of always predicting the most frequent training class."""
    train_labels = torch.cat([c.targets for c in task.clients])
    majority = int(torch.bincount(train_labels, minlength=task.num_classes).argmax())
    return float((task.test_targets == majority).float().mean()) if len(task.test_targets) else float("nan")
