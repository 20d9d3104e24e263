"""Simulated poisoning attacks: malicious clients that push target items into benign users' top-K.

The population gets ``malicious_fraction`` x (benign clients) extra clients, appended after the
benign ones and sampled like any other client. Each is a fake user with a fake profile (every
target item plus ``filler_items`` fillers) trained with the honest client code; what it uploads
depends on the attack:

- ``random`` / ``bandwagon`` (data poisoning, Lam & Riedl 2004): the honest update of a fake profile
  whose fillers are uniform over the catalogue (random) or drawn among the items most popular in
  the public sample (bandwagon).
- ``fedrec_attack`` (model poisoning in the style of FedRecAttack, Rong et al. 2022): the attacker
  knows a small public sample of benign interactions (``public_fraction`` of them). It fits user
  vectors to that sample against the current global item rows (the model every client downloads),
  then uploads, for the target items' rows only, the step that raises the targets' scores above
  each approximated user's current K-th best score (gradient of
  sum softplus(s_K(u) - s(u, t)), the threshold held fixed).
- ``pip_attack`` (in the style of PipAttack, Zhang et al. 2022): the target rows move towards the
  mean row of the popular items (popularity mimicry, vectors and biases alike), plus a
  ranking-promotion term that raises the targets' scores for the attacker's own fake users.

Every malicious upload is bounded so it looks normal: its L2 norm is at most ``norm_multiplier``
times the norm of the client's own honest update (what a benign client of that profile would send),
or ``norm_bound`` when given. Crafted rows carry a weight of one example each, like a row a client
touched once. Uploads are crafted by :func:`craft_uploads`, a pure function of (model, global
parameters, the malicious clients' honest update, the adversary, a generator), and merged into the
cohort's update before the server aggregates it (:meth:`Adversary.poison`, called by ``run_round``).
Malicious users are never evaluated: the evaluation reads only the benign split.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from fedrec.data.dataset import Interactions
from fedrec.errors import FedrecError
from fedrec.federated import rng
from fedrec.federated.aggregation import CohortUpdate, keep_clients
from fedrec.federated.robust import update_norms
from fedrec.models.base import ExampleBatch, ParamKind, RecModel, gather_rows, score_all_items

AttackMethod = Literal["random", "bandwagon", "fedrec_attack", "pip_attack"]
ATTACK_METHODS: tuple[str, ...] = ("random", "bandwagon", "fedrec_attack", "pip_attack")
STREAM_ATTACK = 101  # rng stream of the attacker's own draws (fake profiles, public sample, crafting)


@dataclass(frozen=True)
class AttackSettings:
    """Who attacks, with what budget and knowledge (see the module docstring)."""

    method: AttackMethod = "fedrec_attack"
    malicious_fraction: float = 0.01  # malicious clients per benign client (at least one when > 0)
    filler_items: int = 30  # filler items in each fake profile (besides every target)
    popular_items: int = 50  # bandwagon fillers and pip_attack's popular set: the most popular items of the public sample
    public_fraction: float = 0.02  # fraction of benign training interactions the attacker knows
    norm_multiplier: float = 1.0  # upload norm <= this x the client's own honest update norm
    norm_bound: float | None = None  # absolute L2 bound on an upload instead (None: the relative bound)
    top_k: int = 10  # fedrec_attack: the rank the targets should reach
    user_steps: int = 30  # fedrec_attack: optimisation steps fitting the public users' vectors
    promotion_weight: float = 1.0  # pip_attack: weight of the ranking-promotion term
    seed: int = 0

    def __post_init__(self) -> None:
        if self.method not in ATTACK_METHODS:
            raise FedrecError(f"unknown attack {self.method!r}; choose one of: {', '.join(ATTACK_METHODS)}")
        checks = [(0.0 < self.malicious_fraction <= 1.0, "malicious_fraction must be in (0, 1]"),
                  (self.filler_items >= 0, "filler_items must be >= 0"),
                  (self.popular_items >= 1, "popular_items must be >= 1"),
                  (0.0 < self.public_fraction <= 1.0, "public_fraction must be in (0, 1]"),
                  (self.norm_multiplier > 0, "norm_multiplier must be positive"),
                  (self.norm_bound is None or self.norm_bound > 0, "norm_bound must be positive (or unset)"),
                  (self.top_k >= 1, "top_k must be >= 1"), (self.user_steps >= 1, "user_steps must be >= 1")]
        for ok, message in checks:
            if not ok:
                raise FedrecError(f"attack: {message}")


def choose_targets(train: Interactions, num_items: int, count: int, seed: int, pool_fraction: float = 0.5) -> np.ndarray:
    """``count`` target items drawn by ``seed`` among the least popular ``pool_fraction`` of the items
    that have at least one training interaction (sorted item indices)."""
    counts = np.bincount(train.items, minlength=num_items)
    seen = np.flatnonzero(counts > 0)
    pool = seen[np.argsort(counts[seen], kind="stable")][:max(count, int(len(seen) * pool_fraction))]
    if count > len(pool):
        raise FedrecError(f"attack.num_targets={count} but only {len(pool)} unpopular items exist; choose fewer targets")
    keys = rng.hash64(seed, STREAM_ATTACK, 0, pool)
    return np.sort(pool[np.argsort(keys, kind="stable")[:count]])


def public_sample(train: Interactions, fraction: float, seed: int) -> Interactions:
    """The benign interactions the attacker knows: each one independently with probability ``fraction``."""
    keep = rng.uniform01(seed, STREAM_ATTACK, 1, np.arange(len(train))) < fraction
    return train.subset(keep)


def popular_items(public: Interactions, num_items: int, count: int) -> np.ndarray:
    """The ``count`` items most frequent in the public sample (ties: lower index first)."""
    counts = np.bincount(public.items, minlength=num_items)
    return np.argsort(-counts, kind="stable")[:min(count, num_items)]


def fake_profiles(settings: AttackSettings, first_user: int, num_fake: int, targets: np.ndarray, popular: np.ndarray,
                  num_items: int, target_value: float, filler_value: float) -> Interactions:
    """Each fake user's interactions: every target plus fillers (uniform, or among ``popular`` for bandwagon-like attacks)."""
    pool = np.setdiff1d(np.arange(num_items) if settings.method == "random" else popular, targets)
    fillers = min(settings.filler_items, len(pool))
    users, items, values = [], [], []
    for j in range(num_fake):
        keys = rng.hash64(settings.seed, STREAM_ATTACK, 2, j, pool)
        chosen = pool[np.argsort(keys, kind="stable")[:fillers]]
        profile = np.concatenate([targets, chosen])
        users.append(np.full(len(profile), first_user + j, dtype=np.int64))
        items.append(profile.astype(np.int64))
        values.append(np.r_[np.full(len(targets), target_value), np.full(fillers, filler_value)].astype(np.float32))
    users_all = np.concatenate(users) if users else np.zeros(0, np.int64)
    return Interactions(users_all, np.concatenate(items) if items else np.zeros(0, np.int64),
                        np.concatenate(values) if values else np.zeros(0, np.float32), np.zeros(len(users_all), np.int64))


# ------------------------------------------------------------------------------------ crafting


def approximate_users(model: RecModel, params: dict[str, Tensor], public: Interactions, steps: int,
                      generator: torch.Generator) -> tuple[dict[str, Tensor], np.ndarray]:
    """Private rows fitted to the public sample with every shared parameter held at its global value.

    Returns the fitted private tables (one row per public user, local indices) and the public users.
    The loss is the model's own training loss (sampled negatives for ranking models).
    """
    users, local = np.unique(public.users, return_inverse=True)
    private = {}
    for spec in model.specs_by_kind(ParamKind.PRIVATE_ROWS):
        std = float(params[spec.name].std()) if params[spec.name].numel() > 1 else 0.1
        private[spec.name] = (torch.randn(len(users), *spec.row_shape, generator=generator) * std).requires_grad_()
    moments = {name: (torch.zeros_like(value), torch.zeros_like(value)) for name, value in private.items()}
    user_index = torch.from_numpy(local)
    positives = torch.from_numpy(public.items.astype(np.int64))[:, None]
    num_items = params[model.specs_by_kind(ParamKind.SHARED_ROWS)[0].name].shape[0]
    targets = torch.from_numpy(public.ratings.astype(np.float32))[None]
    for step in range(steps):
        negatives = torch.randint(num_items, (len(positives), model.negatives), generator=generator)
        items = torch.cat([positives, negatives], 1)
        rows = gather_rows(model, {**params, **private}, user_index, items)
        loss = model.example_loss(rows, ExampleBatch(targets)).mean()
        grads = torch.autograd.grad(loss, list(private.values()))
        with torch.no_grad():  # Adam (lr 0.05), written out: torch.optim's first use is slow to import
            for (name, value), grad in zip(private.items(), grads):
                first, second = moments[name]
                first.mul_(0.9).add_(grad, alpha=0.1)
                second.mul_(0.999).addcmul_(grad, grad, value=0.001)
                value -= 0.05 * (first / (1 - 0.9 ** (step + 1))) / ((second / (1 - 0.999 ** (step + 1))).sqrt() + 1e-8)
    return {name: value.detach() for name, value in private.items()}, users


def _target_leaves(model: RecModel, params: dict[str, Tensor], targets: Tensor) -> dict[str, Tensor]:
    """The target items' rows of every item table; the trainable ones (what a client uploads) require grad."""
    return {spec.name: params[spec.name][targets].clone().requires_grad_(spec.trainable)
            for spec in model.specs_by_kind(ParamKind.SHARED_ROWS)}


def _descent(loss: Tensor, leaves: dict[str, Tensor]) -> dict[str, Tensor]:
    """-grad of the loss for each leaf that requires grad (the uploadable target rows)."""
    names = [name for name, leaf in leaves.items() if leaf.requires_grad]
    if not names:  # no uploadable item table (text tower): nothing to craft on the target rows
        return {}
    grads = torch.autograd.grad(loss, [leaves[name] for name in names])
    return {name: -grad for name, grad in zip(names, grads)}


def _scores_of_targets(model: RecModel, params: dict[str, Tensor], private: dict[str, Tensor],
                       leaves: dict[str, Tensor], num_users: int) -> Tensor:
    """Scores (U, T) of the target rows ``leaves`` for every user of ``private``, differentiable in the leaves."""
    rows: dict[str, Tensor] = {}
    for spec in model.param_specs():
        if spec.kind is ParamKind.PRIVATE_ROWS:
            rows[spec.name] = private[spec.name].unsqueeze(0)
        elif spec.kind is ParamKind.SHARED_ROWS:
            leaf = leaves[spec.name]
            rows[spec.name] = leaf.unsqueeze(0).unsqueeze(0).expand(1, num_users, *leaf.shape)
        else:
            rows[spec.name] = params[spec.name].unsqueeze(0)
    return model.predict(rows)[0]


def fedrec_attack_direction(model: RecModel, params: dict[str, Tensor], targets: Tensor, public: Interactions,
                            settings: AttackSettings, generator: torch.Generator) -> dict[str, Tensor]:
    """FedRecAttack-style step for the target rows: -grad of sum softplus(s_K(u) - s(u, t)) over approximated users."""
    private, users = approximate_users(model, params, public, settings.user_steps, generator)
    with torch.no_grad():
        scores = score_all_items(model, {**params, **private}, torch.arange(len(users)))
        known = np.searchsorted(users, public.users)
        scores[torch.from_numpy(known), torch.from_numpy(public.items.astype(np.int64))] = -torch.inf
        threshold = scores.topk(min(settings.top_k, scores.shape[1]), dim=1).values[:, -1:]  # (U, 1)
    leaves = _target_leaves(model, params, targets)
    target_scores = _scores_of_targets(model, params, private, leaves, len(users))
    return _descent(F.softplus(threshold - target_scores).mean(), leaves)


def pip_attack_direction(model: RecModel, params: dict[str, Tensor], targets: Tensor, popular: Tensor,
                         fake_users: Tensor, settings: AttackSettings) -> dict[str, Tensor]:
    """PipAttack-style step for the target rows: towards the popular items' mean row, plus promotion for the fake users."""
    leaves = _target_leaves(model, params, targets)
    mimic = sum(((leaf - params[name][popular].mean(0, keepdim=True)) ** 2).sum()
                for name, leaf in leaves.items() if leaf.requires_grad)
    private = {spec.name: params[spec.name][fake_users] for spec in model.specs_by_kind(ParamKind.PRIVATE_ROWS)}
    promotion = _scores_of_targets(model, params, private, leaves, len(fake_users)).mean()
    return _descent(mimic / max(len(targets), 1) - settings.promotion_weight * promotion, leaves)


client_norms = update_norms  # L2 norm of each client's whole upload: (C,)


def upload_bounds(honest: CohortUpdate, settings: AttackSettings) -> Tensor:
    """The norm each malicious client may upload: (C,)."""
    if settings.norm_bound is not None:
        return torch.full((honest.num_clients,), float(settings.norm_bound), dtype=torch.float64)
    return settings.norm_multiplier * client_norms(honest)


def scale_clients(update: CohortUpdate, factors: Tensor) -> CohortUpdate:
    """Every client's rows and dense deltas multiplied by its factor (C,)."""
    per_row = factors[update.row_clients].to(torch.float32)
    return CohortUpdate(
        row_items=update.row_items, row_clients=update.row_clients, row_counts=update.row_counts,
        row_deltas={n: v * per_row.reshape(-1, *([1] * (v.dim() - 1))) for n, v in update.row_deltas.items()},
        dense_deltas={n: v * factors.to(torch.float32).reshape(-1, *([1] * (v.dim() - 1))) for n, v in update.dense_deltas.items()},
        client_sizes=update.client_sizes,
    )


def crafted_rows(direction: dict[str, Tensor], targets: Tensor, honest: CohortUpdate, bounds: Tensor) -> CohortUpdate:
    """Each malicious client uploads ``direction`` on the target rows (one example each), its honest dense
    deltas, and an L2 norm of exactly its bound (the rows take what the dense part leaves)."""
    clients, count = honest.num_clients, len(targets)
    dense_sq = torch.zeros(clients, dtype=torch.float64)
    for value in honest.dense_deltas.values():
        dense_sq += value.reshape(clients, -1).double().square().sum(1)
    row_budget = (bounds.square() - dense_sq).clamp_min(0).sqrt()
    length = math.sqrt(sum(float(v.double().square().sum()) for v in direction.values()))
    scale = (row_budget / max(length, 1e-12)).to(torch.float32)
    per_row = scale.repeat_interleave(count)
    return CohortUpdate(
        row_items=targets.repeat(clients),
        row_clients=torch.arange(clients).repeat_interleave(count),
        row_counts=torch.ones(clients * count),
        row_deltas={n: v.repeat(clients, *([1] * (v.dim() - 1))) * per_row.reshape(-1, *([1] * (v.dim() - 1)))
                    for n, v in direction.items()},
        dense_deltas=honest.dense_deltas,
        client_sizes=honest.client_sizes,
    )


@dataclass(frozen=True)
class Adversary:
    """The simulated attacker of a run: its settings, targets and knowledge, and which clients it controls."""

    settings: AttackSettings
    targets: np.ndarray  # (T,) target item indices
    first_malicious: int  # client index of the first malicious client; the rest follow it
    num_malicious: int
    first_fake_user: int  # user index of the first fake user (one per malicious client)
    public: Interactions  # the benign interactions the attacker knows
    popular: np.ndarray  # the most popular items of the public sample

    def poison(self, model: RecModel, params: dict[str, Tensor], update: CohortUpdate, cohort: np.ndarray, seed: int,
               round_index: int) -> CohortUpdate:
        """The cohort's update with its malicious clients' uploads replaced by crafted ones (for ``run_round``)."""
        malicious = torch.from_numpy(np.asarray(cohort) >= self.first_malicious)
        if update.num_clients != len(cohort) or not bool(malicious.any()):
            return update
        key = int(rng.hash64(seed, STREAM_ATTACK, 3, round_index)) & ((1 << 63) - 1)
        fake_users = np.asarray(cohort)[malicious.numpy()] - self.first_malicious + self.first_fake_user
        crafted = craft_uploads(model, params, keep_clients(update, malicious), self, fake_users,
                                torch.Generator().manual_seed(key))
        return replace_clients(update, torch.nonzero(malicious).flatten(), crafted)


def replace_clients(update: CohortUpdate, positions: Tensor, uploads: CohortUpdate) -> CohortUpdate:
    """``update`` with the uploads of the clients at cohort ``positions`` (sorted) replaced by ``uploads``
    (client k of ``uploads`` goes to ``positions[k]``); every other client keeps its position and upload."""
    replaced = torch.zeros(update.num_clients, dtype=torch.bool)
    replaced[positions] = True
    kept_rows = ~replaced[update.row_clients]
    dense = {}
    for name, value in update.dense_deltas.items():
        dense[name] = value.clone()
        dense[name][positions] = uploads.dense_deltas[name].to(value.dtype)
    sizes = update.client_sizes.clone()
    sizes[positions] = uploads.client_sizes.to(sizes.dtype)
    return CohortUpdate(
        row_items=torch.cat([update.row_items[kept_rows], uploads.row_items]),
        row_clients=torch.cat([update.row_clients[kept_rows], positions[uploads.row_clients]]),
        row_counts=torch.cat([update.row_counts[kept_rows], uploads.row_counts.to(update.row_counts.dtype)]),
        row_deltas={n: torch.cat([v[kept_rows], uploads.row_deltas[n].to(v.dtype)]) for n, v in update.row_deltas.items()},
        dense_deltas=dense,
        client_sizes=sizes,
    )


def craft_uploads(model: RecModel, params: dict[str, Tensor], honest: CohortUpdate, adversary: Adversary,
                  fake_users: np.ndarray, generator: torch.Generator) -> CohortUpdate:
    """The malicious clients' uploads from their honest ones (same clients, same order); pure."""
    settings = adversary.settings
    bounds = upload_bounds(honest, settings)
    if settings.method in ("random", "bandwagon"):  # data poisoning: the honest update, norm-bounded
        norms = client_norms(honest)
        return scale_clients(honest, torch.clamp(bounds / norms.clamp_min(1e-12), max=1.0))
    targets = torch.from_numpy(adversary.targets)
    with torch.enable_grad():
        if settings.method == "fedrec_attack":
            direction = fedrec_attack_direction(model, params, targets, adversary.public, settings, generator)
        else:
            direction = pip_attack_direction(model, params, targets, torch.from_numpy(adversary.popular),
                                             torch.from_numpy(fake_users), settings)
    return crafted_rows({n: d.detach() for n, d in direction.items()}, targets, honest, bounds)


# ------------------------------------------------------------------------------ the population


@dataclass(frozen=True)
class Population:
    """The training population of a run: benign users plus, under attack, fake users and their clients."""

    train: Interactions  # benign training interactions, then the fake users'
    client_of_user: np.ndarray  # (num_users,) benign users' clients, then one new client per fake user
    num_users: int
    num_clients: int
    targets: np.ndarray | None  # target items (also for clean runs, to measure exposure); None: no targets
    adversary: Adversary | None


def build_population(train: Interactions, num_users: int, num_items: int, client_of_user: np.ndarray,
                     num_clients: int, targets: np.ndarray | None, settings: AttackSettings | None) -> Population:
    """Add ``settings.malicious_fraction`` x num_clients malicious clients (fake users) to the population."""
    if settings is None:
        return Population(train, client_of_user, num_users, num_clients, targets, None)
    if targets is None or len(targets) == 0:
        raise FedrecError("an attack needs target items: set attack.num_targets (e.g. 5) or attack.target_items")
    num_fake = max(1, int(round(settings.malicious_fraction * num_clients)))
    public = public_sample(train, settings.public_fraction, settings.seed)
    popular = popular_items(public, num_items, settings.popular_items)
    ratings = train.ratings if len(train) else np.ones(1, np.float32)
    fake = fake_profiles(settings, num_users, num_fake, targets, popular, num_items, float(ratings.max()),
                         float(ratings.mean()))
    adversary = Adversary(settings, np.asarray(targets, np.int64), num_clients, num_fake, num_users, public, popular)
    return Population(Interactions.concat([train, fake]),
                      np.r_[client_of_user, num_clients + np.arange(num_fake)].astype(np.int64),
                      num_users + num_fake, num_clients + num_fake, np.asarray(targets, np.int64), adversary)


def resolve_targets(train: Interactions, item_ids: np.ndarray, num_targets: int, target_items: list[str] | None,
                    seed: int) -> np.ndarray | None:
    """Target item indices: the raw ids given, else ``num_targets`` unpopular items chosen by ``seed``; None when neither."""
    if target_items:
        index = {str(raw): i for i, raw in enumerate(item_ids)}
        unknown = [raw for raw in target_items if str(raw) not in index]
        if unknown:
            raise FedrecError(f"attack.target_items: unknown item id {unknown[0]!r}; use the dataset's raw item ids")
        return np.unique([index[str(raw)] for raw in target_items]).astype(np.int64)
    if num_targets <= 0:
        return None
    return choose_targets(train, len(item_ids), num_targets, seed)
