"""Item texts per dataset (real ML-100K and Last.fm, small fixtures) and their PCA reduction."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from fedrec.config import load_config
from fedrec.data.lastfm import load_lastfm_2k
from fedrec.data.movielens import load_movielens
from fedrec.data.synthetic import make_synthetic
from fedrec.errors import FedrecError
from fedrec.runtime.experiment import load_data, prepare
from fedrec.text.item_text import build_item_texts, reduce_dim
from tests.test_data_loaders import write_lastfm


def test_ml100k_item_texts(ml100k_dir: Path):
    texts = build_item_texts(load_movielens(ml100k_dir, "ml-100k"))
    assert len(texts.texts) == 1682 and texts.source == "title, year and genres"
    assert texts.texts[0] == "Toy Story (1995). Genres: Animation, Children's, Comedy"
    assert texts.texts[266] == "unknown"  # item 267 is titled "unknown" with no genre: kept as it is
    assert texts.placeholders == 0 and all(texts.texts)


def test_lastfm_local_copy_without_tag_files_uses_names_only(lastfm_dir: Path):
    dataset = load_lastfm_2k(lastfm_dir)
    texts = build_item_texts(dataset)
    has_tags = (lastfm_dir / "user_taggedartists.dat").is_file()
    assert texts.source == ("artist name and most used tags" if has_tags
                            else "artist name only (tag files user_taggedartists.dat / tags.dat not found)")
    assert len(texts.texts) == dataset.num_items and all(texts.texts)


def test_lastfm_fixture_with_tags(tmp_path: Path):
    texts = build_item_texts(load_lastfm_2k(write_lastfm(tmp_path)))
    assert texts.texts == ["Duran Duran. Tags: pop, new wave", "Sigur Rós. Tags: post-rock, ícelandic"]
    assert texts.source == "artist name and most used tags"


def test_table_text_columns_and_placeholder_for_empty_text(tmp_path: Path):
    path = tmp_path / "plays.csv"
    path.write_text("user,item,genre,mood\n1,a,rock,loud\n2,b,,\n1,c,jazz,\n")
    config = load_config(None, ["data.name=table", f"data.path={json.dumps(str(path))}",
                                'model.text_columns=["genre", "mood"]'])
    texts = build_item_texts(load_data(config))
    assert texts.texts == ["genre: rock. mood: loud", "item b", "genre: jazz"]
    assert texts.placeholders == 1 and texts.source == "the named table columns"


def test_text_columns_only_for_tables():
    config = load_config(None, ['model.text_columns=["genre"]', "model.name=bpr"])
    with pytest.raises(FedrecError, match="applies to data.name=table only"):
        prepare(config)


def test_synthetic_texts():
    texts = build_item_texts(make_synthetic(num_users=20, num_items=12, mean_interactions=6, seed=0))
    assert len(texts.texts) == 12 and all(". Genres: " in t for t in texts.texts)


def test_reduce_dim_equals_pca_up_to_sign_and_scale():
    from sklearn.decomposition import PCA

    x = torch.randn(50, 12, generator=torch.Generator().manual_seed(0)) @ torch.randn(12, 12, generator=torch.Generator().manual_seed(1))
    reduced = reduce_dim(x, 4)
    expected = PCA(4, svd_solver="full").fit_transform(x.double().numpy())
    expected /= np.linalg.norm(expected, axis=1).mean()
    np.testing.assert_allclose(np.abs(reduced.numpy()), np.abs(expected), atol=1e-4)
    assert reduced.norm(dim=1).mean() == pytest.approx(1.0, abs=1e-5)
    assert torch.equal(reduce_dim(x, 0), x) and torch.equal(reduce_dim(x, 12), x)
    with pytest.raises(FedrecError, match="exceeds the number of items"):
        reduce_dim(x[:3], 5)
