"""Resume: an interrupted (or finished and extended) run ends exactly where an uninterrupted one does."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from fedrec.config import load_config
from fedrec.errors import FedrecError
from fedrec.runtime.checkpoint import CHECKPOINT_NAME
from fedrec.runtime.trainer import train

BASE = ["data.num_users=150", "data.num_items=100", "model.dim=8"]
MODES = {
    # server-side Adam and half the clients per round: the server state and the cohort draws must resume
    "federated": ["train.mode=federated", "train.server_optimizer=adam", "train.server_lr=0.05",
                  "train.client_fraction=0.5"],
    # Adam: its moments and step counts must come back from the checkpoint
    "centralized": ["train.mode=centralized", "train.central_optimizer=adam", "train.central_lr=0.01",
                    "train.central_batch_size=64"],
}
STATE_PREFIX = {"federated": "server/", "centralized": "optim/"}


def config(mode: str, rounds: int, *extra: str):
    return load_config(None, [*BASE, *MODES[mode], f"train.rounds={rounds}", *extra])


def stop_after(round_: int):
    def on_round(record: dict) -> None:
        if record["round"] == round_:
            raise KeyboardInterrupt

    return on_round


def checkpoint(out: Path) -> tuple[dict[str, torch.Tensor], dict]:
    path = out / CHECKPOINT_NAME
    with safe_open(str(path), framework="pt") as handle:
        meta = json.loads(handle.metadata()["fedrec"])
    return load_file(str(path)), meta


def history_rounds(out: Path) -> list[int]:
    return [json.loads(line)["round"] for line in (out / "history.jsonl").read_text().splitlines() if line.strip()]


def assert_same_run(resumed: Path, straight: Path, resumed_metrics: dict, straight_metrics: dict, mode: str) -> None:
    tensors, meta = checkpoint(resumed)
    expected, expected_meta = checkpoint(straight)
    assert sorted(tensors) == sorted(expected)
    assert any(key.startswith(STATE_PREFIX[mode]) for key in expected), sorted(expected)  # optimiser state is saved
    for key, value in expected.items():
        torch.testing.assert_close(tensors[key], value, atol=1e-6, rtol=0, msg=lambda m, k=key: f"{k}: {m}")
    for key in ("round", "bytes_up", "bytes_down", "config"):
        assert meta[key] == expected_meta[key], key
    for key in ("rmse", "mae", "rounds", "bytes_up", "bytes_down"):
        assert resumed_metrics[key] == pytest.approx(straight_metrics[key], abs=1e-6), key
    # the per-round records match too, apart from timing
    resumed_history = [json.loads(line) for line in (resumed / "history.jsonl").read_text().splitlines()]
    straight_history = [json.loads(line) for line in (straight / "history.jsonl").read_text().splitlines()]
    for mine, theirs in zip(resumed_history, straight_history, strict=True):
        mine.pop("seconds"), theirs.pop("seconds")
        assert mine.keys() == theirs.keys()
        for key in theirs:
            assert mine[key] == pytest.approx(theirs[key], abs=1e-6), (mine["round"], key)


@pytest.fixture(scope="module")
def straight_runs(tmp_path_factory) -> dict[str, tuple[Path, dict]]:
    """Uninterrupted 4-round runs, one per mode (shared by the tests that compare against them)."""
    runs = {}
    for mode in MODES:
        out = tmp_path_factory.mktemp(f"straight-{mode}")
        runs[mode] = (out, train(config(mode, 4), out))
    return runs


# -- (a) interrupt after round 2, resume to 4 ------------------------------------------------------


@pytest.mark.parametrize("mode", list(MODES))
def test_interrupted_then_resumed_equals_uninterrupted(mode, tmp_path, straight_runs):
    straight, straight_metrics = straight_runs[mode]
    out = tmp_path / "run"
    with pytest.raises(KeyboardInterrupt):
        train(config(mode, 4), out, on_round=stop_after(2))
    assert history_rounds(out) == [1, 2]
    assert checkpoint(out)[1]["round"] == 2
    assert not (out / "metrics.json").exists()
    # the interruption happened mid-run: the round-2 model is not the final one
    middle, final = checkpoint(out)[0], checkpoint(straight)[0]
    assert any(not torch.equal(middle[k], final[k]) for k in final if k.startswith("param/"))

    starts: list[tuple[int, int]] = []
    seen: list[int] = []
    metrics = train(config(mode, 4), out, resume=True, on_start=lambda done, total: starts.append((done, total)),
                    on_round=lambda record: seen.append(record["round"]))
    assert starts == [(2, 4)]
    assert seen == [3, 4]
    assert history_rounds(out) == [1, 2, 3, 4]
    assert metrics["rounds"] == 4
    assert_same_run(out, straight, metrics, straight_metrics, mode)
    assert json.loads((out / "metrics.json").read_text())["rmse"] == pytest.approx(straight_metrics["rmse"])


def test_interrupt_between_checkpoints_replays_the_lost_round(tmp_path, straight_runs):
    """With checkpoint_every=2, an interruption after round 3 resumes from round 2 and redoes round 3."""
    straight, straight_metrics = straight_runs["federated"]
    out = tmp_path / "run"
    with pytest.raises(KeyboardInterrupt):
        train(config("federated", 4, "train.checkpoint_every=2"), out, on_round=stop_after(3))
    assert history_rounds(out) == [1, 2, 3]
    assert checkpoint(out)[1]["round"] == 2
    metrics = train(config("federated", 4, "train.checkpoint_every=2"), out, resume=True)
    assert history_rounds(out) == [1, 2, 3, 4]
    tensors, expected = checkpoint(out)[0], checkpoint(straight)[0]
    assert sorted(tensors) == sorted(expected)
    for key in expected:
        torch.testing.assert_close(tensors[key], expected[key], atol=1e-6, rtol=0)
    assert metrics["rmse"] == pytest.approx(straight_metrics["rmse"], abs=1e-6)


# -- (b) a different config -------------------------------------------------------------------------


@pytest.mark.parametrize("change", ["model.dim=16", "train.local_lr=0.1", "train.seed=1", "data.num_users=151"])
def test_resume_with_a_different_config_fails(change, tmp_path):
    out = tmp_path / "run"
    train(config("federated", 2), out)
    before = (out / CHECKPOINT_NAME).read_bytes()
    with pytest.raises(FedrecError) as info:
        train(config("federated", 4, change), out, resume=True)
    message = str(info.value)
    assert "\n" not in message
    assert "different config" in message and str(out) in message
    assert (out / CHECKPOINT_NAME).read_bytes() == before  # the run is left as it was
    assert history_rounds(out) == [1, 2]


def test_rerun_without_resume_fails_and_keeps_the_run(tmp_path):
    out = tmp_path / "run"
    train(config("federated", 2), out)
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    with pytest.raises(FedrecError) as info:
        train(config("federated", 2), out)
    assert "\n" not in str(info.value) and "--resume" in str(info.value)
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before


def test_resume_without_a_checkpoint_starts_fresh(tmp_path, straight_runs):
    straight, straight_metrics = straight_runs["federated"]
    out = tmp_path / "new"
    metrics = train(config("federated", 4), out, resume=True)
    assert history_rounds(out) == [1, 2, 3, 4]
    assert_same_run(out, straight, metrics, straight_metrics, "federated")


# -- (c) extend a finished run ----------------------------------------------------------------------


@pytest.mark.parametrize("mode", list(MODES))
def test_extending_a_finished_run_equals_a_longer_run(mode, tmp_path, straight_runs):
    straight, straight_metrics = straight_runs[mode]
    out = tmp_path / "run"
    short = train(config(mode, 2), out)
    assert short["rounds"] == 2 and history_rounds(out) == [1, 2]
    metrics = train(config(mode, 4), out, resume=True)
    assert history_rounds(out) == [1, 2, 3, 4]
    assert json.loads((out / "config.json").read_text())["train"]["rounds"] == 4
    assert_same_run(out, straight, metrics, straight_metrics, mode)


# -- (d) unreadable checkpoints ---------------------------------------------------------------------


def _truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def _truncate_header(path: Path) -> None:
    path.write_bytes(path.read_bytes()[:20])


def _empty(path: Path) -> None:
    path.write_bytes(b"")


def _garbage(path: Path) -> None:
    path.write_bytes(b"\x00\xff not a safetensors file \x13\x37" * 10)


def _huge_header_length(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes((2**40).to_bytes(8, "little") + data[8:])


def _broken_header_json(path: Path) -> None:
    data = bytearray(path.read_bytes())
    length = int.from_bytes(data[:8], "little")
    data[8:8 + length] = b"{" * length
    path.write_bytes(bytes(data))


CORRUPTIONS = [_truncate, _truncate_header, _empty, _garbage, _huge_header_length, _broken_header_json]


@pytest.mark.parametrize("corrupt", CORRUPTIONS, ids=[f.__name__.strip("_") for f in CORRUPTIONS])
def test_corrupt_checkpoint_is_a_one_line_error(corrupt, tmp_path):
    out = tmp_path / "run"
    train(config("federated", 2), out)
    corrupt(out / CHECKPOINT_NAME)
    with pytest.raises(FedrecError) as info:
        train(config("federated", 4), out, resume=True)
    message = str(info.value)
    assert "\n" not in message, message
    assert CHECKPOINT_NAME in message and "unreadable" in message


def test_foreign_safetensors_file_is_a_one_line_error(tmp_path):
    out = tmp_path / "run"
    train(config("federated", 2), out)
    save_file({"weight": torch.zeros(3)}, str(out / CHECKPOINT_NAME))
    with pytest.raises(FedrecError) as info:
        train(config("federated", 4), out, resume=True)
    assert "\n" not in str(info.value)


def test_resume_with_fewer_rounds_than_done_is_an_error_or_consistent(tmp_path):
    out = tmp_path / "run"
    train(config("federated", 4), out)
    try:
        metrics = train(config("federated", 2), out, resume=True)
    except FedrecError as error:
        assert "\n" not in str(error)
        return
    saved = json.loads((out / "config.json").read_text())
    assert saved["train"]["rounds"] == metrics["rounds"] == len(history_rounds(out))



# -- (e) the final refit of the private rows (train.refit_private_epochs) ----------------------------


REFIT = ["train.refit_private_epochs=2", "train.refit_private_lr=0.05"]


def test_refit_happens_once_and_a_finished_run_resumes_to_the_same_metrics(tmp_path):
    out = tmp_path / "run"
    first = train(config("federated", 3, *REFIT), out)
    assert first["rmse"] < first["before_refit_rmse"]  # the private rows now fit the final item rows
    tensors, meta = checkpoint(out)
    assert "before_refit" in meta and any(key.startswith("trained/") for key in tensors)
    again = train(config("federated", 3, *REFIT), out, resume=True)  # nothing left to run: no second refit
    assert again["rmse"] == pytest.approx(first["rmse"], abs=1e-9)
    assert again["bytes_down"] == first["bytes_down"]
    plain = train(config("federated", 3), tmp_path / "plain")
    assert first["before_refit_rmse"] == pytest.approx(plain["rmse"], abs=1e-6)  # training itself is unchanged
    assert first["bytes_down"] > plain["bytes_down"]  # the final model reaches every client once more


def test_extending_a_refitted_run_equals_a_longer_run(tmp_path):
    straight = tmp_path / "straight"
    straight_metrics = train(config("federated", 4, *REFIT), straight)
    out = tmp_path / "run"
    train(config("federated", 2, *REFIT), out)
    metrics = train(config("federated", 4, *REFIT), out, resume=True)
    assert history_rounds(out) == [1, 2, 3, 4]
    assert_same_run(out, straight, metrics, straight_metrics, "federated")
    assert metrics["before_refit_rmse"] == pytest.approx(straight_metrics["before_refit_rmse"], abs=1e-6)


def test_refit_needs_federated_training():
    with pytest.raises(FedrecError, match="refit_private_epochs"):
        config("centralized", 2, *REFIT)


def test_optimiser_state_for_other_tensors_is_a_one_line_error(tmp_path):
    """A centralised checkpoint whose optimiser covered more tensors (e.g. saved before constant tables left it)."""
    out = tmp_path / "run"
    train(config("centralized", 2), out)
    tensors, meta = checkpoint(out)
    groups = meta["optim_groups"]
    groups[0]["params"] = [*groups[0]["params"], max(groups[0]["params"]) + 1]
    save_file(tensors, str(out / CHECKPOINT_NAME), metadata={"fedrec": json.dumps(meta)})
    with pytest.raises(FedrecError) as info:
        train(config("centralized", 4), out, resume=True)
    assert "\n" not in str(info.value) and "without --resume" in str(info.value)


def test_extending_a_finished_run_then_interrupting_leaves_it_unfinished(tmp_path):
    """The earlier finish's metrics.json must not survive a resume that has rounds to go."""
    out = tmp_path / "run"
    train(config("federated", 2), out)
    assert (out / "metrics.json").exists()
    with pytest.raises(KeyboardInterrupt):
        train(config("federated", 4), out, resume=True, on_round=stop_after(3))
    assert not (out / "metrics.json").exists()  # so serving and reports see an unfinished run, not old figures
    assert history_rounds(out) == [1, 2, 3]
    metrics = train(config("federated", 4), out, resume=True)
    assert metrics["rounds"] == 4 and json.loads((out / "metrics.json").read_text())["rounds"] == 4


def test_a_diverging_run_stops_at_the_first_non_finite_loss_with_its_finished_rounds_kept(tmp_path):
    out = tmp_path / "run"
    with pytest.raises(FedrecError, match=r"diverged in round (\d+).*train.local_lr") as info:
        train(config("federated", 8, "train.local_lr=1e6", "train.server_optimizer='sgd'", "train.server_lr=1.0"), out)
    assert "\n" not in str(info.value)
    failed = int(str(info.value).split("round ")[1].split(" ")[0])
    assert 1 < failed < 8
    _, meta = checkpoint(out)
    assert meta["round"] == failed - 1 and history_rounds(out) == list(range(1, failed))
    assert not (out / "metrics.json").exists()
