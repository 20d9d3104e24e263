"""The HTTP service behind ``fedrec serve``: recommendations, similar items and on-device scoring.

``create_app(run_dir)`` loads a finished run once and precomputes every user's ranked list (the
top ``cache_k`` unseen items), so ``GET /recommend`` is a lookup plus a cached JSON body.

On-device mode (``POST /score``) mirrors a federated deployment: the client sends its own private
rows (user vector, and user bias where the model has one), optionally the items to leave out, and
gets the top-K items with scores. Nothing about the request is kept: no log line, no cache entry.

Every bad input gets a 4xx JSON body ``{"detail": "..."}``: unknown IDs 404, bad K or malformed
bodies 422, bodies over ``max_body_bytes`` 413.
"""

from __future__ import annotations

import json
import math
import os
from collections import OrderedDict
from pathlib import Path
from typing import Annotated, Any, Union
from urllib.parse import parse_qsl

import numpy as np
import torch
from fastapi import FastAPI, HTTPException, Query
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, Response
from fastapi.staticfiles import StaticFiles
from fastapi_offline import FastAPIOffline
from pydantic import BaseModel, ConfigDict, Field

from fedrec.errors import FedrecError
from fedrec.serving.recommend import (Ranked, TrainedRun, item_embedding_tables, item_metadata, item_vectors, load_run, masked_scores,
                                      private_row_shapes, private_rows_of, ranked_records, score_private_rows,
                                      similar_items, top_k_excluding, top_k_from_scores, user_history)

STATIC_DIR = Path(__file__).resolve().parent / "static"
RUN_DIR_ENV = "FEDREC_SERVE_RUN_DIR"  # read by :func:`app_from_environment` (uvicorn workers)
DATA_DIR_ENV = "FEDREC_SERVE_DATA_DIR"
DEMO_ENV = "FEDREC_SERVE_DEMO"
DEFAULT_MAX_BODY_BYTES = 1 << 20
MAX_K = 1000  # largest K a request may ask for (before the per-user candidate check)

FiniteFloat = Annotated[float, Field(allow_inf_nan=False)]


class RankedItem(BaseModel):
    rank: int
    item: str
    title: str
    score: float


class Recommendations(BaseModel):
    user: str
    k: int
    items: list[RankedItem]


class SimilarItem(BaseModel):
    rank: int
    item: str
    title: str
    similarity: float


class SimilarItems(BaseModel):
    item: str
    title: str
    k: int
    tables: list[str]
    items: list[SimilarItem]


class ScoreRequest(BaseModel):
    """A client's private rows (as ``GET /model`` describes them), items to leave out, and K."""

    model_config = ConfigDict(extra="forbid")
    rows: dict[str, list[FiniteFloat]] = Field(
        description="private row name -> values, e.g. {\"user_vec\": [...], \"user_bias\": [0.1]}")
    exclude: list[Union[str, int]] = Field(default_factory=list, description="raw item IDs not to recommend")
    k: int = Field(default=10, ge=1, le=MAX_K)


class ScoredItems(BaseModel):
    k: int
    items: list[RankedItem]


class _BodySizeLimit:
    """ASGI middleware: requests with a body larger than ``limit`` bytes get 413 before the app reads them."""

    def __init__(self, app: Any, limit: int) -> None:
        self.app, self.limit = app, limit

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http" or scope["method"] in ("GET", "HEAD", "OPTIONS"):
            await self.app(scope, receive, send)
            return
        declared = dict(scope["headers"]).get(b"content-length")
        if declared is not None and (not declared.isdigit() or int(declared) > self.limit):
            await self._reject(send)
            return
        chunks, size, more = [], 0, True
        while more:  # read the whole body (also when chunked) and stop as soon as it is too large
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            chunks.append(message.get("body", b""))
            size += len(chunks[-1])
            if size > self.limit:
                await self._reject(send)
                return
            more = message.get("more_body", False)
        body = b"".join(chunks)
        delivered = False

        async def replay() -> dict:
            nonlocal delivered
            if not delivered:
                delivered = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        await self.app(scope, replay, send)

    async def _reject(self, send: Any) -> None:
        body = json.dumps({"detail": f"request body larger than {self.limit} bytes; send a smaller body"}).encode()
        await send({"type": "http.response.start", "status": 413,
                    "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]})
        await send({"type": "http.response.body", "body": body})


class _RecommendFastPath:
    """ASGI middleware: a well-formed ``GET /recommend`` is answered from the cache without the router.

    It answers only requests the FastAPI route would answer with 200 (known user, K an integer in
    range, no other parameters) and sends the same bytes; everything else, errors included, goes
    on to the route. Skipping FastAPI's per-request parameter machinery halves the CPU cost of a request.
    """

    def __init__(self, app: Any, state: ServingState) -> None:
        self.app, self.state = app, state

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] == "http" and scope["path"] == "/recommend" and scope["method"] == "GET":
            body = self._cached_answer(scope["query_string"])
            if body is not None:
                await send({"type": "http.response.start", "status": 200,
                            "headers": [(b"content-length", str(len(body)).encode()),
                                        (b"content-type", b"application/json")]})
                await send({"type": "http.response.body", "body": body})
                return
        await self.app(scope, receive, send)

    def _cached_answer(self, query_string: bytes) -> bytes | None:
        pairs = parse_qsl(query_string.decode("latin-1"), keep_blank_values=True)
        query = dict(pairs)
        if len(query) != len(pairs) or not query.keys() <= {"user", "k"}:
            return None
        user = self.state.run.user_index.get(query.get("user", ""))
        k_text = query.get("k", "10")
        if user is None or not (k_text.isascii() and k_text.isdigit() and len(k_text) <= 4):
            return None
        k = int(k_text)
        if not 1 <= k <= min(MAX_K, int(self.state.candidates[user])):
            return None
        return self.state.recommendation_body(user, k)


class ServingState:
    """What the handlers read: the run, each user's precomputed ranking, item vectors, a response cache."""

    def __init__(self, run: TrainedRun, cache_k: int = 100, response_cache_size: int = 65536) -> None:
        self.run = run
        self.num_users, self.num_items = run.dataset.num_users, run.num_items
        self.candidates = self.num_items - np.diff(run.seen.indptr)  # unseen items per user
        self.cache_k = max(1, min(cache_k, self.num_items))
        self.top_items, self.top_scores = self._rank_everyone()
        self.vectors = _item_vectors_or_none(run)
        self.tables = [] if self.vectors is None else item_embedding_tables(run)  # names of what vectors holds
        self.item_ids = [str(raw) for raw in run.dataset.item_ids]
        self.user_ids = [str(raw) for raw in run.dataset.user_ids]
        self._responses: OrderedDict[tuple[int, int], bytes] = OrderedDict()
        self._response_cache_size = response_cache_size

    def _rank_everyone(self, chunk: int = 512) -> tuple[np.ndarray, np.ndarray]:
        items = np.zeros((self.num_users, self.cache_k), dtype=np.int64)
        scores = np.zeros((self.num_users, self.cache_k), dtype=np.float32)
        for begin in range(0, self.num_users, chunk):
            users = np.arange(begin, min(begin + chunk, self.num_users))
            values, indices = top_k_from_scores(masked_scores(self.run, users), self.cache_k)
            items[users], scores[users] = indices.numpy(), values.numpy()
        return items, scores

    def ranked(self, user: int, k: int) -> Ranked:
        """Top-K unseen items of a user: from the precomputed lists when K fits, else scored now."""
        if k <= self.cache_k:
            return Ranked(self.top_items[user, :k], self.top_scores[user, :k])
        values, indices = top_k_from_scores(masked_scores(self.run, np.array([user]))[0], k)
        return Ranked(indices.numpy(), values.numpy())

    def recommendation_body(self, user: int, k: int) -> bytes:
        """The JSON body of ``/recommend`` (in a bounded LRU cache: the answer for a user and K never changes)."""
        key = (user, k)
        body = self._responses.get(key)
        if body is not None:
            self._responses.move_to_end(key)
        else:
            records = ranked_records(self.run, self.ranked(user, k))
            body = json.dumps({"user": self.user_ids[user], "k": k, "items": records}).encode()
            self._responses[key] = body
            if len(self._responses) > self._response_cache_size:
                self._responses.popitem(last=False)
        return body


def _item_vectors_or_none(run: TrainedRun):
    try:
        return item_vectors(run)
    except FedrecError:  # a model without item vectors: /similar says so
        return None


def _not_found(kind: str, raw: str, examples: list[str]) -> HTTPException:
    return HTTPException(404, f"unknown {kind} ID {raw!r}; use a raw {kind} ID such as {', '.join(examples[:3])}")


def _check_k(k: int, candidates: int, whose: str) -> None:
    if k > candidates:
        raise HTTPException(422, f"k={k} is more than the {candidates} candidate items {whose}; use k <= {candidates}")


def create_app(run_dir: Path | str, data_dir: Path | None = None, demo: bool = True, cache_k: int = 100,
               max_body_bytes: int = DEFAULT_MAX_BODY_BYTES) -> FastAPI:
    """The FastAPI app for a finished run; ``demo`` adds the page's endpoint that hands out a user's private rows."""
    run = load_run(Path(run_dir), data_dir)
    state = ServingState(run, cache_k)
    return build_app(state, demo=demo, max_body_bytes=max_body_bytes)


def build_app(state: ServingState, demo: bool = True, max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
              fast_path: bool = True) -> FastAPI:
    """Routes over an already loaded :class:`ServingState` (``fast_path``: see :class:`_RecommendFastPath`)."""
    run = state.run
    # FastAPIOffline: the same FastAPI app, with /docs and /redoc assets served locally instead of from a CDN
    app = FastAPIOffline(title="fedrec", version="0.1.0",
                  description=f"Recommendations from the {run.model_name} run {run.run_dir.name} on {run.dataset.name}.")
    app.add_middleware(_BodySizeLimit, limit=max_body_bytes)
    if fast_path:
        app.add_middleware(_RecommendFastPath, state=state)
    app.state.serving = state
    row_shapes = private_row_shapes(run.model)

    def user_index(user: str) -> int:
        index = run.user_index.get(user)
        if index is None:
            raise _not_found("user", user, state.user_ids)
        return index

    def item_index(item: str) -> int:
        index = run.item_index.get(item)
        if index is None:
            raise _not_found("item", item, state.item_ids)
        return index

    @app.exception_handler(RequestValidationError)
    async def _invalid_request(_request: Any, error: RequestValidationError) -> JSONResponse:
        # Without the offending input: it may hold NaN (not JSON) or a client's private vector.
        details = [{"loc": [str(part) for part in entry.get("loc", ())], "msg": str(entry.get("msg", "")),
                    "type": str(entry.get("type", ""))} for entry in error.errors()]
        return JSONResponse({"detail": details}, status_code=422)

    @app.exception_handler(FedrecError)
    async def _fedrec_error(_request: Any, error: FedrecError) -> JSONResponse:
        return JSONResponse({"detail": str(error)}, status_code=422)

    @app.get("/health", summary="Liveness and what is being served")
    async def health() -> dict[str, Any]:
        return {"status": "ok", "run": run.run_dir.name, "model": run.model_name, "dataset": run.dataset.name,
                "users": state.num_users, "items": state.num_items}

    @app.get("/model", summary="What a client holds privately (for POST /score)")
    async def model_info() -> dict[str, Any]:
        return {"model": run.model_name, "private_rows": {name: list(shape) for name, shape in row_shapes.items()},
                "similarity_tables": state.tables}

    @app.get("/recommend", response_model=Recommendations, summary="Top-K unseen items for a user")
    async def recommend(user: Annotated[str, Query(description="raw user ID")],
                        k: Annotated[int, Query(ge=1, le=MAX_K)] = 10) -> Response:
        index = user_index(user)
        _check_k(k, int(state.candidates[index]), f"for user {user}")
        return Response(state.recommendation_body(index, k), media_type="application/json")

    @app.get("/similar", response_model=SimilarItems, summary="Nearest items by cosine of item vectors")
    async def similar(item: Annotated[str, Query(description="raw item ID")],
                      k: Annotated[int, Query(ge=1, le=MAX_K)] = 10) -> dict[str, Any]:
        index = item_index(item)
        if state.vectors is None:
            raise HTTPException(422, f"the {run.model_name} model has no item vectors to compare")
        _check_k(k, state.num_items - 1, "besides the item itself")
        ranked = similar_items(state.vectors, index, k)
        return {"item": item, "title": run.dataset.item_titles[index], "k": k, "tables": state.tables,
                "items": ranked_records(run, ranked, "similarity")}

    @app.get("/items", summary="The catalogue, one page at a time")
    async def items(offset: Annotated[int, Query(ge=0)] = 0,
                    limit: Annotated[int, Query(ge=1, le=1000)] = 50) -> dict[str, Any]:
        page = range(min(offset, state.num_items), min(offset + limit, state.num_items))
        return {"total": state.num_items, "offset": offset, "limit": limit,
                "items": [item_metadata(run, i) for i in page]}

    @app.get("/users", summary="Raw user IDs, one page at a time")
    async def users(offset: Annotated[int, Query(ge=0)] = 0,
                    limit: Annotated[int, Query(ge=1, le=10000)] = 100) -> dict[str, Any]:
        return {"total": state.num_users, "offset": offset, "limit": limit,
                "users": state.user_ids[offset:offset + limit]}

    @app.get("/history", summary="A user's training interactions, most recent first")
    async def history(user: Annotated[str, Query(description="raw user ID")],
                      limit: Annotated[int, Query(ge=1, le=10000)] = 50) -> dict[str, Any]:
        index = user_index(user)
        entries = user_history(run, index)
        return {"user": user, "total": len(entries), "items": entries[:limit]}

    @app.post("/score", response_model=ScoredItems, summary="On-device mode: score with the client's own private rows")
    async def score(request: ScoreRequest) -> dict[str, Any]:
        rows = {}
        if set(request.rows) != set(row_shapes):
            raise HTTPException(422, f"rows must hold exactly {', '.join(sorted(row_shapes))} for the {run.model_name} "
                                     f"model, got {', '.join(sorted(request.rows)) or 'none'}")
        for name, shape in row_shapes.items():
            size = math.prod(shape)
            if len(request.rows[name]) != size:
                raise HTTPException(422, f"rows.{name} must have {size} values, got {len(request.rows[name])}")
            rows[name] = torch.tensor(request.rows[name], dtype=torch.float32).reshape(shape)
        exclude = np.array([item_index(str(raw)) for raw in request.exclude], dtype=np.int64)
        _check_k(request.k, state.num_items - len(np.unique(exclude)), "after the exclusions")
        scores = score_private_rows(run, rows)
        if not bool(torch.isfinite(scores).all()):
            raise HTTPException(422, "these rows give non-finite scores (values too large); send values of a trained model")
        return {"k": request.k, "items": ranked_records(run, top_k_excluding(scores, exclude, request.k))}

    if demo:
        @app.get("/demo/private-rows", summary="Demo only: a user's private rows, as their own device would hold them")
        async def demo_private_rows(user: Annotated[str, Query(description="raw user ID")]) -> dict[str, Any]:
            index = user_index(user)
            rows = {name: value.reshape(-1).tolist() for name, value in private_rows_of(run, index).items()}
            seen = [state.item_ids[i] for i in run.seen[index].indices]
            return {"user": user, "rows": rows, "seen": sorted(seen)}

    @app.get("/", include_in_schema=False)
    async def page() -> FileResponse:
        return FileResponse(STATIC_DIR / "index.html", media_type="text/html")

    app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")
    return app


def app_from_environment() -> FastAPI:
    """App factory for uvicorn workers: the run directory comes from ``$FEDREC_SERVE_RUN_DIR``."""
    run_dir = os.environ.get(RUN_DIR_ENV)
    if not run_dir:
        raise FedrecError(f"${RUN_DIR_ENV} is not set; start the service with fedrec serve RUN_DIR")
    data_dir = os.environ.get(DATA_DIR_ENV)
    return create_app(Path(run_dir), Path(data_dir) if data_dir else None, demo=os.environ.get(DEMO_ENV, "1") == "1")
