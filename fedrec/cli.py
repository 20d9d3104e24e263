"""The ``fedrec`` command line: parse, validate, call the core, print."""

from __future__ import annotations

import importlib
import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, Optional

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from fedrec.errors import FedrecError

app = typer.Typer(help="fedrec: federated recommendation with pretrained models.", add_completion=False,
                  no_args_is_help=True, pretty_exceptions_enable=False)
data_app = typer.Typer(help="Inspect datasets.", no_args_is_help=True)
app.add_typer(data_app, name="data")
console = Console(stderr=True)
out = Console()

LIVE_KEYS = ("val_rmse", "rmse", "val_ndcg@10", "ndcg@10", "accuracy", "train_loss")


def _live_metric(record: dict[str, Any]) -> str:
    for key in LIVE_KEYS:
        if key in record:
            return f"{key} {record[key]:.4f}"
    return ""


@app.command()
def train(
    config: Annotated[Path, typer.Argument(help="TOML config file (see configs/).")],
    set_: Annotated[Optional[list[str]], typer.Option("--set", help="Override a setting: section.key=value (repeatable).")] = None,
    out_dir: Annotated[Path, typer.Option("--out", help="Run directory for metrics, history and checkpoint.")] = Path("runs/latest"),
    resume: Annotated[bool, typer.Option("--resume", help="Continue the run in --out from its last checkpoint.")] = False,
    data_dir: Annotated[Optional[Path], typer.Option("--data-dir", help="Folder with the dataset (or its parent); same as --set data.data_dir=DIR.")] = None,
    download: Annotated[bool, typer.Option("--download", help="Fetch the official archive (checksum-verified) into the cache if missing.")] = False,
    quiet: Annotated[bool, typer.Option("--quiet", help="No progress bar.")] = False,
    tensorboard: Annotated[Optional[Path], typer.Option("--tensorboard", help="Also log per-round scalars to this TensorBoard folder (needs: pip install tensorboard).")] = None,
) -> None:
    """Train a recommender (federated or centralised), or a classifier for a config with a task table, and write its outputs to --out."""
    from fedrec.generic import is_classification_config

    overrides = list(set_ or [])
    if data_dir is not None:
        overrides.append(f"data.data_dir={json.dumps(str(data_dir))}")
    if download:
        overrides.append("data.download=true")
    if is_classification_config(config):  # [task] kind = "classification": the generic runner (fedrec/generic/)
        from fedrec.generic.runner import train_classifier

        description, total, shown = "federated rounds", None, CLASSIFIER_SHOWN

        def job(on_round: Callable[[dict[str, Any]], None], on_start: Callable[[int, int], None]) -> dict[str, Any]:
            return train_classifier(config, overrides, out_dir, resume, on_round, on_start)
    else:
        from fedrec.config import load_config

        run_config = load_config(config, overrides)  # validate before the slow imports
        from fedrec.runtime.trainer import train as run_training

        mode = run_config.train.mode
        description = f"{mode} {'round' if mode == 'federated' else 'epoch'}s"
        total, shown = run_config.train.rounds, RECOMMENDER_SHOWN

        def job(on_round: Callable[[dict[str, Any]], None], on_start: Callable[[int, int], None]) -> dict[str, Any]:
            return run_training(run_config, out_dir, resume=resume, on_round=on_round, on_start=on_start)

    metrics = _run_with_progress(job, description, total, out_dir, quiet, tensorboard)
    keys = [k for k in shown if k in metrics]
    out.print(" ".join(f"{k}={metrics[k]:.4f}" if isinstance(metrics[k], float) else f"{k}={metrics[k]}" for k in keys),
              soft_wrap=True, highlight=False)
    out.print(f"outputs: {out_dir}/metrics.json, history.jsonl, config.json, checkpoint.safetensors",
              soft_wrap=True, highlight=False)


RECOMMENDER_SHOWN = ("rmse", "mae", "hr@10", "ndcg@10", "sampled_hr@10", "popularity_hr@10", "finetuned_rmse",
                     "finetuned_hr@10", "rounds", "seconds", "bytes_up", "bytes_down",
                     "frozen_hr@10", "frozen_ndcg@10", "upload_bytes_per_client", "upload_ratio")  # lora_bpr
CLASSIFIER_SHOWN = ("accuracy", "personal_accuracy", "majority_accuracy", "loss", "rounds", "seconds", "bytes_up",
                    "bytes_down")


def _run_with_progress(job: Callable[..., dict[str, Any]], description: str, total: int | None, out_dir: Path,
                       quiet: bool, tensorboard: Path | None) -> dict[str, Any]:
    """Run a training job under a progress bar (and optional TensorBoard logger); Ctrl-C keeps finished rounds."""
    tensorboard_logger = None
    if tensorboard is not None:
        from fedrec.report.tensorboard import TensorBoardLogger

        tensorboard_logger = TensorBoardLogger(tensorboard)  # before the bar: a missing package is one line
    # The bar starts once data and checkpoint are loaded, so an input error prints one line only.
    progress = Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                        TextColumn("{task.fields[metric]}"), TimeElapsedColumn(), TimeRemainingColumn(),
                        console=console, disable=quiet)
    task = progress.add_task(description, total=total, metric="")

    def on_start(done: int, total: int) -> None:
        progress.update(task, completed=done, total=total, metric="resumed" if done else "")
        progress.start()

    def on_round(record: dict[str, Any]) -> None:
        progress.update(task, completed=record["round"], metric=_live_metric(record))
        if tensorboard_logger is not None:
            tensorboard_logger(record)

    try:
        return job(on_round, on_start)
    except KeyboardInterrupt:
        if progress.live.is_started:
            progress.stop()
        console.print(f"interrupted; finished rounds are saved in {out_dir}; continue with --resume")
        raise typer.Exit(130) from None
    finally:
        if progress.live.is_started:
            progress.stop()
        if tensorboard_logger is not None:
            tensorboard_logger.close()


@data_app.command("info")
def data_info(
    name: Annotated[str, typer.Argument(help="Dataset name: ml-100k, lastfm-2k, synthetic, ml-1m, ...")],
    data_dir: Annotated[Optional[Path], typer.Option("--data-dir", help="Folder with the dataset (or its parent).")] = None,
    download: Annotated[bool, typer.Option("--download", help="Fetch the official archive into the cache if missing.")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")] = False,
) -> None:
    """Print dataset statistics: users, items, interactions, density, interactions per user."""
    from fedrec.data.registry import load_dataset
    from fedrec.data.stats import dataset_stats, format_stats

    dataset = load_dataset(name, data_dir=data_dir, download=download)
    stats = dataset_stats(dataset)
    out.print(json.dumps(stats, indent=2) if as_json else format_stats(stats), highlight=False)


# -- commands that live next to their features: each module registers its own (keep imports light) --
FEATURE_COMMANDS = (
    "fedrec.serving.commands",  # recommend, similar, serve
    "fedrec.report.cli",  # report
    "fedrec.flower.commands",  # deploy
    "fedrec.privacy.audit_commands",  # audit
    "fedrec.text.commands",  # text encode
    "fedrec.tuning",  # tune
)
for _module in FEATURE_COMMANDS:
    importlib.import_module(_module).register(app)


def main() -> None:
    """Entry point: user errors become one line on stderr and exit code 2."""
    try:
        app()
    except FedrecError as error:
        console.print(f"error: {error}", highlight=False, markup=False, soft_wrap=True)
        sys.exit(2)


if __name__ == "__main__":
    main()
