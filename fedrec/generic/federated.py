"""FedAvg for any ``nn.Module`` and per-client datasets: the generic task API.

The same machinery as the recommender rounds, for a plain supervised model:

- clients are sampled with :func:`fedrec.federated.cohort.sample_cohort` (a pure function of
  (seed, round)), and each shuffles its data with counter-based draws, so a resumed run repeats
  exactly what an uninterrupted one does;
- each sampled client runs ``epochs`` passes of minibatch SGD on its own data from the global
  parameters (``torch.func.functional_call``, no module state is mutated), optionally with FedProx's
  proximal term ``mu / 2 * ||theta - theta_global||^2`` (Li et al., 2020); the reported loss
  is the task loss without it;
- the deltas are averaged with FedAvg weights (:func:`fedrec.federated.aggregation.aggregate_dense`,
  weighted by client size) and applied by a :class:`~fedrec.federated.server_opt.ServerOptimizer`
  (server learning rate, FedAvgM, FedAdam, FedYogi, FedAdagrad);
- personalisation by the seeds' mixing step, theta_i <- theta_g + beta (theta_i - theta_g): each
  client keeps its last local model and evaluates the mix of it with the global model
  (:func:`mix_params`; beta = 0 is the global model, beta = 1 the client's own). The mix is for the
  client's own use; it does not change what is uploaded.

Clients run one after the other (a Python loop): the generic API targets few clients with
different dataset sizes. Only ``nn.Parameter`` tensors are federated; buffers (e.g. batch-norm
statistics) stay as the module holds them.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.func import functional_call
from torch.utils.data import Dataset

from fedrec.errors import FedrecError
from fedrec.federated import rng
from fedrec.federated.aggregation import aggregate_dense
from fedrec.federated.cohort import sample_cohort
from fedrec.federated.server_opt import ServerOptimizer

LossFunction = Callable[[Tensor, Tensor], Tensor]


@dataclass(frozen=True)
class ClientTensors:
    """One client's examples: inputs (n, ...) and targets (n, ...)."""

    inputs: Tensor
    targets: Tensor

    def __post_init__(self) -> None:
        if self.inputs.shape[0] != self.targets.shape[0]:
            raise FedrecError(f"a client has {self.inputs.shape[0]} inputs but {self.targets.shape[0]} targets; "
                              "give each input one target")

    def __len__(self) -> int:
        return int(self.inputs.shape[0])


def as_client_tensors(data: ClientTensors | tuple[Tensor, Tensor] | Dataset) -> ClientTensors:
    """A client's data as tensors: a (inputs, targets) pair, or a torch Dataset of such pairs (stacked)."""
    if isinstance(data, ClientTensors):
        return data
    if isinstance(data, tuple) and len(data) == 2:
        return ClientTensors(torch.as_tensor(data[0]), torch.as_tensor(data[1]))
    if isinstance(data, Dataset):
        try:
            pairs = [data[k] for k in range(len(data))]  # type: ignore[arg-type]
        except TypeError:
            raise FedrecError("a client's torch Dataset must have a length and return (input, target) pairs") from None
        if not pairs:
            return ClientTensors(torch.zeros(0), torch.zeros(0, dtype=torch.int64))
        inputs, targets = zip(*pairs)
        return ClientTensors(torch.stack([torch.as_tensor(x) for x in inputs]), torch.as_tensor(np.asarray(targets)))
    raise FedrecError(f"client data must be (inputs, targets) tensors or a torch Dataset, got {type(data).__name__}")


@dataclass(frozen=True)
class LocalSGD:
    """What a client does with the global model: epochs of minibatch SGD, optionally proximal."""

    epochs: int = 1
    lr: float = 0.05
    batch_size: int = 32
    fedprox_mu: float = 0.0  # FedProx proximal strength; 0 is plain FedAvg local training


@dataclass(frozen=True)
class GenericSettings:
    local: LocalSGD = field(default_factory=LocalSGD)
    client_fraction: float = 1.0
    server: ServerOptimizer = field(default_factory=ServerOptimizer)
    mixing_beta: float | None = None  # keep each client's local model for the seeds' mixing step


@dataclass
class GenericState:
    """What a run carries between rounds: global parameters, server-optimiser state, local models."""

    round: int
    params: dict[str, Tensor]
    optimizer_state: dict[str, Tensor] = field(default_factory=dict)
    local_models: dict[int, dict[str, Tensor]] = field(default_factory=dict)  # client -> its last local params


@dataclass(frozen=True)
class GenericRoundStats:
    clients: int
    examples: int
    train_loss: float
    bytes_up: int
    bytes_down: int
    seconds: float


def model_params(model: nn.Module) -> dict[str, Tensor]:
    """The module's trainable parameters as plain detached tensors (copies)."""
    return {name: value.detach().clone() for name, value in model.named_parameters()}


def params_bytes(params: dict[str, Tensor]) -> int:
    return sum(value.numel() * value.element_size() for value in params.values())


def mix_params(global_params: dict[str, Tensor], local_params: dict[str, Tensor], beta: float) -> dict[str, Tensor]:
    """The seeds' mixing step: theta_g + beta * (theta_i - theta_g), tensor by tensor (exact at beta 0 and 1)."""
    return {name: torch.lerp(value, local_params[name], beta) for name, value in global_params.items()}


def shuffled_order(size: int, seed: int, round_index: int, client: int, epoch: int) -> Tensor:
    """A client's example order in one local epoch, a pure function of the counters."""
    keys = rng.hash64(seed, rng.STREAM_SHUFFLE, round_index, client, epoch, np.arange(size))
    return torch.from_numpy(np.argsort(keys, kind="stable"))


@contextmanager
def intra_op_threads(count: int) -> Iterator[None]:
    """Temporarily run torch ops on ``count`` threads (restored afterwards).

    A client's steps are tiny (a batch of 32 through a small MLP): on a shared machine, spreading
    each over threads costs far more in synchronisation than it gains (measured ~50x slower on
    the 2-core machine under load), so local training runs single-threaded.
    """
    before = torch.get_num_threads()
    torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def local_sgd(model: nn.Module, start: dict[str, Tensor], data: ClientTensors, local: LocalSGD, seed: int,
              round_index: int, client: int, loss_fn: LossFunction = F.cross_entropy) -> tuple[dict[str, Tensor], float, int]:
    """A client's local training from ``start``; returns (new params, sum of batch-mean losses, steps).

    Plain SGD on ``functional_call(model, params)``: the module itself is never modified.
    """
    buffers = {name: value for name, value in model.named_buffers()}
    names = list(start)
    params = {name: value.detach().clone().requires_grad_(True) for name, value in start.items()}
    loss_sum, steps = 0.0, 0
    with intra_op_threads(1):
        for epoch in range(local.epochs):
            order = shuffled_order(len(data), seed, round_index, client, epoch)
            for begin in range(0, len(order), local.batch_size):
                batch = order[begin:begin + local.batch_size]
                loss = loss_fn(functional_call(model, (params, buffers), (data.inputs[batch],)), data.targets[batch])
                objective = loss
                if local.fedprox_mu:
                    proximal = sum((params[name] - start[name]).square().sum() for name in names)
                    objective = loss + 0.5 * local.fedprox_mu * proximal
                grads = torch.autograd.grad(objective, [params[name] for name in names])
                with torch.no_grad():
                    params = {name: (params[name] - local.lr * grad).requires_grad_(True)
                              for name, grad in zip(names, grads)}
                loss_sum += float(loss.detach())
                steps += 1
    return {name: value.detach() for name, value in params.items()}, loss_sum, steps


def run_generic_round(model: nn.Module, state: GenericState, clients: Sequence[ClientTensors], settings: GenericSettings,
                      seed: int, loss_fn: LossFunction = F.cross_entropy) -> tuple[GenericState, GenericRoundStats]:
    """One FedAvg round over the sampled clients; the randomness is a pure function of (seed, round)."""
    began = time.perf_counter()
    eligible = np.array([len(c) > 0 for c in clients])
    cohort = sample_cohort(len(clients), settings.client_fraction, seed, state.round, eligible)
    if len(cohort) == 0:
        raise FedrecError("no client has any training data; give at least one client examples")
    deltas: dict[str, list[Tensor]] = {name: [] for name in state.params}
    local_models = dict(state.local_models)
    loss_sum, steps = 0.0, 0
    for client in cohort.tolist():
        trained, client_loss, client_steps = local_sgd(model, state.params, clients[client], settings.local, seed,
                                                       state.round, client, loss_fn)
        for name, value in trained.items():
            deltas[name].append(value - state.params[name])
        if settings.mixing_beta is not None:
            local_models[client] = trained
        loss_sum += client_loss / max(client_steps, 1)
        steps += 1
    sizes = torch.tensor([float(len(clients[c])) for c in cohort.tolist()])
    mean_delta = {name: aggregate_dense(torch.stack(values), sizes) for name, values in deltas.items()}
    params, optimizer_state = settings.server.step(state.params, mean_delta, state.optimizer_state)
    payload = params_bytes(state.params) * len(cohort)
    stats = GenericRoundStats(clients=len(cohort), examples=int(sizes.sum()), train_loss=loss_sum / max(steps, 1),
                              bytes_up=payload, bytes_down=payload, seconds=time.perf_counter() - began)
    return GenericState(state.round + 1, params, optimizer_state, local_models), stats


def predict(model: nn.Module, params: dict[str, Tensor], inputs: Tensor, batch_size: int = 4096) -> Tensor:
    """The model's outputs for ``inputs`` with the given parameters, in batches, without gradients."""
    buffers = {name: value for name, value in model.named_buffers()}
    with torch.no_grad():
        parts = [functional_call(model, (params, buffers), (inputs[b:b + batch_size],))
                 for b in range(0, len(inputs), batch_size)]
    return torch.cat(parts) if parts else torch.zeros(0)


def classification_metrics(model: nn.Module, params: dict[str, Tensor], inputs: Tensor, targets: Tensor) -> dict[str, float]:
    """Accuracy and mean cross-entropy of a classifier on a labelled set."""
    logits = predict(model, params, inputs)
    if len(targets) == 0:
        return {"accuracy": math.nan, "loss": math.nan}
    return {"accuracy": float((logits.argmax(1) == targets).float().mean()),
            "loss": float(F.cross_entropy(logits, targets))}


def personalised_accuracy(model: nn.Module, state: GenericState, beta: float, inputs: Tensor, targets: Tensor,
                          owners: Tensor) -> float:
    """Accuracy when each test example is scored by its owner's mixed model (global if it never trained)."""
    correct = 0
    for client in torch.unique(owners).tolist():
        mine = owners == client
        local = state.local_models.get(client)
        params = mix_params(state.params, local, beta) if local is not None else state.params
        correct += int((predict(model, params, inputs[mine]).argmax(1) == targets[mine]).sum())
    return correct / max(len(targets), 1)


def federated_fit(model: nn.Module, clients: Sequence[ClientTensors | tuple[Tensor, Tensor] | Dataset], rounds: int,
                  settings: GenericSettings = GenericSettings(), seed: int = 0,
                  loss_fn: LossFunction = F.cross_entropy) -> GenericState:
    """Train ``model`` federatedly on the clients' datasets for ``rounds`` rounds; returns the final state.

    The module's own parameters are left untouched; load the result with
    ``model.load_state_dict(state.params, strict=False)``.
    """
    data = [as_client_tensors(c) for c in clients]
    state = GenericState(0, model_params(model))
    for _ in range(rounds):
        state, _stats = run_generic_round(model, state, data, settings, seed, loss_fn)
    return state
