"""Write a report folder: report.html plus its PNG plots, from one or more run folders."""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from fedrec.errors import FedrecError
from fedrec.report.page import PlotFile, ReportPage, RunSection, format_value, render_page
from fedrec.report.plots import Line, Plot, render
from fedrec.report.runs import (Run, comparison_table, cumulative, has_key, headline_metrics, load_runs, mode_groups,
                                series)

NO_PRIVACY = "no privacy accounting in this run"


@dataclass(frozen=True)
class ReportFiles:
    """Where a report went: the HTML file and every PNG it references."""

    html: Path
    plots: list[Path]


def output_paths(out: Path) -> tuple[Path, Path]:
    """(report.html, plot folder): ``out`` names the HTML file, or a folder to hold report.html."""
    html = out if out.suffix.lower() in (".html", ".htm") else out / "report.html"
    if html.is_dir():
        raise FedrecError(f"--out {html} is a folder; name the report file, e.g. --out {html / 'report.html'}")
    return html, html.parent / f"{html.stem}_plots"


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9]+", "-", text).strip("-").lower() or "run"


def _unit(run: Run) -> str:
    return "round" if run.federated else "epoch"


class _PlotWriter:
    """Renders plots into the plot folder and remembers them as page entries."""

    def __init__(self, html: Path, folder: Path) -> None:
        self.html, self.folder = html, folder
        self.written: list[Path] = []

    def add(self, name: str, plot: Plot, caption: str) -> PlotFile:
        path = render(plot, self.folder / f"{name}.png")
        self.written.append(path)
        return PlotFile(plot.title, path.relative_to(self.html.parent).as_posix(), caption)


def _summary(run: Run) -> list[tuple[str, str]]:
    final = run.final()
    rows = [("folder", str(run.path)), ("status", run.status), ("dataset", run.dataset), ("model", run.model),
            ("mode", run.mode)]
    if "clients" in final:
        rows.append(("clients", format_value(final["clients"])))
    for key in (*headline_metrics(run), "epsilon", "delta"):
        if key in final:
            rows.append((f"{key} (final)" if run.finished else f"{key} (latest)", format_value(final[key])))
    return rows


def _run_section(run: Run, index: int, writer: _PlotWriter) -> RunSection:
    prefix = f"run{index}-{_slug(run.label)}"
    unit = _unit(run)
    plots: list[PlotFile] = []
    notes: list[str] = []
    if not run.finished:
        notes.append(f"This run is unfinished ({run.rounds_done} of {run.planned_rounds or '?'} {unit}s, no metrics.json): "
                     "figures and values come from its history.")
    for key in headline_metrics(run):
        lines = [Line(f"test {key}", *series(run.history, key))]
        if has_key(run.history, f"val_{key}"):
            lines.append(Line(f"validation {key}", *series(run.history, f"val_{key}"), style="--"))
        baseline = (run.metrics or {}).get(f"popularity_{key}")
        hlines = [(f"popularity baseline (test {key})", float(baseline))] if isinstance(baseline, float) else []
        plot = Plot(f"{run.label}: {key} per {unit}", unit, key, lines, hlines)
        parts = "Test and validation" if len(lines) > 1 else "Test"
        plots.append(writer.add(f"{prefix}-metric-{_slug(key)}", plot, f"{parts} {key} on the {unit}s that were evaluated."))
    if not plots:
        notes.append("no evaluation metric in the history of this run")
    if has_key(run.history, "train_loss"):
        plot = Plot(f"{run.label}: training loss per {unit}", unit, "train loss",
                    [Line("train loss", *series(run.history, "train_loss"))])
        caption = "Mean client training loss per round." if run.federated else "Mean batch loss per epoch."
        plots.append(writer.add(f"{prefix}-train-loss", plot, caption))
    if has_key(run.history, "epsilon"):
        delta = (run.metrics or {}).get("delta")
        ylabel = "epsilon" + (f" (delta = {delta:g})" if isinstance(delta, (int, float)) else "")
        plot = Plot(f"{run.label}: privacy budget spent", unit, ylabel, [Line("epsilon", *series(run.history, "epsilon"))])
        plots.append(writer.add(f"{prefix}-epsilon", plot, "Cumulative differential-privacy epsilon after each round."))
    elif "epsilon" in (run.metrics or {}):
        notes.append(f"final epsilon {format_value(run.metrics['epsilon'])} (no per-round epsilon in the history)")
    else:
        notes.append(NO_PRIVACY)
    if has_key(run.history, "bytes_up") or has_key(run.history, "bytes_down"):
        up, down = series(run.history, "bytes_up"), series(run.history, "bytes_down")
        per_round = Plot(f"{run.label}: communication per {unit}", unit, "bytes",
                         [Line("up (clients to server)", *up), Line("down (server to clients)", *down, style="--")],
                         y_unit="B")
        plots.append(writer.add(f"{prefix}-bytes-per-round", per_round, "Bytes sent in each round, summed over clients."))
        total = Plot(f"{run.label}: cumulative communication", unit, "bytes",
                     [Line("up (clients to server)", up[0], cumulative(up[1])),
                      Line("down (server to clients)", down[0], cumulative(down[1]), style="--")], y_unit="B")
        plots.append(writer.add(f"{prefix}-bytes-cumulative", total, "Total bytes sent up to each round."))
    else:
        notes.append("no communication per round: a centralised run exchanges no model updates")
    config_json = json.dumps(run.config, indent=2, sort_keys=True)
    return RunSection(run.label, run.status, run.finished, _summary(run), plots, notes, config_json)


def _mode_comparisons(runs: Sequence[Run], writer: _PlotWriter) -> tuple[list[PlotFile], list[str]]:
    plots: list[PlotFile] = []
    groups = mode_groups(runs)
    for number, group in enumerate(groups, start=1):
        keys = [key for key in headline_metrics(group[0]) if all(key in headline_metrics(run) for run in group)]
        for key in keys:
            lines = [Line(f"{run.label} ({run.mode})", *series(run.history, key), style="-" if run.federated else "--")
                     for run in group]
            title = f"{group[0].dataset}, {group[0].model}: federated vs centralised"
            plot = Plot(title, "round (federated) / epoch (centralised)", f"test {key}", lines)
            caption = (f"Test {key} of the same model on the same data, trained federated (rounds) and "
                       "centralised (epochs).")
            plots.append(writer.add(f"compare{number}-{_slug(group[0].dataset)}-{_slug(key)}", plot, caption))
    notes = []
    if not groups:
        notes.append("No federated/centralised pair among these runs: give runs of the same data and model "
                     "with different train.mode to overlay them here.")
    return plots, notes


def write_report(run_dirs: Sequence[Path], out: Path) -> ReportFiles:
    """Read the runs, draw every plot and write the HTML page; returns what was written."""
    runs = load_runs(run_dirs)
    html, folder = output_paths(out)
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise FedrecError(f"cannot create the report folder {folder} ({error.strerror}); choose another --out") from None
    for stale in folder.glob("*.png"):  # plots of an earlier report at the same place
        stale.unlink()
    writer = _PlotWriter(html, folder)
    sections = [_run_section(run, index, writer) for index, run in enumerate(runs, start=1)]
    comparisons, comparison_notes = _mode_comparisons(runs, writer) if len(runs) > 1 else ([], [])
    title = f"fedrec report: {runs[0].label}" if len(runs) == 1 else f"fedrec report: {len(runs)} runs"
    page = ReportPage(title, sections, comparison_table(runs), [run.label for run in runs],
                      [run.finished for run in runs], comparisons, comparison_notes)
    html.write_text(render_page(page), encoding="utf-8")
    return ReportFiles(html, writer.written)
