"""From a config to the pieces a run needs: data, split, clients and model."""

from __future__ import annotations

import sys
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from fedrec.config import RunConfig
from fedrec.data.dataset import Dataset, Interactions, Split
from fedrec.data.partition import (Partition, dirichlet_silos, dominant_category, item_categories_from_texts,
                                   per_user_partition, random_silos, silo_feature_values, silos_by_feature)
from fedrec.data.recency import repeat_latest
from fedrec.data.registry import canonical_name, load_dataset
from fedrec.data.splits import (carve_validation, hold_out_items, leave_last_out_with_report, official_split,
                                 random_leave_one_out_with_report, random_ratio_split)
from fedrec.errors import FedrecError
from fedrec.eval.protocol import Evaluator
from fedrec.federated.attacks import Adversary, AttackSettings, Population, build_population, resolve_targets
from fedrec.federated.cohort import ClientData
from fedrec.federated.server_opt import ServerOptimizer
from fedrec.models.base import RecModel
from fedrec.models.registry import COLD_START_MODELS, IMPLICIT_MODELS, TEXT_MODELS, build_model, model_options
from fedrec.models.registry import SEQUENCE_MODELS
from fedrec.models.sequence import SequenceEvaluator, prepare_sequence
from fedrec.text.encoder import TextEncoder
from fedrec.text.item_text import TextEmbeddings, item_text_embeddings


@dataclass(frozen=True)
class Experiment:
    dataset: Dataset
    split: Split
    partition: Partition
    clients: ClientData
    model: RecModel
    excluded_users: int  # users that could not be split (too few interactions)
    idle_clients: int  # clients with no training interactions (never sampled)
    evaluator: Evaluator
    text: TextEmbeddings | None = None  # text models: the item embeddings and how they were made
    notes: tuple[str, ...] = ()  # one-line messages for the user (text encoding, cold start)
    attack: Adversary | None = None  # simulated malicious clients (fedrec/federated/attacks.py)


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
        if config.model.text_columns:
            options["text_cols"] = list(config.model.text_columns)
        return load_dataset(key, data_dir=data_dir, **options)
    return load_dataset(key, data_dir=data_dir, download=data.download, progress=False)


def keep_min_rating(dataset: Dataset, threshold: float | None) -> Dataset:
    """The dataset with only interactions rated >= threshold (and its folds likewise)."""
    if threshold is None:
        return dataset

    def keep(part: Interactions) -> Interactions:
        return part.subset(part.ratings >= threshold)

    splits = {name: replace(split, train=keep(split.train), test=keep(split.test)) for name, split in dataset.official_splits.items()}
    return replace(dataset, interactions=keep(dataset.interactions), official_splits=splits)


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
    elif data.split == "leave_last_out":
        split, excluded = leave_last_out_with_report(dataset.interactions, validation=True,
                                                     tie_seed=data.split_seed if data.time_ties == "random" else None)
        if data.train_on_validation:  # the final fit: validation joins training, only the test part stays out
            split = replace(split, train=Interactions.concat([split.train, split.validation]), validation=None,
                            name=f"{split.name}, trained on validation")
        return split, excluded
    else:
        return random_leave_one_out_with_report(dataset.interactions, data.split_seed, validation=True)
    if data.validation_ratio > 0:
        split = carve_validation(split, data.validation_ratio, data.split_seed)
    return split, excluded


def make_partition(config: RunConfig, dataset: Dataset, train: Interactions | None = None) -> Partition:
    """Users into clients as ``data.clients`` says; Dirichlet silos read the genres of ``train``'s items."""
    data = config.data
    if data.clients == "per_user":
        return per_user_partition(dataset.num_users)
    if data.clients == "dirichlet":
        flags, _ = item_categories_from_texts(dataset.item_texts)
        if flags.shape[1] == 0:
            raise FedrecError(f"data.clients = 'dirichlet' shares users by their favourite item category, but "
                              f"{dataset.name} has no item categories (MovieLens genres); use data.clients = 'silos'")
        part = train if train is not None else dataset.interactions
        labels = dominant_category(part.users, part.items, flags, dataset.num_users)
        return dirichlet_silos(labels, data.num_silos, data.dirichlet_alpha, data.split_seed)
    if data.silo_feature is None:
        return random_silos(dataset.num_users, data.num_silos, data.split_seed)
    values = silo_feature_values(dataset.user_features, data.silo_feature, dataset.name)
    return silos_by_feature(values, max_silos=data.num_silos, feature=data.silo_feature)


def recency_emphasis(config: RunConfig, train: Interactions, dataset: Dataset) -> Interactions:
    """The training interactions the clients train on: with train.recency_repeats, each real user's latest ones
    repeated (fedrec/data/recency.py); simulated attackers' rows (users beyond the dataset's) stay as they are."""
    window, repeats = config.train.recency_window, config.train.recency_repeats
    if not repeats:
        return train
    if not dataset.interactions.timestamps.any():
        raise FedrecError(f"train.recency_repeats repeats each user's latest interactions, but {dataset.name} has no "
                          "timestamps (its order would be the file's); remove train.recency_repeats")
    real = train.users < dataset.num_users
    benign = train.subset(real)
    ties = (np.random.default_rng(config.data.split_seed).permutation(len(benign))
            if config.data.time_ties == "random" else None)  # equal timestamps ordered as the split orders them
    return Interactions.concat([repeat_latest(benign, window, repeats, ties), train.subset(~real)])


def text_embeddings(config: RunConfig, dataset: Dataset, progress: bool | None = None) -> TextEmbeddings:
    """The items' text embeddings for a text model, through the disk cache (model.text_* settings)."""
    model = config.model
    encoder = TextEncoder(model.text_encoder, max_length=model.text_max_length, batch_size=model.text_batch_size)
    show = sys.stderr.isatty() if progress is None else progress
    return item_text_embeddings(dataset, encoder, dim=model.text_dim, use_cache=model.text_cache, progress=show)


def check_server_tensors(config: RunConfig, model: RecModel) -> None:
    """Refuse train.server_lr_by_tensor names the model does not upload, before any training."""
    ServerOptimizer(lr_by_tensor=tuple(config.train.server_lr_by_tensor.items())).check_tensors(model.uploaded_names())


def prepare(config: RunConfig) -> Experiment:
    dataset = keep_min_rating(load_data(config), config.data.min_rating)
    name = config.model.name
    ranking = name in IMPLICIT_MODELS
    if dataset.implicit and not ranking:
        raise FedrecError(f"{dataset.name} is implicit feedback (no ratings) but model.name={config.model.name!r} "
                          f"predicts ratings; use model.name=bpr, ncf, text_bpr or tower_bpr")
    if config.model.text_columns and canonical_name(config.data.name) not in ("csv", "table"):
        raise FedrecError("model.text_columns applies to data.name=table only; "
                          f"{dataset.name} builds its item texts itself, so remove model.text_columns")
    notes: list[str] = []
    cold, warm_items = None, None
    if config.model.cold_start_items > 0:
        if not ranking:
            raise FedrecError(f"the cold-start protocol ranks held-out items, but model.name={name!r} predicts "
                              "ratings; use a ranking model (text_bpr, tower_bpr, bpr, ncf) or set "
                              "model.cold_start_items=0")
        dataset, cold, warm_items = hold_out_items(dataset, config.model.cold_start_items, config.data.split_seed)
        held = dataset.num_items - warm_items
        notes.append(f"cold start: {held} of {dataset.num_items} items ({len(cold)} interactions) held out of "
                     "training, each interaction ranked among the held-out items its user has not interacted with")
    text = text_embeddings(config, dataset) if name in TEXT_MODELS else None
    if name in SEQUENCE_MODELS and config.model.cold_start_items > 0:
        raise FedrecError(f"model.name={name!r} scores items by ID embeddings and cannot rank held-out items; "
                          "set model.cold_start_items=0 or use text_bpr or tower_bpr")
    if name in SEQUENCE_MODELS and config.model.item_init == "text":  # item embeddings start from the text
        text = text_embeddings(config, dataset)
    if text is not None:
        notes.append(text.summary())
    cold_unsupported = None
    if cold is not None and name not in COLD_START_MODELS:
        reason = "it scores items by ID embeddings, which held-out items never get"
        cold_unsupported = f"not supported by model {name}"
        notes.append(f"cold start: {cold_unsupported} ({reason}); use model.name=text_bpr or tower_bpr for held-out items")
    split, excluded = make_split(config, dataset)
    if len(split.train) == 0:
        raise FedrecError(f"the {config.data.split} split of {dataset.name} has no training interactions; check the data")
    partition = make_partition(config, dataset, split.train)
    population = attack_population(config, dataset, split, partition, ranking)  # + malicious clients under [attack]
    # negatives are sampled from items 0..num_items-1: with the cold-start protocol, the warm items only
    local_train = recency_emphasis(config, population.train, dataset)
    clients = ClientData.from_interactions(local_train, population.client_of_user, population.num_clients,
                                           num_items=warm_items if warm_items is not None else dataset.num_items)
    options = config.model.options()
    if "global_mean" in model_options(config.model.name):
        options["global_mean"] = float(np.mean(split.train.ratings))
    model = build_model(config.model.name, options, population.num_users, dataset.num_items,
                        item_text=text.embeddings if text is not None else None)
    check_server_tensors(config, model)
    validation_histories = None
    if name in SEQUENCE_MODELS:  # examples are windows of each user's items by time (fedrec/models/sequence.py)
        clients, model, validation_histories, sequence_note = prepare_sequence(
            model, split, partition.client_of_user, partition.num_clients)
        notes.append(sequence_note)
    if ranking and max(config.eval.ks) > dataset.num_items:
        raise FedrecError(f"eval.ks has K={max(config.eval.ks)} but {dataset.name} has only {dataset.num_items} items; "
                          f"use K <= {dataset.num_items}")
    idle = int(np.sum(clients.sizes == 0))
    evaluator = Evaluator(model, split, ranking, dataset.rating_range, config.eval.ks, config.eval.sampled_negatives,
                          config.eval.seed, warm_items=warm_items, cold=cold, cold_unsupported=cold_unsupported,
                          exposure_targets=population.targets)
    if name in SEQUENCE_MODELS:  # ranks from each user's latest history (validation: the one before it)
        evaluator = SequenceEvaluator(model, split, ranking, dataset.rating_range, config.eval.ks,
                                      config.eval.sampled_negatives, config.eval.seed,
                                      validation_histories=validation_histories)
    for note in notes:
        _console().print(note, highlight=False, markup=False, soft_wrap=True)
    return Experiment(dataset, split, partition, clients, model, excluded, idle, evaluator, text, tuple(notes),
                      attack=population.adversary)


def _console():  # noqa: ANN202 - rich is imported lazily
    from rich.console import Console

    return Console(stderr=True)


#: models whose clients are built from the plain training interactions, so fake users can join them
ATTACKABLE_MODELS = ("bpr", "ncf", "text_bpr", "tower_bpr")


def attack_population(config: RunConfig, dataset: Dataset, split: Split, partition: Partition, ranking: bool) -> Population:
    """The training population: the benign one, plus fake users and their clients under ``[attack]``; and the
    target items whose exposure is measured (``attack.num_targets`` / ``attack.target_items``, attack or not)."""
    attack = config.attack
    targets = resolve_targets(split.train, dataset.item_ids, attack.num_targets, attack.target_items, attack.target_seed)
    if targets is not None and not ranking:
        raise FedrecError(f"exposure of target items (attack.*) needs a ranking model; model.name={config.model.name!r} "
                          "predicts ratings: use bpr or ncf")
    if attack.enabled and config.model.name not in ATTACKABLE_MODELS:
        raise FedrecError(f"attack.method={attack.method!r} is not supported with model.name={config.model.name!r}; "
                          f"use one of {', '.join(ATTACKABLE_MODELS)}")
    settings = None
    if attack.enabled:
        settings = AttackSettings(attack.method, attack.malicious_fraction, attack.filler_items,  # type: ignore[arg-type]
                                  attack.popular_items, attack.public_fraction, attack.norm_multiplier, attack.norm_bound,
                                  attack.top_k, attack.user_steps, attack.promotion_weight, attack.seed)
    return build_population(split.train, dataset.num_users, dataset.num_items, partition.client_of_user,
                            partition.num_clients, targets, settings)
