"""Heterogeneous cross-silo partitions: Dirichlet silos over item categories, zip-code regions."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fedrec.config import load_config
from fedrec.data.partition import (dirichlet_silos, dominant_category, item_categories_from_texts, silo_feature_values)
from fedrec.errors import FedrecError


def test_item_categories_from_texts():
    texts = ["Toy Story (1995). Genres: Animation, Children's, Comedy", "GoldenEye (1995). Genres: Action, Thriller",
             "Untitled (1990)", "Made Up (2001). Genres: Comedy, calm."]
    flags, names = item_categories_from_texts(texts)
    assert names == ["Action", "Animation", "Children's", "Comedy", "Thriller", "calm"]
    assert flags.tolist() == [[0, 1, 1, 1, 0, 0], [1, 0, 0, 0, 1, 0], [0, 0, 0, 0, 0, 0], [0, 0, 0, 1, 0, 1]]


def test_dominant_category_by_hand():
    flags = np.array([[1, 0, 0], [0, 1, 1], [0, 1, 0], [0, 0, 0]], dtype=np.float32)
    users = np.array([0, 0, 0, 1, 1, 2, 2])
    items = np.array([0, 1, 2, 0, 1, 3, 3])
    # user 0: counts (1, 2, 1) -> 1; user 1: (1, 1, 1) -> tie, lowest 0; user 2: uncategorised items -> -1; user 3: none
    assert dominant_category(users, items, flags, 4).tolist() == [1, 0, -1, -1]


@settings(max_examples=25, deadline=None)
@given(st.lists(st.integers(-1, 5), min_size=3, max_size=200), st.data(), st.integers(0, 2**20),
       st.floats(0.05, 100.0))
def test_dirichlet_silos_put_every_user_in_exactly_one_nonempty_silo(labels, data, seed, alpha):
    num_silos = data.draw(st.integers(1, min(len(labels), 3)))
    try:
        partition = dirichlet_silos(np.array(labels), num_silos, alpha, seed)
    except FedrecError as error:  # a redraw limit can be hit for tiny, very skewed inputs: a clear message
        assert "raise data.dirichlet_alpha or lower data.num_silos" in str(error)
        return
    assert partition.num_clients == num_silos and np.all(partition.sizes >= 1)
    assert np.array_equal(np.sort(partition.users), np.arange(len(labels)))
    again = dirichlet_silos(np.array(labels), num_silos, alpha, seed)
    assert np.array_equal(partition.client_of_user, again.client_of_user)


def _label_concentration(alpha: float) -> float:
    """Mean over silos of the largest category's share of the silo's users (1 = one category per silo)."""
    labels = np.repeat(np.arange(10), 200)
    partition = dirichlet_silos(labels, 10, alpha, seed=0)
    shares = [np.bincount(labels[partition.users_of(k)], minlength=10).max() / partition.sizes[k] for k in range(10)]
    return float(np.mean(shares))


def test_small_alpha_skews_silos_and_large_alpha_mixes_them():
    assert _label_concentration(0.05) > 0.5
    assert _label_concentration(1000.0) < 0.2  # close to 0.1, the share of each category overall


def test_silo_feature_values_derive_zip_regions():
    features = {"zip": np.array(["94043", "10001", "T8H1N"]), "occupation": np.array(["a", "b", "a"])}
    assert silo_feature_values(features, "zip_region").tolist() == ["9", "1", "intl"]
    assert silo_feature_values(features, "occupation").tolist() == ["a", "b", "a"]
    with pytest.raises(FedrecError, match="available: occupation, zip, zip_region"):
        silo_feature_values(features, "age", "ml-100k")
    with pytest.raises(FedrecError, match="available: none"):
        silo_feature_values({}, "zip_region")


def test_config_checks():
    with pytest.raises(FedrecError, match="either train.deadline_quantile or train.deadline_seconds"):
        load_config(None, ["train.deadline_quantile=0.9", "train.deadline_seconds=2.0"])
    with pytest.raises(FedrecError, match="set eval.finetune_epochs >= 1"):
        load_config(None, ["eval.mix_beta=0.5"])
    with pytest.raises(FedrecError, match="act at a round deadline"):
        load_config(None, ["train.speed_sigma=1.0"])
    with pytest.raises(FedrecError, match="every client's clipped update counts once"):
        load_config(None, ["train.client_weighting=uniform", "privacy.noise_multiplier=1.0", "privacy.delta=1e-5"])
    with pytest.raises(FedrecError, match="train.prox_mu"):
        load_config(None, ["train.prox_mu=-1"])
    config = load_config(None, ["data.clients=dirichlet", "data.dirichlet_alpha=0.1", "train.client_weighting=sqrt"])
    assert config.data.clients == "dirichlet" and config.train.client_weighting == "sqrt"
    root = Path(__file__).resolve().parent.parent / "configs"
    assert load_config(root / "ml100k-mf-silo-fedprox.toml").train.prox_mu > 0
    assert load_config(root / "ml100k-mf-stragglers.toml").train.deadline_quantile == 0.8


def test_synthetic_dirichlet_run_records_stragglers(tmp_path):
    from fedrec.runtime.trainer import train

    config = load_config(None, ["data.num_users=120", "data.num_items=60", "data.clients=dirichlet", "data.num_silos=4",
                                "data.dirichlet_alpha=0.3", "model.dim=4", "train.rounds=2", "train.batch_size=64",
                                "train.prox_mu=0.1", "train.client_weighting=uniform", "train.client_dropout=0.25",
                                "train.speed_sigma=0.5", "train.deadline_quantile=0.75"])
    metrics = train(config, tmp_path / "run")
    assert metrics["clients"] == 4 and np.isfinite(metrics["rmse"])
    history = [json.loads(line) for line in (tmp_path / "run" / "history.jsonl").read_text().splitlines()]
    assert all({"dropped", "late"} <= set(entry) for entry in history)
    assert sum(entry["dropped"] + entry["late"] for entry in history) > 0


def test_ml100k_dirichlet_and_zip_region_silos(ml100k_dir):
    from fedrec.runtime.experiment import make_partition, load_data

    config = load_config(None, ["data.name=ml-100k", f"data.data_dir={ml100k_dir}", "data.clients=dirichlet",
                                "data.num_silos=10", "data.dirichlet_alpha=0.1"])
    dataset = load_data(config)
    partition = make_partition(config, dataset)
    assert partition.num_clients == 10 and partition.num_users == 943
    flags, names = item_categories_from_texts(dataset.item_texts)
    assert len(names) == 18 and flags.sum(1).min() >= 0  # the 18 ML-100K genres ('unknown' is not written)
    labels = dominant_category(dataset.interactions.users, dataset.interactions.items, flags, dataset.num_users)
    # skewed: most silos are dominated by one favourite genre (Drama, Comedy and Action dominate overall)
    overall = np.bincount(labels[labels >= 0]).max() / (labels >= 0).sum()
    top = [np.bincount(labels[partition.users_of(k)] + 1).max() / partition.sizes[k] for k in range(10)]
    assert np.median(top) > overall
    regions = load_config(None, ["data.name=ml-100k", f"data.data_dir={ml100k_dir}", "data.clients=silos",
                                 "data.silo_feature=zip_region", "data.num_silos=11"])
    by_region = make_partition(regions, dataset)
    assert by_region.num_clients == 11 and by_region.labels[0] == "zip_region=0"
