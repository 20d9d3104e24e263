"""Item texts for text-aware models, per dataset, and their embeddings for a run.

The loaders build each item's text when they read the metadata (``Dataset.item_texts``):

- MovieLens: title (leading article restored), year and genres, "Toy Story (1995). Genres: Animation,
  Children's, Comedy" (:func:`fedrec.data.movielens.movie_text`).
- Last.fm-2K: artist name and its most used tags (``user_taggedartists.dat`` + ``tags.dat``); without
  those files, the name only (stated in :attr:`ItemTexts.source`).
- CSV/table files: the columns the user names (``title_col`` / ``text_cols`` of
  :func:`fedrec.data.tabular.load_table`; ``model.text_columns`` in a run config).
- Synthetic: a made-up title, year and two "genres" naming the item's strongest latent factors.

Here they become the encoder's input: an item whose text is empty is given the placeholder
"item <raw id>" (counted), so every item has a text and a distinct embedding.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor

from fedrec.data.dataset import Dataset
from fedrec.errors import FedrecError
from fedrec.text.encoder import EncodeReport, TextEncoder, encode_texts

_SOURCES = {
    "ml-": "title, year and genres",
    "lastfm": "artist name and most used tags",
    "synthetic": "generated title, year and genre words",
}


@dataclass(frozen=True)
class ItemTexts:
    """The text of every item (index order), what it was built from, and how many are placeholders."""

    texts: list[str]
    source: str
    placeholders: int  # items with no text, given "item <raw id>"


def placeholder_text(item_id: str) -> str:
    """The text of an item with no text of its own."""
    return f"item {item_id}"


def describe_source(dataset: Dataset) -> str:
    """What the dataset's item texts hold, in words."""
    name = dataset.name
    if name.startswith("lastfm"):
        if any(". Tags: " in text for text in dataset.item_texts):
            return _SOURCES["lastfm"]
        return "artist name only (tag files user_taggedartists.dat / tags.dat not found)"
    for prefix, source in _SOURCES.items():
        if name.startswith(prefix):
            return source
    return "the named table columns" if any(dataset.item_texts) else "none (no text columns named)"


def build_item_texts(dataset: Dataset) -> ItemTexts:
    """Every item's text for the encoder; empty texts become "item <raw id>" placeholders (counted)."""
    if len(dataset.item_texts) != dataset.num_items:
        raise FedrecError(f"{dataset.name} has {len(dataset.item_texts)} item texts for {dataset.num_items} items; "
                          "reload the dataset")
    texts, placeholders = [], 0
    for item_id, text in zip(dataset.item_ids, dataset.item_texts):
        text = " ".join(str(text).split())
        if not text:
            text, placeholders = placeholder_text(str(item_id)), placeholders + 1
        texts.append(text)
    return ItemTexts(texts, describe_source(dataset), placeholders)


def reduce_dim(embeddings: Tensor, dim: int) -> Tensor:
    """The top-``dim`` principal components of ``embeddings`` (centred), scaled to mean row norm 1.

    ``dim`` 0, or at least the embedding width, keeps the embeddings as they are. Deterministic
    (an exact SVD), with each component's sign fixed so that its largest coordinate is positive.
    """
    if dim <= 0 or dim >= embeddings.shape[1]:
        return embeddings
    if dim > embeddings.shape[0]:
        raise FedrecError(f"model.text_dim={dim} exceeds the number of items ({embeddings.shape[0]}); "
                          f"use text_dim <= {embeddings.shape[0]} or 0 to keep all dimensions")
    centred = embeddings.double() - embeddings.double().mean(0)
    _, _, vh = torch.linalg.svd(centred, full_matrices=False)
    components = vh[:dim]  # (dim, T)
    signs = torch.sign(components.gather(1, components.abs().argmax(1, keepdim=True)))
    projected = centred @ (components * signs).T
    scale = projected.norm(dim=1).mean().clamp(min=1e-12)
    return (projected / scale).float()


@dataclass(frozen=True)
class TextEmbeddings:
    """The item embeddings a text model holds, and how they were made."""

    embeddings: Tensor  # (num_items, dim)
    items: ItemTexts
    report: EncodeReport

    def summary(self) -> str:
        return (f"item texts: {self.items.source}; {self.items.placeholders} without text (placeholder 'item <id>'); "
                + self.report.summary())


def item_text_embeddings(dataset: Dataset, encoder: TextEncoder, dim: int = 0, cache_dir: Path | None = None,
                         use_cache: bool = True, progress: bool = True) -> TextEmbeddings:
    """Encode every item's text (through the disk cache) and reduce it to ``dim`` components."""
    items = build_item_texts(dataset)
    embeddings, report = encode_texts(encoder, items.texts, cache_dir=cache_dir, use_cache=use_cache,
                                      progress=progress)
    return TextEmbeddings(reduce_dim(embeddings, dim), items, report)
