"""The HTTP service (fedrec/serving/service.py) through FastAPI's TestClient.

Answers are checked against the pure functions of fedrec/serving/recommend.py (themselves checked
against brute force in test_recommend.py); bad input must always get a 4xx JSON error, never a 5xx.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fedrec.serving.recommend import (item_vectors, load_run, ranked_records, recommend_for_user, seen_items,
                                      similar_items)
from fedrec.serving.service import ServingState, build_app, create_app
from fedrec.config import load_config
from fedrec.runtime.trainer import train

MAX_BODY = 4096
SMALL = ["data.num_users=40", "data.num_items=30", "data.mean_interactions=8", "model.dim=4", "train.rounds=2",
         "eval.ks=[5]", "eval.sampled_negatives=0"]
MODELS = {"mf": [], "neumf": ["model.name='ncf'", "model.layers=[8, 4]"]}


def train_small_run(directory, extra):
    train(load_config(None, SMALL + extra), directory)
    return directory


@pytest.fixture(scope="module")
def run_dirs(tmp_path_factory):
    root = tmp_path_factory.mktemp("service-runs")
    return {name: train_small_run(root / name, MODELS[name]) for name in ("mf", "neumf")}


@pytest.fixture(scope="module")
def run(run_dirs):
    return load_run(run_dirs["mf"])


@pytest.fixture(scope="module")
def client(run):
    # cache_k=5: K <= 5 comes from the precomputed lists, larger K is scored per request
    app = build_app(ServingState(run, cache_k=5), max_body_bytes=MAX_BODY)
    with TestClient(app, raise_server_exceptions=False) as test_client:
        yield test_client


def raw_user(run, index: int) -> str:
    return str(run.dataset.user_ids[index])


def raw_item(run, index: int) -> str:
    return str(run.dataset.item_ids[index])


def test_health_model_and_docs(client, run):
    health = client.get("/health").json()
    assert health == {"status": "ok", "run": "mf", "model": "mf", "dataset": "synthetic",
                      "users": run.dataset.num_users, "items": run.num_items}
    assert client.get("/model").json()["private_rows"] == {"user_vec": [4], "user_bias": [1]}
    schema = client.get("/openapi.json").json()
    assert {"/recommend", "/similar", "/items", "/health", "/score"} <= set(schema["paths"])
    docs = client.get("/docs")
    assert docs.status_code == 200 and "cdn" not in docs.text.lower()  # works offline
    assert client.get("/static-offline-docs/swagger-ui-bundle.js").status_code == 200


@pytest.mark.parametrize("k", [1, 5, 8])  # cached lists (<= 5) and scored on request (8)
def test_recommend_equals_the_pure_function(client, run, k):
    for user in (0, 17, 39):
        response = client.get("/recommend", params={"user": raw_user(run, user), "k": k})
        assert response.status_code == 200
        body = response.json()
        expected = ranked_records(run, recommend_for_user(run, user, k))
        assert body["user"] == raw_user(run, user) and body["k"] == k
        assert [e["item"] for e in body["items"]] == [e["item"] for e in expected]
        assert [e["title"] for e in body["items"]] == [e["title"] for e in expected]
        np.testing.assert_allclose([e["score"] for e in body["items"]], [e["score"] for e in expected], rtol=1e-6)
    assert client.get("/recommend", params={"user": raw_user(run, 0)}).json()["k"] == 10  # default K


def test_fast_path_answers_exactly_like_the_route(run):
    """The cached /recommend shortcut and the FastAPI route give the same status, headers and bytes."""
    queries = [{"user": raw_user(run, 3)}, {"user": raw_user(run, 3), "k": "4"}, {"user": raw_user(run, 3), "k": "9"},
               {"user": raw_user(run, 3), "k": "04"}, {"user": raw_user(run, 3), "k": "0"},
               {"user": raw_user(run, 3), "k": "99"}, {"user": "nobody"}, {"user": raw_user(run, 3), "other": "1"},
               {"user": raw_user(run, 3), "k": " 3"}, {"user": raw_user(run, 3), "k": "٣"}, {}]
    fast = TestClient(build_app(ServingState(run, cache_k=5), fast_path=True))
    routed = TestClient(build_app(ServingState(run, cache_k=5), fast_path=False))
    for query in queries:
        a, b = fast.get("/recommend", params=query), routed.get("/recommend", params=query)
        assert (a.status_code, a.content) == (b.status_code, b.content), query
        assert a.headers["content-type"] == b.headers["content-type"]


def test_similar_items_pages_and_history(client, run):
    body = client.get("/similar", params={"item": raw_item(run, 3), "k": 4}).json()
    expected = ranked_records(run, similar_items(item_vectors(run), 3, 4), "similarity")
    assert body["tables"] == ["item_vec"] and body["items"] == expected
    first = client.get("/items", params={"offset": 0, "limit": 20}).json()
    rest = client.get("/items", params={"offset": 20, "limit": 20}).json()
    assert first["total"] == run.num_items and len(first["items"]) == 20 and len(rest["items"]) == run.num_items - 20
    assert [e["item"] for e in first["items"] + rest["items"]] == [raw_item(run, i) for i in range(run.num_items)]
    assert first["items"][0]["title"] == run.dataset.item_titles[0]
    users = client.get("/users", params={"limit": 1000}).json()["users"]
    assert users == [raw_user(run, u) for u in range(run.dataset.num_users)]
    history = client.get("/history", params={"user": raw_user(run, 2)}).json()
    assert sorted(e["item"] for e in history["items"]) == sorted(raw_item(run, i) for i in seen_items(run, 2))


def test_on_device_scoring_mirrors_server_recommendations(client, run):
    """Private rows from the demo endpoint plus the user's own seen items give the server's top-K."""
    for user in (1, 22):
        device = client.get("/demo/private-rows", params={"user": raw_user(run, user)}).json()
        response = client.post("/score", json={"rows": device["rows"], "exclude": device["seen"], "k": 6})
        assert response.status_code == 200, response.text
        served = client.get("/recommend", params={"user": raw_user(run, user), "k": 6}).json()
        assert [e["item"] for e in response.json()["items"]] == [e["item"] for e in served["items"]]
        np.testing.assert_allclose([e["score"] for e in response.json()["items"]],
                                   [e["score"] for e in served["items"]], rtol=1e-5)


def test_on_device_scoring_by_hand(client, run):
    """A made-up vector: scores are mu + b + <p, q_i> + b_i, computed here with numpy."""
    vector, bias = [0.5, -1.0, 0.25, 2.0], 0.1
    items = run.params["item_vec"].numpy().astype(np.float64)
    expected = (float(run.params["global_bias"][0]) + bias + items @ np.array(vector)
                + run.params["item_bias"].numpy()[:, 0])
    exclude = [raw_item(run, int(np.argmax(expected)))]  # the best item is excluded, by raw ID
    body = client.post("/score", json={"rows": {"user_vec": vector, "user_bias": [bias]}, "exclude": exclude,
                                       "k": 3}).json()
    order = [i for i in np.argsort(-expected, kind="stable") if raw_item(run, i) not in exclude][:3]
    assert [e["item"] for e in body["items"]] == [raw_item(run, i) for i in order]
    np.testing.assert_allclose([e["score"] for e in body["items"]], expected[order], rtol=1e-5)


def test_score_keeps_nothing(client, run):
    state = client.app.state.serving
    before = dict(state._responses)
    client.post("/score", json={"rows": {"user_vec": [1, 2, 3, 4], "user_bias": [0]}, "k": 2})
    assert state._responses == before


@pytest.mark.parametrize("method, url, kwargs, status, message", [
    ("get", "/recommend", {"params": {"user": "nobody"}}, 404, "unknown user ID 'nobody'"),
    ("get", "/recommend", {"params": {"user": "1", "k": 0}}, 422, ""),
    ("get", "/recommend", {"params": {"user": "1", "k": "ten"}}, 422, ""),
    ("get", "/recommend", {"params": {"user": "1", "k": 29}}, 422, "candidate items for user 1"),
    ("get", "/recommend", {}, 422, ""),
    ("get", "/similar", {"params": {"item": "nope"}}, 404, "unknown item ID 'nope'"),
    ("get", "/similar", {"params": {"item": "1", "k": 30}}, 422, "use k <= 29"),
    ("get", "/items", {"params": {"limit": 0}}, 422, ""),
    ("get", "/history", {"params": {"user": "x"}}, 404, "unknown user ID"),
    ("post", "/score", {"json": {"rows": {"user_vec": [1, 2, 3], "user_bias": [0]}}}, 422, "rows.user_vec must have 4 values"),
    ("post", "/score", {"json": {"rows": {"user_vec": [1, 2, 3, 4]}}}, 422, "rows must hold exactly user_bias, user_vec"),
    ("post", "/score", {"json": {"rows": {"user_vec": [1, 2, 3, 4], "user_bias": [0]}, "exclude": ["zzz"]}}, 404,
     "unknown item ID 'zzz'"),
    ("post", "/score", {"json": {"rows": {"user_vec": [1, 2, 3, 4], "user_bias": [0]}, "k": 31}}, 422, ""),
    ("post", "/score", {"json": {"rows": {"user_vec": [1, 2, 3, 4], "user_bias": [0]}, "secret": 1}}, 422, ""),
    ("post", "/score", {"content": b'{"rows": {"user_vec": [NaN, 1, 2, 3], "user_bias": [0]}}',
                        "headers": {"content-type": "application/json"}}, 422, ""),
    ("post", "/score", {"content": b'{"rows": {"user_vec": [1e400, 1, 2, 3], "user_bias": [0]}}',
                        "headers": {"content-type": "application/json"}}, 422, ""),
    ("post", "/score", {"json": {"rows": {"user_vec": [1e300, 1e300, 1e300, 1e300], "user_bias": [0]}}}, 422,
     "non-finite scores"),
    ("post", "/score", {"content": b"not json", "headers": {"content-type": "application/json"}}, 422, ""),
    ("post", "/score", {"content": b"x" * (MAX_BODY + 1)}, 413, f"larger than {MAX_BODY} bytes"),
])
def test_bad_input_gets_a_clear_4xx(client, method, url, kwargs, status, message):
    response = getattr(client, method)(url, **kwargs)
    assert response.status_code == status, response.text
    assert message in json.dumps(response.json()["detail"])


def test_chunked_oversized_body_is_refused(client):
    def chunks():  # no content-length: the limit is enforced while reading
        for _ in range(MAX_BODY // 1000 + 2):
            yield b" " * 1000

    response = client.post("/score", content=chunks(), headers={"content-type": "application/json"})
    assert response.status_code == 413


def test_demo_endpoint_can_be_turned_off(run):
    with TestClient(build_app(ServingState(run, cache_k=3), demo=False)) as plain:
        assert plain.get("/demo/private-rows", params={"user": raw_user(run, 0)}).status_code == 404
        assert plain.get("/recommend", params={"user": raw_user(run, 0), "k": 2}).status_code == 200


def test_ncf_service_from_a_run_directory(run_dirs):
    """create_app on a directory; NeuMF's private rows are its two user embeddings."""
    with TestClient(create_app(run_dirs["neumf"])) as ncf:
        assert ncf.get("/model").json()["private_rows"] == {"user_gmf": [4], "user_mlp": [4]}
        user = ncf.get("/users").json()["users"][5]
        device = ncf.get("/demo/private-rows", params={"user": user}).json()
        scored = ncf.post("/score", json={"rows": device["rows"], "exclude": device["seen"], "k": 4}).json()
        served = ncf.get("/recommend", params={"user": user, "k": 4}).json()
        assert [e["item"] for e in scored["items"]] == [e["item"] for e in served["items"]]
        assert ncf.get("/similar", params={"item": "1", "k": 2}).json()["tables"] == ["item_gmf", "item_mlp"]


# -- fuzzing: whatever arrives, the answer is never a 5xx -------------------------------------------

json_values = st.recursive(
    st.none() | st.booleans() | st.integers(min_value=-(10**30), max_value=10**30) | st.floats() | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=6) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=20,
)
row_values = st.lists(st.floats() | st.integers(min_value=-(10**20), max_value=10**20) | st.text(max_size=3), max_size=6)
score_bodies = st.fixed_dictionaries(
    {}, optional={"rows": st.dictionaries(st.sampled_from(["user_vec", "user_bias", "other"]), row_values, max_size=3)
                  | json_values,
                  "exclude": st.lists(st.text(max_size=4) | st.integers(-5, 50), max_size=4) | json_values,
                  "k": st.integers(-(10**20), 10**20) | json_values})
query_text = st.text(max_size=12) | st.integers(-(10**20), 10**20).map(str)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(body=score_bodies)
def test_fuzzed_score_bodies_never_5xx(client, body):
    text = json.dumps(body, allow_nan=True)
    response = client.post("/score", content=text, headers={"content-type": "application/json"})
    assert 200 <= response.status_code < 500, response.text
    assert response.status_code == 200 or "detail" in response.json()


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(path=st.sampled_from(["/recommend", "/similar", "/items", "/users", "/history", "/demo/private-rows"]),
       name=st.sampled_from(["user", "item", "k", "offset", "limit"]), value=query_text, k=query_text)
def test_fuzzed_queries_never_5xx(client, path, name, value, k):
    response = client.get(path, params={name: value, "k": k})
    assert response.status_code < 500, response.text


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(raw=st.binary(max_size=300) | st.text(max_size=300).map(str.encode))
def test_fuzzed_raw_bodies_never_5xx(client, raw):
    response = client.post("/score", content=raw, headers={"content-type": "application/json"})
    assert 400 <= response.status_code < 500


def test_deeply_nested_json_is_a_4xx(client):
    depth = MAX_BODY // 2 - 10
    response = client.post("/score", content=b"[" * depth + b"]" * depth, headers={"content-type": "application/json"})
    assert 400 <= response.status_code < 500


# -- fedrec serve ------------------------------------------------------------------------------------


@pytest.mark.parametrize("args, message", [
    (["--workers", "0"], "--workers 0 must be at least 1"),
    (["--port", "70000"], "--port 70000 is not a TCP port"),
])
def test_serve_command_refuses_bad_options(run_dirs, args, message):
    from typer.testing import CliRunner

    from fedrec.cli import app
    from fedrec.errors import FedrecError

    result = CliRunner().invoke(app, ["serve", str(run_dirs["mf"]), *args])
    assert isinstance(result.exception, FedrecError) and message in str(result.exception)
    missing = CliRunner().invoke(app, ["serve", str(run_dirs["mf"] / "nope")])
    assert isinstance(missing.exception, FedrecError) and "not found" in str(missing.exception)


def test_serve_command_refuses_a_taken_port(run_dirs):
    import socket

    from typer.testing import CliRunner

    from fedrec.cli import app
    from fedrec.errors import FedrecError

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = CliRunner().invoke(app, ["serve", str(run_dirs["mf"]), "--port", str(port)])
    assert isinstance(result.exception, FedrecError)
    assert f"cannot listen on 127.0.0.1:{port}" in str(result.exception)


@pytest.mark.slow
def test_serve_command_answers_over_http(run_dirs, run):
    """``fedrec serve`` in a subprocess with two workers answers /health and /recommend."""
    import os
    import socket
    import subprocess
    import sys
    import time

    import httpx

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    server = subprocess.Popen([sys.executable, "-m", "fedrec.cli", "serve", str(run_dirs["mf"]), "--port", str(port),
                               "--workers", "2"], env={**os.environ, "OMP_NUM_THREADS": "1"},
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                health = httpx.get(f"http://127.0.0.1:{port}/health", timeout=2)
                break
            except httpx.HTTPError:
                assert server.poll() is None and time.monotonic() < deadline, "fedrec serve did not start"
                time.sleep(0.5)
        assert health.json()["model"] == "mf"
        body = httpx.get(f"http://127.0.0.1:{port}/recommend", params={"user": raw_user(run, 2), "k": 3}).json()
        assert [e["item"] for e in body["items"]] == [e["item"] for e in ranked_records(run, recommend_for_user(run, 2, 3))]
    finally:
        server.terminate()
        server.wait(timeout=30)
