"""Text-aware recommenders: items understood from their text through a shared, federated adapter.

Every item has a fixed text embedding t_i (from a pretrained sentence encoder, see
:mod:`fedrec.text`). A small adapter A (linear, or a one-hidden-layer MLP) maps it into the
recommender's space; the adapter is ``SHARED_DENSE``, so it is trained by every client and averaged.

- **ID + text** (``text_bpr``, ``text_mf``): q_i = e_i + A(t_i), with e_i the item's ID embedding
  (``SHARED_ROWS``, as in BPR-MF / MF). e_i starts at zero, a residual learned on top of the text
  vector, so an item never seen in training scores by its text alone.
- **Text tower** (``tower_bpr``, ``tower_mf``): q_i = A(t_i), no ID parameter at all, so it scores
  items no one has interacted with (cold start).

Scores and losses are those of BPR-MF (``*_bpr``: <p_u, q_i> + b_i, BPR or sampled-softmax loss
over sampled negatives, ``loss``) and biased MF (``*_mf``: mu + b_u + b_i + <p_u, q_i>, squared error); the tower has no
item bias (it would be an ID parameter). User vectors (and biases) are private. L2 covers the
rows an example uses, as in those models; the adapter is not penalised.

The text embeddings are a constant held by the model. The model contract gathers per-item values
from ``SHARED_ROWS`` tables, so they sit in the parameters as the table ``item_text``, declared
``trainable=False``: every runtime gathers it but never steps it, clients upload nothing for it
(no deltas, no bytes, no DP noise, no server optimiser state), and the server leaves it as it is.
The loss also reads it through a zero-gradient path, so nothing can train it by accident.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from fedrec.models.base import RANKING_LOSSES, ExampleBatch, ParamKind, ParamSpec, RecModel, ranking_loss

ADAPTERS = ("linear", "mlp")


@dataclass(frozen=True)
class TextModelConfig:
    dim: int = 64
    l2: float = 1e-4
    init_std: float = 0.1
    negatives: int = 1  # *_bpr: sampled negatives per example
    text_adapter: str = "linear"  # "linear" or "mlp"
    adapter_hidden: int = 128  # mlp: hidden units
    item_ids: bool = True  # False: the text tower (no ID embedding, no item bias)
    loss: str = "bpr"  # "bpr" or "softmax" (implicit feedback, fedrec.models.base.ranking_loss), "mse" (ratings)
    global_mean: float = 0.0  # mse: initial mu

    def __post_init__(self) -> None:
        if self.text_adapter not in ADAPTERS:
            raise ValueError(f"text_adapter={self.text_adapter!r} must be one of {', '.join(ADAPTERS)}")
        if self.loss not in (*RANKING_LOSSES, "mse"):
            raise ValueError(f"loss={self.loss!r} must be one of {', '.join(RANKING_LOSSES)} or mse")


@dataclass(frozen=True)
class TextBPRConfig(TextModelConfig):
    """ID + text, a ranking loss (BPR by default)."""

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.loss not in RANKING_LOSSES:
            raise ValueError(f"loss={self.loss!r}: an implicit-feedback model takes {' or '.join(RANKING_LOSSES)}")


@dataclass(frozen=True)
class TextMFConfig(TextModelConfig):
    """ID + text, squared error on ratings."""

    l2: float = 0.05
    loss: str = "mse"
    negatives: int = 0

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.loss != "mse":
            raise ValueError(f"loss={self.loss!r}: a rating model is trained on squared error; for implicit "
                             "feedback use text_bpr or tower_bpr")


@dataclass(frozen=True)
class TowerBPRConfig(TextBPRConfig):
    """Text tower, a ranking loss (BPR by default)."""

    item_ids: bool = False


@dataclass(frozen=True)
class TowerMFConfig(TextMFConfig):
    """Text tower, squared error on ratings."""

    item_ids: bool = False


def frozen(value: Tensor) -> Tensor:
    """``value`` in the forward pass, with an exactly zero gradient (it stays in the graph)."""
    return value.detach() + 0.0 * value


class TextRec(RecModel):
    """ID + text or text-only item vectors, with MF/BPR-style private user vectors."""

    def __init__(self, config: TextModelConfig, num_users: int, num_items: int, item_text: Tensor | None = None) -> None:
        if item_text is None:
            raise ValueError("a text model needs the item text embeddings (item_text)")
        if item_text.ndim != 2 or item_text.shape[0] != num_items:
            raise ValueError(f"item_text has shape {tuple(item_text.shape)}, expected ({num_items}, text_dim)")
        self.config = config
        self.num_users = num_users
        self.num_items = num_items
        self.item_text = item_text.detach().float().contiguous()
        self.text_dim = int(item_text.shape[1])
        self.negatives = config.negatives if self.ranking else 0
        if self.ranking and self.negatives < 1:
            raise ValueError(f"the {config.loss} loss needs negatives >= 1")

    @property
    def ranking(self) -> bool:
        return self.config.loss in RANKING_LOSSES

    def _adapter_specs(self) -> list[ParamSpec]:
        t, d, h = self.text_dim, self.config.dim, self.config.adapter_hidden
        if self.config.text_adapter == "linear":
            return [ParamSpec("adapter_w", ParamKind.SHARED_DENSE, (t, d)),
                    ParamSpec("adapter_b", ParamKind.SHARED_DENSE, (d,))]
        return [ParamSpec("adapter_w1", ParamKind.SHARED_DENSE, (t, h)),
                ParamSpec("adapter_b1", ParamKind.SHARED_DENSE, (h,)),
                ParamSpec("adapter_w", ParamKind.SHARED_DENSE, (h, d)),
                ParamSpec("adapter_b", ParamKind.SHARED_DENSE, (d,))]

    def param_specs(self) -> list[ParamSpec]:
        d, n, u = self.config.dim, self.num_items, self.num_users
        specs = [ParamSpec("user_vec", ParamKind.PRIVATE_ROWS, (u, d))]
        if not self.ranking:
            specs.append(ParamSpec("user_bias", ParamKind.PRIVATE_ROWS, (u, 1)))
        if self.config.item_ids:
            specs += [ParamSpec("item_vec", ParamKind.SHARED_ROWS, (n, d)),
                      ParamSpec("item_bias", ParamKind.SHARED_ROWS, (n, 1))]
        specs.append(ParamSpec("item_text", ParamKind.SHARED_ROWS, (n, self.text_dim), trainable=False))
        specs += self._adapter_specs()
        if not self.ranking:
            specs.append(ParamSpec("global_bias", ParamKind.SHARED_DENSE, (1,)))
        return specs

    def init_params(self, generator: torch.Generator) -> dict[str, Tensor]:
        d, std, h = self.config.dim, self.config.init_std, self.config.adapter_hidden
        params: dict[str, Tensor] = {}
        if self.config.item_ids:
            params["item_vec"] = torch.zeros(self.num_items, d)  # a residual on top of the text vector
            params["item_bias"] = torch.zeros(self.num_items, 1)
        params["item_text"] = self.item_text.clone()
        if self.config.text_adapter == "linear":
            params["adapter_w"] = torch.randn(self.text_dim, d, generator=generator) * std
        else:
            params["adapter_w1"] = torch.randn(self.text_dim, h, generator=generator)
            params["adapter_b1"] = torch.zeros(h)
            params["adapter_w"] = torch.randn(h, d, generator=generator) * std * (2.0 / h) ** 0.5
        params["adapter_b"] = torch.zeros(d)
        if not self.ranking:
            params["user_bias"] = torch.zeros(self.num_users, 1)
            params["global_bias"] = torch.full((1,), float(self.config.global_mean))
        # user rows last: the shared tensors' start does not depend on how many users (or fake users) exist
        params["user_vec"] = torch.randn(self.num_users, d, generator=generator) * std
        return {spec.name: params[spec.name] for spec in self.param_specs()}

    def adapt(self, text: Tensor, dense: dict[str, Tensor]) -> Tensor:
        """The adapter on text embeddings: text (G, ..., T) with dense tensors (G, ...) -> (G, ..., d)."""
        lead = text.shape[1:-1]
        flat = text.reshape(text.shape[0], -1, text.shape[-1])  # (G, M, T)
        if self.config.text_adapter == "mlp":
            flat = torch.relu(flat @ dense["adapter_w1"] + dense["adapter_b1"].unsqueeze(1))
        out = flat @ dense["adapter_w"] + dense["adapter_b"].unsqueeze(1)  # (G, M, d)
        return out.reshape(text.shape[0], *lead, -1)

    def item_vectors(self, rows: dict[str, Tensor]) -> Tensor:
        """q for gathered rows: (G, N, S, d)."""
        q = self.adapt(frozen(rows["item_text"]), rows)
        return q + rows["item_vec"] if self.config.item_ids else q

    def predict(self, rows: dict[str, Tensor]) -> Tensor:
        scores = (rows["user_vec"].unsqueeze(-2) * self.item_vectors(rows)).sum(-1)  # (G, N, S)
        if self.config.item_ids:
            scores = scores + rows["item_bias"].squeeze(-1)
        if not self.ranking:
            scores = scores + rows["global_bias"].reshape(-1, 1, 1) + rows["user_bias"]
        return scores

    def example_loss(self, rows: dict[str, Tensor], batch: ExampleBatch) -> Tensor:
        scores = self.predict(rows)
        reg = rows["user_vec"].pow(2).sum(-1)
        if self.config.item_ids:
            reg = reg + rows["item_vec"].pow(2).sum((-2, -1)) + rows["item_bias"].pow(2).sum((-2, -1))
        if self.ranking:
            return ranking_loss(scores, self.config.loss) + self.config.l2 * reg
        reg = reg + rows["user_bias"].pow(2).sum(-1)
        return (scores[..., 0] - batch.targets).pow(2) + self.config.l2 * reg

    def catalogue_item_vectors(self, params: dict[str, Tensor]) -> Tensor:
        """q_i of every item: (I, d)."""
        dense = {k: v.unsqueeze(0) for k, v in params.items() if k.startswith("adapter_")}
        q = self.adapt(params["item_text"].unsqueeze(0), dense)[0]
        return q + params["item_vec"] if self.config.item_ids else q

    def similarity_vectors(self, params: dict[str, Tensor]) -> dict[str, Tensor]:
        """The item vectors the model scores with: q_i = e_i + A(t_i), or A(t_i) for a tower."""
        name = "item_vec + adapter(item_text)" if self.config.item_ids else "adapter(item_text)"
        return {name: self.catalogue_item_vectors(params)}

    def score_all(self, params: dict[str, Tensor], users: Tensor) -> Tensor:
        """Scores of every item for each user: (B, I)."""
        q = self.catalogue_item_vectors(params)
        scores = params["user_vec"][users] @ q.T
        if self.config.item_ids:
            scores = scores + params["item_bias"].T
        if not self.ranking:
            scores = scores + params["global_bias"] + params["user_bias"][users]
        return scores
