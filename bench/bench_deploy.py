"""Seconds per round of a Flower deployment on loopback next to the simulator's, for the same job.

Workload: biased MF from configs/ml100k-mf-fedavg.toml on ML-100K fold u1, all 943 clients per
round, one local epoch. The deployment is what ``fedrec deploy`` starts (a SuperLink and N
SuperNodes on 127.0.0.1, the clients split among them), at 2 and 4 nodes; the simulator is
``fedrec train``'s round (:func:`fedrec.federated.server.run_round`). Reported per runtime: start-up
(deploy: from the call until the server has found and queried every node; simulator: loading and
preparing the data), seconds per round (median over rounds 2..R-1, from the server's own clock in
history.jsonl; the last round also evaluates), the ratio to the simulator, and the final test RMSE
(same model for the same seed: the two columns must agree). Timing figures need a quiet machine.

    FEDREC_DATA=../shared/data python bench/bench_deploy.py [--rounds 6] [--nodes 2 4] [--no-write]
    python bench/bench_deploy.py --quick   # tiny synthetic job, 2 nodes, a smoke test (never writes)
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _report import write_section  # noqa: E402

from fedrec.config import RunConfig, load_config  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
QUICK = ["data.name='synthetic'", "data.num_users=60", "data.num_items=40", "data.mean_interactions=8",
         "model.dim=4", "train.batch_size=4"]


def job(quick: bool, rounds: int) -> RunConfig:
    overrides = [f"train.rounds={rounds}", f"train.eval_every={rounds}", "train.local_epochs=1",
                 "train.client_fraction=1.0"]
    if quick:
        return load_config(None, QUICK + overrides)
    return load_config(ROOT / "configs/ml100k-mf-fedavg.toml", overrides)


def per_round(history: list[dict[str, Any]]) -> float:
    """Median seconds of the rounds that neither follow start-up nor evaluate (rounds 2..R-1)."""
    clock = [h["seconds"] for h in history]
    steps = [b - a for a, b in zip(clock[:-2], clock[1:-1])]
    return statistics.median(steps) if steps else float("nan")


def simulate(config: RunConfig, out: Path) -> dict[str, Any]:
    """The simulator on the same job: start-up (data preparation) and per-round seconds, final RMSE."""
    from fedrec.runtime.experiment import prepare
    from fedrec.runtime.trainer import train

    began = time.perf_counter()
    prepare(config)
    startup = time.perf_counter() - began
    metrics = train(config, out)
    history = [json.loads(line) for line in (out / "history.jsonl").read_text().splitlines()]
    return {"startup": startup, "per_round": per_round(history), "rmse": metrics.get("rmse", float("nan"))}


def deployment(config: RunConfig, nodes: int, out: Path, round_timeout: float) -> dict[str, Any]:
    """One loopback deployment: start-up until round 1 begins, per-round seconds, final RMSE."""
    from fedrec.flower.deploy import deploy

    began = time.perf_counter()
    first: list[float] = []
    metrics = deploy(config, nodes, out, round_timeout=round_timeout,
                     on_round=lambda record: first.append(time.perf_counter() - began) if not first else None)
    history = [json.loads(line) for line in (out / "history.jsonl").read_text().splitlines()]
    rounds = per_round(history)
    wall_to_first = first[0] if first else float("nan")  # round 1's line seen (fedrec deploy polls every 0.5 s)
    return {"startup": wall_to_first - rounds, "per_round": rounds, "rmse": metrics.get("rmse", float("nan")),
            "wall": time.perf_counter() - began, "nodes_finished": metrics.get("nodes_finished")}


def table(sim: dict[str, Any], deployed: dict[int, dict[str, Any]]) -> str:
    lines = ["| runtime | start-up (s) | seconds / round (median) | x simulator | final test RMSE |",
             "|---|---:|---:|---:|---:|",
             f"| simulator (`fedrec train`) | {sim['startup']:.2f} | {sim['per_round']:.3f} | 1.0 | {sim['rmse']:.5f} |"]
    for nodes, row in deployed.items():
        ratio = row["per_round"] / sim["per_round"] if sim["per_round"] > 0 else float("nan")
        lines.append(f"| Flower loopback, {nodes} SuperNodes (`fedrec deploy`) | {row['startup']:.1f} | "
                     f"{row['per_round']:.3f} | {ratio:.1f} | {row['rmse']:.5f} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=6, help="rounds per run (>= 4: rounds 2..R-1 are timed)")
    parser.add_argument("--nodes", type=int, nargs="+", default=[2, 4])
    parser.add_argument("--round-timeout", type=float, default=600.0)
    parser.add_argument("--no-write", action="store_true", help="print the table, leave BENCHMARKS.md alone")
    parser.add_argument("--quick", action="store_true", help="tiny synthetic job, 2 nodes (a smoke test; never writes)")
    args = parser.parse_args()
    if args.rounds < 4:
        parser.error("--rounds must be at least 4")
    torch.use_deterministic_algorithms(True, warn_only=True)
    nodes = [2] if args.quick else args.nodes
    config = job(args.quick, args.rounds)
    with tempfile.TemporaryDirectory(prefix="bench_deploy_") as scratch:
        sim = simulate(config, Path(scratch) / "sim")
        print(f"simulator: start-up {sim['startup']:.2f} s, {sim['per_round']:.3f} s/round", file=sys.stderr)
        deployed = {}
        for count in nodes:
            deployed[count] = deployment(config, count, Path(scratch) / f"deploy{count}", args.round_timeout)
            row = deployed[count]
            print(f"{count} SuperNodes: start-up {row['startup']:.1f} s, {row['per_round']:.3f} s/round, "
                  f"wall {row['wall']:.1f} s", file=sys.stderr)
    body = table(sim, deployed)
    print(body)
    if args.quick or args.no_write:
        return
    notes = (f"\n\n{args.rounds} rounds per run, all 943 clients per round, one local epoch. Start-up of the deployment: "
             "from `deploy()` until the server starts round 1 (SuperLink and SuperNodes up, `flwr run`, every node "
             "queried for its partition). Flower 1.41 starts a fresh `flwr-clientapp` process for every message "
             "(each imports torch and loads the node's partition), which is most of a deployed round here; the model "
             "is the simulator's (RMSE columns).")
    write_section("deploy", "Deployment on Flower (loopback): seconds per round", body + notes)


if __name__ == "__main__":
    main()
