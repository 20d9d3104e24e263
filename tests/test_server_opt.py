"""Server optimisers against hand-computed steps (Reddi et al. 2021, Algorithm 2)."""

import math

import pytest
import torch

from fedrec.errors import FedrecError
from fedrec.federated.server_opt import ServerOptimizer


def _one(value: float) -> dict[str, torch.Tensor]:
    return {"w": torch.tensor([value])}


def test_sgd_is_fedavg_with_server_lr():
    opt = ServerOptimizer("sgd", lr=0.5)
    params, state = opt.step(_one(1.0), _one(2.0), opt.init(_one(1.0)))
    assert float(params["w"][0]) == pytest.approx(2.0)
    assert state == {}


def test_fedavgm_accumulates_momentum():
    opt = ServerOptimizer("sgd", lr=1.0, momentum=0.9)
    params, state = _one(0.0), opt.init(_one(0.0))
    params, state = opt.step(params, _one(1.0), state)  # m = 1
    params, state = opt.step(params, _one(1.0), state)  # m = 0.9 + 1 = 1.9
    assert float(params["w"][0]) == pytest.approx(2.9)


@pytest.mark.parametrize("name", ["adam", "yogi", "adagrad"])
def test_adaptive_first_two_steps(name):
    b1, b2, tau, lr = 0.9, 0.99, 1e-3, 0.1
    opt = ServerOptimizer(name, lr=lr, beta1=b1, beta2=b2, tau=tau)
    params, state = _one(0.0), opt.init(_one(0.0))
    v = 0.0 if name == "adam" else tau**2
    m = 0.0
    w = 0.0
    for delta in (2.0, -1.0):
        params, state = opt.step(params, _one(delta), state)
        m = b1 * m + (1 - b1) * delta
        if name == "adam":
            v = b2 * v + (1 - b2) * delta**2
        elif name == "yogi":
            v = v - (1 - b2) * delta**2 * math.copysign(1.0, v - delta**2)
        else:
            v = v + delta**2
        w = w + lr * m / (math.sqrt(v) + tau)
        assert float(params["w"][0]) == pytest.approx(w, rel=1e-5)


def test_state_is_created_when_missing():
    opt = ServerOptimizer("adam", lr=0.1)
    params, state = opt.step(_one(0.0), _one(1.0), {})
    assert set(state) == {"w.m", "w.v"}
    assert float(params["w"][0]) > 0


def test_lazy_rows_leave_untouched_rows_and_their_state_alone():
    opt = ServerOptimizer("adam", lr=0.1, lazy_rows=True)
    params = {"q": torch.zeros(3, 2)}
    state = opt.init(params)
    params, state = opt.step(params, {"q": torch.tensor([[1.0, 1.0], [0.0, 0.0], [0.5, -0.5]])}, state)
    moved = params["q"].clone()
    assert torch.all(moved[1] == 0) and torch.all(moved[0] > 0)
    # round 2: only row 1 is updated; rows 0 and 2 keep their values and their momentum
    params, state2 = opt.step(params, {"q": torch.tensor([[0.0, 0.0], [1.0, 1.0], [0.0, 0.0]])}, state)
    assert torch.equal(params["q"][0], moved[0]) and torch.equal(params["q"][2], moved[2])
    assert torch.equal(state2["q.m"][0], state["q.m"][0])
    eager = ServerOptimizer("adam", lr=0.1)
    p_eager, s_eager = eager.step({"q": torch.zeros(3, 2)}, {"q": torch.tensor([[1.0, 1.0], [0.0, 0.0], [0.5, -0.5]])}, eager.init(params))
    p_eager, _ = eager.step(p_eager, {"q": torch.tensor([[0.0, 0.0], [1.0, 1.0], [0.0, 0.0]])}, s_eager)
    assert not torch.equal(p_eager["q"][0], moved[0])  # without lazy_rows, momentum moves untouched rows


@pytest.mark.parametrize("name", ["sgd", "adam"])
def test_lr_by_tensor_steps_named_tensors_with_their_own_lr(name):
    """Each tensor moves exactly as an optimiser with its own lr would move it alone."""
    params = {"rows": torch.tensor([0.5]), "adapter": torch.tensor([-1.0])}
    deltas = {"rows": torch.tensor([2.0]), "adapter": torch.tensor([2.0])}
    split = ServerOptimizer(name, lr=0.5, lr_by_tensor=(("adapter", 0.01),))
    moved, _ = split.step(params, deltas, {})
    for tensor, lr in (("rows", 0.5), ("adapter", 0.01)):
        alone, _ = ServerOptimizer(name, lr=lr).step({tensor: params[tensor]}, {tensor: deltas[tensor]}, {})
        assert torch.equal(moved[tensor], alone[tensor])
    if name == "sgd":  # hand-computed: w + lr * delta
        assert float(moved["rows"][0]) == pytest.approx(1.5) and float(moved["adapter"][0]) == pytest.approx(-0.98)


def test_lr_by_tensor_refuses_a_name_the_server_does_not_step():
    opt = ServerOptimizer("adam", lr=0.1, lr_by_tensor=(("adaptr_w", 0.01),))
    with pytest.raises(FedrecError, match=r"server_lr_by_tensor names adaptr_w.*adapter_w"):
        opt.step({"adapter_w": torch.zeros(2)}, {"adapter_w": torch.ones(2)}, {})
    opt.check_tensors(["adaptr_w", "item_vec"])  # a name among the stepped tensors passes
