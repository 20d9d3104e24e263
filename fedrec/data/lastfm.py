"""HetRec 2011 Last.fm-2K: user-artist play counts (implicit feedback) with artist names and tags."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from fedrec.data.dataset import Dataset, Interactions
from fedrec.data.tabular import (
    first_duplicate,
    has_header,
    ids_as_str,
    index_ids,
    line_of_row,
    read_numeric_file,
    read_text,
)
from fedrec.errors import FedrecError

TOP_TAGS = 5
_PLAY_FIELDS = (("user", "int"), ("artist", "int"), ("weight", "float"))
_TAG_FIELDS = (("user", "int"), ("artist", "int"), ("tag", "int"), ("day", "int"), ("month", "int"), ("year", "int"))


def load_lastfm_2k(directory: Path) -> Dataset:
    """Load the extracted ``hetrec2011-lastfm-2k/`` folder; items are the artists with plays."""
    directory = Path(directory).expanduser()
    if not directory.is_dir():
        raise FedrecError(f"Last.fm folder {directory} not found; pass the extracted hetrec2011-lastfm-2k folder")
    plays_path = directory / "user_artists.dat"
    plays = read_numeric_file(plays_path, "\t", _PLAY_FIELDS, skip_header="auto")
    header = has_header(plays_path, "\t")
    negative = plays["weight"] < 0
    if negative.any():
        row = int(np.argmax(negative))
        raise FedrecError(
            f"{plays_path}, line {line_of_row(plays_path, row, header)}: play count {plays['weight'][row]:g} "
            "is negative; fix or delete that line"
        )
    user_raw, users = index_ids(plays["user"])
    artist_raw, items = index_ids(plays["artist"])
    duplicate = first_duplicate(users, items, len(artist_raw))
    if duplicate is not None:
        count, first, later = duplicate
        raise FedrecError(
            f"{plays_path}, line {line_of_row(plays_path, later, header)}: user {plays['user'][later]} and artist "
            f"{plays['artist'][later]} repeat line {line_of_row(plays_path, first, header)} ({count} repeats in all); "
            "remove the duplicate rows"
        )
    names = _artist_names(directory / "artists.dat", artist_raw)
    tags = _artist_tags(directory, artist_raw)
    texts = [f"{name}. Tags: {', '.join(t)}" if t else name for name, t in zip(names, tags)]
    interactions = Interactions(
        users, items, plays["weight"].astype(np.float32), np.zeros(len(users), dtype=np.int64)
    )
    return Dataset(
        name="lastfm-2k",
        interactions=interactions,
        user_ids=ids_as_str(user_raw),
        item_ids=ids_as_str(artist_raw),
        item_titles=names,
        item_texts=texts,
        rating_range=None,
    )


def _artist_names(path: Path, artist_raw: np.ndarray) -> list[str]:
    """The name of each artist in ``artist_raw`` ("" when artists.dat does not list it)."""
    names = [""] * len(artist_raw)
    for lineno, line in enumerate(read_text(path).splitlines(), 1):
        parts = line.split("\t")
        if not line.strip() or (lineno == 1 and parts[0].strip() == "id"):
            continue
        if len(parts) < 2:
            raise FedrecError(
                f"{path}, line {lineno}: expected tab-separated fields (id, name, url, pictureURL), "
                f"found {len(parts)}; fix or delete that line"
            )
        try:
            artist = int(parts[0].strip())
        except ValueError:
            raise FedrecError(f"{path}, line {lineno}: artist id {parts[0].strip()!r} is not an integer") from None
        position = int(np.searchsorted(artist_raw, artist))
        if position < len(artist_raw) and artist_raw[position] == artist:
            names[position] = parts[1].strip()
    return names


def _artist_tags(directory: Path, artist_raw: np.ndarray) -> list[list[str]]:
    """The most used tags of each artist, most used first (ties by tag id); empty without tag files."""
    tagged_path, tags_path = directory / "user_taggedartists.dat", directory / "tags.dat"
    result: list[list[str]] = [[] for _ in artist_raw]
    if not (tagged_path.is_file() and tags_path.is_file()):
        return result
    tagged = read_numeric_file(tagged_path, "\t", _TAG_FIELDS, skip_header="auto")
    values: dict[int, str] = {}
    for lineno, line in enumerate(read_text(tags_path).splitlines(), 1):
        parts = line.split("\t")
        if not line.strip() or (lineno == 1 and parts[0].strip() == "tagID"):
            continue
        if len(parts) < 2:
            raise FedrecError(f"{tags_path}, line {lineno}: expected tab-separated tagID and tagValue; fix that line")
        try:
            values[int(parts[0].strip())] = parts[1].strip()
        except ValueError:
            raise FedrecError(f"{tags_path}, line {lineno}: tag id {parts[0].strip()!r} is not an integer") from None
    counts = (
        pd.DataFrame({"artist": tagged["artist"], "tag": tagged["tag"]})
        .groupby(["artist", "tag"], sort=False)
        .size()
        .reset_index(name="count")
        .sort_values(["artist", "count", "tag"], ascending=[True, False, True], kind="stable")
    )
    counts = counts[counts["tag"].isin(list(values))]
    top = counts.groupby("artist", sort=False).head(TOP_TAGS)
    for artist, tag in zip(top["artist"].tolist(), top["tag"].tolist()):
        position = int(np.searchsorted(artist_raw, artist))
        if position < len(artist_raw) and artist_raw[position] == artist:
            result[position].append(values[tag])
    return result
