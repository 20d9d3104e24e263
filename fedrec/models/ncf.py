"""Neural collaborative filtering (He et al. 2017, "Neural Collaborative Filtering"): GMF, MLP, NeuMF.

- GMF:   phi = p_u * q_i (elementwise)
- MLP:   phi = ReLU layers over [p'_u, q'_i]
- NeuMF: both, concatenated
logit = h . phi + b; binary cross-entropy with the interacted item as 1 and ``negatives`` sampled
items as 0 (per example: sum over its slots), plus L2 on the embeddings used.

User embeddings are private. Item embeddings and the MLP layers are shared. The output layer
(h, b) is shared, or, with ``private_head`` (PFedRec, Zhang et al. 2023), private to each user.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from fedrec.models.base import ExampleBatch, ParamKind, ParamSpec, RecModel

VARIANTS = ("gmf", "mlp", "neumf")


@dataclass(frozen=True)
class NCFConfig:
    variant: str = "neumf"
    dim: int = 32  # GMF embedding size, and the MLP embedding size
    layers: tuple[int, ...] = (64, 32, 16)
    l2: float = 1e-5
    init_std: float = 0.1
    negatives: int = 4
    private_head: bool = False

    def __post_init__(self) -> None:
        if self.variant not in VARIANTS:
            raise ValueError(f"NCF variant must be one of {VARIANTS}, got {self.variant!r}")


class NCF(RecModel):
    def __init__(self, config: NCFConfig, num_users: int, num_items: int) -> None:
        self.config = config
        self.num_users = num_users
        self.num_items = num_items
        self.negatives = config.negatives
        self.use_gmf = config.variant in ("gmf", "neumf")
        self.use_mlp = config.variant in ("mlp", "neumf")

    def _layer_sizes(self) -> list[tuple[int, int]]:
        sizes = [2 * self.config.dim, *self.config.layers]
        return list(zip(sizes[:-1], sizes[1:]))

    def _head_size(self) -> int:
        return (self.config.dim if self.use_gmf else 0) + (self.config.layers[-1] if self.use_mlp else 0)

    def param_specs(self) -> list[ParamSpec]:
        d, users, items = self.config.dim, self.num_users, self.num_items
        specs = []
        if self.use_gmf:
            specs += [ParamSpec("user_gmf", ParamKind.PRIVATE_ROWS, (users, d)),
                      ParamSpec("item_gmf", ParamKind.SHARED_ROWS, (items, d))]
        if self.use_mlp:
            specs += [ParamSpec("user_mlp", ParamKind.PRIVATE_ROWS, (users, d)),
                      ParamSpec("item_mlp", ParamKind.SHARED_ROWS, (items, d))]
            for k, (fan_in, fan_out) in enumerate(self._layer_sizes()):
                specs += [ParamSpec(f"mlp{k}_w", ParamKind.SHARED_DENSE, (fan_in, fan_out)),
                          ParamSpec(f"mlp{k}_b", ParamKind.SHARED_DENSE, (fan_out,))]
        head = self._head_size() + 1  # weights and bias in one row
        if self.config.private_head:
            specs.append(ParamSpec("head", ParamKind.PRIVATE_ROWS, (users, head)))
        else:
            specs.append(ParamSpec("head", ParamKind.SHARED_DENSE, (head,)))
        return specs

    def init_params(self, generator: torch.Generator) -> dict[str, Tensor]:
        params = {}
        # shared tensors first: their start does not depend on how many users (or injected fake users) exist
        specs = self.param_specs()
        for spec in sorted(specs, key=lambda spec: spec.kind is ParamKind.PRIVATE_ROWS):
            if spec.name.endswith("_b"):
                params[spec.name] = torch.zeros(spec.shape)
            elif spec.name.startswith("mlp"):
                fan_in, fan_out = spec.shape  # Kaiming-uniform, as torch.nn.Linear
                bound = (6.0 / fan_in) ** 0.5 / 2 ** 0.5
                params[spec.name] = (torch.rand(spec.shape, generator=generator) * 2 - 1) * bound
            elif spec.name == "head":
                bound = (3.0 / self._head_size()) ** 0.5
                weights = (torch.rand(spec.shape, generator=generator) * 2 - 1) * bound
                params[spec.name] = torch.cat([weights[..., :-1], torch.zeros_like(weights[..., -1:])], -1)
            else:
                params[spec.name] = torch.randn(spec.shape, generator=generator) * self.config.init_std
        return {spec.name: params[spec.name] for spec in specs}

    def _features(self, rows: dict[str, Tensor]) -> Tensor:
        """phi for every slot: (G, N, S, head_size)."""
        parts = []
        if self.use_gmf:
            parts.append(rows["user_gmf"].unsqueeze(-2) * rows["item_gmf"])  # (G, N, S, d)
        if self.use_mlp:
            items = rows["item_mlp"]  # (G, N, S, d)
            groups, n, slots, _ = items.shape
            x = torch.cat([rows["user_mlp"].unsqueeze(-2).expand_as(items), items], -1)  # (G, N, S, 2d)
            x = x.reshape(groups, n * slots, -1)  # one matrix product per group (client)
            for k in range(len(self.config.layers)):
                weight, bias = rows[f"mlp{k}_w"], rows[f"mlp{k}_b"]  # (G, in, out), (G, out)
                x = F.relu(torch.bmm(x, weight) + bias.unsqueeze(1))
            parts.append(x.reshape(groups, n, slots, -1))
        return torch.cat(parts, -1)

    def predict(self, rows: dict[str, Tensor]) -> Tensor:
        head = rows["head"]  # (G, H + 1) shared, or (G, N, H + 1) private
        if head.dim() == 2:
            head = head.unsqueeze(1)
        head = head.unsqueeze(-2)  # (G, N or 1, 1, H + 1)
        phi = self._features(rows)  # (G, N, S, H)
        return (phi * head[..., :-1]).sum(-1) + head[..., -1]

    def example_loss(self, rows: dict[str, Tensor], batch: ExampleBatch) -> Tensor:
        logits = self.predict(rows)  # (G, N, S)
        labels = torch.zeros_like(logits)
        labels[..., 0] = 1.0
        bce = F.binary_cross_entropy_with_logits(logits, labels, reduction="none").sum(-1)
        reg = sum(rows[name].pow(2).sum(-1) for name in ("user_gmf", "user_mlp") if name in rows)
        reg = reg + sum(rows[name].pow(2).sum((-2, -1)) for name in ("item_gmf", "item_mlp") if name in rows)
        return bce + self.config.l2 * reg
