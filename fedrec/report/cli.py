"""``fedrec report``: registered into the main CLI by :func:`register` (imports stay inside the command)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer


def register(app: typer.Typer) -> None:
    """Add the ``report`` command to ``app``."""

    @app.command("report")
    def report(
        run_dirs: Annotated[list[Path], typer.Argument(help="Run folders written by `fedrec train --out` (one or more).",
                                                       show_default=False)],
        out: Annotated[Path, typer.Option("--out", help="Report HTML file (or a folder for report.html); its plots go "
                                                        "next to it in <name>_plots/.")] = Path("report/report.html"),
    ) -> None:
        """Write an HTML report with PNG plots (metrics, loss, epsilon, bytes per round) for one or more runs."""
        from fedrec.report.build import write_report

        files = write_report(run_dirs, out)
        typer.echo(f"report: {files.html} ({len(files.plots)} plots in {files.html.parent})")
