"""From a config to the pieces a run needs: data, split, clients and model."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from fedrec.config import RunConfig
from fedrec.data.dataset import Dataset, Split
from fedrec.data.partition import Partition, per_user_partition, random_silos, silos_by_feature
from fedrec.data.registry import canonical_name, load_dataset
from fedrec.data.splits import carve_validation, leave_last_out_with_report, official_split, random_ratio_split
from fedrec.errors import FedrecError
from fedrec.federated.cohort import ClientData
from fedrec.models.base import RecModel
from fedrec.models.registry import build_model


@dataclass(frozen=True)
class Experiment:
    dataset: Dataset
    split: Split
    partition: Partition
    clients: ClientData
    model: RecModel
    excluded_users: int  # users that could not be split (too few interactions)
    idle_clients: int  # clients with no training interactions (never sampled)


def load_data(config: RunConfig) -> Dataset:
    data = config.data
    key = canonical_name(data.name)
    data_dir = Path(data.data_dir) if data.data_dir else None
    if key == "synthetic":
        options = dict(num_users=data.num_users, num_items=data.num_items,
                       mean_interactions=data.mean_interactions, seed=data.synthetic_seed)
        return load_dataset(key, **options)
    if key in ("csv", "table"):
        options = dict(path=data.path, user_col=data.user_col, item_col=data.item_col, rating_col=data.rating_col,
                       timestamp_col=data.timestamp_col, duplicates=data.duplicates)
        return load_dataset(key, data_dir=data_dir, **options)
    return load_dataset(key, data_dir=data_dir, download=data.download, progress=False)


def make_split(config: RunConfig, dataset: Dataset) -> tuple[Split, int]:
    """The configured split (and how many users it had to leave out)."""
    data = config.data
    excluded = 0
    if data.split == "official":
        if not dataset.official_splits:
            raise FedrecError(f"dataset {dataset.name} has no official folds; set data.split=ratio or leave_last_out")
        split = official_split(dataset, data.fold)
    elif data.split == "ratio":
        split = random_ratio_split(dataset.interactions, data.test_ratio, data.split_seed)
    else:
        split, excluded = leave_last_out_with_report(dataset.interactions, validation=data.validation_ratio > 0)
        return split, excluded
    if data.validation_ratio > 0:
        split = carve_validation(split, data.validation_ratio, data.split_seed)
    return split, excluded


def make_partition(config: RunConfig, dataset: Dataset) -> Partition:
    data = config.data
    if data.clients == "per_user":
        return per_user_partition(dataset.num_users)
    if data.silo_feature is None:
        return random_silos(dataset.num_users, data.num_silos, data.split_seed)
    if data.silo_feature not in dataset.user_features:
        available = ", ".join(sorted(dataset.user_features)) or "none"
        raise FedrecError(f"data.silo_feature={data.silo_feature!r} is not a user feature of {dataset.name}; available: {available}")
    return silos_by_feature(dataset.user_features[data.silo_feature], max_silos=data.num_silos, feature=data.silo_feature)


def prepare(config: RunConfig) -> Experiment:
    dataset = load_data(config)
    split, excluded = make_split(config, dataset)
    if len(split.train) == 0:
        raise FedrecError(f"the {config.data.split} split of {dataset.name} has no training interactions; check the data")
    partition = make_partition(config, dataset)
    clients = ClientData.from_interactions(split.train, partition.client_of_user, partition.num_clients)
    options = config.model.model_dump(exclude={"name"})
    if not dataset.implicit:
        options["global_mean"] = float(np.mean(split.train.ratings))
    model = build_model(config.model.name, options, dataset.num_users, dataset.num_items)
    idle = int(np.sum(clients.sizes == 0))
    return Experiment(dataset, split, partition, clients, model, excluded, idle)
