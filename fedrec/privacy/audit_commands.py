"""``fedrec audit``: play the honest-but-curious server against a configured job (see fedrec/privacy/audit.py)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Optional

import typer


def register(app: typer.Typer) -> None:
    """Add the ``audit`` command to the fedrec CLI."""

    @app.command()
    def audit(
        config: Annotated[Path, typer.Argument(help="TOML config file (see configs/).")],
        set_: Annotated[Optional[list[str]], typer.Option("--set", help="Override a setting: section.key=value (repeatable).")] = None,
        out_dir: Annotated[Path, typer.Option("--out", help="Directory for metrics.json and config.json.")] = Path("runs/audit"),
        hiding: Annotated[Optional[str], typer.Option("--hiding", help="What clients upload: none (sparse rows), dense (every item row), pseudo (fake extra rows). Default: privacy.hiding of the config.")] = None,
        pseudo_items: Annotated[int, typer.Option("--pseudo-items", help="Fake rows per client (--hiding pseudo).")] = 0,
        pseudo_ratio: Annotated[float, typer.Option("--pseudo-ratio", help="Fake rows per client as a multiple of its real rows (when --pseudo-items is 0).")] = 0.0,
        pseudo_per_round: Annotated[bool, typer.Option("--pseudo-per-round", help="Draw new pseudo-items every round (default: one fixed set per client).")] = False,
        pseudo_values: Annotated[str, typer.Option("--pseudo-values", help="Fake row values: virtual (SGD step on a virtual rating, FedRec) or bootstrap (of the real rows).")] = "virtual",
        secagg: Annotated[bool, typer.Option("--secagg", help="Secure aggregation (the real protocol in the observed rounds): the server sees only the cohort's sums. Also on with privacy.secure_aggregation=true.")] = False,
        observe: Annotated[int, typer.Option("--observe", help="Last rounds whose uploads the server records (2 for the rating attack).")] = 2,
        max_clients: Annotated[int, typer.Option("--max-clients", help="Audit at most this many clients (a seeded random subset).")] = 2000,
        data_dir: Annotated[Optional[Path], typer.Option("--data-dir", help="Folder with the dataset (or its parent).")] = None,
        quiet: Annotated[bool, typer.Option("--quiet", help="No progress bar.")] = False,
    ) -> None:
        """Train the job with the chosen item hiding, then attack what the server saw; writes DIR/metrics.json."""
        from rich.console import Console
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

        from fedrec.config import config_to_json, load_config
        from fedrec.errors import FedrecError
        from fedrec.privacy.hiding import HIDING_MODES, HidingSettings

        overrides = list(set_ or [])
        if data_dir is not None:
            overrides.append(f"data.data_dir={json.dumps(str(data_dir))}")
        run_config = load_config(config, overrides)
        if hiding is None:  # the config's own hiding (privacy.hiding and its pseudo-item settings)
            p = run_config.privacy
            hiding, secagg = p.hiding, secagg or p.secure_aggregation
            if hiding == "pseudo" and not (pseudo_items or pseudo_ratio):
                pseudo_items, pseudo_ratio, pseudo_per_round, pseudo_values = (p.pseudo_items, p.pseudo_ratio,
                                                                               p.pseudo_per_round, p.pseudo_values)
        secagg = secagg or run_config.privacy.secure_aggregation
        if hiding not in HIDING_MODES:
            raise FedrecError(f"--hiding {hiding!r} is not one of {', '.join(HIDING_MODES)}")
        if hiding != "pseudo" and (pseudo_items or pseudo_ratio):
            raise FedrecError("--pseudo-items/--pseudo-ratio need --hiding pseudo")
        from fedrec.privacy.audit import AuditSettings, run_audit
        from fedrec.runtime.checkpoint import atomic_write_text

        settings = AuditSettings(HidingSettings(hiding, pseudo_items, pseudo_ratio, pseudo_per_round, pseudo_values), secagg, observe,
                                 max_clients)
        progress = Progress(TextColumn("[bold]audit rounds"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                            console=Console(stderr=True), disable=quiet)
        task = progress.add_task("audit", total=run_config.train.rounds)
        try:
            with progress:
                metrics = run_audit(run_config, settings, on_round=lambda done, total: progress.update(task, completed=done))
        except KeyboardInterrupt:
            raise typer.Exit(130) from None
        out_dir.mkdir(parents=True, exist_ok=True)
        atomic_write_text(out_dir / "config.json", config_to_json(run_config) + "\n")
        atomic_write_text(out_dir / "metrics.json", json.dumps(metrics, indent=2) + "\n")
        shown = ("audit_item_auc", "audit_item_precision@10", "audit_rating_rmse", "audit_rating_rmse_baseline", "rmse",
                 "ndcg@10", "bytes_up")
        text = " ".join(f"{k}={metrics[k]:.4f}" if isinstance(metrics[k], float) else f"{k}={metrics[k]}"
                        for k in shown if k in metrics)
        Console().print(text, soft_wrap=True, highlight=False)
        Console().print(f"outputs: {out_dir}/metrics.json, config.json", soft_wrap=True, highlight=False)
