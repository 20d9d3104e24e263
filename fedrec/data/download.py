"""Download the official dataset archives into a cache, verify their checksums, extract them safely."""

from __future__ import annotations

import hashlib
import os
import shutil
import stat
import sys
import urllib.error
import urllib.request
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from fedrec.errors import FedrecError

ProgressFn = Callable[[int, "int | None"], None]
_CHUNK = 1 << 20


@dataclass(frozen=True)
class Archive:
    """An official archive: where it lives, its checksum(s), and the folder it unpacks to.

    ``sha256`` is required; ``md5`` (the digest GroupLens publishes as ``<zip>.md5``) is checked
    too when known. ``required`` are files that must be in ``folder`` after extraction.
    """

    name: str
    title: str
    url: str
    folder: str
    required: tuple[str, ...]
    sha256: str
    md5: str | None = None
    size: int | None = None  # bytes, for progress only


_ML = "https://files.grouplens.org/datasets/movielens"
_CSV = ("ratings.csv", "movies.csv")
# md5: the digests GroupLens publishes next to each zip (<zip>.md5). sha256: as recorded by
# independent projects that pin these archives (e.g. ISG-Siegen/OmniRec's data loaders), each
# cross-checked against at least one other public record of the same digest.
ARCHIVES: dict[str, Archive] = {
    a.name: a
    for a in (
        Archive(
            "ml-100k", "MovieLens-100K", f"{_ML}/ml-100k.zip", "ml-100k", ("u.data", "u.item"),
            sha256="50d2a982c66986937beb9ffb3aa76efe955bf3d5c6b761f4e3a7cd717c6a3229",
            md5="0e33842e24a9c977be4e0107933c0723", size=4_924_029,
        ),
        Archive(
            "ml-1m", "MovieLens-1M", f"{_ML}/ml-1m.zip", "ml-1m", ("ratings.dat", "movies.dat"),
            sha256="a6898adb50b9ca05aa231689da44c217cb524e7ebd39d264c56e2832f2c54e20",
            md5="c4d9eecfca2ab87c1945afe126590906",
        ),
        Archive(
            "ml-10m", "MovieLens-10M", f"{_ML}/ml-10m.zip", "ml-10M100K", ("ratings.dat", "movies.dat"),
            sha256="813c411ccb6122564edfe752e7f80c4dcc5aa25fa94c93622f6877a7ba252862",
            md5="ce571fd55effeba0271552578f2648bd", size=65_566_137,
        ),
        Archive(
            "ml-20m", "MovieLens-20M", f"{_ML}/ml-20m.zip", "ml-20m", _CSV,
            sha256="96f243c338a8665f6bcc89c53edf6ee39162a846940de6b7c8c48aeada765ff3",
            md5="cd245b17a1ae2cc31bb14903e1204af3", size=198_702_078,
        ),
        Archive(
            "ml-25m", "MovieLens-25M", f"{_ML}/ml-25m.zip", "ml-25m", _CSV,
            sha256="8b21cfb7eb1706b4ec0aac894368d90acf26ebdfb6aced3ebd4ad5bd1eb9c6aa",
            md5="6b51fb2759a8657d3bfcbfc42b592ada", size=261_978_986,
        ),
        Archive(
            "ml-latest-small", "MovieLens latest-small", f"{_ML}/ml-latest-small.zip", "ml-latest-small", _CSV,
            sha256="696d65a3dfceac7c45750ad32df2c259311949efec81f0f144fdfb91ebc9e436",
        ),
        Archive(
            "lastfm-2k", "Last.fm-2K (HetRec 2011)",
            "https://files.grouplens.org/datasets/hetrec2011/hetrec2011-lastfm-2k.zip",
            # the official zip has no top-level folder: extract into hetrec2011-lastfm-2k/
            "hetrec2011-lastfm-2k", ("user_artists.dat", "artists.dat"),
            sha256="6738f48195667ff03caaab4d32ca9a3133d8cc026b7c3cdaf6ce1010e913c59c",
        ),
    )
}


def default_cache_dir() -> Path:
    """$FEDREC_CACHE, else ~/.cache/fedrec."""
    value = os.environ.get("FEDREC_CACHE")
    return Path(value).expanduser() if value else Path.home() / ".cache" / "fedrec"


def extracted_path(archive: Archive, cache_dir: Path) -> Path | None:
    """The archive's folder in ``cache_dir`` when it is already extracted there, else None."""
    folder = Path(cache_dir).expanduser() / archive.folder
    return folder if all((folder / f).is_file() for f in archive.required) else None


def fetch_dataset(
    name: str,
    cache_dir: Path | None = None,
    progress: bool | ProgressFn = True,
    *,
    archive: Archive | None = None,
) -> Path:
    """Download, verify and extract dataset ``name`` into ``cache_dir``; return its folder.

    Nothing is downloaded when the folder is already extracted. The download goes to a ``.part``
    file renamed only after its checksums match; a mismatch deletes it and raises FedrecError.
    ``progress`` is True (a line on stderr), False, or a callback ``(bytes_done, bytes_total)``.
    ``archive`` overrides the registry entry (tests point it at a ``file://`` URL).
    """
    if archive is None:
        if name not in ARCHIVES:
            raise FedrecError(f"no download known for {name!r}; downloadable datasets: {', '.join(ARCHIVES)}")
        archive = ARCHIVES[name]
    cache = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()
    done = extracted_path(archive, cache)
    if done is not None:
        return done
    try:
        cache.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise FedrecError(f"cannot create cache folder {cache}: {error.strerror}; set FEDREC_CACHE") from None
    zip_path = cache / f"{archive.name}.zip"
    if zip_path.is_file():
        _verify(archive, zip_path, _digests(zip_path), delete=False)
    else:
        reporter = _stderr_progress(archive) if progress is True else (progress or None)
        _download(archive, zip_path, reporter)
    folder = _extract(archive, zip_path, cache)
    zip_path.unlink(missing_ok=True)
    return folder


def _digests(path: Path) -> dict[str, str]:
    sha256, md5 = hashlib.sha256(), hashlib.md5()
    with open(path, "rb") as handle:
        while chunk := handle.read(_CHUNK):
            sha256.update(chunk)
            md5.update(chunk)
    return {"sha256": sha256.hexdigest(), "md5": md5.hexdigest()}


def _verify(archive: Archive, path: Path, digests: dict[str, str], delete: bool) -> None:
    expected = {"sha256": archive.sha256, "md5": archive.md5}
    for algorithm, want in expected.items():
        if want is not None and digests[algorithm] != want.lower():
            if delete:
                path.unlink(missing_ok=True)
                fix = "the download was corrupted or the file changed upstream; retry, or download it yourself"
            else:
                fix = f"delete {path} and retry, or download the dataset yourself"
            raise FedrecError(
                f"checksum mismatch for {archive.url}: {algorithm} {digests[algorithm]} != expected {want}; "
                f"{fix} and pass --data-dir"
            )


def _download(archive: Archive, zip_path: Path, reporter: ProgressFn | None) -> None:
    part = zip_path.with_name(zip_path.name + ".part")
    sha256, md5 = hashlib.sha256(), hashlib.md5()
    request = urllib.request.Request(archive.url, headers={"User-Agent": "fedrec"})
    try:
        with urllib.request.urlopen(request, timeout=60) as response, open(part, "wb") as out:
            length = response.headers.get("Content-Length")
            total = int(length) if length and length.isdigit() else archive.size
            received = 0
            while chunk := response.read(_CHUNK):
                out.write(chunk)
                sha256.update(chunk)
                md5.update(chunk)
                received += len(chunk)
                if reporter is not None:
                    reporter(received, total)
    except (urllib.error.URLError, OSError, ValueError) as error:
        part.unlink(missing_ok=True)
        reason = getattr(error, "reason", None) or getattr(error, "strerror", None) or error
        raise FedrecError(
            f"could not download {archive.url}: {' '.join(str(reason).split())}; check the network, "
            "or download and extract it yourself and pass --data-dir"
        ) from None
    _verify(archive, part, {"sha256": sha256.hexdigest(), "md5": md5.hexdigest()}, delete=True)
    os.replace(part, zip_path)


def _stderr_progress(archive: Archive) -> ProgressFn:
    def report(done: int, total: int | None) -> None:
        size = f"{done / 1e6:.1f}/{total / 1e6:.1f} MB" if total else f"{done / 1e6:.1f} MB"
        end = "\n" if total and done >= total else ""
        sys.stderr.write(f"\rdownloading {archive.title}: {size}{end}")
        sys.stderr.flush()

    return report


def check_member(name: str, mode: int) -> None:
    """Reject zip members that could write outside the extraction folder."""
    path = PurePosixPath(name.replace("\\", "/"))
    if (
        name.startswith(("/", "\\"))
        or ".." in path.parts
        or (path.parts and ":" in path.parts[0])
        or stat.S_ISLNK(mode)
    ):
        raise FedrecError(f"refusing to extract unsafe archive member {name!r}; the archive is not trustworthy")


def _extract(archive: Archive, zip_path: Path, cache: Path) -> Path:
    staging = cache / f".{archive.name}.extracting"
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    try:
        with zipfile.ZipFile(zip_path) as bundle:
            members = bundle.infolist()
            root = staging.resolve()
            for info in members:
                check_member(info.filename, info.external_attr >> 16)
                if not (staging / info.filename).resolve().is_relative_to(root):
                    check_member("../" + info.filename, 0)
            bundle.extractall(staging)
        source = staging / archive.folder
        if not source.is_dir():  # archives without a top-level folder (Last.fm-2K)
            source = staging
        missing = [f for f in archive.required if not (source / f).is_file()]
        if missing:
            raise FedrecError(
                f"{zip_path} does not contain {', '.join(missing)} under {archive.folder}/; "
                "it is not the expected archive"
            )
        target = cache / archive.folder
        shutil.rmtree(target, ignore_errors=True)  # a partial earlier extraction
        if source == staging:
            os.replace(staging, target)
        else:
            os.replace(source, target)
        return target
    except zipfile.BadZipFile as error:
        raise FedrecError(f"{zip_path} is not a valid zip ({error}); delete it and retry") from None
    finally:
        shutil.rmtree(staging, ignore_errors=True)
