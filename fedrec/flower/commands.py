"""``fedrec deploy``: the CLI command (heavy imports stay inside the function)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any, Optional

import typer


def register(app: typer.Typer) -> None:
    """Add ``fedrec deploy`` to the CLI."""

    @app.command()
    def deploy(
        config: Annotated[Path, typer.Argument(help="TOML config file (see configs/).")],
        nodes: Annotated[int, typer.Option("--nodes", help="SuperNodes to start; the clients are split among them.")] = 2,
        set_: Annotated[Optional[list[str]], typer.Option("--set", help="Override a setting: section.key=value (repeatable).")] = None,
        out_dir: Annotated[Path, typer.Option("--out", help="Run directory for metrics, history, checkpoint and Flower files.")] = Path("runs/deploy"),
        data_dir: Annotated[Optional[Path], typer.Option("--data-dir", help="Folder with the dataset (or its parent); same as --set data.data_dir=DIR.")] = None,
        round_timeout: Annotated[float, typer.Option("--round-timeout", help="Seconds to wait for the nodes' answers in a round; a node that misses it is dropped.")] = 300.0,
        connect_timeout: Annotated[float, typer.Option("--connect-timeout", help="Seconds to wait for the SuperLink and all SuperNodes to come up.")] = 120.0,
        app_only: Annotated[bool, typer.Option("--app-only", help="Only write the Flower app and run config to --out (for a multi-machine deployment; see docs/deploy.md).")] = False,
        resume: Annotated[bool, typer.Option("--resume", help="Continue the run in --out from its checkpoint and the SuperNodes' saved states (same config and --nodes; a higher train.rounds extends a finished run).")] = False,
        quiet: Annotated[bool, typer.Option("--quiet", help="No per-round output.")] = False,
    ) -> None:
        """Run a federated job on Flower: a SuperLink and --nodes SuperNodes on 127.0.0.1, stopped at the end."""
        from rich.console import Console

        from fedrec.config import load_config
        from fedrec.errors import FedrecError

        overrides = list(set_ or [])
        if data_dir is not None:
            overrides.append(f"data.data_dir={json.dumps(str(data_dir.resolve()))}")
        run_config = load_config(config, overrides)
        if nodes < 1:
            raise FedrecError(f"--nodes must be at least 1, got {nodes}")
        if round_timeout <= 0 or connect_timeout <= 0:
            raise FedrecError("--round-timeout and --connect-timeout must be positive (seconds)")
        try:
            import flwr  # noqa: F401
        except ImportError:
            raise FedrecError("Flower is not installed; install it with pip install 'fedrec[flower]'") from None
        from fedrec.flower.deploy import deploy as run_deployment, write_app

        out = Console()
        if app_only:
            app_dir, run_file = write_app(out_dir, run_config, nodes, round_timeout, connect_timeout, resume)
            out.print(f"app: {app_dir}\nrun config: {run_file}\n"
                      f"start: flwr run {app_dir} <connection> --run-config {run_file}", soft_wrap=True, highlight=False)
            return
        err = Console(stderr=True)

        def on_round(record: dict[str, Any]) -> None:
            if quiet:
                return
            shown = " ".join(f"{k}={record[k]:.4f}" if isinstance(record[k], float) else f"{k}={record[k]}"
                             for k in ("round", "train_loss", "rmse", "ndcg@10", "clients", "nodes", "lost_nodes",
                                       "epsilon", "rejected")
                             if k in record)
            err.print(shown, soft_wrap=True, highlight=False)

        try:
            metrics = run_deployment(run_config, nodes, out_dir, round_timeout, connect_timeout, on_round=on_round,
                                     resume=resume)
        except KeyboardInterrupt:
            err.print(f"interrupted; every Flower process was stopped; partial outputs are in {out_dir} "
                      "(continue with the same command and --resume)")
            raise typer.Exit(130) from None
        shown = ("rmse", "mae", "hr@10", "ndcg@10", "rounds", "seconds", "bytes_up", "bytes_down", "nodes",
                 "nodes_finished", "epsilon", "delta", "stopped")
        out.print(" ".join(f"{k}={metrics[k]:.4f}" if isinstance(metrics[k], float) else f"{k}={metrics[k]}"
                           for k in shown if k in metrics), soft_wrap=True, highlight=False)
        out.print(f"outputs: {out_dir}/metrics.json, history.jsonl, config.json, checkpoint.safetensors; "
                  f"Flower logs: {out_dir}/flower/logs/", soft_wrap=True, highlight=False)
