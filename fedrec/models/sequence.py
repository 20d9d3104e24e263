"""A SASRec-style next-item model (Kang & McAuley 2018, "Self-Attentive Sequential Recommendation").

The user is represented by their recent items, not by a user vector: item embeddings plus a learned
positional embedding go through causal self-attention blocks (pre-layer-norm, one-hidden-layer
feed-forward, residuals, dropout); the hidden state at position t scores item i as <h_t, e_i>.

How it fits the model contract (:mod:`fedrec.models.base`):

- **Examples are windows of a user's training sequence.** A window is (the L items before its
  last item, the last item): the example's own item is the window's last item and
  :attr:`ClientData.history <fedrec.federated.cohort.ClientData.history>` its L previous items,
  oldest first, left-padded. The loss is taken at every real position (position t predicts the
  item at t + 1; the last position predicts the example's own item), so one forward pass trains
  up to L next-item predictions, as in SASRec. Windows are cut back from each user's latest
  training item every L items, so every training item but the user's first is a target once.
- **Item slots** are ``[L history items, own item, K negatives]``. The K negatives are sampled by the
  client from items its user never interacted with and are shared by all positions of the window;
  the loss is a sampled softmax of each position's next item against them (full softmax would
  touch, and upload, every item row). The item table ``item_emb`` is ``SHARED_ROWS``: a client
  uploads only the rows of its items and of the negatives it drew. The transformer is ``SHARED_DENSE``.
  There is no user embedding, so a client keeps nothing private but its data.
- **Padding** slots reference the window's own item (see :func:`fedrec.federated.cohort.slot_items`),
  so padding never adds a row to an upload, and the model masks them: a padded input is zeroed
  (its row gets an exactly zero gradient) and a padded position has no loss. The model learns how
  many history slots are real from the example's target value, which for a window is the number of
  real history items (:func:`sequence_client_data`).
- **Scoring** (:meth:`SASRec.score_all`) runs the encoder over each user's latest L items, which the
  model is built with (``histories``: everything before the test interaction), and scores every item
  with the last hidden state. Validation ranks with the history before the validation interaction
  (:class:`SequenceEvaluator`).

Dropout draws from torch's global generator, so with ``dropout > 0`` the two backends (and a resumed
run) draw different masks; with ``dropout = 0`` every backend computes the same function.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from fedrec.data.dataset import Interactions, Split
from fedrec.errors import FedrecError
from fedrec.eval.protocol import Evaluator
from fedrec.federated.cohort import ClientData
from fedrec.federated.negatives import UserItems
from fedrec.federated.personalize import Personalization
from fedrec.models.base import ExampleBatch, ParamKind, ParamSpec, RecModel, ranking_loss

ITEM_INITS = ("random", "text")
_BLOCK_TENSORS = ("ln1_w", "ln1_b", "wq", "bq", "wk", "bk", "wv", "bv", "wo", "bo",
                  "ln2_w", "ln2_b", "ff1_w", "ff1_b", "ff2_w", "ff2_b")


@dataclass(frozen=True)
class SASRecConfig:
    dim: int = 64
    blocks: int = 2
    heads: int = 1
    max_history: int = 50  # L: items the model looks back
    dropout: float = 0.0
    negatives: int = 100  # K: sampled negatives per window, shared by its positions
    init_std: float = 0.05
    l2: float = 0.0  # L2 on the item rows a window uses (real slots only)
    item_init: str = "random"  # "text": item embeddings start from the items' text embeddings

    def __post_init__(self) -> None:
        if self.dim % self.heads:
            raise ValueError(f"dim={self.dim} must be a multiple of heads={self.heads}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout={self.dropout} must be in [0, 1)")
        if self.item_init not in ITEM_INITS:
            raise ValueError(f"item_init={self.item_init!r} must be one of {', '.join(ITEM_INITS)}")
        if self.max_history < 1 or self.blocks < 1 or self.negatives < 1:
            raise ValueError("max_history, blocks and negatives must be >= 1")


def latest_histories(parts: list[Interactions], num_users: int, length: int) -> np.ndarray:
    """Each user's latest ``length`` items of ``parts`` by time, oldest first, left-padded with -1: (U, L)."""
    users, items, order = _by_user_and_time(Interactions.concat(parts))
    histories = np.full((num_users, length), -1, dtype=np.int64)
    if len(users) == 0:
        return histories
    counts = np.bincount(users, minlength=num_users)
    from_end = np.repeat(np.cumsum(counts), counts) - 1 - np.arange(len(users))  # 0 for each user's latest item
    keep = from_end < length
    histories[users[keep], length - 1 - from_end[keep]] = items[keep]
    return histories


def _by_user_and_time(inter: Interactions) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Users and items sorted by (user, time, row); ties in time keep row order, as the splits do."""
    order = np.lexsort((np.arange(len(inter)), inter.timestamps, inter.users))
    return inter.users[order].astype(np.int64), inter.items[order].astype(np.int64), order


def sequence_windows(train: Interactions, length: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Windows of each user's training sequence: (users (n,), last items (n,), histories (n, L)).

    Windows end at each user's latest item and every ``length`` items before it; a window's history
    is the ``length`` items before its last item (left-padded with -1), so every item except the
    user's first is predicted once. Users with a single training item have no window.
    """
    users, items, _ = _by_user_and_time(train)
    n = len(users)
    starts = np.flatnonzero(np.r_[True, users[1:] != users[:-1]]) if n else np.zeros(0, np.int64)
    sizes = np.diff(np.r_[starts, n])
    position = np.arange(n) - np.repeat(starts, sizes)  # index within the user's sequence
    from_end = np.repeat(sizes, sizes) - 1 - position
    ends = np.flatnonzero((from_end % length == 0) & (position >= 1))  # window last items
    offsets = np.arange(-length, 0)
    index = ends[:, None] + offsets[None, :]  # (n_windows, L) rows of the previous items
    valid = (position[ends][:, None] + offsets[None, :]) >= 0
    history = np.where(valid, items[np.clip(index, 0, None)], -1)
    return users[ends], items[ends], history


def sequence_client_data(train: Interactions, client_of_user: np.ndarray, num_clients: int, num_items: int,
                         length: int) -> ClientData:
    """Training windows grouped by client, for a sequence model: the target of an example is the
    number of real items in its history (the model masks the rest)."""
    users, items, history = sequence_windows(train, length)
    clients = client_of_user[users]
    order = np.argsort(clients, kind="stable")
    offsets = np.zeros(num_clients + 1, dtype=np.int64)
    np.cumsum(np.bincount(clients, minlength=num_clients), out=offsets[1:])
    return ClientData(
        offsets=offsets,
        users=users[order],
        items=items[order],
        targets=(history[order] >= 0).sum(1).astype(np.float32),
        user_items=UserItems.from_interactions(train, len(client_of_user), num_items),
        history=history[order],
    )


def _layer_norm(x: Tensor, weight: Tensor, bias: Tensor) -> Tensor:
    """Layer norm over the last dim with per-group affine parameters: x (G, ..., d), weight (G, d)."""
    shape = (weight.shape[0],) + (1,) * (x.dim() - 2) + (weight.shape[-1],)
    return F.layer_norm(x, x.shape[-1:]) * weight.reshape(shape) + bias.reshape(shape)


def _linear(x: Tensor, weight: Tensor, bias: Tensor) -> Tensor:
    """x (G, M, d_in) @ weight (G, d_in, d_out) + bias (G, d_out)."""
    return torch.baddbmm(bias.unsqueeze(1), x, weight)


class SASRec(RecModel):
    """Causal self-attention over a user's recent items; score = <hidden state, item embedding>."""

    def __init__(self, config: SASRecConfig, num_users: int, num_items: int, histories: np.ndarray | None = None,
                 item_text: Tensor | None = None) -> None:
        self.config = config
        self.num_users = num_users
        self.num_items = num_items
        self.length = config.max_history
        self.negatives = config.negatives
        if histories is None:
            histories = np.full((num_users, self.length), -1, dtype=np.int64)
        if histories.shape != (num_users, self.length):
            raise ValueError(f"histories has shape {histories.shape}, expected ({num_users}, {self.length})")
        self.histories = torch.as_tensor(histories, dtype=torch.int64)
        if config.item_init == "text" and item_text is None:
            raise ValueError("item_init='text' needs the items' text embeddings")
        self.item_text = item_text.detach().float() if item_text is not None else None

    @property
    def item_slots(self) -> int:
        return self.length + 1 + self.negatives

    def with_histories(self, histories: np.ndarray) -> SASRec:
        """The same model scoring from other histories (e.g. those before the validation interaction)."""
        return SASRec(self.config, self.num_users, self.num_items, histories, self.item_text)

    # -- parameters ---------------------------------------------------------------------------
    def param_specs(self) -> list[ParamSpec]:
        d = self.config.dim
        shapes = {"ln1_w": (d,), "ln1_b": (d,), "wq": (d, d), "bq": (d,), "wk": (d, d), "bk": (d,),
                  "wv": (d, d), "bv": (d,), "wo": (d, d), "bo": (d,), "ln2_w": (d,), "ln2_b": (d,),
                  "ff1_w": (d, d), "ff1_b": (d,), "ff2_w": (d, d), "ff2_b": (d,)}
        specs = [ParamSpec("item_emb", ParamKind.SHARED_ROWS, (self.num_items, d)),
                 ParamSpec("pos_emb", ParamKind.SHARED_DENSE, (self.length, d))]
        for block in range(self.config.blocks):
            specs += [ParamSpec(f"block{block}_{name}", ParamKind.SHARED_DENSE, shapes[name]) for name in _BLOCK_TENSORS]
        specs += [ParamSpec("final_ln_w", ParamKind.SHARED_DENSE, (d,)), ParamSpec("final_ln_b", ParamKind.SHARED_DENSE, (d,))]
        return specs

    def init_params(self, generator: torch.Generator) -> dict[str, Tensor]:
        d, std = self.config.dim, self.config.init_std
        params: dict[str, Tensor] = {}
        for spec in self.param_specs():
            name = spec.name.split("_", 1)[1] if spec.name.startswith("block") else spec.name
            if name.endswith("_w") and name.startswith(("ln", "final_ln")):
                params[spec.name] = torch.ones(spec.shape)
            elif name in ("wq", "wk", "wv", "wo", "ff1_w", "ff2_w"):
                params[spec.name] = torch.randn(spec.shape, generator=generator) / math.sqrt(d)
            elif name in ("item_emb", "pos_emb"):
                params[spec.name] = torch.randn(spec.shape, generator=generator) * std
            else:
                params[spec.name] = torch.zeros(spec.shape)
        if self.config.item_init == "text":
            params["item_emb"] = self.text_item_embeddings()
        return params

    def text_item_embeddings(self) -> Tensor:
        """Initial item embeddings from the text embeddings: their first ``dim`` (PCA) coordinates,
        zero-padded if fewer, scaled to the random init's mean row norm."""
        assert self.item_text is not None
        d = self.config.dim
        text = self.item_text[:, :d]
        if text.shape[1] < d:
            text = F.pad(text, (0, d - text.shape[1]))
        text = text - text.mean(0)
        scale = self.config.init_std * math.sqrt(d) / text.norm(dim=1).mean().clamp_min(1e-12)
        return (text * scale).contiguous()

    # -- the encoder --------------------------------------------------------------------------
    def encode(self, history: Tensor, real: Tensor, dense: dict[str, Tensor], train: bool) -> Tensor:
        """Hidden states (G, N, L, d) of history embeddings (G, N, L, d); ``real`` (G, N, L) marks real slots.

        Dense tensors are (G, *shape). Position t attends to real positions <= t (and to itself).
        """
        G, N, L, d = history.shape
        h, p = self.config.heads, self.config.dropout if train else 0.0
        mask = real.unsqueeze(-1).to(history.dtype)
        x = F.dropout((history + dense["pos_emb"][:, None, -L:, :]) * mask, p)
        x = x.reshape(G, N * L, d)
        mask = mask.reshape(G, N * L, 1)
        causal = torch.ones(L, L, dtype=torch.bool).tril()
        allowed = (causal & real.unsqueeze(-2)) | torch.eye(L, dtype=torch.bool)  # (G, N, L, L)
        bias = torch.zeros(allowed.shape, dtype=history.dtype).masked_fill(~allowed, float("-inf")).unsqueeze(2)
        for block in range(self.config.blocks):
            w = {name: dense[f"block{block}_{name}"] for name in _BLOCK_TENSORS}
            y = _layer_norm(x, w["ln1_w"], w["ln1_b"])
            q, k, v = (_linear(y, w[f"w{c}"], w[f"b{c}"]).reshape(G, N, L, h, d // h).transpose(2, 3) for c in "qkv")
            logits = q @ k.transpose(-1, -2) / math.sqrt(d // h) + bias  # (G, N, h, L, L)
            attention = F.dropout(torch.softmax(logits, -1), p)
            out = (attention @ v).transpose(2, 3).reshape(G, N * L, d)
            x = x + F.dropout(_linear(out, w["wo"], w["bo"]), p)
            y = _layer_norm(x, w["ln2_w"], w["ln2_b"])
            x = x + F.dropout(_linear(F.gelu(_linear(y, w["ff1_w"], w["ff1_b"])), w["ff2_w"], w["ff2_b"]), p)
            x = x * mask
        x = _layer_norm(x, dense["final_ln_w"], dense["final_ln_b"])
        return x.reshape(G, N, L, d)

    def _dense(self, rows: dict[str, Tensor]) -> dict[str, Tensor]:
        return {name: value for name, value in rows.items() if name != "item_emb"}

    def _real(self, history_length: Tensor) -> Tensor:
        """(G, N, L) true at the real (right-aligned) history slots of examples with that many real items."""
        positions = torch.arange(self.length, device=history_length.device)
        return positions >= (self.length - history_length.round().long()).unsqueeze(-1)

    # -- the contract -------------------------------------------------------------------------
    def example_loss(self, rows: dict[str, Tensor], batch: ExampleBatch) -> Tensor:
        """Sampled softmax of each real position's next item against the window's negatives, summed
        over positions and divided by L (every training target weighs the same): (G, N)."""
        L = self.length
        emb = rows["item_emb"]  # (G, N, S, d)
        if emb.shape[2] != self.item_slots:
            raise ValueError(f"sasrec examples need {self.item_slots} item slots (history, item, negatives), got "
                             f"{emb.shape[2]}: build the training data with sequence_client_data")
        real = self._real(batch.targets)  # (G, N, L)
        hidden = self.encode(emb[:, :, :L], real, self._dense(rows), train=True)  # (G, N, L, d)
        positive = (hidden * emb[:, :, 1:L + 1]).sum(-1, keepdim=True)  # (G, N, L, 1)
        negative = hidden @ emb[:, :, L + 1:].transpose(-1, -2)  # (G, N, L, K)
        logits = torch.cat([positive, negative], -1)
        per_position = ranking_loss(logits, "softmax")  # sampled softmax at each position
        loss = torch.where(real, per_position, torch.zeros_like(per_position)).sum(-1) / L
        if self.config.l2:
            used = torch.cat([real, real.new_ones(*real.shape[:-1], 1 + self.negatives)], -1)  # (G, N, S)
            loss = loss + self.config.l2 * (emb.pow(2).sum(-1) * used).sum(-1)
        return loss

    def predict(self, rows: dict[str, Tensor]) -> Tensor:
        """Every slot's score under the hidden state at the last history position: (G, N, S).
        (Without the real-history count, every history slot counts as real; :meth:`score_all`
        masks padding itself.)"""
        emb = rows["item_emb"]
        G, N = emb.shape[:2]
        real = torch.ones(G, N, self.length, dtype=torch.bool)
        return self.scores_from(emb[:, :, :self.length], real, self._dense(rows), emb)

    def scores_from(self, history: Tensor, real: Tensor, dense: dict[str, Tensor], candidates: Tensor) -> Tensor:
        """Scores of candidate embeddings (G, N, C, d) given history embeddings and real slots: (G, N, C)."""
        last = self.encode(history, real, dense, train=False)[:, :, -1]  # (G, N, d)
        return (candidates @ last.unsqueeze(-1)).squeeze(-1)

    def score_all(self, params: dict[str, Tensor], users: Tensor, chunk: int = 512) -> Tensor:
        """Scores of every item for each user from the user's latest history: (B, num_items)."""
        dense = {spec.name: params[spec.name].unsqueeze(0) for spec in self.specs_by_kind(ParamKind.SHARED_DENSE)}
        table = params["item_emb"]
        parts = []
        for begin in range(0, len(users), chunk):
            history = self.histories[users[begin:begin + chunk]]  # (B, L)
            real = (history >= 0).unsqueeze(0)
            emb = table[history.clamp_min(0)].unsqueeze(0)  # (1, B, L, d)
            last = self.encode(emb, real, dense, train=False)[0, :, -1]  # (B, d)
            parts.append(last @ table.T)
        return torch.cat(parts) if parts else torch.zeros(0, self.num_items)


@dataclass
class SequenceEvaluator(Evaluator):
    """The ranking protocol for a sequence model: the test ranking scores from the history before the
    test interaction (the model's own), the validation ranking from the history before the validation
    interaction (``validation_histories``). Sampled ranking reads the same full scores."""

    validation_histories: np.ndarray | None = None

    @torch.no_grad()
    def __call__(self, params: dict[str, Tensor], personal: Personalization | None = None,
                 prefix: str = "", validation: bool = True) -> dict[str, Any]:
        if personal is not None:
            raise FedrecError("eval.finetune_epochs is not supported for sequence models (sasrec); set it to 0")
        model = self.model
        assert isinstance(model, SASRec)
        metrics: dict[str, Any] = {}
        if validation and "val" in self._parts and self.validation_histories is not None:
            metrics.update(self._ranking_of(model.with_histories(self.validation_histories), params, "val", f"{prefix}val_"))
        metrics.update(self._ranking_of(model, params, "test", prefix))
        return metrics

    def _ranking_of(self, model: SASRec, params: dict[str, Tensor], part: str, prefix: str) -> dict[str, float]:
        cache: dict[tuple[int, ...], Tensor] = {}

        def score_users(users: Tensor) -> Tensor:
            key = tuple(users.tolist())
            if key not in cache:
                cache.clear()
                cache[key] = model.score_all(params, users)
            return cache[key]

        def score_pairs(users: Tensor, items: Tensor) -> Tensor:
            return score_users(users).gather(1, items)

        return self._ranking(score_users, score_pairs, self._parts[part], prefix)


def sequence_evaluation_histories(split: Split, num_users: int, length: int) -> tuple[np.ndarray, np.ndarray | None]:
    """Histories for ranking: before the test interaction (train + validation) and before the validation one (train)."""
    has_validation = split.validation is not None and len(split.validation) > 0
    test = latest_histories([split.train] + ([split.validation] if has_validation else []), num_users, length)
    val = latest_histories([split.train], num_users, length) if has_validation else None
    return test, val


def prepare_sequence(model: SASRec, split: Split, client_of_user: np.ndarray,
                     num_clients: int) -> tuple[ClientData, SASRec, np.ndarray | None, str]:
    """What a run of a sequence model needs from its split: the training windows by client, the model
    scoring from the histories before each test interaction, the histories before each validation
    interaction, and a one-line note for the user."""
    clients = sequence_client_data(split.train, client_of_user, num_clients, model.num_items, model.length)
    test_histories, validation_histories = sequence_evaluation_histories(split, model.num_users, model.length)
    note = (f"sasrec: {len(clients.users)} training windows of up to {model.length} items from "
            f"{len(split.train)} training interactions; {model.negatives} sampled negatives per window")
    return clients, model.with_histories(test_histories), validation_histories, note
