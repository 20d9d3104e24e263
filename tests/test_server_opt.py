"""Server optimisers against hand-computed steps (Reddi et al. 2021, Algorithm 2)."""

import math

import pytest
import torch

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
