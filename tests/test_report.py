"""``fedrec report``: the pure parts against hand-computed answers, then reports of small real runs.

The runs are trained here on the synthetic default config (200 users, 3 rounds): a federated and a
centralised rating run (the same data and model) and a federated ranking run. A privacy run is the
federated run with a per-round epsilon written into its files, and an unfinished run is it cut
after two rounds without metrics.json.
"""

from __future__ import annotations

import json
import shutil
import sys
from html.parser import HTMLParser
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from fedrec.config import load_config
from fedrec.errors import FedrecError
from fedrec.report.build import NO_PRIVACY, output_paths, write_report
from fedrec.report.runs import (Run, comparison_table, cumulative, headline_k, headline_metrics, load_run, load_runs,
                                mode_groups, series)

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_TOML = ROOT / "configs" / "default.toml"
SMALL = ["data.num_users=100", "data.num_items=80", "train.rounds=3", "model.dim=4"]
RANKING = ["model.name=bpr", "data.split=leave_one_out", "train.eval_every=2"]
EPSILONS = [0.5, 0.9, 1.2]


# -- pure functions --------------------------------------------------------------------------------------


def _run(label: str, history: list[dict], metrics: dict | None, mode: str = "federated", rounds: int = 3,
         data: dict | None = None, model: dict | None = None) -> Run:
    config = {"data": data or {"name": "synthetic", "data_dir": None}, "model": model or {"name": "mf"},
              "train": {"mode": mode, "rounds": rounds}}
    return Run(Path(label), label, config, history, metrics)


def test_series_keeps_rounds_with_a_finite_number():
    history = [{"round": 1, "loss": 2.0}, {"round": 2}, {"round": 3, "loss": float("nan")}, {"round": 4, "loss": 1}]
    assert series(history, "loss") == ([1, 4], [2.0, 1.0])
    assert series(history, "missing") == ([], [])


def test_cumulative_is_the_running_total():
    assert cumulative([3, 1, 4, 1, 5]) == [3, 4, 8, 9, 14]
    assert cumulative([]) == []


def test_headline_k_prefers_10_then_the_smallest():
    assert headline_k(["ndcg@20", "hr@10", "ndcg@10", "rmse"]) == 10
    assert headline_k(["hr@20", "ndcg@5", "val_ndcg@1"]) == 5
    assert headline_k(["rmse", "mae"]) is None


def test_headline_metrics_of_rating_and_ranking_runs():
    rating = _run("a", [{"round": 1, "rmse": 1.0, "mae": 0.8, "val_rmse": 1.1}], None)
    ranking = _run("b", [{"round": 1}, {"round": 2, "hr@20": 0.3, "ndcg@20": 0.2, "hr@5": 0.1, "ndcg@5": 0.05}], None)
    assert headline_metrics(rating) == ["rmse", "mae"]
    assert headline_metrics(ranking) == ["ndcg@5", "hr@5"]


def test_unfinished_run_reports_its_history():
    history = [{"round": 1, "bytes_up": 10, "bytes_down": 100, "rmse": 1.5, "seconds": 0.5},
               {"round": 2, "bytes_up": 20, "bytes_down": 200, "seconds": 1.25}]
    run = _run("a", history, None, rounds=5)
    assert not run.finished and run.status == "unfinished: 2 of 5 rounds"
    final = run.final()
    assert final["bytes_up"] == 30 and final["bytes_down"] == 300  # per-round traffic adds up
    assert final["rmse"] == 1.5 and final["seconds"] == 1.25 and final["rounds"] == 2  # latest values
    assert "clients" not in _run("b", [{"round": 1, "clients": 7}], None).final()  # a cohort size, not the clients


def test_comparison_table_marks_the_best_per_column():
    fed = _run("fed", [{"round": 1}], {"rmse": 0.9, "mae": 0.7, "seconds": 5.0, "bytes_up": 100, "bytes_down": 50})
    fed2 = _run("fed2", [{"round": 1}], {"rmse": 0.9, "mae": 0.8, "seconds": 2.0, "bytes_up": 300, "bytes_down": 10})
    central = _run("cen", [{"round": 1}], {"rmse": 0.95, "mae": 0.6, "seconds": 9.0, "bytes_up": 0, "bytes_down": 0},
                   mode="centralized")
    unfinished = _run("part", [{"round": 1, "rmse": 0.5, "mae": 0.1}], None)
    table = comparison_table([fed, fed2, central, unfinished])
    best = {column.key: rows for column, rows in zip(table.columns, table.best)}
    assert [column.key for column in table.columns] == ["rmse", "mae", "rounds", "seconds", "bytes_up", "bytes_down"]
    assert best["rmse"] == {0, 1}  # a tie marks both; the unfinished run's 0.5 does not compete
    assert best["mae"] == {2}
    assert best["seconds"] == {1}
    assert best["bytes_up"] == {0} and best["bytes_down"] == {1}  # centralised runs' zero traffic does not compete
    assert best["rounds"] == set()  # a setting, not a result
    assert table.rows[3][:2] == [0.5, 0.1]


def test_ranking_columns_prefer_higher_values():
    a = _run("a", [{"round": 1}], {"hr@10": 0.3, "ndcg@10": 0.2, "popularity_hr@10": 0.4})
    b = _run("b", [{"round": 1}], {"hr@10": 0.4, "ndcg@10": 0.1, "popularity_hr@10": 0.4})
    table = comparison_table([a, b])
    best = {column.key: rows for column, rows in zip(table.columns, table.best)}
    assert best == {"hr@10": {1}, "ndcg@10": {0}, "popularity_hr@10": set()}


@given(st.lists(st.one_of(st.none(), st.floats(-1e6, 1e6)), min_size=1, max_size=8), st.booleans())
def test_best_rows_match_brute_force(values, lower):
    runs = [_run(f"r{i}", [{"round": 1}], {} if v is None else {"rmse" if lower else "hr@10": v})
            for i, v in enumerate(values)]
    table = comparison_table(runs)
    present = [v for v in values if v is not None]
    if not present:
        assert table.columns == []
        return
    target = (min if lower else max)(present)
    expected = {i for i, v in enumerate(values) if v == target} if len(present) >= 2 else set()
    assert table.best[0] == expected


def test_mode_groups_pair_federated_and_centralised_runs_of_the_same_data_and_model():
    data = {"name": "ml-100k", "fold": 1, "data_dir": "/a"}
    fed = _run("fed", [{"round": 1}], None, data=data)
    cen = _run("cen", [{"round": 1}], None, mode="centralized", data={**data, "data_dir": "/elsewhere"})
    other_fold = _run("u3", [{"round": 1}], None, mode="centralized", data={**data, "fold": 3})
    other_model = _run("bpr", [{"round": 1}], None, mode="centralized", data=data, model={"name": "bpr"})
    fed_again = _run("fed2", [{"round": 1}], None, data=data)
    assert [[r.label for r in g] for g in mode_groups([fed, cen, other_fold, other_model, fed_again])] == [
        ["fed", "cen", "fed2"]]
    assert mode_groups([fed, fed_again]) == []


def test_output_paths(tmp_path):
    assert output_paths(tmp_path / "r" / "out.html") == (tmp_path / "r" / "out.html", tmp_path / "r" / "out_plots")
    assert output_paths(tmp_path / "folder") == (tmp_path / "folder" / "report.html", tmp_path / "folder" / "report_plots")
    (tmp_path / "taken.html").mkdir()
    with pytest.raises(FedrecError, match="is a folder"):
        output_paths(tmp_path / "taken.html")


# -- small real runs -------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict[str, Path]:
    """Run folders: fed, central, ranking (trained here), private and unfinished (derived from fed)."""
    from fedrec.runtime.trainer import train

    root = tmp_path_factory.mktemp("runs")
    settings = {"fed": SMALL, "central": [*SMALL, "train.mode=centralized"], "ranking": [*SMALL, *RANKING]}
    for name, overrides in settings.items():
        train(load_config(DEFAULT_TOML, overrides), root / name)
    # a privacy run as the privacy code will write it: epsilon per round, epsilon and delta at the end
    private = root / "private"
    shutil.copytree(root / "fed", private)
    history = [json.loads(line) for line in (private / "history.jsonl").read_text().splitlines()]
    lines = [json.dumps({**record, "epsilon": eps}) + "\n" for record, eps in zip(history, EPSILONS, strict=True)]
    (private / "history.jsonl").write_text("".join(lines))
    metrics = json.loads((private / "metrics.json").read_text())
    (private / "metrics.json").write_text(json.dumps({**metrics, "epsilon": EPSILONS[-1], "delta": 1e-5}))
    # the same privacy run, interrupted after two of its three rounds
    unfinished = root / "unfinished"
    shutil.copytree(private, unfinished)
    (unfinished / "metrics.json").unlink()
    (unfinished / "history.jsonl").write_text("".join(lines[:2]))
    return {name: root / name for name in ("fed", "central", "ranking", "private", "unfinished")}


REPORTED = ("private", "central", "ranking", "unfinished")


@pytest.fixture(scope="module")
def report(runs, tmp_path_factory):
    """One report of four runs: (files written, parsed page, the Plot behind each PNG by file stem)."""
    import fedrec.report.build as build

    drawn = {}
    real_render = build.render

    def recording_render(plot, path):
        drawn[path.stem] = plot
        return real_render(plot, path)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(build, "render", recording_render)
        files = write_report([runs[name] for name in REPORTED], tmp_path_factory.mktemp("report") / "report.html")
    return files, _Page(files.html.read_text()), drawn


class _Page(HTMLParser):
    """The parts of report.html the tests read: image sources, table cells, notes."""

    def __init__(self, text: str) -> None:
        super().__init__()
        self.images: list[str] = []
        self.cells: dict[tuple[str, str], dict[str, str]] = {}  # (run, key) -> attributes
        self.rows: list[str] = []
        self.notes: list[str] = []
        self._row: str | None = None
        self._note = False
        self.feed(text)

    def handle_starttag(self, tag, attrs):
        attributes = {k: v or "" for k, v in attrs}
        if tag == "img":
            self.images.append(attributes["src"])
        elif tag == "tr" and "data-run" in attributes:
            self._row = attributes["data-run"]
            self.rows.append(self._row)
        elif tag == "td" and self._row is not None and "data-key" in attributes:
            self.cells[(self._row, attributes["data-key"])] = attributes
        elif tag == "p" and attributes.get("class") == "note":
            self._note = True
            self.notes.append("")

    def handle_endtag(self, tag):
        if tag == "tr":
            self._row = None
        elif tag == "p":
            self._note = False

    def handle_data(self, data):
        if self._note:
            self.notes[-1] += data


def _history(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "history.jsonl").read_text().splitlines()]


def test_report_writes_every_plot(report):
    """Every PNG the page shows exists and is a real, non-blank image; the folder holds exactly those."""
    from PIL import Image

    files, page, _ = report
    per_run = {"metric-rmse", "metric-mae", "train-loss", "bytes-per-round", "bytes-cumulative", "epsilon"}
    expected = ({f"run1-private-{p}" for p in per_run}
                | {"run2-central-metric-rmse", "run2-central-metric-mae", "run2-central-train-loss"}
                | {"run3-ranking-metric-ndcg-10", "run3-ranking-metric-hr-10", "run3-ranking-train-loss",
                   "run3-ranking-bytes-per-round", "run3-ranking-bytes-cumulative"}
                | {f"run4-unfinished-{p}" for p in per_run}
                | {"compare1-synthetic-rmse", "compare1-synthetic-mae"})
    assert len(page.images) == len(set(page.images)), "a plot is shown twice"
    assert {Path(src).stem for src in page.images} == expected
    assert sorted(files.plots) == sorted(files.html.parent / src for src in page.images)
    assert {p.name for p in (files.html.parent / "report_plots").iterdir()} == {Path(s).name for s in page.images}
    for src in page.images:
        path = files.html.parent / src
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", src
        assert path.stat().st_size > 10_000, f"{src} is only {path.stat().st_size} bytes"
        with Image.open(path) as image:
            image.verify()
        with Image.open(path) as image:
            assert image.size == (720, 400), image.size
            assert len(image.convert("L").getcolors(maxcolors=4096) or range(4097)) > 10, f"{src} is blank"


def test_report_table_equals_metrics_json(runs, report):
    _, page, _ = report
    assert page.rows == list(REPORTED)
    for name in REPORTED[:3]:
        metrics = json.loads((runs[name] / "metrics.json").read_text())
        for key in ("rmse", "mae", "hr@10", "ndcg@10", "auc", "popularity_hr@10", "epsilon", "delta", "rounds",
                    "seconds", "bytes_up", "bytes_down"):
            cell = page.cells[(name, key)]
            if key in metrics:
                assert json.loads(cell["data-value"]) == metrics[key], (name, key)
            else:
                assert "data-value" not in cell, (name, key)
    rmse = {name: json.loads((runs[name] / "metrics.json").read_text())["rmse"] for name in ("private", "central")}
    best, worst = min(rmse, key=rmse.get), max(rmse, key=rmse.get)
    assert page.cells[(best, "rmse")].get("class") == "best"
    assert page.cells[(worst, "rmse")].get("class") != "best"
    assert page.cells[("central", "bytes_up")].get("class") != "best"  # zero traffic of a centralised run


def test_report_of_an_unfinished_run_uses_its_history(runs, report):
    files, page, _ = report
    assert "unfinished: 2 of 3 rounds" in files.html.read_text()
    history = _history(runs["unfinished"])
    assert len(history) == 2
    for key in ("rmse", "epsilon", "seconds"):
        assert json.loads(page.cells[("unfinished", key)]["data-value"]) == history[-1][key]
    assert json.loads(page.cells[("unfinished", "bytes_up")]["data-value"]) == sum(r["bytes_up"] for r in history)
    assert page.cells[("unfinished", "rmse")].get("class") != "best"


def test_report_plots_show_the_history(runs, report):
    """The lines drawn are the history's values: val and test metric, per-round and cumulative bytes, epsilon."""
    _, page, drawn = report
    history = _history(runs["private"])
    up = [record["bytes_up"] for record in history]
    cumulative_up = drawn["run1-private-bytes-cumulative"].lines[0]
    assert list(cumulative_up.x) == [1, 2, 3]
    assert list(cumulative_up.y) == [up[0], up[0] + up[1], up[0] + up[1] + up[2]]
    assert list(drawn["run1-private-bytes-per-round"].lines[0].y) == up
    test_line, val_line = drawn["run1-private-metric-rmse"].lines
    assert list(test_line.y) == [record["rmse"] for record in history]
    assert list(val_line.y) == [record["val_rmse"] for record in history]
    assert list(drawn["run1-private-epsilon"].lines[0].y) == EPSILONS
    ranking = _history(runs["ranking"])
    assert list(drawn["run3-ranking-metric-ndcg-10"].lines[0].x) == [r["round"] for r in ranking if "ndcg@10" in r]
    popularity = json.loads((runs["ranking"] / "metrics.json").read_text())["popularity_ndcg@10"]
    assert drawn["run3-ranking-metric-ndcg-10"].hlines == [("popularity baseline (test ndcg@10)", popularity)]
    overlay = drawn["compare1-synthetic-rmse"].lines
    assert [line.label for line in overlay] == ["private (federated)", "central (centralized)", "unfinished (federated)"]
    # privacy accounting is said to be absent exactly for the two runs without it
    assert sum(NO_PRIVACY in note for note in page.notes) == 2


def test_load_runs_deduplicates_and_labels(runs, tmp_path):
    twin = tmp_path / "elsewhere" / "fed"
    shutil.copytree(runs["fed"], twin)
    loaded = load_runs([runs["fed"], runs["fed"], twin])
    assert [run.label for run in loaded] == [str(runs["fed"]), str(twin)]
    assert loaded[0].finished and loaded[0].mode == "federated" and loaded[0].rounds_done == 3


# -- bad input -------------------------------------------------------------------------------------------


def test_bad_run_folders(runs, tmp_path):
    with pytest.raises(FedrecError, match="does not exist"):
        load_run(tmp_path / "nope")
    (tmp_path / "file.txt").write_text("x")
    with pytest.raises(FedrecError, match="is not a folder"):
        load_run(tmp_path / "file.txt")
    with pytest.raises(FedrecError, match="no history.jsonl"):
        load_run(tmp_path)
    for name, content, message in [("empty", "\n", "is empty"), ("damaged", '{"round": 1}\n{"round": 2,\n', "line 2"),
                                   ("no_round", '{"loss": 1}\n', "no round number")]:
        folder = tmp_path / name
        shutil.copytree(runs["fed"], folder)
        (folder / "history.jsonl").write_text(content)
        with pytest.raises(FedrecError, match=message):
            load_run(folder)
    folder = tmp_path / "no_config"
    shutil.copytree(runs["fed"], folder)
    (folder / "config.json").unlink()
    with pytest.raises(FedrecError, match="no config.json"):
        load_run(folder)
    (runs_bad := tmp_path / "bad_metrics").mkdir()
    for name in ("config.json", "history.jsonl"):
        shutil.copy(runs["fed"] / name, runs_bad / name)
    (runs_bad / "metrics.json").write_text("{")
    with pytest.raises(FedrecError, match="metrics.json is not valid JSON"):
        load_run(runs_bad)
    with pytest.raises(FedrecError, match="no run folder"):
        load_runs([])


def _main(args: list[str], monkeypatch, capfd) -> tuple[int, str, str]:
    from fedrec.cli import main

    monkeypatch.setattr(sys, "argv", ["fedrec", *args])
    with pytest.raises(SystemExit) as stop:
        main()
    captured = capfd.readouterr()
    return stop.value.code, captured.out, captured.err


def test_cli_report_replaces_old_plots(runs, tmp_path, monkeypatch, capfd):
    out = tmp_path / "cli" / "report.html"
    (tmp_path / "cli" / "report_plots").mkdir(parents=True)
    (tmp_path / "cli" / "report_plots" / "old.png").write_bytes(b"an earlier report's plot")
    code, stdout, stderr = _main(["report", str(runs["central"]), "--out", str(out)], monkeypatch, capfd)
    assert code in (0, None), stderr
    assert f"report: {out} (3 plots" in stdout and out.is_file()
    assert sorted(p.name for p in (tmp_path / "cli" / "report_plots").iterdir()) == [
        "run1-central-metric-mae.png", "run1-central-metric-rmse.png", "run1-central-train-loss.png"]


def test_cli_bad_input_is_one_line(tmp_path, monkeypatch, capfd):
    (tmp_path / "history.jsonl").write_text("")
    (tmp_path / "config.json").write_text("{}")
    for args, fragment in [(["report", str(tmp_path / "missing")], "does not exist"),
                           (["report", str(tmp_path)], "history.jsonl is empty")]:
        code, stdout, stderr = _main(args, monkeypatch, capfd)
        assert code == 2 and "Traceback" not in stderr
        assert len(stderr.splitlines()) == 1 and stderr.startswith("error: ") and fragment in stderr, stderr
