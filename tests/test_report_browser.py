"""The report of a run opens in headless Chromium and shows every plot (each <img> decoded, naturalWidth > 0)."""

from __future__ import annotations

from pathlib import Path

import pytest

from fedrec.config import load_config

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_TOML = ROOT / "configs" / "default.toml"
TINY = ["data.num_users=100", "data.num_items=80", "train.rounds=2", "model.dim=4"]


@pytest.fixture(scope="module")
def report_html(tmp_path_factory) -> tuple[Path, list[Path]]:
    """A report of a federated and a centralised run of the same model (so it has every kind of plot but epsilon)."""
    from fedrec.report.build import write_report
    from fedrec.runtime.trainer import train

    root = tmp_path_factory.mktemp("browser-report")
    for name, extra in (("fed", []), ("central", ["train.mode=centralized"])):
        train(load_config(DEFAULT_TOML, [*TINY, *extra]), root / name)
    files = write_report([root / "fed", root / "central"], root / "site" / "report.html")
    return files.html, files.plots


def test_report_shows_every_plot_in_chromium(chromium_browser, report_html):
    html, plots = report_html
    page = chromium_browser.new_page()
    try:
        failed: list[str] = []
        page.on("requestfailed", lambda request: failed.append(request.url))
        page.goto(html.as_uri(), wait_until="load")
        images = page.evaluate("""() => Array.from(document.images).map(img => ({
            src: img.getAttribute('src'), complete: img.complete, width: img.naturalWidth, height: img.naturalHeight}))""")
        assert failed == []
        assert sorted(image["src"] for image in images) == sorted(p.relative_to(html.parent).as_posix() for p in plots)
        assert len(images) == 10  # 5 federated, 3 centralised, 2 federated-vs-centralised
        for image in images:
            assert image["complete"] and image["width"] > 0 and image["height"] > 0, image
        assert page.locator("table.comparison tbody tr").count() == 2
        assert page.locator("table.comparison td.best").count() >= 2  # rmse and mae at least
        assert page.title() == "fedrec report: 2 runs"
    finally:
        page.close()
