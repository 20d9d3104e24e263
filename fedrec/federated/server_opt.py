"""Server optimisers: how the aggregated client delta moves the shared parameters.

The aggregate delta is treated as a negative pseudo-gradient (Reddi et al., 2021, "Adaptive
Federated Optimization"). ``sgd`` with ``server_lr`` 1 and no momentum is plain FedAvg; momentum
gives FedAvgM (Hsu et al., 2019); ``adam``, ``yogi`` and ``adagrad`` are FedAdam, FedYogi and
FedAdagrad. Each optimiser is a pair of pure functions over dicts of tensors: ``init`` makes the
state, ``step`` returns new parameters and new state (the state is saved in checkpoints).
``lr_by_tensor`` gives named tensors their own step size (for example a text adapter, shared by
every item, next to per-item rows that each see a few clients).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor

from fedrec.errors import FedrecError

ServerOptimizerName = Literal["sgd", "adam", "yogi", "adagrad"]
SERVER_OPTIMIZERS: tuple[str, ...] = ("sgd", "adam", "yogi", "adagrad")


@dataclass(frozen=True)
class ServerOptimizer:
    name: ServerOptimizerName = "sgd"
    lr: float = 1.0
    momentum: float = 0.0  # sgd only (FedAvgM)
    beta1: float = 0.9
    beta2: float = 0.99
    tau: float = 1e-3  # adaptivity: the epsilon of the adaptive methods
    lazy_rows: bool = False  # adaptive methods: leave rows (and their state) alone when no client updated them
    lr_by_tensor: tuple[tuple[str, float], ...] = ()  # (tensor name, its own lr); the others take lr

    def lr_of(self, name: str) -> float:
        """The step size of tensor ``name``: its entry in ``lr_by_tensor``, else ``lr``."""
        return dict(self.lr_by_tensor).get(name, self.lr)

    def check_tensors(self, shared_names: list[str] | tuple[str, ...]) -> None:
        """Refuse ``lr_by_tensor`` entries that name no tensor the server steps (a typo would silently do nothing)."""
        unknown = sorted({name for name, _ in self.lr_by_tensor} - set(shared_names))
        if unknown:
            raise FedrecError(f"train.server_lr_by_tensor names {', '.join(unknown)}, which the server does not step; "
                              f"use the model's shared tensors: {', '.join(sorted(shared_names))}")

    def init(self, shared: dict[str, Tensor]) -> dict[str, Tensor]:
        """Optimiser state for these shared tensors (empty for plain FedAvg)."""
        state: dict[str, Tensor] = {}
        for name, value in shared.items():
            if self.name != "sgd" or self.momentum:
                state[f"{name}.m"] = torch.zeros_like(value)
            if self.name != "sgd":
                state[f"{name}.v"] = torch.full_like(value, self.tau**2 if self.name != "adam" else 0.0)
        return state

    def step(self, params: dict[str, Tensor], deltas: dict[str, Tensor], state: dict[str, Tensor]) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
        """Move each parameter along its aggregated delta; returns (new params, new state)."""
        if not state:
            if deltas:
                self.check_tensors(tuple(deltas))
            state = self.init({name: params[name] for name in deltas})
        new_params, new_state = dict(params), dict(state)
        for name, delta in deltas.items():
            if self.name == "sgd":
                if self.momentum:
                    m = self.momentum * state[f"{name}.m"] + delta
                    new_state[f"{name}.m"] = m
                    delta = m
                new_params[name] = params[name] + self.lr_of(name) * delta
                continue
            m = self.beta1 * state[f"{name}.m"] + (1 - self.beta1) * delta
            v_old, d2 = state[f"{name}.v"], delta * delta
            if self.name == "adam":
                v = self.beta2 * v_old + (1 - self.beta2) * d2
            elif self.name == "yogi":
                v = v_old - (1 - self.beta2) * d2 * torch.sign(v_old - d2)
            else:  # adagrad
                v = v_old + d2
            step = self.lr_of(name) * m / (v.sqrt() + self.tau)
            if self.lazy_rows and delta.dim() > 1:
                touched = (delta != 0).flatten(1).any(1).reshape(-1, *[1] * (delta.dim() - 1))
                m = torch.where(touched, m, state[f"{name}.m"])
                v = torch.where(touched, v, v_old)
                step = torch.where(touched, step, torch.zeros_like(step))
            new_state[f"{name}.m"], new_state[f"{name}.v"] = m, v
            new_params[name] = params[name] + step
        return new_params, new_state
