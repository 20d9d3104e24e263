"""MovieLens loaders: 100K (with its official folds), 1M, 10M, 20M, 25M and the "latest" releases."""

from __future__ import annotations

import re
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd

from fedrec.data.dataset import Dataset, Interactions, Split
from fedrec.data.tabular import (
    first_duplicate,
    has_header,
    ids_as_str,
    index_ids,
    line_of_row,
    one_line,
    read_numeric_file,
    read_text,
)
from fedrec.errors import FedrecError

VARIANTS = ("ml-100k", "ml-1m", "ml-10m", "ml-20m", "ml-25m", "ml-latest", "ml-latest-small")
FOLDS_100K = ("u1", "u2", "u3", "u4", "u5", "ua", "ub")

GENRES_100K = (
    "unknown", "Action", "Adventure", "Animation", "Children's", "Comedy", "Crime", "Documentary",
    "Drama", "Fantasy", "Film-Noir", "Horror", "Musical", "Mystery", "Romance", "Sci-Fi", "Thriller",
    "War", "Western",
)
# ML-1M users.dat codes its occupations (README of ml-1m).
OCCUPATIONS_1M = (
    "other", "academic/educator", "artist", "clerical/admin", "college/grad student", "customer service",
    "doctor/health care", "executive/managerial", "farmer", "homemaker", "K-12 student", "lawyer",
    "programmer", "retired", "sales/marketing", "scientist", "self-employed", "technician/engineer",
    "tradesman/craftsman", "unemployed", "writer",
)
_NO_GENRE = {"unknown", "(no genres listed)", ""}
_RATING_FIELDS = (("user", "int"), ("item", "int"), ("rating", "float"), ("timestamp", "int"))
_YEAR = re.compile(r"^(.*?)\s*\((\d{4})\)\s*$")
_ARTICLE = re.compile(r"^(.*?), (The|A|An|Les|La|Le|L'|Il|El|Das|Der|Die)(\s*\(.*\))?$")


def load_movielens(directory: Path, variant: str = "ml-100k") -> Dataset:
    """Load a MovieLens release from its extracted folder (e.g. ``ml-100k/`` or ``ml-10M100K/``)."""
    directory = Path(directory).expanduser()
    if variant not in VARIANTS:
        raise FedrecError(f"unknown MovieLens variant {variant!r}; choose one of: {', '.join(VARIANTS)}")
    if not directory.is_dir():
        raise FedrecError(f"MovieLens folder {directory} not found; pass the extracted {variant} folder")
    if variant == "ml-100k":
        return _load_100k(directory)
    if variant in ("ml-1m", "ml-10m"):
        return _load_dat(directory, variant)
    return _load_csv(directory, variant)


# --------------------------------------------------------------------------- item text


def movie_text(title: str, genres: list[str], year: str = "") -> str:
    """Short item text "Title (Year). Genres: A, B" ("Usual Suspects, The" → "The Usual Suspects")."""
    title = title.strip()
    match = _YEAR.match(title)
    if match:
        title, year = match.group(1), match.group(2)
    article = _ARTICLE.match(title)
    if article:
        title = f"{article.group(2)} {article.group(1)}{article.group(3) or ''}".replace("L' ", "L'")
    text = f"{title} ({year})" if year else title
    genres = [g for g in genres if g not in _NO_GENRE]
    if genres:
        text += ". Genres: " + ", ".join(genres)
    return text


# --------------------------------------------------------------------------- shared assembly


def _read_ratings(path: Path, sep: str, header: bool | str = False) -> dict[str, np.ndarray]:
    return read_numeric_file(path, sep, _RATING_FIELDS, skip_header=header)


def _check_ratings(path: Path, data: dict[str, np.ndarray], rating_range: tuple[float, float], header: bool) -> None:
    ratings = data["rating"]
    outside = (ratings < rating_range[0]) | (ratings > rating_range[1])
    if outside.any():
        row = int(np.argmax(outside))
        raise FedrecError(
            f"{path}, line {line_of_row(path, row, header)}: rating {ratings[row]:g} is outside "
            f"[{rating_range[0]:g}, {rating_range[1]:g}]; fix or delete that line"
        )


def _map_ids(path: Path, raw: np.ndarray, known: np.ndarray, what: str, source: str, header: bool) -> np.ndarray:
    """Indices of ``raw`` in the sorted id array ``known``; an unknown id is an error naming its line."""
    index = np.searchsorted(known, raw)
    index = np.minimum(index, len(known) - 1)
    missing = known[index] != raw
    if missing.any():
        row = int(np.argmax(missing))
        raise FedrecError(
            f"{path}, line {line_of_row(path, row, header)}: {what} {raw[row]} does not appear in {source}; "
            f"use fold files from the same MovieLens copy as {source}"
        )
    return index.astype(np.int64)


def _assemble(
    name: str,
    path: Path,
    data: dict[str, np.ndarray],
    meta_ids: np.ndarray,
    meta_titles: list[str],
    meta_texts: list[str],
    rating_range: tuple[float, float],
    header: bool = False,
) -> tuple[Dataset, np.ndarray, np.ndarray]:
    """Build the Dataset (items = rated ∪ listed, numeric id order); also return the id arrays."""
    _check_ratings(path, data, rating_range, header)
    user_raw, users = index_ids(data["user"])
    item_raw = np.union1d(data["item"], meta_ids)
    items = np.searchsorted(item_raw, data["item"]).astype(np.int64)
    duplicate = first_duplicate(users, items, len(item_raw))
    if duplicate is not None:
        count, first, later = duplicate
        raise FedrecError(
            f"{path}, line {line_of_row(path, later, header)}: user {data['user'][later]} rated item "
            f"{data['item'][later]} again (first on line {line_of_row(path, first, header)}; {count} repeats "
            "in all); remove the duplicate rows"
        )
    titles = [""] * len(item_raw)
    texts = [""] * len(item_raw)
    for k, position in enumerate(np.searchsorted(item_raw, meta_ids)):
        titles[position], texts[position] = meta_titles[k], meta_texts[k]
    interactions = Interactions(
        users, items, data["rating"].astype(np.float32), data["timestamp"].astype(np.int64)
    )
    dataset = Dataset(
        name=name,
        interactions=interactions,
        user_ids=ids_as_str(user_raw),
        item_ids=ids_as_str(item_raw),
        item_titles=titles,
        item_texts=texts,
        rating_range=rating_range,
    )
    return dataset, user_raw, item_raw


def _split_lines(path: Path, sep: str, min_fields: int) -> list[tuple[int, list[str]]]:
    """(line number, fields) of each non-blank line; fewer than ``min_fields`` fields is an error."""
    rows = []
    for lineno, line in enumerate(read_text(path).splitlines(), 1):
        if not line.strip():
            continue
        parts = line.split(sep)
        if len(parts) < min_fields:
            raise FedrecError(
                f"{path}, line {lineno}: expected at least {min_fields} '{sep}'-separated fields, "
                f"found {len(parts)}; fix or delete that line"
            )
        rows.append((lineno, parts))
    return rows


def _int_field(path: Path, lineno: int, what: str, value: str) -> int:
    try:
        return int(value.strip())
    except ValueError:
        raise FedrecError(f"{path}, line {lineno}: {what} {value.strip()!r} is not an integer; fix that line") from None


def _user_features(
    path: Path, rows: list[tuple[int, list[str]]], user_raw: np.ndarray, columns: dict[str, int]
) -> dict[str, np.ndarray]:
    """Features of the rated users from a users file; users absent from it get age -1 and ""."""
    ids = np.array([_int_field(path, lineno, "user id", parts[0]) for lineno, parts in rows], dtype=np.int64)
    position = np.searchsorted(user_raw, ids)
    known = (position < len(user_raw)) & (user_raw[np.minimum(position, len(user_raw) - 1)] == ids)
    features: dict[str, np.ndarray] = {}
    for name, column in columns.items():
        values = [parts[column].strip() for _, parts in rows]
        if name == "age":
            array = np.full(len(user_raw), -1, dtype=np.int64)
            parsed = [_int_field(path, lineno, "age", parts[column]) for lineno, parts in rows]
            array[position[known]] = np.asarray(parsed, dtype=np.int64)[known]
        else:
            array = np.full(len(user_raw), "", dtype=object)
            array[position[known]] = np.asarray(values, dtype=object)[known]
            array = array.astype(str)
        features[name] = array
    return features


# --------------------------------------------------------------------------- ML-100K


def _load_100k(directory: Path) -> Dataset:
    data_path = directory / "u.data"
    data = _read_ratings(data_path, "\t")
    genre_names = list(GENRES_100K)
    if (directory / "u.genre").is_file():
        rows = _split_lines(directory / "u.genre", "|", 2)
        genre_names = [parts[0].strip() for _, parts in rows]
    item_path = directory / "u.item"
    meta_ids, titles, texts = [], [], []
    for lineno, parts in _split_lines(item_path, "|", 5 + len(genre_names)):
        if len(parts) != 5 + len(genre_names):
            raise FedrecError(
                f"{item_path}, line {lineno}: expected {5 + len(genre_names)} '|'-separated fields "
                f"(id, title, release date, video date, url, {len(genre_names)} genre flags), found {len(parts)}"
            )
        meta_ids.append(_int_field(item_path, lineno, "item id", parts[0]))
        flags = parts[5:]
        genres = [g for g, flag in zip(genre_names, flags) if flag.strip() == "1"]
        release = parts[2].strip()
        titles.append(parts[1].strip())
        texts.append(movie_text(parts[1], genres, release[-4:] if release[-4:].isdigit() else ""))
    dataset, user_raw, item_raw = _assemble(
        "ml-100k", data_path, data, np.asarray(meta_ids, dtype=np.int64), titles, texts, (1.0, 5.0)
    )
    features: dict[str, np.ndarray] = {}
    if (directory / "u.user").is_file():
        rows = _split_lines(directory / "u.user", "|", 5)
        columns = {"age": 1, "gender": 2, "occupation": 3, "zip": 4}
        features = _user_features(directory / "u.user", rows, user_raw, columns)
    folds = {}
    for fold in FOLDS_100K:
        base, test = directory / f"{fold}.base", directory / f"{fold}.test"
        if base.is_file() and test.is_file():
            train_part, test_part = (_fold_part(path, user_raw, item_raw) for path in (base, test))
            folds[fold] = Split(train=train_part, test=test_part, name=fold)
    return replace(dataset, official_splits=folds, user_features=features)


def _fold_part(path: Path, user_raw: np.ndarray, item_raw: np.ndarray) -> Interactions:
    data = _read_ratings(path, "\t")
    _check_ratings(path, data, (1.0, 5.0), False)
    users = _map_ids(path, data["user"], user_raw, "user", "u.data", False)
    items = _map_ids(path, data["item"], item_raw, "item", "u.data/u.item", False)
    return Interactions(users, items, data["rating"].astype(np.float32), data["timestamp"].astype(np.int64))


# --------------------------------------------------------------------------- ML-1M / ML-10M


def _load_dat(directory: Path, variant: str) -> Dataset:
    data_path = directory / "ratings.dat"
    data = _read_ratings(data_path, "::")
    movies_path = directory / "movies.dat"
    meta_ids, titles, texts = [], [], []
    for lineno, parts in _split_lines(movies_path, "::", 3):
        title = "::".join(parts[1:-1]).strip()
        meta_ids.append(_int_field(movies_path, lineno, "movie id", parts[0]))
        titles.append(title)
        texts.append(movie_text(title, parts[-1].strip().split("|")))
    rating_range = (1.0, 5.0) if variant == "ml-1m" else (0.5, 5.0)
    dataset, user_raw, _ = _assemble(
        variant, data_path, data, np.asarray(meta_ids, dtype=np.int64), titles, texts, rating_range
    )
    users_path = directory / "users.dat"
    if variant == "ml-1m" and users_path.is_file():
        rows = _split_lines(users_path, "::", 5)
        for lineno, parts in rows:
            code = _int_field(users_path, lineno, "occupation", parts[3])
            parts[3] = OCCUPATIONS_1M[code] if 0 <= code < len(OCCUPATIONS_1M) else str(code)
        columns = {"gender": 1, "age": 2, "occupation": 3, "zip": 4}
        features = _user_features(users_path, rows, user_raw, columns)
        dataset = replace(dataset, user_features=features)
    return dataset


# --------------------------------------------------------------------------- ML-20M and later (CSV)


def _load_csv(directory: Path, variant: str) -> Dataset:
    data_path = directory / "ratings.csv"
    header = has_header(data_path, ",") if data_path.is_file() else True
    data = _read_ratings(data_path, ",", header=header)
    movies_path = directory / "movies.csv"
    if not movies_path.is_file():
        raise FedrecError(f"{movies_path} not found; check the {variant} folder")
    try:
        movies = pd.read_csv(movies_path, dtype=str, keep_default_na=False, encoding="utf-8")
    except (ValueError, pd.errors.ParserError) as error:
        raise FedrecError(f"could not parse {movies_path}: {one_line(error)}; expected movieId,title,genres") from None
    for column in ("movieId", "title", "genres"):
        if column not in movies.columns:
            available = ", ".join(map(str, movies.columns))
            raise FedrecError(f"column {column!r} not found in {movies_path}; available columns: {available}")
    ids = pd.to_numeric(movies["movieId"], errors="coerce")
    if ids.isna().any():
        row = int(np.argmax(ids.isna().to_numpy()))
        raise FedrecError(
            f"{movies_path}, line {row + 2}: movieId {movies['movieId'].iloc[row]!r} is not an integer; fix that line"
        )
    titles = [t.strip() for t in movies["title"].tolist()]
    texts = [movie_text(t, g.split("|")) for t, g in zip(titles, movies["genres"].tolist())]
    dataset, _, _ = _assemble(
        variant, data_path, data, ids.to_numpy(dtype=np.int64), titles, texts, (0.5, 5.0), header=header
    )
    return dataset
