"""The service's web page in headless Chromium: pick a user, see history, recommendations and on-device scores.

The service runs in a thread (uvicorn, a free loopback port) on a small run trained here on the
synthetic dataset; the page is driven through the ``chromium_browser`` fixture (tests/conftest.py).
"""

from __future__ import annotations

import socket
import threading
import time
from pathlib import Path

import pytest
import uvicorn

from fedrec.config import load_config
from fedrec.runtime.trainer import train
from fedrec.serving.recommend import load_run, ranked_records, recommend_for_user, user_of
from fedrec.serving.service import ServingState, build_app

SMALL = ["data.num_users=40", "data.num_items=30", "data.mean_interactions=8", "model.dim=4", "train.rounds=2",
         "eval.ks=[5]", "eval.sampled_negatives=0"]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    """(base URL, loaded run) of a service running in a background thread."""
    run_dir = tmp_path_factory.mktemp("web") / "run"
    train(load_config(None, SMALL), run_dir)
    run = load_run(run_dir)
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(build_app(ServingState(run)), host="127.0.0.1", port=port,
                                           log_level="warning", access_log=False, ws="none"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            pytest.fail("the service did not start within 30 s")
        time.sleep(0.05)
    yield f"http://127.0.0.1:{port}", run
    server.should_exit = True
    thread.join(timeout=10)


def table_rows(page, selector: str) -> list[list[str]]:
    return page.eval_on_selector_all(f"{selector} tbody tr",
                                     "rows => rows.map(r => Array.from(r.cells, c => c.textContent))")


def test_pick_a_user_and_see_recommendations(served, chromium_browser, tmp_path):
    url, run = served
    user = str(run.dataset.user_ids[4])
    page = chromium_browser.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda error: errors.append(str(error)))
    page.on("console", lambda message: errors.append(message.text) if message.type == "error" else None)
    try:
        page.goto(url + "/")
        page.wait_for_selector("body[data-ready='true']", timeout=15000)
        assert "mf model" in page.text_content("#run-info")
        page.select_option("#user-select", user)
        page.fill("#k-input", "5")
        page.click("#show")
        page.wait_for_selector(f"body[data-shown-user='{user}']", timeout=15000)

        expected = ranked_records(run, recommend_for_user(run, user_of(run, user), 5))
        recommended = table_rows(page, "#recommendations")
        on_device = table_rows(page, "#on-device")
        history = table_rows(page, "#history")
        assert [row[1] for row in recommended] == [e["item"] for e in expected]
        assert [row[2] for row in recommended] == [e["title"] for e in expected]
        assert all(row[2] for row in recommended)  # titles shown
        # on-device scores: the same items, scores equal to the server's to the shown precision
        assert [row[1] for row in on_device] == [e["item"] for e in expected]
        assert [float(row[3]) for row in on_device] == pytest.approx([e["score"] for e in expected], abs=1e-3)
        assert len(history) == run.seen[user_of(run, user)].nnz and all(row[1] for row in history)
        assert page.is_hidden("#error")
        shot = tmp_path / "page.png"
        page.screenshot(path=str(shot), full_page=True)
        assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

        # a K the service refuses (422) is shown to the user, not swallowed
        page.fill("#k-input", "1000")
        page.click("#show")
        page.wait_for_selector("#error:not([hidden])", timeout=15000)
        assert "k=1000 is more than" in page.text_content("#error")
        errors[:] = [e for e in errors if "422" not in e]  # the browser logs the refused request itself
    finally:
        page.close()
    assert not errors, errors


@pytest.mark.slow
def test_api_docs_render_offline(served, chromium_browser):
    """/docs (Swagger UI, assets served locally) lists the endpoints without fetching anything from outside."""
    url, _ = served
    page = chromium_browser.new_page()
    outside: list[str] = []
    page.on("request", lambda request: outside.append(request.url) if not request.url.startswith(url) else None)
    try:
        page.goto(url + "/docs")
        page.wait_for_selector("text=/recommend", timeout=15000)
        assert page.is_visible("text=/score")
    finally:
        page.close()
    assert not outside, outside


def test_static_files_exist():
    static = Path(__file__).resolve().parents[1] / "fedrec" / "serving" / "static"
    assert {"index.html", "app.js", "style.css"} <= {path.name for path in static.iterdir()}
