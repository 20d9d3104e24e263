"""Federated parameter-efficient fine-tuning (LoRA, via ``peft``) of the pretrained text encoder.

The recommender is the text tower of :mod:`fedrec.models.text` (``tower_bpr``) with the encoder
inside it trained too: item vector q_i = W e_i + b with e_i = normalise(mean-pool(encoder(text_i)))
and LoRA adapters (Hu et al., 2021, "LoRA: Low-Rank Adaptation of Large Language Models") in the
encoder's attention projections; the encoder's own weights never change. User vectors are private;
clients train with the BPR loss on their own items against sampled negatives.

What travels: the adapters and the head (W, b), never the encoder and never a user vector. Each
sampled client starts from the global adapters + head, runs a few local steps (Adam on the
adapters, SGD on the head and its user vector), and uploads its new adapters + head; the server
takes their FedAvg (weighted by client size) and applies it with fedrec's server optimiser.
Upload bytes are measured from the serialised (safetensors) upload, next to the encoder's
parameter bytes.

CPU cost: with ``top_layers = k`` LoRA goes into the top k transformer layers only, and the
hidden states of every item's text after the frozen layers below them are computed once per run
(:class:`LoraEncoder`), so a training step runs k layers instead of all of them. ``top_layers = 0``
puts LoRA into every layer (then each step runs the whole encoder).

The same local training with the encoder frozen (:class:`FrozenTable`: the cached embeddings, no
adapters) is the frozen-encoder baseline a LoRA run is compared with.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from fedrec.errors import FedrecError
from fedrec.federated import rng
from fedrec.federated.aggregation import aggregate_dense
from fedrec.federated.cohort import ClientData, sample_cohort
from fedrec.federated.negatives import sample_negatives
from fedrec.federated.server_opt import ServerOptimizer
from fedrec.generic.federated import intra_op_threads
from fedrec.models.base import ranking_loss
from fedrec.text.encoder import TextEncoder, embed_batch, mean_pool

HEAD_NAMES = ("adapter_w", "adapter_b")  # the head's names in fedrec.models.text.TextRec (tower_bpr)
STREAM_LORA_DROPOUT = 101  # rng stream of the torch seed a client's LoRA dropout uses


@dataclass(frozen=True)
class LoraSettings:
    """Where the adapters go and how big they are."""

    r: int = 8
    alpha: float = 16.0
    dropout: float = 0.0
    target_modules: tuple[str, ...] = ("query", "value")
    top_layers: int = 2  # LoRA in the top k transformer layers (the frozen ones below are cached); 0: all layers


@dataclass(frozen=True)
class LocalSteps:
    """A client's local training in one round."""

    steps: int = 4  # minibatch steps per client per round
    batch_size: int = 32  # of the client's own interactions, each with ``negatives`` sampled negatives
    negatives: int = 1
    adapter_lr: float = 1e-3  # Adam (fresh each round) on the LoRA adapters
    head_lr: float = 0.05  # SGD on the shared head W, b
    private_lr: float = 0.05  # SGD on the client's user vector
    l2: float = 1e-4  # on the user vectors, as in tower_bpr
    refit_steps: int = 0  # first fit the client's user vector to the global model (Adam steps, encoder not trained)
    refit_lr: float = 0.1


# -- the encoder with adapters -------------------------------------------------------------------


class _PassThrough(nn.Module):
    """Stands in for the embedding layer when the input is already a hidden state."""

    def forward(self, inputs_embeds: Tensor | None = None, **_: Any) -> Tensor:  # noqa: D102
        assert inputs_embeds is not None
        return inputs_embeds


def _layer_list(backbone: nn.Module) -> nn.ModuleList | None:
    """The transformer layers of a BERT-style model (``encoder.layer``), or None."""
    encoder = getattr(backbone, "encoder", None)
    layers = getattr(encoder, "layer", None)
    return layers if isinstance(layers, nn.ModuleList) and hasattr(backbone, "embeddings") else None


@contextmanager
def _layers_only(backbone: nn.Module, begin: int, end: int, from_hidden: bool) -> Iterator[None]:
    """Run ``backbone`` through layers begin..end-1 only; with ``from_hidden`` its input is a hidden state."""
    layers = _layer_list(backbone)
    assert layers is not None
    embeddings = backbone.embeddings
    backbone.encoder.layer = nn.ModuleList(list(layers)[begin:end])
    if from_hidden:
        backbone.embeddings = _PassThrough()
    try:
        yield
    finally:
        backbone.encoder.layer = layers
        backbone.embeddings = embeddings


def tensor_bytes(tensors: dict[str, Tensor] | Sequence[Tensor]) -> int:
    """Bytes of the tensors' values."""
    values = tensors.values() if isinstance(tensors, dict) else tensors
    return sum(value.numel() * value.element_size() for value in values)


def serialize(tensors: dict[str, Tensor]) -> bytes:
    """The safetensors encoding of an upload (what a client would send)."""
    from safetensors.torch import save

    return save({name: value.detach().contiguous() for name, value in tensors.items()})


class LoraEncoder:
    """A sentence encoder with LoRA adapters (peft) over a fixed list of texts, by index.

    Built from a :class:`~fedrec.text.encoder.TextEncoder` (its transformers model is wrapped in
    place; use a fresh encoder). The adapters' values live in the module's parameters:
    :meth:`adapters` reads them, :meth:`load_adapters` writes them.
    """

    def __init__(self, encoder: TextEncoder, texts: list[str], settings: LoraSettings = LoraSettings(),
                 batch_size: int = 64) -> None:
        from peft import LoraConfig, get_peft_model

        if settings.r < 1:
            raise FedrecError(f"lora.r is {settings.r}; the adapter rank must be at least 1")
        backbone = encoder.backbone
        self.encoder_bytes = tensor_bytes([p for p in backbone.parameters()])
        self.encoder_params = sum(p.numel() for p in backbone.parameters())
        layers = _layer_list(backbone)
        total = int(getattr(backbone.config, "num_hidden_layers", 0) or (len(layers) if layers is not None else 0))
        top = settings.top_layers
        if top < 0:
            raise FedrecError(f"lora.top_layers is {top}; use 0 (every layer) or a positive count")
        self.first_layer = 0 if top == 0 or top >= total else total - top
        if self.first_layer > 0 and layers is None:
            raise FedrecError(f"lora.top_layers={top} needs a BERT-style encoder (embeddings + encoder.layer), which "
                              f"{encoder.name!r} is not; set lora.top_layers=0 (LoRA in every layer)")
        config = LoraConfig(r=settings.r, lora_alpha=settings.alpha, lora_dropout=settings.dropout,
                            target_modules=list(settings.target_modules), bias="none",
                            layers_to_transform=list(range(self.first_layer, total)) if self.first_layer else None)
        try:
            self.model = get_peft_model(backbone, config)
        except ValueError as error:
            linear = sorted({name.rsplit(".", 1)[-1] for name, module in backbone.named_modules()
                             if isinstance(module, nn.Linear)})
            raise FedrecError(f"lora.target_modules={list(settings.target_modules)} not found in {encoder.name!r} "
                              f"({str(error).splitlines()[0][:100]}); its linear layers are: {', '.join(linear)}") from None
        self.backbone = backbone  # the same module, now holding LoRA layers
        self.names = [name for name, p in self.model.named_parameters() if p.requires_grad]
        self._params = dict(self.model.named_parameters())
        self.model.eval()  # dropout is switched on per client step (see train_mode)
        tokenizer = encoder.tokenizer
        self.max_length = encoder.max_length
        tokens = tokenizer(texts, padding=True, truncation=True, max_length=self.max_length, return_tensors="pt")
        self.input_ids = tokens["input_ids"]
        self.attention_mask = tokens["attention_mask"]
        self.token_type_ids = tokens.get("token_type_ids")
        self.lengths = self.attention_mask.sum(1)
        self.num_texts = len(texts)
        self.hidden_size = int(backbone.config.hidden_size)
        self.prefix: Tensor | None = None
        if self.first_layer > 0:
            self.prefix = self._frozen_prefix(batch_size)

    # -- adapters --------------------------------------------------------------------------------
    def adapters(self) -> dict[str, Tensor]:
        """The current adapter values (copies), by name."""
        return {name: self._params[name].detach().clone() for name in self.names}

    def load_adapters(self, values: dict[str, Tensor]) -> None:
        with torch.no_grad():
            for name in self.names:
                self._params[name].copy_(values[name])

    def adapter_parameters(self) -> list[nn.Parameter]:
        return [self._params[name] for name in self.names]

    def init_adapters(self, generator: torch.Generator) -> dict[str, Tensor]:
        """Fresh adapters, deterministic for a generator state: A as peft draws it (Kaiming uniform), B = 0."""
        values = {}
        for name in self.names:
            shape = self._params[name].shape
            if ".lora_A." in name:
                bound = 1.0 / math.sqrt(shape[1])  # kaiming_uniform_(a=sqrt(5)) on (r, fan_in)
                values[name] = (torch.rand(shape, generator=generator) * 2 - 1) * bound
            else:
                values[name] = torch.zeros(shape)
        return values

    def base_state(self) -> dict[str, Tensor]:
        """The frozen encoder's weights (everything but the adapters), by name (no copies)."""
        return {name: p for name, p in self.model.named_parameters() if name not in set(self.names)}

    # -- forward ---------------------------------------------------------------------------------
    def _rows(self, items: Tensor) -> tuple[Tensor, Tensor, Tensor | None]:
        width = int(self.lengths[items].max()) if len(items) else 1
        types = self.token_type_ids[items, :width] if self.token_type_ids is not None else None
        return self.input_ids[items, :width], self.attention_mask[items, :width], types

    def _frozen_prefix(self, batch_size: int) -> Tensor:
        """Every text's hidden states after the frozen layers 0..first_layer-1: (N, T, H)."""
        prefix = torch.zeros(self.num_texts, self.input_ids.shape[1], self.hidden_size)
        order = torch.argsort(self.lengths, stable=True)
        with torch.no_grad(), _layers_only(self.backbone, 0, self.first_layer, from_hidden=False):
            for begin in range(0, self.num_texts, batch_size):
                chunk = order[begin:begin + batch_size]
                ids, mask, types = self._rows(chunk)
                extra = {"token_type_ids": types} if types is not None else {}
                hidden = self.backbone(input_ids=ids, attention_mask=mask, **extra).last_hidden_state
                prefix[chunk, :hidden.shape[1]] = hidden
        return prefix

    def embed(self, items: Tensor) -> Tensor:
        """Unit-norm embeddings of texts ``items`` (n,) through the adapters: (n, H), differentiable."""
        ids, mask, types = self._rows(items)
        if self.prefix is None:
            extra = {"token_type_ids": types} if types is not None else {}
            output = self.backbone(input_ids=ids, attention_mask=mask, **extra)
            return F.normalize(mean_pool(output.last_hidden_state, mask), dim=-1)
        hidden = self.prefix[items, :ids.shape[1]]
        total = len(_layer_list(self.backbone))  # type: ignore[arg-type]
        with _layers_only(self.backbone, self.first_layer, total, from_hidden=True):
            output = self.backbone(inputs_embeds=hidden, attention_mask=mask)
        return F.normalize(mean_pool(output.last_hidden_state, mask), dim=-1)

    @contextmanager
    def train_mode(self) -> Iterator[None]:
        """LoRA dropout on (if configured) inside the block."""
        self.model.train()
        try:
            yield
        finally:
            self.model.eval()

    @torch.no_grad()
    def embed_all(self, batch_size: int = 128) -> Tensor:
        """Every text's embedding with the current adapters: (N, H)."""
        out = torch.zeros(self.num_texts, self.hidden_size)
        order = torch.argsort(self.lengths, stable=True)
        for begin in range(0, self.num_texts, batch_size):
            chunk = order[begin:begin + batch_size]
            out[chunk] = self.embed(chunk)
        return out


class FrozenTable:
    """The frozen-encoder baseline: fixed embeddings by index, no adapters."""

    names: list[str] = []

    def __init__(self, embeddings: Tensor) -> None:
        self.embeddings = embeddings.detach().float()

    def embed(self, items: Tensor) -> Tensor:
        return self.embeddings[items]

    def embed_all(self, batch_size: int = 128) -> Tensor:  # noqa: ARG002 - same signature as LoraEncoder
        return self.embeddings

    def adapters(self) -> dict[str, Tensor]:
        return {}

    def load_adapters(self, values: dict[str, Tensor]) -> None:  # noqa: ARG002
        return None

    def adapter_parameters(self) -> list[nn.Parameter]:
        return []

    @contextmanager
    def train_mode(self) -> Iterator[None]:
        yield


class ItemEmbedder(Protocol):
    """What local training needs from the item side: embeddings by index and the adapters to train."""

    names: list[str]

    def embed(self, items: Tensor) -> Tensor: ...
    def embed_all(self, batch_size: int = 128) -> Tensor: ...
    def adapters(self) -> dict[str, Tensor]: ...
    def load_adapters(self, values: dict[str, Tensor]) -> None: ...
    def adapter_parameters(self) -> list[nn.Parameter]: ...
    def train_mode(self) -> Any: ...


# -- the loss ------------------------------------------------------------------------------------


def tower_bpr_loss(user_vecs: Tensor, positive: Tensor, negative: Tensor, head_w: Tensor, head_b: Tensor,
                   l2: float) -> Tensor:
    """Per-example BPR loss of the text tower: user vectors (B, d), embeddings (B, H) and (B, S, H) -> (B,).

    score(u, i) = <p_u, W^T e_i + b>; loss = mean_s -log sigmoid(score(pos) - score(neg_s)) + l2 |p_u|^2,
    the same function as ``tower_bpr`` (fedrec.models.text.TextRec) on the same embeddings.
    """
    q_pos = positive @ head_w + head_b
    q_neg = negative @ head_w + head_b
    s_pos = (user_vecs * q_pos).sum(-1)
    s_neg = (user_vecs.unsqueeze(1) * q_neg).sum(-1)
    return ranking_loss(torch.cat([s_pos.unsqueeze(1), s_neg], 1), "bpr") + l2 * user_vecs.pow(2).sum(-1)


# -- one client, one round -----------------------------------------------------------------------


@dataclass(frozen=True)
class ClientUpdate:
    """What a client ends a round with: its upload (adapters + head) and its private rows (kept)."""

    shared: dict[str, Tensor]
    users: Tensor  # the client's users
    user_vecs: Tensor  # their trained vectors (never uploaded)
    size: int  # training interactions (the FedAvg weight)
    loss: float  # mean training loss over its steps
    upload_bytes: int  # len of the serialised upload


def client_batches(size: int, steps: int, batch_size: int, seed: int, round_index: int, client: int) -> list[np.ndarray]:
    """Positions (into the client's examples) of each local step: a shuffled order, taken cyclically."""
    order = np.argsort(rng.hash64(seed, rng.STREAM_SHUFFLE, round_index, client, 0, np.arange(size)), kind="stable")
    width = min(batch_size, size)
    return [order[(step * width + np.arange(width)) % size] for step in range(steps)]


def train_client(embedder: ItemEmbedder, shared: dict[str, Tensor], user_vec: Tensor, data: ClientData, client: int,
                 local: LocalSteps, seed: int, round_index: int) -> ClientUpdate:
    """One client's local training from the global ``shared`` state (adapters + head)."""
    part = data.client_slice(client)
    size = part.stop - part.start
    users_of_examples = data.users[part]
    users, local_user = np.unique(users_of_examples, return_inverse=True)
    vecs = user_vec[torch.from_numpy(users)].clone()
    head = {name: shared[name].clone().requires_grad_(True) for name in HEAD_NAMES}
    embedder.load_adapters(shared)
    adapter_params = embedder.adapter_parameters()
    optimizer = torch.optim.Adam(adapter_params, lr=local.adapter_lr) if adapter_params else None
    assert data.user_items is not None
    batches = []  # (positions, examples, negatives) of each local step
    for step, positions in enumerate(client_batches(size, local.steps, local.batch_size, seed, round_index, client)):
        examples = part.start + positions
        count = len(examples)
        global_positions = step * count + np.arange(count)
        negatives = sample_negatives(data.user_items, data.users[examples], seed, round_index, np.full(count, client),
                                     global_positions // max(size, 1), global_positions, local.negatives)
        batches.append((positions, examples, negatives))
    if local.refit_steps:
        with torch.no_grad():
            vecs = _refit_on_batches(embedder, head, vecs, local_user, data, batches, local)
    vecs.requires_grad_(True)
    losses = []
    dropout_seed = int(rng.hash64(seed, STREAM_LORA_DROPOUT, round_index, client) >> np.uint64(1))
    with torch.random.fork_rng(devices=[]), embedder.train_mode():
        torch.manual_seed(dropout_seed)
        for positions, examples, negatives in batches:
            count = len(examples)
            wanted = np.concatenate([data.items[examples], negatives.reshape(-1)])
            unique, inverse = np.unique(wanted, return_inverse=True)
            embedded = embedder.embed(torch.from_numpy(unique))[torch.from_numpy(inverse)]
            positive, negative = embedded[:count], embedded[count:].reshape(count, local.negatives, -1)
            rows = vecs[torch.from_numpy(local_user[positions])]
            loss = tower_bpr_loss(rows, positive, negative, head["adapter_w"], head["adapter_b"], local.l2).mean()
            if optimizer is not None:
                optimizer.zero_grad(set_to_none=True)
            loss.backward()
            with torch.no_grad():
                for name, value in head.items():
                    value -= local.head_lr * value.grad
                    value.grad = None
                vecs -= local.private_lr * vecs.grad
                vecs.grad = None
            if optimizer is not None:
                optimizer.step()
            losses.append(float(loss.detach()))
    upload = {**embedder.adapters(), **{name: value.detach() for name, value in head.items()}}
    return ClientUpdate(upload, torch.from_numpy(users), vecs.detach(), size, float(np.mean(losses)) if losses else 0.0,
                        len(serialize(upload)))


def _refit_on_batches(embedder: ItemEmbedder, head: dict[str, Tensor], vecs: Tensor, local_user: np.ndarray,
                      data: ClientData, batches: list[tuple[np.ndarray, np.ndarray, np.ndarray]],
                      local: LocalSteps) -> Tensor:
    """A client's user vectors fitted to the global item tower on the pairs it is about to train on
    (``local.refit_steps`` Adam steps), so its first shared gradients do not come from a random vector."""
    positions = np.concatenate([b[0] for b in batches])
    items = np.concatenate([np.concatenate([data.items[b[1]][:, None], b[2]], axis=1) for b in batches])
    unique, inverse = np.unique(items, return_inverse=True)
    item_vectors = embedder.embed(torch.from_numpy(unique)) @ head["adapter_w"] + head["adapter_b"]
    users = torch.from_numpy(local_user[positions])
    counts = torch.bincount(users, minlength=len(vecs)).float()
    weights = 1.0 / counts.clamp(min=1)[users]
    fitted = vecs.clone()
    optimizer = torch.optim.Adam([fitted], lr=local.refit_lr)
    index = torch.from_numpy(inverse.reshape(items.shape))
    for _ in range(local.refit_steps):
        fitted.grad = user_vector_gradient(fitted, users, index, item_vectors, weights, local.l2, (counts > 0).float())
        optimizer.step()
    return fitted


def user_vector_gradient(user_vec: Tensor, users: Tensor, items: Tensor, item_vectors: Tensor, weights: Tensor,
                         l2: float, has_data: Tensor) -> Tensor:
    """Gradient w.r.t. the user vectors (U, d) of sum_n w_n bpr_n + l2 sum_{u with data} |p_u|^2.

    Examples n have a user ``users`` (n,) and items (n, 1 + S) (positive first); bpr_n is the mean
    over the S negatives of -log sigmoid(<p, q_pos> - <p, q_neg>). Written out (no autograd) so that
    all users' rows are summed with one index_add.
    """
    q = item_vectors[items]  # (n, 1 + S, d)
    p = user_vec[users]  # (n, d)
    scores = (p.unsqueeze(1) * q).sum(-1)
    slope = -torch.sigmoid(scores[:, 1:] - scores[:, :1]) / (items.shape[1] - 1)  # d bpr / d margin_s, (n, S)
    slope = slope * weights.unsqueeze(1)
    per_example = (slope.unsqueeze(-1) * (q[:, :1] - q[:, 1:])).sum(1)  # (n, d)
    grad = torch.zeros_like(user_vec).index_add_(0, users, per_example)
    return grad + 2 * l2 * user_vec * has_data.unsqueeze(1)


def refit_user_vectors(item_vectors: Tensor, user_vec: Tensor, data: ClientData, steps: int, lr: float, l2: float,
                       negatives: int, seed: int) -> Tensor:
    """Every client's private user vectors fitted to fixed item vectors (I, d), as a client does with a
    freshly downloaded model before it ranks: ``steps`` Adam steps on its own BPR loss (mean over its
    interactions, fresh negatives each step) + l2 |p_u|^2, from its current vector. Adam works
    coordinate by coordinate, so running it on all users at once is exactly every client running it
    on its own row; nothing leaves a client.
    """
    if steps == 0 or len(data.users) == 0:
        return user_vec
    assert data.user_items is not None
    users_np = data.users
    counts = torch.from_numpy(np.bincount(users_np, minlength=user_vec.shape[0]).astype(np.float32))
    has_data = (counts > 0).float()  # a user with no training interactions keeps its vector
    users = torch.from_numpy(users_np)
    weights = 1.0 / counts.clamp(min=1)[users]
    vecs = user_vec.clone()
    vecs.grad = None
    optimizer = torch.optim.Adam([vecs], lr=lr)
    positions = np.arange(len(users_np))
    clients = np.zeros(len(users_np), dtype=np.int64)
    for step in range(steps):
        sampled = sample_negatives(data.user_items, users_np, seed, 0, clients,
                                   np.full(len(users_np), 1_000_000 + step), positions, negatives)
        items = torch.from_numpy(np.concatenate([data.items[:, None], sampled], axis=1))
        vecs.grad = user_vector_gradient(vecs, users, items, item_vectors, weights, l2, has_data)
        optimizer.step()
    return vecs.detach()


# -- the server ----------------------------------------------------------------------------------


def fedavg_deltas(start: dict[str, Tensor], uploads: list[dict[str, Tensor]], sizes: Sequence[float]) -> dict[str, Tensor]:
    """The FedAvg of the clients' deltas (upload - start), weighted by client size."""
    weights = torch.tensor([float(s) for s in sizes])
    return {name: aggregate_dense(torch.stack([upload[name] - start[name] for upload in uploads]), weights)
            for name in start}


@dataclass
class LoraState:
    """What a run carries between rounds."""

    round: int
    shared: dict[str, Tensor]  # adapters + head: the global model
    user_vec: Tensor  # the clients' private rows (the simulator's stand-in for their devices)
    optimizer_state: dict[str, Tensor] = field(default_factory=dict)


@dataclass(frozen=True)
class LoraRoundStats:
    clients: int
    train_loss: float
    bytes_up: int  # sum of the serialised uploads
    bytes_down: int  # the global adapters + head to each client
    upload_bytes_per_client: int


def run_lora_round(embedder: ItemEmbedder, state: LoraState, data: ClientData, local: LocalSteps,
                   client_fraction: float, server: ServerOptimizer, seed: int,
                   eligible: np.ndarray | None = None) -> tuple[LoraState, LoraRoundStats]:
    """One FedAvg round of the adapters + head; the randomness is a pure function of (seed, round)."""
    cohort = sample_cohort(data.num_clients, client_fraction, seed, state.round, eligible)
    if len(cohort) == 0:
        raise FedrecError("no client has training interactions; check the data and split")
    with intra_op_threads(1):  # a client's steps are small: one thread each (see intra_op_threads)
        updates = [train_client(embedder, state.shared, state.user_vec, data, int(client), local, seed, state.round)
                   for client in cohort]
    deltas = fedavg_deltas(state.shared, [u.shared for u in updates], [u.size for u in updates])
    shared, optimizer_state = server.step(state.shared, deltas, state.optimizer_state)
    user_vec = state.user_vec.clone()
    for update in updates:
        user_vec[update.users] = update.user_vecs
    download = len(serialize(state.shared))
    stats = LoraRoundStats(
        clients=len(updates), train_loss=float(np.mean([u.loss for u in updates])),
        bytes_up=sum(u.upload_bytes for u in updates), bytes_down=download * len(updates),
        upload_bytes_per_client=max(u.upload_bytes for u in updates),
    )
    return LoraState(state.round + 1, shared, user_vec, optimizer_state), stats


def adapter_layers(names: Sequence[str]) -> list[int]:
    """The transformer layers that hold adapters (from parameter names such as ``...layer.4...``)."""
    found = {int(match.group(1)) for name in names if (match := re.search(r"\.layer\.(\d+)\.", name))}
    return sorted(found)
