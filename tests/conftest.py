"""Shared fixtures. Real datasets come from $FEDREC_DATA; tests needing them skip with a reason."""

from __future__ import annotations

import os
from pathlib import Path

import pytest


def _data_root() -> Path | None:
    value = os.environ.get("FEDREC_DATA")
    return Path(value) if value else None


@pytest.fixture(scope="session")
def data_root() -> Path:
    """The folder holding real datasets (ml-100k/, hetrec2011-lastfm-2k/)."""
    root = _data_root()
    if root is None:
        pytest.skip("FEDREC_DATA is not set: point it at a folder with ml-100k/ and hetrec2011-lastfm-2k/")
    if not root.is_dir():
        pytest.skip(f"FEDREC_DATA={root} is not a directory")
    return root


@pytest.fixture(scope="session")
def ml100k_dir(data_root: Path) -> Path:
    path = data_root / "ml-100k"
    if not (path / "u.data").is_file():
        pytest.skip(f"{path}/u.data not found: MovieLens-100K is missing from FEDREC_DATA")
    return path


@pytest.fixture(scope="session")
def lastfm_dir(data_root: Path) -> Path:
    path = data_root / "hetrec2011-lastfm-2k"
    if not (path / "user_artists.dat").is_file():
        pytest.skip(f"{path}/user_artists.dat not found: Last.fm-2K is missing from FEDREC_DATA")
    return path
