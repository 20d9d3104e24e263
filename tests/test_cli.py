"""The ``fedrec`` command line, end to end: outputs of a run, one-line errors, data info, help.

Bad inputs run the real entry point (``python -m fedrec.cli``) in subprocesses: ``main()`` turns a
FedrecError into one ``error: ...`` line on stderr and exit code 2. Each such process imports torch
(seconds), so they are all started at once when this module's first test runs, overlapping each
other and the in-process tests (CliRunner on ``fedrec.cli.app``) that come first in this file.
"""

from __future__ import annotations

import json
import math
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from fedrec.config import config_to_json, load_config

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_TOML = ROOT / "configs" / "default.toml"
ML100K_TOML = ROOT / "configs" / "ml100k-mf-fedavg.toml"
SMALL = ["data.num_users=200", "data.num_items=150", "train.rounds=3", "model.dim=8"]
TIMEOUT = 180


def _sets(assignments: list[str]) -> list[str]:
    return [arg for a in assignments for arg in ("--set", a)]


# -- subprocesses, started together ----------------------------------------------------------------


@pytest.fixture(scope="module")
def workdir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("cli")


def _commands(workdir: Path) -> dict[str, list[str]]:
    # no --quiet: as a user would type them
    return {
        "unknown_key": ["train", str(DEFAULT_TOML), "--set", "train.round=3", "--out", str(workdir / "bad1")],
        "missing_config": ["train", str(workdir / "missing.toml"), "--out", str(workdir / "bad2")],
        "unknown_dataset": ["train", str(DEFAULT_TOML), "--set", "data.name=nope", "--out", str(workdir / "bad3")],
        "info_unknown": ["data", "info", "nope"],
    }


@pytest.fixture(scope="module", autouse=True)
def launched(workdir):
    env = dict(os.environ)
    env.pop("FEDREC_DATA", None)  # errors must not depend on where real data happen to be
    env["FEDREC_CACHE"] = str(workdir / "empty-cache")
    env["OMP_NUM_THREADS"] = "1"  # the processes run side by side
    processes = {
        name: subprocess.Popen([sys.executable, "-m", "fedrec.cli", *args], cwd=ROOT, env=env,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for name, args in _commands(workdir).items()
    }
    results: dict[str, subprocess.CompletedProcess] = {}

    def result_of(name: str) -> subprocess.CompletedProcess:
        if name not in results:
            process = processes[name]
            stdout, stderr = process.communicate(timeout=TIMEOUT)
            results[name] = subprocess.CompletedProcess(process.args, process.returncode, stdout, stderr)
        return results[name]

    yield result_of
    for process in processes.values():
        if process.poll() is None:
            process.kill()
            process.communicate()


def assert_error(returncode: int, stdout: str, stderr: str, *fragments: str, one_line: bool = True) -> str:
    """Exit code 2, no traceback, and ``error: ...`` naming every fragment as the only stderr line."""
    detail = f"exit {returncode}\nstdout: {stdout!r}\nstderr: {stderr!r}"
    assert returncode == 2, detail
    assert "Traceback" not in stderr + stdout, detail
    lines = stderr.splitlines()
    assert lines and stderr.endswith("\n"), detail
    if one_line:
        assert len(lines) == 1, detail
    line = lines[-1]
    assert line.startswith("error: "), detail
    for fragment in fragments:
        assert fragment in line, f"{fragment!r} not in {line!r}"
    return line


def assert_process_error(result: subprocess.CompletedProcess, *fragments: str, one_line: bool = True) -> str:
    return assert_error(result.returncode, result.stdout, result.stderr, *fragments, one_line=one_line)


def invoke(args: list[str]):
    """Run the typer app in-process and expect success."""
    from typer.testing import CliRunner

    from fedrec.cli import app

    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, f"exit {result.exit_code}: {result.output}\n{result.exception!r}"
    return result


def run_main(args: list[str], monkeypatch, capfd) -> tuple[int, str, str]:
    """Run ``fedrec.cli.main`` (the console-script entry point) in-process: exit code, stdout, stderr."""
    from fedrec.cli import main

    monkeypatch.setattr(sys, "argv", ["fedrec", *args])
    code = 0
    try:
        main()
    except SystemExit as stop:
        code = stop.code if isinstance(stop.code, int) else (0 if stop.code is None else 1)
    captured = capfd.readouterr()
    return code, captured.out, captured.err


# -- end to end (in-process) -----------------------------------------------------------------------


def _check_run_dir(out: Path, rounds: int) -> dict:
    for name in ("metrics.json", "history.jsonl", "config.json", "checkpoint.safetensors"):
        assert (out / name).is_file(), f"{name} missing from {sorted(p.name for p in out.iterdir())}"
    leftovers = [p.name for p in out.iterdir() if p.name.startswith(".") or p.name.endswith(".tmp")]
    assert leftovers == [], f"temporary files left behind: {leftovers}"

    metrics = json.loads((out / "metrics.json").read_text())
    for key in ("rmse", "mae", "rounds", "seconds", "bytes_up", "bytes_down"):
        assert key in metrics, f"metrics.json lacks {key}: {sorted(metrics)}"
        assert not isinstance(metrics[key], (dict, list)), f"metrics.json key {key} is not flat"
    assert math.isfinite(metrics["rmse"]) and 0 < metrics["rmse"] < 4  # ratings 1..5
    assert math.isfinite(metrics["mae"]) and 0 < metrics["mae"] <= metrics["rmse"]
    assert metrics["rounds"] == rounds
    assert metrics["seconds"] >= 0

    history = [json.loads(line) for line in (out / "history.jsonl").read_text().splitlines()]
    assert [entry["round"] for entry in history] == list(range(1, rounds + 1))
    # the last round's evaluation comes before the final refit of the private rows, when the config asks for one
    assert history[-1]["rmse"] == pytest.approx(metrics.get("before_refit_rmse", metrics["rmse"]))
    return metrics


def test_train_federated_end_to_end(tmp_path):
    out = tmp_path / "fed"
    result = invoke(["train", str(DEFAULT_TOML), *_sets(SMALL), "--quiet", "--out", str(out)])
    metrics = _check_run_dir(out, rounds=3)
    assert metrics["mode"] == "federated"
    assert metrics["bytes_up"] > 0 and metrics["bytes_down"] > 0
    # config.json is the resolved config: the file plus the overrides
    expected = json.loads(config_to_json(load_config(DEFAULT_TOML, SMALL)))
    assert expected["train"]["rounds"] == 3 and expected["model"]["dim"] == 8
    assert json.loads((out / "config.json").read_text()) == expected
    # the summary line reports the final metrics
    assert re.search(r"rmse=\d+\.\d{4}", result.stdout) and "rounds=3" in result.stdout


def test_train_centralized_end_to_end(tmp_path):
    out = tmp_path / "central"
    result = invoke(["train", str(DEFAULT_TOML), *_sets([*SMALL, "train.mode=centralized"]), "--quiet",
                     "--out", str(out)])
    metrics = _check_run_dir(out, rounds=3)
    assert metrics["mode"] == "centralized"
    assert metrics["bytes_up"] == 0 and metrics["bytes_down"] == 0
    assert json.loads((out / "config.json").read_text())["train"]["mode"] == "centralized"
    assert "bytes_up=0" in result.stdout


@pytest.fixture()
def finished_run(tmp_path) -> tuple[Path, dict[str, bytes]]:
    """A finished 1-round run directory, and its files' bytes."""
    from fedrec.runtime.trainer import train

    out = tmp_path / "finished"
    train(load_config(DEFAULT_TOML, [*SMALL, "train.rounds=1"]), out)
    assert (out / "checkpoint.safetensors").is_file()
    return out, {p.name: p.read_bytes() for p in out.iterdir()}


def test_train_into_existing_run_without_resume_fails(finished_run, monkeypatch, capfd):
    out, before = finished_run
    code, stdout, stderr = run_main(["train", str(DEFAULT_TOML), *_sets(SMALL), "--quiet", "--out", str(out)],
                                    monkeypatch, capfd)
    assert_error(code, stdout, stderr, "--resume", str(out))
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before  # the existing run is untouched


def test_existing_run_error_is_one_line_without_quiet(finished_run, monkeypatch, capfd):
    out, _ = finished_run
    code, stdout, stderr = run_main(["train", str(DEFAULT_TOML), *_sets(SMALL), "--out", str(out)],
                                    monkeypatch, capfd)
    assert_error(code, stdout, stderr, "--resume")


# -- data info and help (in-process) ---------------------------------------------------------------


def _stat(text: str, label: str) -> int:
    match = re.search(rf"^{label}\s+([\d,]+)", text, flags=re.MULTILINE)
    assert match, f"no '{label}' line in:\n{text}"
    return int(match.group(1).replace(",", ""))


def test_data_info_synthetic():
    from fedrec.data import load_dataset

    result = invoke(["data", "info", "synthetic"])
    dataset = load_dataset("synthetic")
    assert (dataset.num_users, dataset.num_items) == (1000, 800)
    assert _stat(result.stdout, "users") == dataset.num_users
    assert _stat(result.stdout, "items") == dataset.num_items
    assert _stat(result.stdout, "interactions") == len(dataset.interactions) > 0


def test_data_info_ml100k(ml100k_dir):
    result = invoke(["data", "info", "ml-100k", "--data-dir", str(ml100k_dir)])
    assert _stat(result.stdout, "users") == 943
    assert _stat(result.stdout, "items") == 1682
    assert _stat(result.stdout, "interactions") == 100_000

    stats = json.loads(invoke(["data", "info", "ml-100k", "--data-dir", str(ml100k_dir), "--json"]).stdout)
    assert (stats["users"], stats["items"], stats["interactions"]) == (943, 1682, 100_000)


def test_train_ml100k_config(ml100k_dir, tmp_path):
    if not ML100K_TOML.is_file():
        pytest.skip("configs/ml100k-mf-fedavg.toml not present")
    out = tmp_path / "ml100k"
    invoke(["train", str(ML100K_TOML), "--set", "train.rounds=2", "--set", f"data.data_dir={ml100k_dir}",
            "--quiet", "--out", str(out)])
    metrics = _check_run_dir(out, rounds=2)
    assert metrics["dataset"] == "ml-100k"
    assert metrics["bytes_up"] > 0
    assert metrics["train_interactions"] + metrics["test_interactions"] == 100_000  # official fold u1
    assert metrics["rmse"] < 1.5


@pytest.mark.parametrize(
    ("args", "expected"),
    [([], "train"), (["train"], "--resume"), (["data", "info"], "--data-dir")],
)
def test_help(args, expected, monkeypatch, capfd):
    code, stdout, stderr = run_main([*args, "--help"], monkeypatch, capfd)
    assert code == 0, stderr
    assert "Usage" in stdout and expected in stdout
    assert "Traceback" not in stderr


# -- bad inputs (subprocesses) ---------------------------------------------------------------------


def test_unknown_key_error(launched, workdir):
    assert_process_error(launched("unknown_key"), "train.round", "did you mean train.rounds")
    assert not (workdir / "bad1").exists()


def test_missing_config_file_error(launched, workdir):
    assert_process_error(launched("missing_config"), "missing.toml", "not found")
    assert not (workdir / "bad2").exists()


def test_data_info_unknown_dataset_error(launched):
    assert_process_error(launched("info_unknown"), "nope", "ml-100k")


def test_unknown_dataset_name_error(launched):
    assert_process_error(launched("unknown_dataset"), "unknown dataset 'nope'", "synthetic", one_line=False)


def test_unknown_dataset_name_error_is_one_line(launched):
    assert_process_error(launched("unknown_dataset"), "nope")
