"""Downloader: checksum verification, .part handling and safe extraction, all on local file:// URLs."""

from __future__ import annotations

import hashlib
import re
import zipfile
from pathlib import Path

import pytest

from fedrec.data import ARCHIVES, Archive, fetch_dataset, load_dataset
from fedrec.data import download as download_module
from fedrec.errors import FedrecError

U_ITEM = "1|Toy Story (1995)|01-Jan-1995||http://x|" + "|".join(["0"] * 19) + "\n"


def make_zip(path: Path, members: dict[str, str]) -> Path:
    with zipfile.ZipFile(path, "w") as bundle:
        for name, text in members.items():
            bundle.writestr(name, text)
    return path


def archive_for(zip_path: Path, name: str = "ml-100k", folder: str = "ml-100k", sha256: str | None = None,
                md5: str | None = None) -> Archive:
    data = zip_path.read_bytes()
    return Archive(
        name=name, title="Test data", url=zip_path.as_uri(), folder=folder, required=("u.data", "u.item"),
        sha256=sha256 or hashlib.sha256(data).hexdigest(), md5=md5,
    )


@pytest.fixture
def ml_zip(tmp_path: Path) -> Path:
    return make_zip(tmp_path / "source.zip", {"ml-100k/u.data": "1\t1\t5\t100\n", "ml-100k/u.item": U_ITEM})


def test_fetch_verifies_and_extracts(tmp_path: Path, ml_zip: Path) -> None:
    calls: list[tuple[int, int | None]] = []
    archive = archive_for(ml_zip, md5=hashlib.md5(ml_zip.read_bytes()).hexdigest())
    cache = tmp_path / "cache"
    folder = fetch_dataset("ml-100k", cache, progress=lambda done, total: calls.append((done, total)),
                           archive=archive)
    assert folder == cache / "ml-100k"
    assert (folder / "u.data").read_text() == "1\t1\t5\t100\n"
    assert calls and calls[-1][0] == ml_zip.stat().st_size
    assert sorted(p.name for p in cache.iterdir()) == ["ml-100k"]  # no .part, zip or staging left
    ml_zip.unlink()  # already extracted: no download at all
    assert fetch_dataset("ml-100k", cache, progress=False, archive=archive) == folder


@pytest.mark.parametrize("field", ["sha256", "md5"])
def test_checksum_mismatch_deletes_part(tmp_path: Path, ml_zip: Path, field: str) -> None:
    good = archive_for(ml_zip)
    bad = archive_for(ml_zip, **{field: "0" * (64 if field == "sha256" else 32)})
    cache = tmp_path / "cache"
    with pytest.raises(FedrecError) as info:
        fetch_dataset("ml-100k", cache, progress=False, archive=bad)
    message = str(info.value)
    assert "\n" not in message and "checksum mismatch" in message and field in message
    assert list(cache.iterdir()) == []  # the .part file is gone and nothing was extracted
    assert good.sha256 in message or field == "md5"


def test_cached_zip_is_verified_not_trusted(tmp_path: Path, ml_zip: Path) -> None:
    cache = tmp_path / "cache"
    cache.mkdir()
    (cache / "ml-100k.zip").write_bytes(b"not the archive")
    with pytest.raises(FedrecError, match="delete .*ml-100k.zip"):
        fetch_dataset("ml-100k", cache, progress=False, archive=archive_for(ml_zip))
    (cache / "ml-100k.zip").write_bytes(ml_zip.read_bytes())
    ml_zip.unlink()  # a verified zip already in the cache is used without a download
    archive = Archive("ml-100k", "t", "file:///nonexistent.zip", "ml-100k", ("u.data", "u.item"),
                      sha256=hashlib.sha256((cache / "ml-100k.zip").read_bytes()).hexdigest())
    assert (fetch_dataset("ml-100k", cache, progress=False, archive=archive) / "u.item").is_file()


@pytest.mark.parametrize("evil", ["../evil.txt", "/tmp/fedrec-evil.txt", "ml-100k/../../evil.txt", "C:/evil.txt"])
def test_path_traversal_is_refused(tmp_path: Path, evil: str) -> None:
    bundle = make_zip(tmp_path / "evil.zip", {"ml-100k/u.data": "1\t1\t5\t1\n", "ml-100k/u.item": U_ITEM, evil: "x"})
    cache = tmp_path / "sub" / "cache"
    with pytest.raises(FedrecError, match="unsafe archive member") as info:
        fetch_dataset("ml-100k", cache, progress=False, archive=archive_for(bundle))
    assert "\n" not in str(info.value)
    assert not (tmp_path / "evil.txt").exists() and not (tmp_path / "sub" / "evil.txt").exists()
    assert not (cache / "ml-100k").exists()


def test_archive_without_top_folder(tmp_path: Path) -> None:
    bundle = make_zip(tmp_path / "flat.zip", {"user_artists.dat": "2\t51\t3\n", "artists.dat": "id\tname\n51\tX\n"})
    archive = Archive("lastfm-2k", "t", bundle.as_uri(), "hetrec2011-lastfm-2k", ("user_artists.dat", "artists.dat"),
                      sha256=hashlib.sha256(bundle.read_bytes()).hexdigest())
    folder = fetch_dataset("lastfm-2k", tmp_path / "cache", progress=False, archive=archive)
    assert folder.name == "hetrec2011-lastfm-2k" and (folder / "artists.dat").is_file()


def test_wrong_archive_and_network_errors(tmp_path: Path) -> None:
    bundle = make_zip(tmp_path / "other.zip", {"something/else.txt": "x"})
    with pytest.raises(FedrecError, match="does not contain u.data, u.item"):
        fetch_dataset("ml-100k", tmp_path / "c1", progress=False, archive=archive_for(bundle))
    missing = Archive("ml-100k", "t", (tmp_path / "absent.zip").as_uri(), "ml-100k", ("u.data",), sha256="0" * 64)
    with pytest.raises(FedrecError, match="could not download") as info:
        fetch_dataset("ml-100k", tmp_path / "c2", progress=False, archive=missing)
    assert "\n" not in str(info.value) and not list((tmp_path / "c2").iterdir())
    with pytest.raises(FedrecError, match="no download known for 'ml-7m'"):
        fetch_dataset("ml-7m", tmp_path / "c3")


def test_registry_of_archives() -> None:
    assert set(ARCHIVES) == {"ml-100k", "ml-1m", "ml-10m", "ml-20m", "ml-25m", "ml-latest-small", "lastfm-2k"}
    for name, archive in ARCHIVES.items():
        assert archive.name == name and archive.url.startswith("https://files.grouplens.org/datasets/")
        assert re.fullmatch(r"[0-9a-f]{64}", archive.sha256), name
        assert archive.md5 is None or re.fullmatch(r"[0-9a-f]{32}", archive.md5), name
    assert ARCHIVES["ml-10m"].folder == "ml-10M100K"
    assert ARCHIVES["ml-100k"].md5 == "0e33842e24a9c977be4e0107933c0723"


def test_load_dataset_downloads_into_cache(tmp_path: Path, ml_zip: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("FEDREC_DATA", raising=False)
    monkeypatch.setitem(download_module.ARCHIVES, "ml-100k", archive_for(ml_zip))
    cache = tmp_path / "cache"
    with pytest.raises(FedrecError, match="--download"):
        load_dataset("ml-100k", cache_dir=cache)
    d = load_dataset("ml-100k", download=True, cache_dir=cache, progress=False)
    assert (d.num_users, d.num_items, len(d.interactions)) == (1, 1, 1)
    assert (cache / "ml-100k" / "u.data").is_file()
