"""Poisoning attacks (fedrec/federated/attacks.py) and the exposure ratio (fedrec/eval/exposure.py)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from fedrec.config import RunConfig, load_config
from fedrec.data.dataset import Interactions
from fedrec.errors import FedrecError
from fedrec.eval.exposure import exposure_ratio, exposure_task
from fedrec.federated.aggregation import CohortUpdate
from fedrec.federated.attacks import (Adversary, AttackSettings, build_population, choose_targets, client_norms,
                                      craft_uploads, public_sample, replace_clients)
from fedrec.models.bpr import BPRConfig, BPRMF

CONFIGS = Path(__file__).resolve().parent.parent / "configs"


def interactions(users, items) -> Interactions:
    users, items = np.asarray(users, np.int64), np.asarray(items, np.int64)
    return Interactions(users, items, np.ones(len(users), np.float32), np.zeros(len(users), np.int64))


# ------------------------------------------------------------------------------ exposure ratio


def brute_force_er(scores: np.ndarray, targets, excluded: set, interacted: set, k: int, draws: int = 0) -> float:
    """ER@k by enumerating pairs; ties by exact enumeration of the target's equally likely ranks."""
    hits, pairs = 0.0, 0
    for u in range(scores.shape[0]):
        for t in targets:
            if (u, t) in excluded or (u, t) in interacted:
                continue
            pairs += 1
            candidates = [i for i in range(scores.shape[1]) if (u, i) not in excluded and i != t]
            greater = sum(scores[u, i] > scores[u, t] for i in candidates)
            tied = sum(scores[u, i] == scores[u, t] for i in candidates)
            ranks = range(greater + 1, greater + tied + 2)  # uniformly likely
            hits += sum(r <= k for r in ranks) / len(ranks)
    return hits / pairs


@pytest.mark.parametrize("seed", range(6))
def test_exposure_ratio_matches_brute_force(seed: int) -> None:
    gen = np.random.default_rng(seed)
    num_users, num_items = 7, 12
    scores = gen.integers(0, 4, size=(num_users, num_items)).astype(np.float64)  # many ties
    train = [(u, i) for u in range(num_users) for i in range(num_items) if gen.random() < 0.25]
    test = [(u, int(gen.integers(num_items))) for u in range(num_users)]
    targets = [1, 5, 9]
    task = exposure_task(np.arange(num_users), np.array(targets), [interactions(*zip(*train))],
                         [interactions(*zip(*test))], num_items)
    got = exposure_ratio(lambda users: torch.from_numpy(scores[users.numpy()]), task, ks=(1, 3, 5))
    for k in (1, 3, 5):
        want = brute_force_er(scores, targets, set(train), set(test), k)
        assert got[f"er@{k}"] == pytest.approx(want, abs=1e-12)


def test_exposure_ratio_counts_only_pairs_without_interaction() -> None:
    scores = torch.tensor([[0.0, 9.0, 1.0], [0.0, 9.0, 1.0]])
    # user 0 interacted with the target 1 (test): only user 1's pair counts, and there the target ranks first
    task = exposure_task(np.array([0, 1]), np.array([1]), [interactions([0], [0])], [interactions([0], [1])], 3)
    assert exposure_ratio(lambda u: scores[u], task, ks=(1,)) == {"er@1": 1.0}


def test_exposure_task_refuses_bad_targets() -> None:
    with pytest.raises(FedrecError, match="outside the catalogue"):
        exposure_task(np.array([0]), np.array([7]), [], [], 3)


# ----------------------------------------------------------------------------------- crafting


def bpr(num_users: int = 20, num_items: int = 30, dim: int = 4) -> tuple[BPRMF, dict[str, torch.Tensor]]:
    model = BPRMF(BPRConfig(dim=dim, negatives=2), num_users, num_items)
    return model, model.init_params(torch.Generator().manual_seed(0))


def honest_update(model: BPRMF, clients: int, rows_per_client: int, seed: int = 0) -> CohortUpdate:
    gen = torch.Generator().manual_seed(seed)
    items = torch.stack([torch.randperm(model.num_items, generator=gen)[:rows_per_client] for _ in range(clients)]).flatten()
    count = clients * rows_per_client
    return CohortUpdate(
        row_items=items, row_clients=torch.arange(clients).repeat_interleave(rows_per_client), row_counts=torch.ones(count),
        row_deltas={"item_vec": torch.randn(count, model.config.dim, generator=gen) * 0.1,
                    "item_bias": torch.randn(count, 1, generator=gen) * 0.1},
        dense_deltas={}, client_sizes=torch.full((clients,), float(rows_per_client)),
    )


def adversary(method: str, targets=(3, 7), **options) -> Adversary:
    settings = AttackSettings(method, **options)  # type: ignore[arg-type]
    public = interactions(np.arange(20).repeat(3), (np.arange(60) * 7) % 30)
    return Adversary(settings, np.array(targets), first_malicious=18, num_malicious=2, first_fake_user=18,
                     public=public, popular=np.array([0, 1, 2, 4]))


@pytest.mark.parametrize("method", ["fedrec_attack", "pip_attack"])
def test_crafted_uploads_hit_only_targets_within_the_norm_bound(method: str) -> None:
    model, params = bpr()
    honest = honest_update(model, clients=2, rows_per_client=6)
    crafted = craft_uploads(model, params, honest, adversary(method), np.array([18, 19]), torch.Generator().manual_seed(1))
    assert crafted.num_clients == 2
    assert sorted(crafted.row_items.tolist()) == [3, 3, 7, 7]
    assert crafted.row_deltas["item_vec"].shape == (4, 4) and crafted.row_deltas["item_bias"].shape == (4, 1)
    assert torch.equal(crafted.row_counts, torch.ones(4))
    assert torch.allclose(client_norms(crafted), client_norms(honest), rtol=1e-5)  # exactly its honest norm
    bounded = craft_uploads(model, params, honest, adversary(method, norm_bound=0.25), np.array([18, 19]),
                            torch.Generator().manual_seed(1))
    assert torch.allclose(client_norms(bounded), torch.full((2,), 0.25, dtype=torch.float64), rtol=1e-5)


def test_fedrec_attack_step_raises_target_scores_for_public_users() -> None:
    model, params = bpr()
    honest = honest_update(model, clients=2, rows_per_client=6)
    crafted = craft_uploads(model, params, honest, adversary("fedrec_attack", norm_multiplier=3.0), np.array([18, 19]),
                            torch.Generator().manual_seed(1))
    stepped = {k: v.clone() for k, v in params.items()}
    for name in ("item_vec", "item_bias"):
        stepped[name].index_add_(0, crafted.row_items, crafted.row_deltas[name])
    users = torch.arange(18)
    before, after = model.score_all(params, users)[:, [3, 7]], model.score_all(stepped, users)[:, [3, 7]]
    assert float((after - before).mean()) > 0


@pytest.mark.parametrize("method", ["random", "bandwagon"])
def test_data_poisoning_uploads_are_honest_but_bounded(method: str) -> None:
    model, params = bpr()
    honest = honest_update(model, clients=2, rows_per_client=6)
    same = craft_uploads(model, params, honest, adversary(method), np.array([18, 19]), torch.Generator())
    assert torch.equal(same.row_items, honest.row_items) and torch.allclose(same.row_deltas["item_vec"], honest.row_deltas["item_vec"])
    small = craft_uploads(model, params, honest, adversary(method, norm_bound=0.01), np.array([18, 19]), torch.Generator())
    assert torch.all(client_norms(small) <= 0.01 + 1e-6)


def test_replace_clients_keeps_positions_and_others() -> None:
    model, _ = bpr()
    update = honest_update(model, clients=4, rows_per_client=3)
    new = honest_update(model, clients=2, rows_per_client=1, seed=5)
    merged = replace_clients(update, torch.tensor([1, 3]), new)
    assert merged.num_clients == 4
    for position, source, k in ((0, update, 0), (2, update, 2), (1, new, 0), (3, new, 1)):
        mine = merged.row_clients == position
        theirs = source.row_clients == k
        assert torch.equal(merged.row_items[mine], source.row_items[theirs])
        assert torch.equal(merged.row_deltas["item_vec"][mine], source.row_deltas["item_vec"][theirs])
        assert merged.client_sizes[position] == source.client_sizes[k]


def test_poison_leaves_a_benign_cohort_alone() -> None:
    model, params = bpr()
    update = honest_update(model, clients=3, rows_per_client=2)
    assert adversary("fedrec_attack").poison(model, params, update, np.array([0, 4, 17]), 0, 0) is update


# ----------------------------------------------------------------------------- the population


def test_targets_are_unpopular_and_seeded() -> None:
    gen = np.random.default_rng(0)
    items = gen.zipf(1.5, 3000) % 100
    train = interactions(gen.integers(0, 50, 3000), items)
    targets = choose_targets(train, 100, 5, seed=3)
    counts = np.bincount(items, minlength=100)
    assert len(targets) == 5 and np.all(counts[targets] > 0)
    assert np.all(counts[targets] <= np.median(counts[counts > 0]))
    assert np.array_equal(targets, choose_targets(train, 100, 5, seed=3))
    assert not np.array_equal(targets, choose_targets(train, 100, 5, seed=4))


def test_population_adds_fake_users_and_clients() -> None:
    train = interactions(np.arange(200) % 100, np.arange(200) % 40)
    settings = AttackSettings("bandwagon", malicious_fraction=0.05, filler_items=4, popular_items=10)
    population = build_population(train, 100, 40, np.arange(100), 100, np.array([38, 39]), settings)
    assert population.num_users == 105 and population.num_clients == 105
    assert population.adversary is not None and population.adversary.num_malicious == 5
    fake = population.train.subset(population.train.users >= 100)
    assert len(fake) == 5 * 6 and set(fake.items[fake.users == 100]) >= {38, 39}
    assert np.array_equal(population.client_of_user[100:], np.arange(100, 105))
    sample = public_sample(train, 0.5, 0)
    assert 50 < len(sample) < 150


def test_attack_config_errors_are_one_line() -> None:
    with pytest.raises(FedrecError) as error:
        load_config(CONFIGS / "ml100k-poison-attack.toml", ["attack.num_targets=0"])
    assert "attack.num_targets" in str(error.value) and "\n" not in str(error.value)
    with pytest.raises(FedrecError) as error:
        load_config(CONFIGS / "ml100k-poison-attack.toml", ["attack.method=sybil"])
    assert "attack.method" in str(error.value) and "\n" not in str(error.value)
    with pytest.raises(FedrecError) as error:
        load_config(CONFIGS / "ml100k-poison-attack.toml", ["attack.malicious_fraction=0"])
    assert "\n" not in str(error.value)


# ------------------------------------------------------------------------------------ end to end


def tiny_config(attack: dict, defence: dict | None = None, rounds: int = 8) -> RunConfig:
    return RunConfig.model_validate(dict(
        data=dict(name="synthetic", num_users=150, num_items=80, mean_interactions=12, split="leave_last_out"),
        model=dict(name="bpr", dim=8, l2=0.001, negatives=4),
        train=dict(rounds=rounds, local_lr=0.3, batch_size=8, server_optimizer="adam", server_lr=0.05,
                   server_beta2=0.999, eval_every=100),
        eval=dict(ks=[10], sampled_negatives=0),
        attack=dict(num_targets=3, **attack), defence=defence or {}))


def test_fedrec_attack_raises_exposure_on_a_tiny_run(tmp_path: Path) -> None:
    from fedrec.runtime.trainer import train

    clean = train(tiny_config({}), tmp_path / "clean")
    attacked = train(tiny_config({"method": "fedrec_attack", "norm_multiplier": 5.0}), tmp_path / "attack")
    assert clean["target_items"] == attacked["target_items"] and attacked["malicious_clients"] == 2
    assert attacked["er@10"] > clean["er@10"] + 0.2
    history = [json.loads(line) for line in (tmp_path / "attack" / "history.jsonl").read_text().splitlines()]
    assert "er@10" in history[-1] and math.isfinite(history[-1]["er@10"])


@pytest.mark.slow
def test_defended_config_keeps_exposure_low_on_a_small_run(tmp_path: Path) -> None:
    """The attack and defence of configs/ml100k-poison-*.toml on small synthetic data: the attack raises ER@10,
    the defence brings it back near the clean run's without costing much HR@10."""
    from fedrec.runtime.trainer import train

    small = ["data.name='synthetic'", "data.num_users=300", "data.num_items=200", "data.mean_interactions=20",
             "model.dim=16", "train.rounds=20", "train.eval_every=20", "eval.sampled_negatives=0"]
    runs = {name: train(load_config(CONFIGS / f"ml100k-poison-{name}.toml", small), tmp_path / name)
            for name in ("clean", "attack", "defended")}
    assert runs["attack"]["er@10"] > runs["clean"]["er@10"] + 0.1  # measured: 0.163 vs 0.0
    assert runs["defended"]["er@10"] <= 2 * runs["clean"]["er@10"] + 0.01
    assert runs["defended"]["hr@10"] >= 0.9 * runs["clean"]["hr@10"]
