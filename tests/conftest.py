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


# -- headless Chromium for browser tests (Debian's chromium, driven by Playwright; never downloaded) --

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]


@pytest.fixture(scope="session")
def chromium_browser():
    """A Playwright (sync API) Browser on /usr/bin/chromium; skips when it is missing (fails in CI)."""
    if not CHROMIUM.is_file():
        message = f"{CHROMIUM} not found: install Debian's chromium (apt-get install --no-install-recommends chromium)"
        if os.environ.get("CI") == "true":
            pytest.fail(message)
        pytest.skip(message)
    os.environ.setdefault("PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD", "1")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS)
        try:
            yield browser
        finally:
            browser.close()


@pytest.fixture(scope="session")
def load_bench():
    """Import a script under bench/ as a module, by name (bench/ on sys.path, as the scripts expect)."""
    import importlib.util
    import sys

    bench_dir = Path(__file__).resolve().parent.parent / "bench"

    def load(name: str):
        if str(bench_dir) not in sys.path:
            sys.path.insert(0, str(bench_dir))
        spec = importlib.util.spec_from_file_location(name, bench_dir / f"{name}.py")
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
        return module

    return load
