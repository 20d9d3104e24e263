"""The generic task API: FedAvg on any nn.Module, the seeds' digits / MNIST / genre tasks, the runner and CLI."""

from __future__ import annotations

import gzip
import json
import struct
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file
from torch import nn
from torch.utils.data import TensorDataset
from typer.testing import CliRunner

from fedrec.errors import FedrecError
from fedrec.federated.server_opt import ServerOptimizer
from fedrec.generic import is_classification_config
from fedrec.generic.data import (assign_by_proportions, dirichlet_partition, find_mnist, genre_examples, iid_partition,
                                 load_idx)
from fedrec.generic.federated import (ClientTensors, GenericSettings, GenericState, LocalSGD, as_client_tensors,
                                      federated_fit, local_sgd, mix_params, model_params, personalised_accuracy,
                                      predict, run_generic_round, shuffled_order)
from fedrec.generic.runner import build_mlp, load_classifier_config, train_classifier

ROOT = Path(__file__).resolve().parents[1]
DIGITS_TOML = ROOT / "configs" / "digits-mlp-fedavg.toml"
DIRICHLET_TOML = ROOT / "configs" / "digits-mlp-dirichlet.toml"
GENRE_TOML = ROOT / "configs" / "ml100k-genre-fedavg.toml"


def toy_clients(seed: int = 0, sizes: tuple[int, ...] = (7, 12, 5)) -> list[ClientTensors]:
    gen = torch.Generator().manual_seed(seed)
    return [ClientTensors(torch.randn(n, 4, generator=gen), torch.randint(0, 3, (n,), generator=gen)) for n in sizes]


# ------------------------------------------------------------------------------- the federated core


def test_local_sgd_matches_torch_optim_sgd_on_the_module():
    """mu = 0: exactly plain minibatch SGD on the module (the reference is torch.optim.SGD)."""
    model = build_mlp(4, [8], 3, seed=1)
    data = toy_clients()[1]
    local = LocalSGD(epochs=2, lr=0.1, batch_size=5)
    start = model_params(model)
    ours, _, steps = local_sgd(model, start, data, local, seed=3, round_index=2, client=1)
    reference = build_mlp(4, [8], 3, seed=1)
    optimizer = torch.optim.SGD(reference.parameters(), lr=0.1)
    count = 0
    for epoch in range(2):
        order = shuffled_order(len(data), 3, 2, 1, epoch)
        for begin in range(0, len(order), 5):
            batch = order[begin:begin + 5]
            optimizer.zero_grad()
            F.cross_entropy(reference(data.inputs[batch]), data.targets[batch]).backward()
            optimizer.step()
            count += 1
    assert steps == count == 6
    for name, value in reference.named_parameters():
        torch.testing.assert_close(ours[name], value.detach())
    # the module itself was not touched
    for name, value in model.named_parameters():
        torch.testing.assert_close(value.detach(), start[name])


def test_fedprox_zero_is_fedavg_and_positive_mu_adds_the_proximal_gradient():
    model = build_mlp(4, [8], 3, seed=0)
    data = toy_clients()[0]
    start = model_params(model)
    plain, _, _ = local_sgd(model, start, data, LocalSGD(1, 0.1, 32), 0, 0, 0)
    zero, _, _ = local_sgd(model, start, data, LocalSGD(1, 0.1, 32, fedprox_mu=0.0), 0, 0, 0)
    for name in plain:
        assert torch.equal(plain[name], zero[name])
    # two full-batch steps by hand: g + mu (theta - theta_start)
    mu, lr = 5.0, 0.1
    prox, _, _ = local_sgd(model, start, data, LocalSGD(2, lr, 32, fedprox_mu=mu), 0, 0, 0)
    theta = {k: v.clone() for k, v in start.items()}
    for _ in range(2):
        params = {k: v.clone().requires_grad_() for k, v in theta.items()}
        loss = F.cross_entropy(torch.func.functional_call(model, params, (data.inputs,)), data.targets)
        grads = torch.autograd.grad(loss, list(params.values()))
        theta = {k: theta[k] - lr * (g + mu * (theta[k] - start[k])) for k, g in zip(theta, grads)}
    for name in prox:
        torch.testing.assert_close(prox[name], theta[name])
    drift = lambda p: sum(float((p[k] - start[k]).norm()) for k in p)  # noqa: E731
    plain_two, _, _ = local_sgd(model, start, data, LocalSGD(2, lr, 32), 0, 0, 0)
    assert drift(prox) < drift(plain_two)  # the proximal term holds the local model nearer the global one


def test_a_round_is_fedavg_weighted_by_client_size_then_the_server_optimizer():
    model = build_mlp(4, [8], 3, seed=0)
    clients = toy_clients()
    local = LocalSGD(1, 0.2, 4)
    state = GenericState(0, model_params(model))
    for server in (ServerOptimizer(), ServerOptimizer("sgd", lr=0.5, momentum=0.9), ServerOptimizer("adam", lr=0.01)):
        new, stats = run_generic_round(model, state, clients, GenericSettings(local, 1.0, server), seed=4)
        sizes = [len(c) for c in clients]
        locals_ = [local_sgd(model, state.params, c, local, 4, 0, k)[0] for k, c in enumerate(clients)]
        mean = {n: sum(s * (p[n] - state.params[n]) for s, p in zip(sizes, locals_)) / sum(sizes) for n in state.params}
        expected, _ = server.step(state.params, mean, {})
        for name in expected:
            torch.testing.assert_close(new.params[name], expected[name])
        assert stats.clients == 3 and stats.examples == sum(sizes) and new.round == 1


def test_client_sampling_is_a_fraction_and_reproducible():
    model = build_mlp(4, [8], 3, seed=0)
    clients = toy_clients(sizes=(3,) * 10)
    settings = GenericSettings(LocalSGD(1, 0.1, 4), client_fraction=0.3)
    state = GenericState(0, model_params(model))
    a, stats = run_generic_round(model, state, clients, settings, seed=9)
    b, _ = run_generic_round(model, state, clients, settings, seed=9)
    assert stats.clients == 3
    assert all(torch.equal(a.params[n], b.params[n]) for n in a.params)


def test_mixing_beta_one_is_the_local_model_and_zero_the_global():
    model = build_mlp(4, [8], 3, seed=0)
    clients = toy_clients()
    settings = GenericSettings(LocalSGD(3, 0.3, 4), mixing_beta=0.5)
    state, _ = run_generic_round(model, GenericState(0, model_params(model)), clients, settings, seed=0)
    assert sorted(state.local_models) == [0, 1, 2]
    local = state.local_models[1]
    assert all(torch.equal(mix_params(state.params, local, 1.0)[n], local[n]) for n in local)
    assert all(torch.equal(mix_params(state.params, local, 0.0)[n], state.params[n]) for n in local)
    half = mix_params(state.params, local, 0.5)
    torch.testing.assert_close(half["0.weight"], (state.params["0.weight"] + local["0.weight"]) / 2)
    # personalised accuracy, by brute force: each test example scored by its owner's model
    test = toy_clients(seed=5, sizes=(30,))[0]
    owners = torch.arange(30) % 4  # client 3 never trained: it uses the global model
    for beta in (0.0, 1.0):
        correct = 0
        for k in range(30):
            params = state.local_models.get(int(owners[k]), state.params) if beta == 1.0 else state.params
            correct += int(predict(model, params, test.inputs[k:k + 1]).argmax(1) == test.targets[k])
        got = personalised_accuracy(model, state, beta, test.inputs, test.targets, owners)
        assert got == pytest.approx(correct / 30)


def test_user_supplied_module_and_torch_datasets():
    """The API: any nn.Module, clients given as tensors pairs or torch Datasets."""
    gen = torch.Generator().manual_seed(0)
    w = torch.randn(5, 1, generator=gen)
    datasets = []
    for k in range(4):
        x = torch.randn(40, 5, generator=gen)
        y = x @ w + 0.01 * torch.randn(40, 1, generator=gen)
        datasets.append(TensorDataset(x, y) if k % 2 else (x, y))
    model = nn.Linear(5, 1)
    state = federated_fit(model, datasets, rounds=15, settings=GenericSettings(LocalSGD(2, 0.05, 8)), loss_fn=F.mse_loss)
    torch.testing.assert_close(state.params["weight"], w.T, atol=0.05, rtol=0.0)
    assert as_client_tensors(TensorDataset(torch.zeros(3, 2), torch.zeros(3))).inputs.shape == (3, 2)
    with pytest.raises(FedrecError, match="targets"):
        ClientTensors(torch.zeros(3, 2), torch.zeros(2))
    with pytest.raises(FedrecError, match="torch Dataset"):
        as_client_tensors([1, 2, 3])  # type: ignore[arg-type]


# ------------------------------------------------------------------------------------ partitions


def test_iid_partition_deals_near_equal_parts():
    owner = iid_partition(103, 10, seed=0)
    assert sorted(np.bincount(owner).tolist()) == [10] * 7 + [11] * 3
    assert not np.array_equal(owner, iid_partition(103, 10, seed=1))


def test_dirichlet_split_statistics():
    gen = np.random.default_rng(0)
    labels = gen.integers(0, 10, 5000)
    for alpha in (0.1, 1000.0):
        owner, proportions = dirichlet_partition(labels, 10, 10, alpha, seed=3)
        assert owner.shape == labels.shape and np.bincount(owner, minlength=10).min() >= 1  # every example once
        np.testing.assert_allclose(proportions.sum(1), 1.0)
        table = np.zeros((10, 10))
        np.add.at(table, (owner, labels), 1)
        share = table / table.sum(1, keepdims=True)  # each client's class distribution
        top = share.max(1).mean()
        if alpha == 1000.0:
            assert np.abs(share - 0.1).max() < 0.06  # near uniform: an IID-like split
        else:
            assert top > 0.5  # a few classes dominate each client
        # each class's examples split as its proportions say (to rounding)
        counts = np.bincount(labels, minlength=10)
        np.testing.assert_allclose(table.T, proportions * counts[:, None], atol=1.0)
    again, _ = dirichlet_partition(labels, 10, 10, 0.1, seed=3)
    assert np.array_equal(again, dirichlet_partition(labels, 10, 10, 0.1, seed=3)[0])
    # test examples owned with the same proportions
    proportions = np.eye(10)  # client k owns class k
    assert np.array_equal(assign_by_proportions(labels, proportions, 0), labels)
    with pytest.raises(FedrecError, match="raise data.alpha"):
        dirichlet_partition(np.zeros(5, dtype=np.int64), 1, 5, 0.01, seed=0, attempts=3)


# ------------------------------------------------------------------------------------- idx files


def write_idx(path: Path, array: np.ndarray, code: int, compress: bool) -> Path:
    header = bytes([0, 0, code, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    raw = header + array.astype(array.dtype.newbyteorder(">")).tobytes()
    path.write_bytes(gzip.compress(raw) if compress else raw)
    return path


def test_idx_loader_plain_and_gzip(tmp_path):
    images = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4)
    labels = np.array([7, -3, 100000], dtype=np.int32)
    for compress in (False, True):
        got = load_idx(write_idx(tmp_path / f"img{compress}", images, 0x08, compress))
        assert got.dtype == np.uint8 and np.array_equal(got, images)
        got = load_idx(write_idx(tmp_path / f"lab{compress}", labels, 0x0C, compress))
        assert np.array_equal(got, labels)
    (tmp_path / "bad").write_bytes(b"\x01\x02\x03\x04")
    with pytest.raises(FedrecError, match="not an idx file"):
        load_idx(tmp_path / "bad")
    (tmp_path / "short").write_bytes(write_idx(tmp_path / "full", images, 0x08, False).read_bytes()[:-3])
    with pytest.raises(FedrecError, match="truncated"):
        load_idx(tmp_path / "short")


def write_fake_mnist(folder: Path, n_train: int = 60, n_test: int = 20) -> None:
    gen = np.random.default_rng(0)
    folder.mkdir(parents=True, exist_ok=True)
    for part, n in (("train", n_train), ("t10k", n_test)):
        labels = np.arange(n, dtype=np.uint8) % 10
        images = (gen.random((n, 28, 28)) * 60 + labels[:, None, None] * 19).astype(np.uint8)
        write_idx(folder / f"{part}-images-idx3-ubyte.gz", images, 0x08, True)
        write_idx(folder / f"{part}-labels-idx1-ubyte", labels, 0x08, False)


def test_mnist_absent_names_the_files(tmp_path, monkeypatch):
    monkeypatch.delenv("FEDREC_DATA", raising=False)
    with pytest.raises(FedrecError, match="train-images-idx3-ubyte.*t10k-labels-idx1-ubyte.*--data-dir"):
        find_mnist(tmp_path)


def test_mnist_from_idx_files_trains_a_784_128_10_mlp(tmp_path, monkeypatch):
    monkeypatch.delenv("FEDREC_DATA", raising=False)
    write_fake_mnist(tmp_path / "data" / "mnist")
    metrics = train_classifier(DIGITS_TOML, ["data.dataset=mnist", f"data.data_dir={tmp_path / 'data'}",
                                             "train.rounds=2", "train.local_epochs=1"], tmp_path / "run")
    assert metrics["architecture"] == "784-128-10" and metrics["train_examples"] == 60
    assert metrics["test_examples"] == 20 and 0.0 <= metrics["accuracy"] <= 1.0


# ------------------------------------------------------------------------------ ML-100K genre task


def test_genre_label_comes_from_later_ratings_than_the_features():
    # 2 genres; items 0,1 are genre 0, item 2 genre 1. user 0: 5 ratings, history = first 4 by time.
    genres = np.array([[1, 0], [1, 0], [0, 1]], dtype=np.float32)
    users = np.array([0, 0, 0, 0, 0, 1, 1])
    items = np.array([2, 0, 1, 0, 2, 0, 1])
    ratings = np.array([1.0, 5, 5, 3, 4, 5, 5], dtype=np.float32)
    times = np.array([50, 10, 20, 30, 40, 1, 2])  # user 0 in time order: items 0,1,0,2 | 2
    features, labels, kept = genre_examples(users, items, ratings, times, genres, num_users=2)
    assert kept.tolist() == [0]  # user 1 has fewer than 5 ratings
    # history ratings 5,5,3,4 (items 0,1,0,2): share genre0 3/4, genre1 1/4; mean 4.25
    np.testing.assert_allclose(features[0], [0.75, 0.25, (5 + 5 + 3) / 3 - 4.25, 4 - 4.25], rtol=1e-6)
    assert labels.tolist() == [1]  # the future rating (item 2, rated 1) is genre 1 though history favours genre 0


def test_ml100k_genre_end_to_end(ml100k_dir, tmp_path):
    metrics = train_classifier(GENRE_TOML, [f"data.data_dir={ml100k_dir}", "train.rounds=2", "train.client_fraction=0.1"],
                               tmp_path / "run")
    assert metrics["dataset"] == "ml100k-genre" and metrics["architecture"] == "36-64-18"
    assert metrics["clients"] == metrics["train_examples"] > 600  # one client per user
    assert 0.0 < metrics["majority_accuracy"] < 0.6 and 0.0 <= metrics["accuracy"] <= 1.0
    silos = train_classifier(GENRE_TOML, [f"data.data_dir={ml100k_dir}", "train.rounds=1", "data.split=dirichlet",
                                          "data.clients=5", "train.mixing_beta=0.5", "train.batch_size=64"],
                             tmp_path / "silos")
    assert silos["clients"] == 5 and "personal_accuracy" in silos


# --------------------------------------------------------------------------------- runner and CLI


def test_config_errors_are_one_line():
    assert is_classification_config(DIGITS_TOML) and not is_classification_config(ROOT / "configs" / "default.toml")
    with pytest.raises(FedrecError, match=r"unknown config key 'train.round'; did you mean train.rounds\?"):
        load_classifier_config(DIGITS_TOML, ["train.round=3"])
    with pytest.raises(FedrecError, match="per_user.*ml100k-genre"):
        load_classifier_config(DIGITS_TOML, ["data.split=per_user"])
    with pytest.raises(FedrecError, match=r"invalid config value train.mixing_beta=2"):
        load_classifier_config(DIGITS_TOML, ["train.mixing_beta=2"])
    with pytest.raises(FedrecError, match=r"unknown config section \[trian\]; did you mean \[train\]"):
        load_classifier_config(DIGITS_TOML, ["trian.rounds=2"])


def test_resume_reaches_the_same_model(tmp_path):
    sets = ["data.clients=5", "data.test_ratio=0.85", "train.local_epochs=1", "train.batch_size=32",
            "train.server_optimizer=adam", "train.server_lr=0.01"]
    straight = train_classifier(DIRICHLET_TOML, sets + ["train.rounds=3"], tmp_path / "a")
    train_classifier(DIRICHLET_TOML, sets + ["train.rounds=1"], tmp_path / "b")
    with pytest.raises(FedrecError, match="--resume"):
        train_classifier(DIRICHLET_TOML, sets + ["train.rounds=3"], tmp_path / "b")
    with pytest.raises(FedrecError, match="different config"):
        train_classifier(DIRICHLET_TOML, sets + ["train.rounds=3", "train.lr=0.2"], tmp_path / "b", resume=True)
    resumed = train_classifier(DIRICHLET_TOML, sets + ["train.rounds=3"], tmp_path / "b", resume=True)
    a, b = load_file(str(tmp_path / "a" / "checkpoint.safetensors")), load_file(str(tmp_path / "b" / "checkpoint.safetensors"))
    assert a.keys() == b.keys() and any(k.startswith("local/") for k in a) and any(k.startswith("server/") for k in a)
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert resumed["accuracy"] == straight["accuracy"] and resumed["personal_accuracy"] == straight["personal_accuracy"]
    history = [json.loads(line) for line in (tmp_path / "b" / "history.jsonl").read_text().splitlines()]
    assert [h["round"] for h in history] == [1, 2, 3]


def test_cli_train_writes_the_outputs(tmp_path):
    """``fedrec train`` on a classification config, end to end (a short run)."""
    from fedrec.cli import app

    out = tmp_path / "digits"
    result = CliRunner().invoke(app, ["train", str(DIGITS_TOML), "--set", "train.rounds=2", "--out", str(out), "--quiet"])
    assert result.exit_code == 0, result.output
    assert "accuracy=" in result.output and "outputs:" in result.output
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["clients"] == 10 and metrics["architecture"] == "64-128-10" and metrics["rounds"] == 2
    assert metrics["accuracy"] > 0.5 and metrics["bytes_up"] == 2 * 10 * (64 * 128 + 128 + 128 * 10 + 10) * 4
    assert {"config.json", "history.jsonl", "metrics.json", "checkpoint.safetensors"} <= {p.name for p in out.iterdir()}
    assert len((out / "history.jsonl").read_text().splitlines()) == 2


@pytest.mark.slow
def test_digits_fedavg_reaches_095(tmp_path):
    """The seeds' target with the shipped config: 64-128-10 MLP, FedAvg, 10 IID clients, accuracy >= 0.95."""
    metrics = train_classifier(DIGITS_TOML, [], tmp_path / "digits")
    assert metrics["accuracy"] >= 0.95 and metrics["clients"] == 10 and metrics["split"] == "iid"


def test_cli_error_is_one_line(tmp_path):
    """Bad input raises a FedrecError, which ``fedrec.cli.main`` prints as one ``error: ...`` line."""
    from fedrec.cli import app

    result = CliRunner().invoke(app, ["train", str(DIGITS_TOML), "--set", "data.alpha=-1", "--out", str(tmp_path / "x")])
    assert isinstance(result.exception, FedrecError)
    assert str(result.exception) == "invalid config value data.alpha=-1: Input should be greater than 0"
    result = CliRunner().invoke(app, ["train", str(DIGITS_TOML), "--set", "data.dataset=mnist", "--data-dir", str(tmp_path),
                                      "--out", str(tmp_path / "y")])
    assert isinstance(result.exception, FedrecError) and "MNIST not found" in str(result.exception)
    assert not (tmp_path / "y" / "checkpoint.safetensors").exists()
