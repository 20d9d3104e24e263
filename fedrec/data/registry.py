"""Dataset names → loaders, and where to find each real dataset on disk (or download it)."""

from __future__ import annotations

import inspect
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fedrec.data.dataset import Dataset
from fedrec.data.download import ARCHIVES, default_cache_dir, fetch_dataset
from fedrec.data.lastfm import load_lastfm_2k
from fedrec.data.movielens import load_movielens
from fedrec.data.synthetic import make_synthetic
from fedrec.data.tabular import load_table
from fedrec.errors import FedrecError

DATASETS = (
    "ml-100k", "ml-1m", "ml-10m", "ml-20m", "ml-25m", "ml-latest", "ml-latest-small",
    "lastfm-2k", "synthetic", "csv", "table",
)
_ALIASES = {
    "movielens-100k": "ml-100k", "ml100k": "ml-100k", "movielens-1m": "ml-1m", "ml1m": "ml-1m",
    "ml-10m100k": "ml-10m", "lastfm": "lastfm-2k", "hetrec2011-lastfm-2k": "lastfm-2k", "parquet": "table",
}


@dataclass(frozen=True)
class _Source:
    """A real dataset: its display title, standard folder names, the files that identify it, its loader."""

    title: str
    folders: tuple[str, ...]
    required: tuple[str, ...]
    loader: Callable[[Path], Dataset]
    page: str  # where to get it by hand when there is no registered archive


def _movielens(variant: str) -> Callable[[Path], Dataset]:
    return lambda directory: load_movielens(directory, variant)


_DAT = ("ratings.dat", "movies.dat")
_CSV = ("ratings.csv", "movies.csv")
_PAGE = "https://grouplens.org/datasets/movielens/"
_SOURCES: dict[str, _Source] = {
    "ml-100k": _Source("MovieLens-100K", ("ml-100k",), ("u.data", "u.item"), _movielens("ml-100k"), _PAGE),
    "ml-1m": _Source("MovieLens-1M", ("ml-1m",), _DAT, _movielens("ml-1m"), _PAGE),
    "ml-10m": _Source("MovieLens-10M", ("ml-10M100K", "ml-10m"), _DAT, _movielens("ml-10m"), _PAGE),
    "ml-20m": _Source("MovieLens-20M", ("ml-20m",), _CSV, _movielens("ml-20m"), _PAGE),
    "ml-25m": _Source("MovieLens-25M", ("ml-25m",), _CSV, _movielens("ml-25m"), _PAGE),
    "ml-latest": _Source("MovieLens latest", ("ml-latest",), _CSV, _movielens("ml-latest"), _PAGE + "latest/"),
    "ml-latest-small": _Source(
        "MovieLens latest-small", ("ml-latest-small",), _CSV, _movielens("ml-latest-small"), _PAGE + "latest/"
    ),
    "lastfm-2k": _Source(
        "Last.fm-2K", ("hetrec2011-lastfm-2k", "lastfm-2k"), ("user_artists.dat", "artists.dat"),
        load_lastfm_2k, "https://grouplens.org/datasets/hetrec-2011/",
    ),
}


def canonical_name(name: str) -> str:
    """The registry name for ``name`` (case-insensitive, common aliases accepted)."""
    key = str(name).strip().lower()
    key = _ALIASES.get(key, key)
    if key not in DATASETS:
        raise FedrecError(f"unknown dataset {name!r}; choose one of: {', '.join(DATASETS)}")
    return key


def _candidates(key: str, data_dir: Path | None, cache_dir: Path | None) -> list[Path]:
    source = _SOURCES[key]
    bases = []
    if data_dir is not None:
        bases.append(Path(data_dir).expanduser())
    if os.environ.get("FEDREC_DATA"):
        bases.append(Path(os.environ["FEDREC_DATA"]).expanduser())
    bases.append(Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir())
    candidates: list[Path] = []
    for base in bases:
        for folder in (base, *(base / name for name in source.folders)):
            if folder not in candidates:
                candidates.append(folder)
    return candidates


def find_dataset(name: str, data_dir: Path | None = None, cache_dir: Path | None = None) -> Path | None:
    """The folder holding real dataset ``name``: data_dir, then $FEDREC_DATA, then the cache.

    Each place may be the dataset folder itself or a parent holding its standard folder name.
    """
    key = canonical_name(name)
    if key not in _SOURCES:
        return None
    for folder in _candidates(key, data_dir, cache_dir):
        if all((folder / f).is_file() for f in _SOURCES[key].required):
            return folder
    return None


def _check_options(what: str, function: Callable[..., Any], options: dict[str, Any], skip: int = 0) -> None:
    accepted = list(inspect.signature(function).parameters)[skip:]
    unknown = sorted(set(options) - set(accepted))
    if unknown:
        raise FedrecError(
            f"unknown option(s) {', '.join(unknown)} for dataset {what}; accepted: {', '.join(accepted) or 'none'}"
        )


def load_dataset(
    name: str,
    data_dir: Path | None = None,
    download: bool = False,
    cache_dir: Path | None = None,
    **options: Any,
) -> Dataset:
    """Load dataset ``name`` (see DATASETS).

    Real datasets are looked up in ``data_dir``, $FEDREC_DATA and the cache (``cache_dir``,
    $FEDREC_CACHE or ~/.cache/fedrec), and downloaded into the cache when ``download`` is set
    (option ``progress`` as in fetch_dataset). "synthetic" takes make_synthetic's options;
    "csv"/"table" take load_table's options, with the file as option ``path`` or ``data_dir``.
    """
    key = canonical_name(name)
    if key == "synthetic":
        _check_options(key, make_synthetic, options)
        return make_synthetic(**options)
    if key in ("csv", "table"):
        path = options.pop("path", None) or data_dir
        if path is None:
            raise FedrecError(f"dataset {key} needs a file: set data.path (or --data-dir) to a CSV/TSV/Parquet file")
        _check_options(key, load_table, options, skip=1)
        for column in ("user_col", "item_col"):
            if column not in options:
                raise FedrecError(f"dataset {key} needs option {column}: the name of the {column[:4]} id column")
        return load_table(Path(path), **options)
    source = _SOURCES[key]
    progress = options.pop("progress", True)
    if options:
        raise FedrecError(f"dataset {key} takes no options (got {', '.join(sorted(options))}); remove them")
    folder = find_dataset(key, data_dir, cache_dir)
    if folder is None and download:
        if key not in ARCHIVES:
            raise FedrecError(
                f"{source.title} has no registered download; get it from {source.page} and pass --data-dir DIR"
            )
        cache = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()
        folder = fetch_dataset(key, cache, progress=progress)
    if folder is None:
        tried = ", ".join(str(p) for p in _candidates(key, data_dir, cache_dir))
        fetch = f"add --download to fetch {ARCHIVES[key].url}" if key in ARCHIVES else f"get it from {source.page}"
        raise FedrecError(
            f"{source.title} not found: expected {', '.join(source.required)} in {tried}; "
            f"pass --data-dir DIR, set FEDREC_DATA, or {fetch}"
        )
    return source.loader(folder)
