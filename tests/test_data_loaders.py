"""Loaders (MovieLens, Last.fm, tables, synthetic), the dataset registry and stats."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest

from fedrec.data import (
    DATASETS,
    dataset_stats,
    find_dataset,
    format_stats,
    load_dataset,
    load_lastfm_2k,
    load_movielens,
    load_table,
    make_synthetic,
)
from fedrec.errors import FedrecError

GENRES = "unknown Action Adventure Animation Children's Comedy Crime Documentary Drama Fantasy Film-Noir " \
    "Horror Musical Mystery Romance Sci-Fi Thriller War Western".split()


def fails(call, *fragments: str) -> str:
    """Run ``call``, expect a one-line FedrecError containing every fragment; return the message."""
    with pytest.raises(FedrecError) as info:
        call()
    message = str(info.value)
    assert "\n" not in message, message
    for fragment in fragments:
        assert fragment in message, f"{fragment!r} not in {message!r}"
    return message


def _flags(*names: str) -> str:
    return "|".join("1" if g in names else "0" for g in GENRES)


def write_ml100k(root: Path, data: str | None = None, genre_file: bool = True) -> Path:
    """A tiny ML-100K folder: users 2, 10, 7; items 1..4 (item 4 never rated); folds u1 and ua."""
    folder = root / "ml-100k"
    folder.mkdir(parents=True)
    rows = data if data is not None else (
        "10\t1\t5\t881250949\n2\t2\t3\t891717742\n7\t1\t4\t878887116\n"
        "10\t3\t1\t880606923\n2\t1\t2\t886397596\n7\t3\t5\t884182806\n"
    )
    (folder / "u.data").write_text(rows)
    (folder / "u.item").write_bytes(
        (
            f"1|Toy Story (1995)|01-Jan-1995||http://x|{_flags('Animation', 'Comedy')}\n"
            f"2|Usual Suspects, The (1995)|14-Aug-1995||http://x|{_flags('Crime', 'Thriller')}\n"
            f"3|Café au lait (1994)|01-Jan-1994||http://x|{_flags('Drama')}\n"
            f"4|unknown|||http://x|{_flags('unknown')}\n"
        ).encode("latin-1")
    )
    if genre_file:
        (folder / "u.genre").write_text("".join(f"{g}|{k}\n" for k, g in enumerate(GENRES)) + "\n")
    (folder / "u.user").write_text("2|53|F|other|94043\n7|57|M|administrator|T8H1N\n10|53|M|lawyer|90703\n")
    (folder / "u1.base").write_text(
        "10\t1\t5\t881250949\n2\t2\t3\t891717742\n7\t1\t4\t878887116\n10\t3\t1\t880606923\n"
    )
    (folder / "u1.test").write_text("2\t1\t2\t886397596\n7\t3\t5\t884182806\n")
    (folder / "ua.base").write_text("10\t1\t5\t881250949\n")
    (folder / "ua.test").write_text("2\t1\t2\t886397596\n")
    return folder


# --------------------------------------------------------------------------- MovieLens-100K fixtures


def test_ml100k_fixture_ids_texts_features_and_folds(tmp_path: Path) -> None:
    d = load_movielens(write_ml100k(tmp_path))
    assert d.name == "ml-100k" and d.rating_range == (1.0, 5.0)
    assert list(d.user_ids) == ["2", "7", "10"]  # numeric order, not text order
    assert list(d.item_ids) == ["1", "2", "3", "4"]  # the unrated item 4 is kept
    assert len(d.item_titles) == len(d.item_texts) == 4
    assert d.item_titles[1] == "Usual Suspects, The (1995)"
    assert d.item_texts[0] == "Toy Story (1995). Genres: Animation, Comedy"
    assert d.item_texts[1] == "The Usual Suspects (1995). Genres: Crime, Thriller"
    assert d.item_texts[2] == "Café au lait (1994). Genres: Drama"
    assert d.item_texts[3] == "unknown"
    inter = d.interactions
    assert inter.users.dtype == np.int64 and inter.items.dtype == np.int64
    assert inter.ratings.dtype == np.float32 and inter.timestamps.dtype == np.int64
    # first row: user "10" item "1" rating 5
    assert (d.user_ids[inter.users[0]], d.item_ids[inter.items[0]], inter.ratings[0]) == ("10", "1", 5.0)
    assert list(d.user_features["occupation"]) == ["other", "administrator", "lawyer"]
    assert list(d.user_features["age"]) == [53, 57, 53]
    assert list(d.user_features["zip"]) == ["94043", "T8H1N", "90703"]
    assert sorted(d.official_splits) == ["u1", "ua"]  # the other folds are simply absent
    u1 = d.official_splits["u1"]
    assert len(u1.train) == 4 and len(u1.test) == 2 and u1.name == "u1"
    assert (d.user_ids[u1.test.users[0]], d.item_ids[u1.test.items[0]]) == ("2", "1")


def test_ml100k_without_u_genre_uses_standard_names(tmp_path: Path) -> None:
    d = load_movielens(write_ml100k(tmp_path, genre_file=False))
    assert d.item_texts[0].endswith("Genres: Animation, Comedy")


def test_ml100k_missing_u_data(tmp_path: Path) -> None:
    folder = write_ml100k(tmp_path)
    (folder / "u.data").unlink()
    fails(lambda: load_movielens(folder), "u.data", "not found")


@pytest.mark.parametrize(
    ("data", "fragments"),
    [
        ("1\t1\t5\t1\n2\t1\t3\n", ("line 2", "expected 4 tab-separated fields", "found 3")),
        ("1\t1\t5\t1\n\n2\t1\t3\t4\t5\n", ("line 3", "found 5")),
        ("1\t1\t5\t1\n2\t1\tfive\t1\n", ("line 2", "rating 'five'", "not a finite number")),
        ("1\t1\t5\t1\n2\tx\t3\t1\n", ("line 2", "item 'x'", "not an integer")),
        ("1\t1\t5\t1\n2\t2\t6\t1\n", ("line 2", "rating 6", "outside [1, 5]")),
        ("1\t1\t5\t1\n2\t2\t0\t1\n", ("line 2", "outside")),
        ("1\t1\t5\t1\n2\t2\t3\t1\n1\t1\t4\t9\n", ("line 3", "again", "duplicate")),
        ("", ("no data rows",)),
    ],
)
def test_ml100k_bad_u_data(tmp_path: Path, data: str, fragments: tuple[str, ...]) -> None:
    folder = write_ml100k(tmp_path, data=data)
    fails(lambda: load_movielens(folder), str(folder / "u.data"), *fragments)


def test_ml100k_fold_with_unknown_user(tmp_path: Path) -> None:
    folder = write_ml100k(tmp_path)
    (folder / "u1.test").write_text("2\t1\t2\t886397596\n99\t3\t5\t884182806\n")
    fails(lambda: load_movielens(folder), "u1.test", "line 2", "user 99", "does not appear in u.data")


def test_ml100k_bad_u_item(tmp_path: Path) -> None:
    folder = write_ml100k(tmp_path)
    (folder / "u.item").write_text(f"1|Toy Story (1995)|01-Jan-1995||http://x|{_flags()}\n2|Broken|\n")
    fails(lambda: load_movielens(folder), "u.item", "line 2")


def test_unknown_movielens_variant(tmp_path: Path) -> None:
    fails(lambda: load_movielens(tmp_path, "ml-7m"), "ml-7m", "ml-100k")


# --------------------------------------------------------------------------- other MovieLens releases


def test_ml1m_dat_files(tmp_path: Path) -> None:
    (tmp_path / "ratings.dat").write_text("1::1193::5::978300760\n1::661::3::978302109\n2::1193::4::978298413\n")
    (tmp_path / "movies.dat").write_bytes(
        "1193::One Flew Over the Cuckoo's Nest (1975)::Drama\n661::James and the Giant Peach (1996)::"
        "Animation|Children's|Musical\n5::Señor (1990)::Comedy\n".encode("latin-1")
    )
    (tmp_path / "users.dat").write_text("1::F::1::10::48067\n2::M::56::16::70072\n")
    d = load_movielens(tmp_path, "ml-1m")
    assert d.rating_range == (1.0, 5.0)
    assert list(d.item_ids) == ["5", "661", "1193"]
    assert d.item_texts[1] == "James and the Giant Peach (1996). Genres: Animation, Children's, Musical"
    assert d.item_titles[0] == "Señor (1990)"
    assert list(d.user_features["occupation"]) == ["K-12 student", "self-employed"]
    assert list(d.user_features["gender"]) == ["F", "M"]
    (tmp_path / "ratings.dat").write_text("1::1193::5::978300760\n1::661\n")
    fails(lambda: load_movielens(tmp_path, "ml-1m"), "ratings.dat", "line 2", "'::'-separated", "found 2")


def test_ml10m_half_stars(tmp_path: Path) -> None:
    (tmp_path / "ratings.dat").write_text("1::122::4.5::838985046\n1::185::0.5::838983525\n")
    (tmp_path / "movies.dat").write_text("122::Boomerang (1992)::Comedy|Romance\n185::Net, The (1995)::Action\n")
    d = load_movielens(tmp_path, "ml-10m")
    assert d.rating_range == (0.5, 5.0)
    assert list(d.interactions.ratings) == [4.5, 0.5]
    assert d.item_texts[1] == "The Net (1995). Genres: Action"


def test_ml_csv_releases(tmp_path: Path) -> None:
    (tmp_path / "ratings.csv").write_text("userId,movieId,rating,timestamp\n1,1,4.0,964982703\n1,3,3.5,964981247\n")
    (tmp_path / "movies.csv").write_text(
        'movieId,title,genres\n1,Toy Story (1995),Adventure|Animation\n3,"American President, The (1995)",'
        "Comedy|Drama|Romance\n7,Unrated (2001),(no genres listed)\n"
    )
    d = load_movielens(tmp_path, "ml-latest-small")
    assert d.rating_range == (0.5, 5.0) and list(d.item_ids) == ["1", "3", "7"]
    assert d.item_titles[1] == "American President, The (1995)"
    assert d.item_texts[1] == "The American President (1995). Genres: Comedy, Drama, Romance"
    assert d.item_texts[2] == "Unrated (2001)"
    (tmp_path / "ratings.csv").write_text("userId,movieId,rating,timestamp\n1,1,4.0,964982703\n1,3,9,964981247\n")
    fails(lambda: load_movielens(tmp_path, "ml-25m"), "ratings.csv", "line 3", "outside [0.5, 5]")


# --------------------------------------------------------------------------- Last.fm


def write_lastfm(root: Path, header: bool = True, tags: bool = True) -> Path:
    folder = root / "hetrec2011-lastfm-2k"
    folder.mkdir(parents=True)
    head = "userID\tartistID\tweight\r\n" if header else ""
    (folder / "user_artists.dat").write_text(head + "2\t51\t13883\r\n2\t65  \t170\r\n3\t51\t10\r\n")
    (folder / "artists.dat").write_bytes(
        "id\tname\turl\tpictureURL\n51\tDuran Duran\thttp://a\thttp://b\n52\tUnplayed\thttp://a\thttp://b\n"
        "65\tSigur Rós\thttp://a\n".encode("latin-1")
    )
    if tags:
        tags_text = "tagID\ttagValue\n1\tpop\n2\tnew wave\n3\tpost-rock\n4\tícelandic\n"
        (folder / "tags.dat").write_bytes(tags_text.encode("latin-1"))
        (folder / "user_taggedartists.dat").write_text(
            "userID\tartistID\ttagID\tday\tmonth\tyear\n2\t51\t2\t1\t4\t2009\n3\t51\t1\t1\t4\t2009\n"
            "4\t51\t1\t1\t4\t2009\n2\t65\t3\t1\t4\t2009\n2\t65\t4\t1\t4\t2009\n"
        )
    return folder


@pytest.mark.parametrize("header", [True, False])
def test_lastfm_fixture(tmp_path: Path, header: bool) -> None:
    d = load_lastfm_2k(write_lastfm(tmp_path, header=header))
    assert d.rating_range is None and d.implicit
    assert list(d.user_ids) == ["2", "3"]
    assert list(d.item_ids) == ["51", "65"]  # artist 52 has no plays: not an item
    assert d.item_titles == ["Duran Duran", "Sigur Rós"]
    assert d.item_texts == ["Duran Duran. Tags: pop, new wave", "Sigur Rós. Tags: post-rock, ícelandic"]
    assert list(d.interactions.ratings) == [13883.0, 170.0, 10.0]
    assert not d.interactions.timestamps.any()


def test_lastfm_without_tag_files(tmp_path: Path) -> None:
    d = load_lastfm_2k(write_lastfm(tmp_path, tags=False))
    assert d.item_texts == ["Duran Duran", "Sigur Rós"]


def test_lastfm_bad_rows(tmp_path: Path) -> None:
    folder = write_lastfm(tmp_path)
    path = folder / "user_artists.dat"
    path.write_text("userID\tartistID\tweight\n2\t51\t1\n2\t51\t3\n")
    fails(lambda: load_lastfm_2k(folder), "line 3", "repeat line 2")
    path.write_text("userID\tartistID\tweight\n2\t51\t1\n2\t52\t-3\n")
    fails(lambda: load_lastfm_2k(folder), "line 3", "negative")
    path.write_text("userID\tartistID\tweight\n2\t51\t1\n2\t52\n")
    fails(lambda: load_lastfm_2k(folder), "line 3", "found 2")
    path.unlink()
    fails(lambda: load_lastfm_2k(folder), "user_artists.dat", "not found")


# --------------------------------------------------------------------------- generic tables


def test_table_csv_implicit_with_string_ids(tmp_path: Path) -> None:
    path = tmp_path / "plays.csv"
    path.write_text("user,item,title,genre\nbob,x9,Song X,rock\nalice,x10,Song Y,\n\nbob,x10,Song Y2,jazz\n")
    d = load_table(path, "user", "item", title_col="title", text_cols=["genre"])
    assert d.name == "plays" and d.implicit
    assert list(d.user_ids) == ["alice", "bob"] and list(d.item_ids) == ["x10", "x9"]
    assert list(d.interactions.ratings) == [1.0, 1.0, 1.0]
    assert d.item_titles == ["Song Y2", "Song X"]  # the last row naming the item wins
    assert d.item_texts == ["Song Y2. genre: jazz", "Song X. genre: rock"]


def test_table_numeric_ids_sort_numerically_and_tsv(tmp_path: Path) -> None:
    path = tmp_path / "r.tsv"
    path.write_text("u\ti\tr\tt\n10\t2\t4\t100\n9\t2\t5\t90\n")
    d = load_table(path, "u", "i", "r", "t", rating_range=(1, 5))
    assert list(d.user_ids) == ["9", "10"] and d.rating_range == (1.0, 5.0)
    assert list(d.interactions.timestamps) == [100, 90]


def test_table_parquet(tmp_path: Path) -> None:
    pa = pytest.importorskip("pyarrow")
    import pyarrow.parquet as pq

    path = tmp_path / "r.parquet"
    pq.write_table(pa.table({"u": [3, 1, 3], "i": ["a", "b", "b"], "r": [4.0, 2.0, 5.0]}), path)
    d = load_table(path, "u", "i", "r", rating_range=(1, 5))
    assert list(d.user_ids) == ["1", "3"] and list(d.interactions.ratings) == [4.0, 2.0, 5.0]
    fails(lambda: load_table(path, "user", "i"), "column 'user' not found", "'u', 'i', 'r'")
    pq.write_table(pa.table({"u": [3, 1], "i": ["a", "b"], "r": [4.0, 9.0]}), path)
    fails(lambda: load_table(path, "u", "i", "r", rating_range=(1, 5)), "row 2", "outside")


def test_table_duplicates(tmp_path: Path) -> None:
    path = tmp_path / "d.csv"
    path.write_text("u,i,w,t\n1,a,2,50\n1,a,3,10\n2,a,1,5\n1,a,4,30\n")
    message = fails(lambda: load_table(path, "u", "i", "w", "t"), "2 duplicate (user, item) rows", "user 1 item a")
    assert "data.duplicates=last|sum" in message and "lines 2 and 3" in message
    last = load_table(path, "u", "i", "w", "t", duplicates="last")
    assert sorted(zip(last.interactions.users.tolist(), last.interactions.ratings.tolist())) == [(0, 2.0), (1, 1.0)]
    total = load_table(path, "u", "i", "w", "t", duplicates="sum")
    pairs = sorted(zip(total.interactions.users.tolist(), total.interactions.ratings.tolist(),
                       total.interactions.timestamps.tolist()))
    assert pairs == [(0, 9.0, 50), (1, 1.0, 5)]
    fails(lambda: load_table(path, "u", "i", duplicates="first"), "error, last, sum")
    fails(lambda: load_table(path, "u", "i", "w", rating_range=(1, 5), duplicates="sum"), "use last")


def test_table_last_without_timestamps_keeps_the_later_row_and_bom(tmp_path: Path) -> None:
    path = tmp_path / "d.csv"
    path.write_text("\ufeffu,i,w\n1,a,2\n1,a,7\n1,b,1\n", encoding="utf-8")
    d = load_table(path, "u", "i", "w", duplicates="last")
    assert d.interactions.ratings.tolist() == [7.0, 1.0]


def test_table_bad_inputs(tmp_path: Path) -> None:
    path = tmp_path / "bad.csv"
    fails(lambda: load_table(path, "u", "i"), "not found")
    path.write_text("u,i,r\n1,2,3\n1,3,x\n")
    fails(lambda: load_table(path, "u", "i", "r"), "line 3", "r 'x' is not a number")
    path.write_text("u,i,r\n1,2,3\n1,3,4,5\n")
    fails(lambda: load_table(path, "u", "i", "r"), "line 3", "expected 3", "found 4")
    path.write_text("u,i,r\n1,2,3\n1\n")
    fails(lambda: load_table(path, "u", "i", "r"), "line 3", "'i' is empty")
    path.write_text("u,i,r\n1,2,3\n")
    fails(lambda: load_table(path, "u", "item"), "column 'item' not found", "available columns: 'u', 'i', 'r'")
    fails(lambda: load_table(path, "u", "i", "r", rating_range=(1, 2)), "line 2", "outside rating_range [1, 2]")
    fails(lambda: load_table(path, "u", "i", rating_range=(1, 5)), "rating_col")
    path.write_text("u,i,t\n1,2,2020-01-01\n")
    fails(lambda: load_table(path, "u", "i", timestamp_col="t"), "line 2", "unix seconds")
    path.write_text("")
    fails(lambda: load_table(path, "u", "i"), "empty")


# --------------------------------------------------------------------------- synthetic


def test_synthetic_is_deterministic_and_well_formed() -> None:
    start = time.perf_counter()
    d = make_synthetic()
    assert time.perf_counter() - start < 1.0
    again, other = make_synthetic(), make_synthetic(seed=1)
    for name in ("users", "items", "ratings", "timestamps"):
        assert np.array_equal(getattr(d.interactions, name), getattr(again.interactions, name))
    assert d.item_texts == again.item_texts
    assert not np.array_equal(d.interactions.items, other.interactions.items)
    inter = d.interactions
    assert d.num_users == 1000 and d.num_items == 800 and d.rating_range == (1.0, 5.0)
    assert set(np.unique(inter.ratings).tolist()) <= {1.0, 2.0, 3.0, 4.0, 5.0}
    counts = np.bincount(inter.users, minlength=d.num_users)
    assert counts.min() >= 5 and counts.max() <= 400
    assert 25 < counts.mean() < 55
    key = inter.users * d.num_items + inter.items
    assert len(np.unique(key)) == len(key)
    order = np.lexsort((inter.timestamps, inter.users))
    assert np.array_equal(order, np.arange(len(inter)))  # grouped by user, increasing time
    same_user = inter.users[1:] == inter.users[:-1]
    assert np.all(np.diff(inter.timestamps)[same_user] > 0)
    popularity = np.sort(np.bincount(inter.items, minlength=d.num_items))[::-1]
    assert popularity[:80].sum() > 3 * popularity[-400:].sum()  # long tail
    assert all(". Genres: " in t for t in d.item_texts) and len(set(d.item_titles)) == d.num_items


def test_synthetic_texts_follow_the_ratings() -> None:
    """Items whose text says "acclaimed" get higher ratings than "poorly reviewed" ones."""
    d = make_synthetic()
    mean = np.bincount(d.interactions.items, d.interactions.ratings, d.num_items) / np.maximum(
        np.bincount(d.interactions.items, minlength=d.num_items), 1
    )
    good = np.array(["acclaimed" in t for t in d.item_texts])
    bad = np.array(["Poorly" in t for t in d.item_texts])
    assert mean[good].mean() > mean[bad].mean() + 0.5


def test_synthetic_bad_options() -> None:
    fails(lambda: make_synthetic(num_items=8, min_per_user=5), "min_per_user=5", "num_items // 2")
    fails(lambda: make_synthetic(num_users=0), "num_users")


# --------------------------------------------------------------------------- registry and stats


def test_registry_names_and_unknown() -> None:
    assert {"ml-100k", "lastfm-2k", "synthetic", "csv", "table"} <= set(DATASETS)
    fails(lambda: load_dataset("netflix"), "unknown dataset 'netflix'", "ml-100k", "synthetic")


def test_registry_resolution(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("FEDREC_DATA", raising=False)
    monkeypatch.setenv("FEDREC_CACHE", str(tmp_path / "cache"))
    folder = write_ml100k(tmp_path / "data")
    assert find_dataset("ml-100k", tmp_path / "data") == folder  # the parent
    assert find_dataset("ml-100k", folder) == folder  # the folder itself
    assert load_dataset("ML-100K", data_dir=folder).num_users == 3
    message = fails(lambda: load_dataset("ml-100k", data_dir=tmp_path / "nowhere"),
                    "MovieLens-100K not found", "u.data, u.item", str(tmp_path / "nowhere"), "--data-dir",
                    "FEDREC_DATA", "--download", "https://files.grouplens.org/datasets/movielens/ml-100k.zip")
    assert str(tmp_path / "cache") in message
    monkeypatch.setenv("FEDREC_DATA", str(tmp_path / "data"))
    assert load_dataset("ml-100k").num_items == 4
    monkeypatch.delenv("FEDREC_DATA")
    write_lastfm(tmp_path / "cache")
    assert load_dataset("lastfm").name == "lastfm-2k"  # found in the cache


def test_registry_options(tmp_path: Path) -> None:
    d = load_dataset("synthetic", num_users=50, num_items=60, seed=3)
    assert d.num_users == 50 and d.num_items == 60
    fails(lambda: load_dataset("synthetic", users=5), "unknown option(s) users", "num_users")
    fails(lambda: load_dataset("ml-100k", data_dir=tmp_path, fold=1), "takes no options")
    path = tmp_path / "t.csv"
    path.write_text("u,i\n1,2\n")
    assert load_dataset("csv", path=path, user_col="u", item_col="i").num_items == 1
    assert load_dataset("table", data_dir=path, user_col="u", item_col="i").num_users == 1
    fails(lambda: load_dataset("csv", user_col="u", item_col="i"), "needs a file")
    fails(lambda: load_dataset("csv", path=path, user_col="u"), "item_col")


def test_stats_on_fixture(tmp_path: Path) -> None:
    stats = dataset_stats(load_movielens(write_ml100k(tmp_path)))
    assert (stats["users"], stats["items"], stats["interactions"]) == (3, 4, 6)
    assert stats["density"] == pytest.approx(0.5)
    assert stats["per_user"] == {"min": 2, "median": 2.0, "max": 2}
    assert stats["items_without_interactions"] == 1
    assert stats["rating_histogram"] == {1.0: 1, 2.0: 1, 3.0: 1, 4.0: 1, 5.0: 2}
    text = format_stats(stats)
    assert "interactions  6" in text and "folds         u1, ua" in text
    implicit = dataset_stats(load_lastfm_2k(write_lastfm(tmp_path)))
    assert implicit["rating_histogram"] is None and implicit["weight"]["max"] == 13883.0
    assert "implicit" in format_stats(implicit)


# --------------------------------------------------------------------------- real data ($FEDREC_DATA)


def test_real_ml100k(ml100k_dir: Path) -> None:
    start = time.perf_counter()
    d = load_movielens(ml100k_dir)
    assert time.perf_counter() - start < 3.0  # typically ~0.2 s; catches gross regressions only
    inter = d.interactions
    assert (len(inter), d.num_users, d.num_items) == (100_000, 943, 1_682)
    assert np.bincount(inter.users).min() >= 20
    values, counts = np.unique(inter.ratings, return_counts=True)
    expected = {1.0: 6_110, 2.0: 11_370, 3.0: 27_145, 4.0: 34_174, 5.0: 21_201}
    assert dict(zip(values.tolist(), counts.tolist())) == expected
    assert sorted(d.official_splits) == ["u1", "u2", "u3", "u4", "u5", "ua", "ub"]

    def keys(part) -> np.ndarray:
        return part.users * d.num_items + part.items

    every = np.sort(keys(inter))
    assert len(np.unique(every)) == len(every)
    tests = []
    for name, split in d.official_splits.items():
        both = np.sort(np.concatenate([keys(split.train), keys(split.test)]))
        assert np.array_equal(both, every), name  # disjoint and together equal to u.data
        if name[1:].isdigit():
            tests.append(keys(split.test))
    assert np.array_equal(np.sort(np.concatenate(tests)), every)
    for name in ("ua", "ub"):
        assert set(np.bincount(d.official_splits[name].test.users).tolist()) == {10}
    assert d.item_texts[0] == "Toy Story (1995). Genres: Animation, Children's, Comedy"
    assert len(d.user_features["occupation"]) == 943


def test_real_lastfm(lastfm_dir: Path) -> None:
    d = load_lastfm_2k(lastfm_dir)
    assert (len(d.interactions), d.num_users, d.num_items) == (92_834, 1_892, 17_632)
    assert "65" in set(d.item_ids.tolist())
    assert all(d.item_titles) and d.implicit
