"""The model contract: which parameters stay on a client and which are shared, and a per-example loss.

A model is a set of named tensors plus pure functions over *gathered* rows:

- ``PRIVATE_ROWS`` tables have one row per user. A user's row never leaves the client.
- ``SHARED_ROWS`` tables have one row per item. A client trains local copies of the rows it
  touches; the server aggregates their deltas row by row.
- ``SHARED_DENSE`` tensors (global bias, network layers) are trained by every client and averaged.

A spec with ``trainable=False`` is a constant the model reads (gathered as its kind says, e.g. the
items' text embeddings): no runtime trains it, no client uploads it, the server never changes it.

Every runtime (reference loop, vectorised cohort, centralised trainer) gathers the rows each
example needs and calls the same :meth:`RecModel.example_loss`, so all of them compute the same
function. Aggregation, communication accounting and privacy read :meth:`RecModel.param_specs`;
nothing downstream is written for one model in particular.
"""

from __future__ import annotations

import abc
import math
from collections.abc import Callable
from dataclasses import dataclass
from enum import Enum

import torch
from torch import Tensor


class ParamKind(str, Enum):
    PRIVATE_ROWS = "private_rows"
    SHARED_ROWS = "shared_rows"
    SHARED_DENSE = "shared_dense"


@dataclass(frozen=True)
class ParamSpec:
    """A named parameter tensor: its role and its full shape (rows first for row tables)."""

    name: str
    kind: ParamKind
    shape: tuple[int, ...]
    trainable: bool = True  # False: a constant table, read but never trained, uploaded or aggregated

    @property
    def row_shape(self) -> tuple[int, ...]:
        """Shape of one row (row tables) or of the whole tensor (dense)."""
        return self.shape[1:] if self.kind is not ParamKind.SHARED_DENSE else self.shape

    @property
    def is_shared(self) -> bool:
        return self.kind is not ParamKind.PRIVATE_ROWS

    @property
    def is_uploaded(self) -> bool:
        """Trained by the clients and sent to the server: shared and trainable."""
        return self.is_shared and self.trainable


@dataclass(frozen=True)
class ExampleBatch:
    """Targets of a batch of examples (ratings, or interaction weights); rows are gathered separately."""

    targets: Tensor  # (G, N)


class RecModel(abc.ABC):
    """Base class of every recommender: parameter declaration, initialisation and per-example loss."""

    #: negatives the client samples per training example (0 for rating models). An example then
    #: carries ``1 + negatives`` item slots: its own item first, the sampled negatives after it.
    negatives: int = 0

    @property
    def item_slots(self) -> int:
        return 1 + self.negatives

    @abc.abstractmethod
    def param_specs(self) -> list[ParamSpec]:
        """Every parameter with its role; aggregation and accounting read only this."""

    @abc.abstractmethod
    def init_params(self, generator: torch.Generator) -> dict[str, Tensor]:
        """Fresh parameters, full shapes as declared, deterministic for a generator state."""

    @abc.abstractmethod
    def example_loss(self, rows: dict[str, Tensor], batch: ExampleBatch) -> Tensor:
        """Per-example training loss, regularisation included: (G, N).

        Examples come in G groups of N (a group shares one copy of the dense tensors: one client's
        local model in the vectorised backend; the single global model elsewhere):
        ``rows[name]`` is (G, N, *row_shape) for private tables (gathered by user),
        (G, N, S, *row_shape) for shared tables (gathered by the S item slots), and (G, *shape) for
        dense tensors. ``batch.targets`` is (G, N).
        """

    @abc.abstractmethod
    def predict(self, rows: dict[str, Tensor]) -> Tensor:
        """Scores for gathered rows as in :meth:`example_loss`: (G, N, S)."""

    def specs_by_kind(self, kind: ParamKind) -> list[ParamSpec]:
        return [spec for spec in self.param_specs() if spec.kind is kind]

    def uploaded_specs(self, kind: ParamKind) -> list[ParamSpec]:
        """The specs of a shared kind that clients train and upload (constant tables left out)."""
        return [spec for spec in self.specs_by_kind(kind) if spec.trainable]

    def shared_names(self) -> list[str]:
        """Every tensor the server holds and sends to clients (constant tables included)."""
        return [spec.name for spec in self.param_specs() if spec.is_shared]

    def uploaded_names(self) -> list[str]:
        """Every tensor whose deltas clients upload."""
        return [spec.name for spec in self.param_specs() if spec.is_uploaded]

    def constant_names(self) -> list[str]:
        """The shared tables nobody trains (``trainable=False``, e.g. the text models' ``item_text``)."""
        return [spec.name for spec in self.param_specs() if spec.is_shared and not spec.trainable]

    def similarity_vectors(self, params: dict[str, Tensor]) -> dict[str, Tensor]:
        """The item vectors that define item similarity, by name, each (num_items, ...).

        By default the shared per-item tables wider than one value: MF and BPR-MF ``item_vec``; NCF
        ``item_gmf`` and ``item_mlp``. Per-item biases (one value) are left out. Models whose item
        vector is computed (the text models) override this.
        """
        return {spec.name: params[spec.name] for spec in self.specs_by_kind(ParamKind.SHARED_ROWS)
                if math.prod(spec.row_shape) > 1}


#: ranking losses over an example's scores (positive first, then its sampled negatives)
RANKING_LOSSES = ("bpr", "softmax")


def ranking_loss(scores: Tensor, loss: str) -> Tensor:
    """Per-example loss from scores (..., 1 + negatives), the positive first.

    ``bpr``: the mean over negatives of -log sigmoid(s_pos - s_neg) (Rendle et al. 2009).
    ``softmax``: sampled softmax, -log(exp(s_pos) / (exp(s_pos) + sum_neg exp(s_neg))), the positive
    against all its negatives at once (as SASRec's loss here; it weighs the hardest negatives most).
    """
    if loss == "bpr":
        return -torch.nn.functional.logsigmoid(scores[..., :1] - scores[..., 1:]).mean(-1)
    if loss == "softmax":
        return -torch.log_softmax(scores, dim=-1)[..., 0]
    raise ValueError(f"ranking loss {loss!r} must be one of {', '.join(RANKING_LOSSES)}")


def parameter_bytes(spec: ParamSpec, rows: int | None = None, bytes_per_value: int = 4) -> int:
    """Bytes of a tensor of this spec: all of it, or ``rows`` rows of a row table."""
    count = 1
    for size in (spec.row_shape if rows is not None else spec.shape):
        count *= size
    return count * bytes_per_value * (rows if rows is not None else 1)


def gather_rows(model: RecModel, params: dict[str, Tensor], users: Tensor, items: Tensor) -> dict[str, Tensor]:
    """Rows for examples (users (B,), items (B, S)) from the global model: one group, (1, B, ...)."""
    rows = {}
    for spec in model.param_specs():
        value = params[spec.name]
        if spec.kind is ParamKind.PRIVATE_ROWS:
            rows[spec.name] = value[users].unsqueeze(0)
        elif spec.kind is ParamKind.SHARED_ROWS:
            rows[spec.name] = value[items].unsqueeze(0)
        else:
            rows[spec.name] = value.unsqueeze(0)
    return rows


def num_catalogue_items(model: RecModel) -> int:
    """Rows of the model's item tables."""
    return max(spec.shape[0] for spec in model.specs_by_kind(ParamKind.SHARED_ROWS))


def score_all_items(model: RecModel, params: dict[str, Tensor], users: Tensor, max_elements: int = 1 << 22) -> Tensor:
    """Scores of every item for each user: (B, num_items).

    Uses the model's own ``score_all`` when it has one (a matrix product for MF-like models), else
    its ``predict`` on the global model's rows, in user chunks (see :func:`score_items_in_chunks`).
    """
    if hasattr(model, "score_all"):
        return model.score_all(params, users)
    return score_items_in_chunks(model, users, lambda u, i: gather_rows(model, params, u, i), max_elements)


def score_items_in_chunks(model: RecModel, users: Tensor, gather: Callable[[Tensor, Tensor], dict[str, Tensor]],
                          max_elements: int = 1 << 22) -> Tensor:
    """Every item's score for each user, ``predict`` on ``gather(users, items)`` rows: (B, num_items).

    Users are scored in chunks small enough that the gathered item rows stay near ``max_elements``.
    """
    num_items = num_catalogue_items(model)
    width = sum(math.prod(spec.row_shape) for spec in model.specs_by_kind(ParamKind.SHARED_ROWS))
    chunk = max(1, max_elements // (num_items * max(width, 1)))
    items = torch.arange(num_items)
    parts = []
    for begin in range(0, len(users), chunk):
        part = users[begin:begin + chunk]
        parts.append(model.predict(gather(part, items.expand(len(part), -1))).reshape(len(part), num_items))
    return torch.cat(parts) if parts else torch.zeros(0, num_items)
