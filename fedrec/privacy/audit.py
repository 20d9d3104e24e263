"""Privacy audit: an honest-but-curious server attacks exactly what a configuration lets it see.

The audit runs the configured federated job round by round (the same pieces as
:func:`fedrec.federated.server.run_round`: ``sample_cohort``, a backend from ``BACKENDS``, the
aggregate, ``ServerOptimizer``), applies the chosen hiding (:mod:`fedrec.privacy.hiding`) to every
upload, and records what the server observes in the last ``observe_rounds`` rounds: each client's
rows (plain, dense or with pseudo-items), or with secure aggregation only the cohort's sums. Under
secure aggregation the observed rounds run the real protocol (:func:`fedrec.privacy.upload.cohort_upload`:
fixed-point client vectors, masks, Shamir shares, unmasking) and the server steps from its decoded sum;
the other rounds add the same vectors in the clear, which gives the same model to fixed-point
precision (tests/test_private_train.py) at a fraction of the cost. ``bytes_up_per_round`` is measured
over the rounds whose messages were counted (with secure aggregation: the protocol rounds). With
``[privacy]`` DP in the config the server aggregates with it (central DP does not hide the uploads
from the server; secure aggregation does).

**Item inference.** For every audited client and item the attacker forms scores from what it saw,
averaged over the observed rounds the client took part in (each also negated: a score that ranks
fakes above real rows is just as informative): ``membership`` (the client sent a
non-zero row for the item), ``norm`` (norm of that row's delta) and ``count`` (the row's uploaded
aggregation weight) and, for biased MF, ``direction`` (how well the row fits an SGD step of this
client: real item-vector deltas all point along the client's user vector once the known
weight-decay term is removed; see :func:`mf_direction_scores`). Under secure aggregation it sees
only sums, so its best per-client guess is the same for every client of a cohort: the item's summed weight (how many examples of the cohort
touched it). Reported, for the best of these scorers (the choice is the only use of the truth):

- ``audit_item_auc``: for each item, the AUC of telling the audited clients that interacted with
  it from those that did not, averaged over items with both kinds. 0.5 means the server learned
  nothing about *who* holds an item; this is what hiding is for. It also credits what the server
  knows about a client as a whole: row norms scale with 1/(client size), and heavy users hold more
  items, so fakes that are as plausible as real rows still leave some signal (measured).
- ``audit_item_auc_per_client``: for each client, the AUC of ranking its training items above the
  others (averaged). It also credits knowledge of item popularity, which every server learns from
  the sums; ``audit_prior_item_auc_per_client`` is that popularity guess alone, for comparison.
- ``audit_item_precision@10``: precision of each client's 10 top-scored items (ties broken
  uniformly at random, expected value), and ``audit_prior_item_precision@10`` for the popularity guess.

**Rating inference** (Chai et al. 2020, "Secure Federated Matrix Factorization", for fedrec's biased
MF). With one local SGD step (``train.local_epochs=1``, ``train.batch_size`` >= the client's size
B) the uploaded item-bias delta gives each rating's error, e_i = -(B/2lr) db_i - l2 b_i, the
item-vector deltas give the user vector by least squares, v_i = -(B/lr) dq_i - 2 l2 q_i = 2 e_i p_u,
so r_i - b_u = mu + b_i + <p_u, q_i> - e_i is known; the user bias b_u follows from the next round's
upload of the same client, since r_i is the same in both rounds and b_u moves by the known step
b_u' = (1 - 2 plr l2) b_u - (2 plr/B) sum_i e_i. This is exact (up to float32 rounding of the
uploads). With several local steps the attacker applies the same per-row formulas with B = the
batch size (e_i stays exact for the rows of full batches, p_u becomes the user vector averaged over
the steps), and sets b_u so that the client's mean inferred rating is mu: the two-round equation for
b_u, b_u' ~ (1 - 2 plr l2)^S b_u - (2 plr/B) sum_i e_i, divides by 1 - (1 - 2 plr l2)^S, which amplifies
the drift of p_u within the round (measured worse on ML-100K: RMSE 0.73 against 0.57). The same
fallback is used when b_u is not identifiable (l2 = 0 or private lr 0). ``audit_rating_rmse``
measures how far the attack gets. Under secure aggregation it has no per-client rows and its best guess
is mu + b_i; that guess is also reported for every mode as ``audit_rating_rmse_baseline``.
The rating attack is defined for ``model.name=mf`` with one user per client; otherwise it reports null.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import torch
from scipy.stats import rankdata
from torch import Tensor

from fedrec.config import TEXT_MODELS, VIRTUAL_FAKES_UNCLIPPED, RunConfig
from fedrec.errors import FedrecError
from fedrec.federated import rng
from fedrec.federated.aggregation import CohortUpdate, RowWeighting, aggregate_rows, row_weights
from fedrec.federated.cohort import ClientData, sample_cohort
from fedrec.federated.local import LocalTraining
from fedrec.federated.server import BACKENDS, FedAvgSettings, shared_shapes, write_private_rows
from fedrec.privacy.cohort_sum import CohortSum, aggregate_sum, contributions, sum_layout
from fedrec.privacy.dp import noise_generator
from fedrec.models.base import ParamKind, RecModel, num_catalogue_items
from fedrec.privacy.hiding import (HidingSettings, apply_hiding, client_chunks, hidden_upload_bytes, select_clients,
                                   virtual_example_values)

STREAM_AUDITED = 103  # which clients are audited when there are more than ``max_clients``
SCORERS: tuple[str, ...] = ("membership", "norm", "count", "direction")


@dataclass(frozen=True)
class AuditSettings:
    """What the server sees and how much of the run it watches."""

    hiding: HidingSettings = field(default_factory=HidingSettings)
    secagg: bool = False  # the server sees only the cohort's sums
    observe_rounds: int = 2  # the last rounds whose uploads the server records (>= 2 for the rating attack)
    max_clients: int = 2000  # audited clients (a seeded random subset when there are more)

    def __post_init__(self) -> None:
        if self.observe_rounds < 1:
            raise FedrecError("the audit must observe at least 1 round; the rating attack needs 2 (--observe 2)")
        if self.max_clients < 2:
            raise FedrecError("the audit needs at least 2 audited clients; raise --max-clients")


# -- aggregation of an upload that arrives in chunks of clients ----------------------------------------


@dataclass
class RowSums:
    """Running weighted sums of row deltas per item and their weights: what a server accumulates."""

    numerators: dict[str, Tensor]  # name -> (num_items, *row_shape)
    weights: Tensor  # (num_items,)
    cohort_size: float = 0.0  # sum of client sizes (the plain FedAvg denominator)

    @staticmethod
    def zeros(model: RecModel) -> RowSums:
        specs = model.uploaded_specs(ParamKind.SHARED_ROWS)
        return RowSums({s.name: torch.zeros(s.shape) for s in specs}, torch.zeros(num_catalogue_items(model)))

    def add(self, update: CohortUpdate, weighting: RowWeighting) -> None:
        w = row_weights(update, weighting)
        num_items = self.weights.shape[0]
        for name, delta in update.row_deltas.items():
            self.numerators[name] += aggregate_rows(delta, update.row_items, w, num_items, denominator=1.0)
        self.weights.index_add_(0, update.row_items, w)
        self.cohort_size += float(update.client_sizes.sum())

    def mean(self, weighting: RowWeighting) -> dict[str, Tensor]:
        """The aggregate row deltas, as :func:`fedrec.federated.aggregation.aggregate` defines them."""
        if weighting == "fedavg":
            return {name: value / self.cohort_size for name, value in self.numerators.items()}
        scale = self.weights.clamp_min(torch.finfo(self.weights.dtype).tiny)
        return {name: value / scale.reshape(-1, *[1] * (value.dim() - 1)) for name, value in self.numerators.items()}


# -- what the server sees, as scores --------------------------------------------------------------------


@dataclass
class ItemObservations:
    """Per audited client and item, attack scores summed over the observed rounds it took part in."""

    audited: np.ndarray  # (A,) sorted client indices
    scores: dict[str, np.ndarray]  # scorer -> (A, num_items) float64
    rounds_seen: np.ndarray  # (A,)
    prior: np.ndarray  # (num_items,) summed item weights over the observed rounds (popularity)

    @staticmethod
    def empty(audited: np.ndarray, num_items: int) -> ItemObservations:
        return ItemObservations(audited, {s: np.zeros((len(audited), num_items)) for s in SCORERS},
                                np.zeros(len(audited)), np.zeros(num_items))

    def audited_rows(self, clients: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(positions in ``clients`` that are audited, their rows in the score matrices)."""
        where = np.searchsorted(self.audited, clients).clip(max=len(self.audited) - 1)
        hit = self.audited[where] == clients
        return np.flatnonzero(hit), where[hit]

    def add_uploads(self, update: CohortUpdate, clients: np.ndarray, direction: np.ndarray | None = None) -> None:
        """The rows of clients ``clients`` (cohort position k = ``clients[k]``) as the server received them.

        ``direction`` (per row, optional) is the model-aware score of :func:`mf_direction_scores`.
        """
        positions, rows = self.audited_rows(clients)
        if len(rows) == 0:
            return
        row_of_position = np.full(len(clients), -1)
        row_of_position[positions] = rows
        target = row_of_position[update.row_clients.numpy()]
        keep = target >= 0
        items = update.row_items.numpy()[keep]
        target = target[keep]
        squared = sum((value.reshape(len(value), -1).double().pow(2).sum(1) for value in update.row_deltas.values()),
                      torch.zeros(len(update.row_items), dtype=torch.float64))
        norm = squared.sqrt().numpy()[keep]
        np.add.at(self.scores["membership"], (target, items), (norm > 0).astype(np.float64))
        np.add.at(self.scores["norm"], (target, items), norm)
        np.add.at(self.scores["count"], (target, items), update.row_counts.double().numpy()[keep])
        np.add.at(self.scores["direction"], (target, items), (norm > 0) if direction is None else direction[keep])
        self.rounds_seen[rows] += 1

    def add_sums(self, sums: RowSums | np.ndarray, clients: np.ndarray) -> None:
        """Secure aggregation: every client of the cohort gets the same guess, the items' summed weights
        (or any per-item score from the sums, :func:`sum_guess`)."""
        _, rows = self.audited_rows(clients)
        guess = sums.weights.double().numpy() if isinstance(sums, RowSums) else np.asarray(sums, dtype=np.float64)
        for scorer in SCORERS:
            self.scores[scorer][rows] += guess
        self.rounds_seen[rows] += 1

    def add_prior(self, sums: RowSums) -> None:
        self.prior += sums.weights.double().numpy()

    def mean_scores(self) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        """(rows of audited clients seen at least once, each scorer's mean score over their rounds)."""
        seen = np.flatnonzero(self.rounds_seen > 0)
        return seen, {s: v[seen] / self.rounds_seen[seen, None] for s, v in self.scores.items()}


def sum_guess(cohort_sum: CohortSum, num_items: int) -> np.ndarray:
    """The server's per-item score from a round's sum: the summed row weights, or (DP layouts carry none)
    the norm of each item's summed delta."""
    if cohort_sum.row_weights is not None:
        return cohort_sum.row_weights.numpy()
    squared = sum((v.reshape(v.shape[0], -1).square().sum(1) for v in cohort_sum.row_sums.values()),
                  torch.zeros(num_items, dtype=torch.float64))
    return squared.sqrt().numpy()


def mf_direction_scores(update: CohortUpdate, params: dict[str, Tensor], local: LocalTraining, l2: float) -> np.ndarray:
    """Per uploaded row, how well it fits biased-MF SGD: |cos| between v_i = -(B/lr) dq_i - 2 l2 q_i and its
    client's user vector estimated from all its rows, sum_i e_i v_i (0 for zero rows).

    Every real item-vector delta of a one-step client is 2 e_i p_u after removing the known weight-decay
    term (e_i from the item-bias delta), so real rows all point along the user vector; rows that do
    not are suspect.
    """
    batch = torch.from_numpy(np.minimum(update.client_sizes.double().numpy(), local.batch_size))
    scale = (batch / local.lr)[update.row_clients]
    dq = update.row_deltas["item_vec"].double()
    db = update.row_deltas["item_bias"].double().reshape(-1)
    q = params["item_vec"].double()[update.row_items]
    b = params["item_bias"].double().reshape(-1)[update.row_items]
    v = -scale[:, None] * dq - 2 * l2 * q
    error = -scale * db / 2 - l2 * b
    nonzero = (dq.abs().sum(1) + db.abs()) > 0
    weight = torch.where(nonzero, error, torch.zeros_like(error))
    user = torch.zeros(update.num_clients, v.shape[1], dtype=torch.float64).index_add_(0, update.row_clients,
                                                                                       weight[:, None] * v)
    direction = user[update.row_clients]
    cos = (v * direction).sum(1).abs() / (v.norm(dim=1) * direction.norm(dim=1)).clamp_min(1e-300)
    return torch.where(nonzero, cos, torch.zeros_like(cos)).numpy()


# -- metrics -------------------------------------------------------------------------------------------


def auc_along(scores: np.ndarray, truth: np.ndarray, axis: int) -> np.ndarray:
    """AUC of ``scores`` against boolean ``truth`` along ``axis`` (ties count 1/2); NaN where one class is empty."""
    ranks = rankdata(scores, axis=axis)
    positives = truth.sum(axis=axis).astype(np.float64)
    negatives = truth.shape[axis] - positives
    rank_sum = np.where(truth, ranks, 0.0).sum(axis=axis)
    with np.errstate(invalid="ignore", divide="ignore"):
        auc = (rank_sum - positives * (positives + 1) / 2) / (positives * negatives)
    return np.where((positives > 0) & (negatives > 0), auc, np.nan)


def precision_at_k(scores: np.ndarray, truth: np.ndarray, k: int) -> np.ndarray:
    """Per row, the expected precision of the top-k items when ties are broken uniformly at random."""
    k = min(k, scores.shape[1])
    kth = -np.partition(-scores, k - 1, axis=1)[:, k - 1:k]  # the k-th largest score of each row
    above, at = scores > kth, scores == kth
    hits_above = (above & truth).sum(1)
    slots = k - above.sum(1)
    return (hits_above + slots * (at & truth).sum(1) / at.sum(1)) / k


def item_attack_metrics(observations: ItemObservations, truth: np.ndarray, k: int = 10) -> dict[str, float]:
    """The item-inference results for the observed clients; ``truth`` is (A, num_items) for all audited clients."""
    seen, scores = observations.mean_scores()
    truth = truth[seen]
    result: dict[str, float] = {"audit_clients": int(len(seen))}
    if len(seen) < 2:
        raise FedrecError("the server observed fewer than 2 audited clients; raise --observe or train.client_fraction")
    by_scorer = {}
    for scorer, value in scores.items():
        for sign, label in ((1.0, scorer), (-1.0, f"-{scorer}")):  # a score that ranks fakes first informs too
            by_scorer[label] = (float(np.nanmean(auc_along(sign * value, truth, axis=0))),
                                float(np.nanmean(auc_along(sign * value, truth, axis=1))),
                                float(np.mean(precision_at_k(sign * value, truth, k))))
        result[f"audit_item_auc_{scorer}"] = by_scorer[scorer][0]
    best = max(by_scorer, key=lambda s: by_scorer[s][0])
    result.update({"audit_item_scorer": best, "audit_item_auc": by_scorer[best][0],
                   "audit_item_auc_per_client": max(v[1] for v in by_scorer.values()),
                   f"audit_item_precision@{k}": max(v[2] for v in by_scorer.values())})
    prior = np.broadcast_to(observations.prior, truth.shape)
    result["audit_prior_item_auc_per_client"] = float(np.nanmean(auc_along(prior, truth, axis=1)))
    result[f"audit_prior_item_precision@{k}"] = float(np.mean(precision_at_k(prior, truth, k)))
    return result


# -- rating inference (Chai et al. 2020) on biased MF ---------------------------------------------------


@dataclass(frozen=True)
class RatingEvidence:
    """What one round's upload reveals per (client, row): the rating up to the client's bias."""

    clients: np.ndarray  # (K,) client index of each client in the evidence
    sizes: np.ndarray  # (K,) its number of examples (the server knows it: the aggregation weight)
    error_sums: np.ndarray  # (K,) sum of its inferred errors e_i
    row_owner: np.ndarray  # (R,) position in ``clients``
    row_items: np.ndarray  # (R,)
    partial: np.ndarray  # (R,) mu + b_i + <p_u, q_i> - e_i = r_i - b_u
    mu: float  # the global bias the server sent that round


def rating_evidence(update: CohortUpdate, clients: np.ndarray, params: dict[str, Tensor], local: LocalTraining,
                    l2: float) -> RatingEvidence:
    """Invert one round of biased-MF uploads (nonzero rows only) with the one-step SGD formulas.

    ``params`` is the global model the server sent that round; ``clients[k]`` is the client at
    upload position k.
    """
    sizes = update.client_sizes.double().numpy()
    batch = np.minimum(sizes, local.batch_size)  # the attacker's guess of each client's batch length
    dq = update.row_deltas["item_vec"].double()
    db = update.row_deltas["item_bias"].double().reshape(-1)
    nonzero = (dq.abs().sum(1) + db.abs()) > 0
    owner = update.row_clients[nonzero]
    items = update.row_items[nonzero]
    dq, db = dq[nonzero], db[nonzero]
    q = params["item_vec"].double()[items]
    b = params["item_bias"].double().reshape(-1)[items]
    mu = float(params["global_bias"].double().reshape(-1)[0])
    scale = torch.from_numpy(batch)[owner] / local.lr
    error = -scale * db / 2 - l2 * b  # e_i
    v = -scale[:, None] * dq - 2 * l2 * q  # 2 e_i p_u
    num_clients = update.num_clients
    numerator = torch.zeros(num_clients, q.shape[1], dtype=torch.float64).index_add_(0, owner, error[:, None] * v)
    denominator = torch.zeros(num_clients, dtype=torch.float64).index_add_(0, owner, 2 * error * error)
    user_vec = numerator / denominator.clamp_min(1e-300)[:, None]  # least squares p_u per client
    partial = mu + b + (user_vec[owner] * q).sum(1) - error
    error_sums = torch.zeros(num_clients, dtype=torch.float64).index_add_(0, owner, error)
    return RatingEvidence(np.asarray(clients, dtype=np.int64), sizes, error_sums.numpy(), owner.numpy(), items.numpy(),
                          partial.numpy(), mu)


def infer_ratings(first: RatingEvidence, second: RatingEvidence, local: LocalTraining, l2: float
                  ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Ratings of the rows of ``first`` for clients present in both consecutive rounds: (clients, items, ratings).

    With one local step, b_u comes from r_i - b_u (first round) and r_i - b_u' (second) on the
    items in both, with b_u' = a b_u - (2 plr/B) sum_i e_i, a = 1 - 2 plr l2; otherwise the client's
    mean inferred rating is set to mu.
    """
    common, first_pos, second_pos = np.intersect1d(first.clients, second.clients, return_indices=True)
    plr = local.lr_of(True)
    sizes = first.sizes[first_pos]
    batch = np.minimum(sizes, local.batch_size)
    steps = local.epochs * np.ceil(sizes / local.batch_size)
    decay = 1.0 - (1.0 - 2 * plr * l2) ** steps
    out_clients, out_items, out_ratings = [], [], []
    second_lookup = {}
    for k, position in enumerate(second_pos):
        rows = np.flatnonzero(second.row_owner == position)
        second_lookup[k] = dict(zip(second.row_items[rows].tolist(), second.partial[rows].tolist()))
    first_rows = _rows_by_owner(first.row_owner, len(first.clients))
    for k, (client, position) in enumerate(zip(common, first_pos)):
        rows = first_rows[position]
        if len(rows) == 0:
            continue
        later = second_lookup[k]
        shared = [(first.partial[r], later[int(first.row_items[r])]) for r in rows if int(first.row_items[r]) in later]
        partial = first.partial[rows]
        if shared and steps[k] == 1 and decay[k] > 1e-9:
            difference = float(np.mean([after - before for before, after in shared]))  # b_u - b_u'
            user_bias = (difference - 2 * plr / batch[k] * first.error_sums[position]) / decay[k]
        else:  # b_u not identifiable (or, with several local steps, measured less accurate): mean rating = mu
            user_bias = first.mu - float(np.mean(partial))
        out_clients.append(np.full(len(rows), client))
        out_items.append(first.row_items[rows])
        out_ratings.append(partial + user_bias)
    if not out_clients:
        return np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0)
    return np.concatenate(out_clients), np.concatenate(out_items), np.concatenate(out_ratings)


def _rows_by_owner(owner: np.ndarray, count: int) -> list[np.ndarray]:
    order = np.argsort(owner, kind="stable")
    bounds = np.searchsorted(owner[order], np.arange(count + 1))
    return [order[bounds[k]:bounds[k + 1]] for k in range(count)]


def true_ratings(data: ClientData, clients: np.ndarray, items: np.ndarray, num_items: int) -> tuple[np.ndarray, np.ndarray]:
    """(mask of (client, item) pairs that are training interactions, their ratings)."""
    example_client = np.repeat(np.arange(data.num_clients), data.sizes)
    keys = example_client * num_items + data.items
    order = np.argsort(keys, kind="stable")
    sorted_keys = keys[order]
    query = clients * num_items + items
    where = np.searchsorted(sorted_keys, query).clip(max=max(len(sorted_keys) - 1, 0))
    found = sorted_keys[where] == query if len(sorted_keys) else np.zeros(len(query), dtype=bool)
    return found, data.targets[order[where]].astype(np.float64)


def rmse(predicted: np.ndarray, actual: np.ndarray) -> float:
    return float(np.sqrt(np.mean((predicted - actual) ** 2))) if len(actual) else float("nan")


# -- the audit run --------------------------------------------------------------------------------------


def audited_clients(eligible: np.ndarray, max_clients: int, seed: int) -> np.ndarray:
    """The clients whose items the audit scores: all eligible ones, or a seeded random subset."""
    candidates = np.flatnonzero(eligible)
    if len(candidates) <= max_clients:
        return candidates
    keys = rng.hash64(seed, STREAM_AUDITED, 0, candidates)
    return np.sort(candidates[np.argsort(keys, kind="stable")[:max_clients]])


def client_item_truth(data: ClientData, clients: np.ndarray, num_items: int) -> np.ndarray:
    """(len(clients), num_items) bool: the items in each client's training data."""
    truth = np.zeros((len(clients), num_items), dtype=bool)
    for row, client in enumerate(clients):
        truth[row, data.items[data.client_slice(int(client))]] = True
    return truth


def plain_steps_reason(recency_repeats: int, local_clip_norm: float | None) -> str | None:
    """None when each rating is one plain SGD step per local epoch (as the rating inversion assumes), else why not."""
    if recency_repeats:
        return ("the rating attack inverts updates where each rating appears once per epoch, but "
                "train.recency_repeats repeats a client's latest ones; set train.recency_repeats=0 to audit ratings")
    if local_clip_norm is not None:
        return ("the rating attack inverts unscaled SGD steps, but train.local_clip_norm rescales them (a different "
                "step, not a privacy guarantee); remove train.local_clip_norm to audit ratings")
    return None


def rating_attack_applies(model: RecModel, data: ClientData, ranking: bool) -> str | None:
    """None when the uploads are biased-MF rating updates of one user per client, else the reason they are not."""
    from fedrec.models.mf import BiasedMF

    if not isinstance(model, BiasedMF) or ranking:
        return "the rating attack inverts biased-MF updates; it needs model.name=mf with explicit ratings"
    owners = np.unique(np.stack([np.repeat(np.arange(data.num_clients), data.sizes), data.users]), axis=1)
    if len(np.unique(owners[0])) != owners.shape[1]:
        return "the rating attack needs one user per client (data.clients=per_user)"
    return None


def run_audit(config: RunConfig, audit: AuditSettings, on_round: Callable[[int, int], None] | None = None
              ) -> dict[str, Any]:
    """Train the configured federated job with the chosen hiding and attack what the server saw.

    Returns metrics: the model's final test metrics (the accuracy cost of hiding), ``bytes_up`` as
    sent, and the ``audit_*`` results.
    """
    from fedrec.runtime.experiment import prepare
    from fedrec.privacy.upload import cohort_upload
    from fedrec.runtime.trainer import fedavg_settings, privacy_settings, secure_aggregation_settings

    if config.train.mode != "federated":
        raise FedrecError("fedrec audit attacks federated uploads; set train.mode=federated")
    if config.model.name in TEXT_MODELS:
        raise FedrecError(f"fedrec audit attacks the uploaded item rows, but {config.model.name} also reveals a client's "
                          "items through its text adapter update, which the audit does not measure (its result would "
                          "understate the leak); audit an ID model (mf, bpr, ncf)")
    if (config.train.local_clip_norm is not None and audit.hiding.mode == "pseudo"
            and audit.hiding.pseudo_values == "virtual"):
        raise FedrecError(VIRTUAL_FAKES_UNCLIPPED)
    if audit.observe_rounds > config.train.rounds:
        raise FedrecError(f"cannot observe {audit.observe_rounds} rounds of a {config.train.rounds}-round run; "
                          f"set train.rounds >= {audit.observe_rounds} or lower --observe")
    torch.use_deterministic_algorithms(True, warn_only=True)
    began = time.perf_counter()
    exp = prepare(config)
    model, data, seed = exp.model, exp.clients, config.train.seed
    eligible = data.sizes > 0
    settings: FedAvgSettings = fedavg_settings(config, privacy_settings(config, int(eligible.sum())))
    secure = replace(settings, hiding=audit.hiding,
                     secure_aggregation=secure_aggregation_settings(config.model_copy(update={
                         "privacy": config.privacy.model_copy(update={"secure_aggregation": True})})))
    layout = sum_layout(shared_shapes(model), settings.row_weighting, settings.privacy)
    clip_norm = (config.privacy.clip_norm if settings.privacy is not None else None)
    privacy_state: dict[str, Tensor] = {}
    num_items = num_catalogue_items(model)
    audited = audited_clients(eligible, audit.max_clients, seed)
    observations = ItemObservations.empty(audited, num_items)
    not_mf_uploads = rating_attack_applies(model, data, exp.evaluator.ranking)  # the direction scorer needs MF uploads
    no_rating_attack = not_mf_uploads or plain_steps_reason(config.train.recency_repeats, config.train.local_clip_norm)
    l2 = float(getattr(getattr(model, "config", None), "l2", 0.0))
    evidence: list[tuple[int, RatingEvidence]] = []
    params = model.init_params(torch.Generator().manual_seed(seed))
    optimizer_state: dict[str, Tensor] = {}
    bytes_up, bytes_rounds, secagg_seconds, rounds = 0, 0, 0.0, config.train.rounds
    for round_index in range(rounds):
        cohort = sample_cohort(data.num_clients, settings.client_fraction, seed, round_index, eligible, settings.sampling)
        result = BACKENDS[settings.backend](model, params, data, cohort, settings.local, seed, round_index,
                                            record_path=audit.hiding.needs_private_path)
        observed = round_index >= rounds - audit.observe_rounds
        sums = RowSums.zeros(model)
        cohort_sum = CohortSum.zeros(layout)  # what the server aggregates (in the clear unless the protocol runs)
        round_clip = float(privacy_state.get("clip_norm", clip_norm)) if clip_norm is not None else None
        weighting = settings.row_weighting
        round_evidence = []
        for positions in client_chunks(result.update, num_items, audit.hiding):
            part = select_clients(result.update, positions)
            fakes = (virtual_example_values(model, params, data, cohort[positions], settings.local, seed, round_index,
                                            result)
                     if audit.hiding.needs_private_path else None)
            hidden, weighting = apply_hiding(part, num_items, audit.hiding, settings.row_weighting, seed, round_index,
                                             cohort[positions], fakes)
            sums.add(hidden, weighting)
            cohort_sum.add(contributions(hidden, layout, weighting, round_clip))
            if not audit.secagg:
                bytes_up += hidden_upload_bytes(model, hidden, audit.hiding.mode)
            if observed and not audit.secagg:
                direction = (mf_direction_scores(hidden, params, settings.local, l2) if not_mf_uploads is None
                             else None)
                observations.add_uploads(hidden, cohort[positions], direction)
                if no_rating_attack is None:
                    round_evidence.append(rating_evidence(hidden, cohort[positions], params, settings.local, l2))
        bytes_rounds += not audit.secagg
        if audit.secagg and observed:  # the real protocol: the server sees only the decoded sum
            received, report = cohort_upload(model, params, data, cohort, result, result.update, secure, seed,
                                             round_index, round_clip)
            assert isinstance(received, CohortSum)
            cohort_sum = received
            if report.secagg is not None:
                bytes_up += report.bytes_up
                bytes_rounds += 1
                secagg_seconds += report.secagg.seconds
        if observed:
            observations.add_prior(sums)
            if audit.secagg:
                observations.add_sums(sum_guess(cohort_sum, num_catalogue_items(model)), cohort)
            if round_evidence:
                evidence.append((round_index, _concat_evidence(round_evidence)))
        deltas, next_clip = aggregate_sum(cohort_sum, settings.row_weighting, settings.privacy, round_clip,
                                          noise_generator(seed, round_index))
        if next_clip is not None:
            privacy_state = {"clip_norm": torch.tensor(next_clip, dtype=torch.float64)}
        params, optimizer_state = settings.server.step(params, deltas, optimizer_state)
        params = write_private_rows(params, result)
        if on_round is not None:
            on_round(round_index + 1, rounds)

    metrics: dict[str, Any] = dict(exp.evaluator({k: v.detach() for k, v in params.items()}))
    metrics.update(item_attack_metrics(observations, client_item_truth(data, audited, num_items)))
    metrics.update(_rating_metrics(evidence, data, params, settings.local, l2, exp.dataset.rating_range,
                                   no_rating_attack, audit.secagg, num_items, observations))
    metrics.update(
        audit_hiding=audit.hiding.mode, audit_pseudo_items=audit.hiding.pseudo_items,
        audit_pseudo_ratio=audit.hiding.pseudo_ratio, audit_pseudo_values=audit.hiding.pseudo_values,
        audit_pseudo_per_round=audit.hiding.per_round, audit_secagg=audit.secagg,
        audit_observed_rounds=audit.observe_rounds, rounds=rounds, bytes_up=bytes_up,
        bytes_up_per_round=bytes_up / max(bytes_rounds, 1), bytes_up_rounds=bytes_rounds,
        secagg_seconds_per_round=secagg_seconds / max(bytes_rounds, 1) if audit.secagg else None,
        audit_dp=settings.privacy is not None,
        seconds=round(time.perf_counter() - began, 3), dataset=exp.dataset.name,
    )
    return metrics


def _concat_evidence(parts: list[RatingEvidence]) -> RatingEvidence:
    offsets = np.cumsum([0] + [len(p.clients) for p in parts])
    return RatingEvidence(
        clients=np.concatenate([p.clients for p in parts]), sizes=np.concatenate([p.sizes for p in parts]),
        error_sums=np.concatenate([p.error_sums for p in parts]),
        row_owner=np.concatenate([p.row_owner + off for p, off in zip(parts, offsets)]),
        row_items=np.concatenate([p.row_items for p in parts]), partial=np.concatenate([p.partial for p in parts]),
        mu=parts[0].mu)


def _rating_metrics(evidence: list[tuple[int, RatingEvidence]], data: ClientData, params: dict[str, Tensor],
                    local: LocalTraining, l2: float, rating_range: tuple[float, float] | None, reason: str | None,
                    secagg: bool, num_items: int, observations: ItemObservations) -> dict[str, Any]:
    if reason is not None:
        return {"audit_rating_rmse": None, "audit_rating_rmse_baseline": None, "audit_rating_note": reason}
    low, high = rating_range if rating_range else (-math.inf, math.inf)
    # The no-information guess mu + b_i on the audited clients' training ratings.
    seen = observations.audited[observations.rounds_seen > 0]
    owner = np.repeat(np.arange(data.num_clients), data.sizes)
    mask = np.isin(owner, seen)
    mu = float(params["global_bias"].reshape(-1)[0])
    guess = np.clip(mu + params["item_bias"].reshape(-1).double().numpy()[data.items[mask]], low, high)
    baseline = rmse(guess, data.targets[mask].astype(np.float64))
    result: dict[str, Any] = {"audit_rating_rmse_baseline": baseline}
    if secagg:
        result.update(audit_rating_rmse=baseline, audit_rating_note="secure aggregation: no per-client upload to "
                      "invert; the attacker's best guess is mu + b_i")
        return result
    pairs = [(a, b) for (ra, a), (rb, b) in zip(evidence, evidence[1:]) if rb == ra + 1]
    if not pairs:
        result.update(audit_rating_rmse=None, audit_rating_note="needs two consecutive observed rounds (--observe 2)")
        return result
    first, second = pairs[-1]
    clients, items, ratings = infer_ratings(first, second, local, l2)
    real, truth = true_ratings(data, clients, items, num_items)
    predicted = np.clip(ratings[real], low, high)
    result.update(audit_rating_rmse=rmse(predicted, truth[real]), audit_rating_pairs=int(real.sum()),
                  audit_rating_clients=int(len(np.unique(clients[real]))))
    return result
