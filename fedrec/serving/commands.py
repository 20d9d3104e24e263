"""CLI commands of a finished run: ``fedrec recommend``, ``fedrec similar``, ``fedrec serve``."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.console import Console
from rich.table import Table

from fedrec.errors import FedrecError

out = Console()
RunDir = Annotated[Path, typer.Argument(help="A finished run directory (the --out of fedrec train).")]
DataDir = Annotated[Optional[Path], typer.Option("--data-dir", help="Folder with the run's dataset, if not where it was trained.")]


def _print_ranked(title: str, records: list[dict], score_name: str) -> None:
    table = Table(title=title, title_justify="left")
    for column in ("rank", "item", "title", score_name):
        table.add_column(column, justify="right" if column in ("rank", score_name) else "left")
    for record in records:
        table.add_row(str(record["rank"]), record["item"], record["title"], f"{record[score_name]:.4f}")
    out.print(table)


def recommend(
    run_dir: RunDir,
    user: Annotated[Optional[str], typer.Option("--user", help="Raw user ID, as in the dataset.")] = None,
    k: Annotated[int, typer.Option("-k", "--k", help="How many items.")] = 10,
    all_users: Annotated[bool, typer.Option("--all", help="Top-K for every user, written to --output.")] = False,
    output: Annotated[Optional[Path], typer.Option("--output", help="With --all: a .csv or .parquet file.")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")] = False,
    data_dir: DataDir = None,
) -> None:
    """Top-K items a user has not interacted with in training, with titles (or --all users to a file)."""
    if all_users == (user is not None):
        raise FedrecError("pass either --user ID or --all --output FILE")
    if all_users and output is None:
        raise FedrecError("--all needs --output FILE ending in .csv or .parquet")
    if output is not None and not all_users:
        raise FedrecError("--output is for --all; with --user the list is printed")
    if output is not None and output.suffix.lower() not in (".csv", ".parquet"):
        raise FedrecError(f"cannot write {output}: the output must end in .csv or .parquet")
    if k < 1:
        raise FedrecError(f"-k {k} is not a positive number of items; use -k 1 or more")
    from fedrec.serving.recommend import (export_recommendations, load_run, ranked_records, recommend_all,
                                          recommend_for_user, user_of)

    run = load_run(run_dir, data_dir)
    if all_users:
        assert output is not None
        frame = recommend_all(run, k)
        export_recommendations(frame, output)
        out.print(f"wrote top-{k} for {run.dataset.num_users} users ({len(frame)} rows) to {output}", highlight=False)
        return
    assert user is not None
    records = ranked_records(run, recommend_for_user(run, user_of(run, user), k))
    if as_json:
        out.print_json(json.dumps({"user": user, "k": k, "items": records}))
    else:
        _print_ranked(f"top {k} for user {user} ({run.model_name}, {run.dataset.name})", records, "score")


def similar(
    run_dir: RunDir,
    item: Annotated[str, typer.Option("--item", help="Raw item ID, as in the dataset.")],
    k: Annotated[int, typer.Option("-k", "--k", help="How many items.")] = 10,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")] = False,
    data_dir: DataDir = None,
) -> None:
    """Nearest items by cosine similarity of the model's item vectors."""
    from fedrec.serving.recommend import (item_embedding_tables, item_of, item_title, item_vectors, load_run,
                                          ranked_records, similar_items)

    run = load_run(run_dir, data_dir)
    index = item_of(run, item)
    records = ranked_records(run, similar_items(item_vectors(run), index, k), "similarity")
    tables = item_embedding_tables(run)
    if as_json:
        out.print_json(json.dumps({"item": item, "title": item_title(run, index), "tables": tables, "items": records}))
    else:
        _print_ranked(f"nearest to {item} {item_title(run, index)!r} (cosine of {' + '.join(tables)})", records,
                      "similarity")


def serve(
    run_dir: RunDir,
    host: Annotated[str, typer.Option("--host", help="Address to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option("--port", help="TCP port.")] = 8000,
    workers: Annotated[int, typer.Option("--workers", help="Server processes (each loads the run).")] = 1,
    demo: Annotated[bool, typer.Option("--demo/--no-demo", help="Serve the demo endpoint that hands out a user's private rows (the web page needs it).")] = True,
    access_log: Annotated[bool, typer.Option("--access-log", help="Log every request (off: nothing about requests is kept).")] = False,
    data_dir: DataDir = None,
) -> None:
    """HTTP service: /recommend, /similar, /items, /score (on-device mode), /health, /docs and a web page at /."""
    if workers < 1:
        raise FedrecError(f"--workers {workers} must be at least 1")
    if not 0 <= port <= 65535:
        raise FedrecError(f"--port {port} is not a TCP port; use 1..65535 (0: any free port)")
    _check_can_listen(host, port)
    import uvicorn

    from fedrec.serving.service import DATA_DIR_ENV, DEMO_ENV, RUN_DIR_ENV, create_app

    # One torch thread per worker: requests are small and the workers share the cores.
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    import torch

    torch.set_num_threads(1)
    app = create_app(run_dir, data_dir, demo=demo)  # a bad run fails here with one line, before any worker starts
    options = dict(host=host, port=port, access_log=access_log, log_level="info", ws="none")
    if workers == 1:
        uvicorn.run(app, **options)
        return
    del app  # each worker process builds its own from the environment
    os.environ[RUN_DIR_ENV] = str(run_dir.resolve())
    os.environ[DEMO_ENV] = "1" if demo else "0"
    if data_dir is not None:
        os.environ[DATA_DIR_ENV] = str(data_dir.resolve())
    uvicorn.run("fedrec.serving.service:app_from_environment", factory=True, workers=workers, **options)


def _check_can_listen(host: str, port: int) -> None:
    """One line instead of a server log when the address is taken or not ours."""
    import socket

    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
        family, kind, proto, _, address = infos[0]
        with socket.socket(family, kind, proto) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            probe.bind(address)
    except OSError as error:
        raise FedrecError(f"cannot listen on {host}:{port} ({error.strerror or error}); "
                          "pass a free --port or another --host") from None


def register(app: typer.Typer) -> None:
    """Add recommend, similar and serve to the ``fedrec`` command line."""
    app.command()(recommend)
    app.command()(similar)
    app.command()(serve)
