"""Federated LoRA of the text encoder (fedrec/text/lora.py): what changes, what travels, FedAvg, the loss.

Uses the packaged all-MiniLM-L6-v2 (offline) on a handful of short texts, so each test is fast.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from fedrec.data.dataset import Interactions
from fedrec.errors import FedrecError
from fedrec.federated.cohort import ClientData
from fedrec.federated.server_opt import ServerOptimizer
from fedrec.models.base import ExampleBatch
from fedrec.models.text import TextRec, TowerBPRConfig
from fedrec.text.encoder import TextEncoder, embed_batch
from fedrec.text.lora import (HEAD_NAMES, FrozenTable, LocalSteps, LoraEncoder, LoraSettings, LoraState, adapter_layers,
                              fedavg_deltas, refit_user_vectors, run_lora_round, serialize, tensor_bytes, train_client,
                              tower_bpr_loss, user_vector_gradient)

TEXTS = ["Toy Story (1995). Genres: Animation, Children's, Comedy", "GoldenEye (1995). Genres: Action, Adventure",
         "Four Rooms (1995). Genres: Thriller", "Get Shorty (1995). Genres: Action, Comedy, Drama",
         "Copycat (1995). Genres: Crime, Drama, Thriller", "Twelve Monkeys (1995). Genres: Drama, Sci-Fi",
         "Babe (1995). Genres: Children's, Comedy, Drama", "Dead Man Walking (1995). Genres: Drama"]
MAX_LENGTH = 16
DIM = 4


def _encoder(settings: LoraSettings = LoraSettings(r=4, top_layers=2)) -> LoraEncoder:
    return LoraEncoder(TextEncoder(max_length=MAX_LENGTH), TEXTS, settings)


@pytest.fixture(scope="module")
def lora() -> LoraEncoder:
    return _encoder()


def _clients(num_items: int = len(TEXTS)) -> ClientData:
    """3 users (one client each) with 3, 2 and 4 items."""
    users = np.array([0, 0, 0, 1, 1, 2, 2, 2, 2])
    items = np.array([0, 1, 2, 3, 4, 0, 5, 6, 7])
    train = Interactions(users, items, np.ones(len(users), np.float32), np.zeros(len(users), np.int64))
    return ClientData.from_interactions(train, np.arange(3), 3, num_items=num_items)


def _state(embedder, seed: int = 0) -> LoraState:
    generator = torch.Generator().manual_seed(seed)
    head = {"adapter_w": torch.randn(384, DIM, generator=generator) * 0.1, "adapter_b": torch.zeros(DIM)}
    adapters = embedder.init_adapters(generator) if isinstance(embedder, LoraEncoder) else {}
    return LoraState(0, {**adapters, **head}, torch.randn(3, DIM, generator=generator) * 0.1)


LOCAL = LocalSteps(steps=2, batch_size=2, negatives=2, adapter_lr=1e-2, head_lr=0.1, private_lr=0.1, l2=1e-3,
                   refit_steps=3)


def test_tower_bpr_loss_is_the_tower_models_loss():
    generator = torch.Generator().manual_seed(1)
    text = torch.nn.functional.normalize(torch.randn(6, 5, generator=generator), dim=1)
    model = TextRec(TowerBPRConfig(dim=3, l2=0.01, negatives=2), 4, 6, item_text=text)
    params = model.init_params(generator)
    users, items = torch.tensor([0, 2, 3]), torch.tensor([[1, 4, 5], [0, 2, 3], [5, 1, 0]])
    rows = {"user_vec": params["user_vec"][users][None], "item_text": text[items][None],
            "adapter_w": params["adapter_w"][None], "adapter_b": params["adapter_b"][None]}
    expected = model.example_loss(rows, ExampleBatch(torch.ones(1, 3)))[0]
    got = tower_bpr_loss(params["user_vec"][users], text[items[:, 0]], text[items[:, 1:]], params["adapter_w"],
                         params["adapter_b"], 0.01)
    torch.testing.assert_close(got, expected)
    # and by hand for the first example
    q = text[items[0]] @ params["adapter_w"] + params["adapter_b"]
    s = q @ params["user_vec"][0]
    hand = -(torch.nn.functional.logsigmoid(s[0] - s[1:])).mean() + 0.01 * params["user_vec"][0].pow(2).sum()
    torch.testing.assert_close(got[0], hand)


def test_adapters_start_as_the_frozen_encoder_and_prefix_cache_equals_full_forward(lora: LoraEncoder):
    plain = TextEncoder(max_length=MAX_LENGTH)
    frozen = plain.encode(TEXTS)
    lora.load_adapters(lora.init_adapters(torch.Generator().manual_seed(0)))  # B = 0: the encoder unchanged
    torch.testing.assert_close(lora.embed_all(), frozen, atol=2e-5, rtol=0)
    # non-zero adapters: the cached frozen prefix + top layers equal the whole peft-wrapped encoder
    generator = torch.Generator().manual_seed(3)
    lora.load_adapters({name: torch.randn(v.shape, generator=generator) * 0.2 for name, v in lora.adapters().items()})
    with torch.no_grad():
        full = embed_batch(lora.backbone, plain.tokenizer, TEXTS, MAX_LENGTH)
    cached = lora.embed_all(batch_size=3)
    torch.testing.assert_close(cached, full, atol=2e-5, rtol=0)
    assert (cached - frozen).abs().max() > 1e-3  # the adapters do change the embeddings
    assert adapter_layers(lora.names) == [4, 5]  # top_layers=2 of 6
    assert all(".lora_A." in n or ".lora_B." in n for n in lora.names)


def test_only_adapters_and_head_travel_and_base_encoder_is_bit_identical(lora: LoraEncoder):
    base_before = {name: value.clone() for name, value in lora.base_state().items()}
    state = _state(lora)
    data = _clients()
    server = ServerOptimizer("sgd", 1.0)
    for _ in range(2):
        new_state, stats = run_lora_round(lora, state, data, LOCAL, 1.0, server, seed=0)
        for name in state.shared:
            assert not torch.equal(new_state.shared[name], state.shared[name]), name  # every adapter/head tensor trained
        state = new_state
    for name, value in lora.base_state().items():
        assert torch.equal(value, base_before[name]), name
    assert set(state.shared) == set(lora.names) | set(HEAD_NAMES)
    update = train_client(lora, state.shared, state.user_vec, data, 1, LOCAL, seed=0, round_index=2)
    assert set(update.shared) == set(lora.names) | set(HEAD_NAMES)  # no user vector, no encoder weight
    assert update.upload_bytes == len(serialize(update.shared))
    assert stats.upload_bytes_per_client == update.upload_bytes
    assert stats.bytes_up == 3 * update.upload_bytes


def test_upload_is_under_one_percent_of_the_encoder_measured_from_the_serialised_bytes(lora: LoraEncoder):
    every_layer = _encoder(LoraSettings(r=8, target_modules=("query", "value"), top_layers=0))
    for embedder, layers, r in ((lora, 2, 4), (every_layer, 6, 8)):  # top two layers (rank 4), every layer (rank 8)
        assert adapter_layers(embedder.names) == list(range(6 - layers, 6))
        generator = torch.Generator().manual_seed(0)
        upload = {**embedder.init_adapters(generator), "adapter_w": torch.zeros(384, 64), "adapter_b": torch.zeros(64)}
        encoded = serialize(upload)
        values = tensor_bytes(upload)
        assert values <= len(encoded) <= values + 4096  # safetensors: the values plus a small JSON header
        assert values == 4 * (layers * 2 * (r * 384 + 384 * r) + 384 * 64 + 64)  # query + value, A and B, plus head
        assert embedder.encoder_bytes == 4 * 22_713_216  # all-MiniLM-L6-v2's parameters, float32
        assert len(encoded) / embedder.encoder_bytes <= 0.01


def test_fedavg_deltas_against_hand_computed_average():
    start = {"a": torch.tensor([1.0, 2.0]), "b": torch.tensor([[0.0]])}
    uploads = [{"a": torch.tensor([2.0, 2.0]), "b": torch.tensor([[3.0]])},
               {"a": torch.tensor([1.0, 5.0]), "b": torch.tensor([[-1.0]])}]
    deltas = fedavg_deltas(start, uploads, [1, 3])
    torch.testing.assert_close(deltas["a"], torch.tensor([0.25 * 1 + 0.75 * 0, 0.25 * 0 + 0.75 * 3]))
    torch.testing.assert_close(deltas["b"], torch.tensor([[0.25 * 3 + 0.75 * -1]]))


def test_round_applies_the_size_weighted_average_of_the_client_uploads(lora: LoraEncoder):
    state = _state(lora, seed=5)
    data = _clients()
    new_state, _ = run_lora_round(lora, state, data, LOCAL, 1.0, ServerOptimizer("sgd", 1.0), seed=7)
    uploads = [train_client(lora, state.shared, state.user_vec, data, c, LOCAL, 7, 0) for c in range(3)]
    sizes = [3.0, 2.0, 4.0]
    for name in state.shared:
        expected = sum(s * u.shared[name] for s, u in zip(sizes, uploads)) / sum(sizes)
        torch.testing.assert_close(new_state.shared[name], expected, atol=1e-6, rtol=1e-5)
    for c, update in enumerate(uploads):  # private rows: each client's own, never averaged
        torch.testing.assert_close(new_state.user_vec[c], update.user_vecs[0])


def test_frozen_table_trains_only_the_head_and_user_vectors():
    table = FrozenTable(torch.nn.functional.normalize(torch.randn(len(TEXTS), 384), dim=1))
    state = _state(table)
    new_state, stats = run_lora_round(table, state, _clients(), LOCAL, 1.0, ServerOptimizer("sgd", 1.0), seed=0)
    assert set(new_state.shared) == set(HEAD_NAMES)
    assert stats.upload_bytes_per_client == len(serialize(new_state.shared))
    assert not torch.equal(new_state.user_vec, state.user_vec)


def test_missing_target_modules_is_one_line_error_naming_the_layers():
    with pytest.raises(FedrecError, match=r"lora.target_modules=\['q_proj'\] not found.*query"):
        _encoder(LoraSettings(target_modules=("q_proj",)))


def test_user_vector_gradient_matches_autograd():
    generator = torch.Generator().manual_seed(4)
    user_vec, item_vectors = torch.randn(4, 3, generator=generator), torch.randn(7, 3, generator=generator)
    users = torch.tensor([0, 0, 2, 3, 3, 3])
    items = torch.randint(0, 7, (6, 3), generator=generator)
    weights = torch.tensor([0.5, 0.5, 1.0, 1 / 3, 1 / 3, 1 / 3])
    has_data = torch.tensor([1.0, 0.0, 1.0, 1.0])
    leaf = user_vec.clone().requires_grad_(True)
    scores = (leaf[users].unsqueeze(1) * item_vectors[items]).sum(-1)
    bpr = -torch.nn.functional.logsigmoid(scores[:, :1] - scores[:, 1:]).mean(-1)
    loss = (weights * bpr).sum() + 0.1 * (leaf.pow(2).sum(1) * has_data).sum()
    loss.backward()
    got = user_vector_gradient(user_vec, users, items, item_vectors, weights, 0.1, has_data)
    torch.testing.assert_close(got, leaf.grad)


def test_refit_lowers_each_users_bpr_loss_and_leaves_users_without_data():
    generator = torch.Generator().manual_seed(2)
    data = _clients()
    item_vectors = torch.randn(len(TEXTS), DIM, generator=generator)
    start = torch.randn(4, DIM, generator=generator) * 0.1  # user 3 has no interactions

    def loss(vecs):
        items = torch.from_numpy(data.items)
        scores = vecs[torch.from_numpy(data.users)] @ item_vectors.T
        return -torch.nn.functional.logsigmoid(scores[torch.arange(len(items)), items][:, None] - scores).mean()

    fitted = refit_user_vectors(item_vectors, start, data, steps=30, lr=0.1, l2=1e-4, negatives=2, seed=0)
    assert loss(fitted) < loss(start) - 0.1
    assert torch.equal(fitted[3], start[3])
