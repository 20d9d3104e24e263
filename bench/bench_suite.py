"""One FedAvg-MF round four ways: vectorised backend, reference backend, a centralised epoch, Flower's simulation engine.

Workload: biased MF with the model and local settings of configs/ml100k-mf-fedavg.toml (dim 128,
1 local epoch, batch 8, FedAdam) at 100 and 943 clients per round on ML-100K fold u1, and 5,000
clients per round on a synthetic population with ML-100K-like statistics (1,682 items, 106 ratings
per user, 80/20 split). Every figure comes from one run of this script; medians over repeats.

- vectorised / reference: ``run_round`` with ``train.backend`` vectorized / reference;
- centralised epoch: one pass of ``train_epoch`` (configs/ml100k-mf-central.toml: Adam, batch 256)
  over the examples of the same round's cohort;
- Flower: ``flwr.simulation.run_simulation`` (Ray backend, one Ray worker per core), one Flower
  client per user running fedrec's client update on its data, the ServerApp aggregating with
  fedrec's ``server_update`` (bench/_flower_sim.py). Start-up (Ray, nodes, each worker loading the
  data) is reported apart from the seconds per round. Its first round is checked against the simulator's.

    FEDREC_DATA=../shared/data python bench/bench_suite.py               # full (writes BENCHMARKS.md)
    FEDREC_DATA=../shared/data python bench/bench_suite.py --quick --no-write
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH))
from _flower_sim import QUICK, ROOT, load_workload  # noqa: E402

from fedrec.federated.cohort import ClientData, cohort_examples, sample_cohort  # noqa: E402
from fedrec.federated.server import ServerState, run_round  # noqa: E402

CENTRAL_CONFIG = ROOT / "configs/ml100k-mf-central.toml"
TARGET_RATIO = 100.0  # vectorised >= 100x faster per round than Flower on the 943-client round


def time_rounds(clients: int, backend: str, repeats: int, warm_up: bool) -> tuple[list[float], dict]:
    """Seconds of ``repeats`` consecutive rounds from the seed-0 start (after an untimed first round if
    ``warm_up``), and the shared parameters after the first round."""
    from dataclasses import replace

    work = load_workload(clients)
    settings = replace(work.settings, backend=backend)
    state = ServerState(0, {name: value.clone() for name, value in work.init.items()})
    first: dict = {}
    times = []
    for index in range(repeats + int(warm_up)):
        began = time.perf_counter()
        state, _ = run_round(work.exp.model, state, work.exp.clients, settings, seed=0)
        if index > 0 or not warm_up:
            times.append(time.perf_counter() - began)
        if index == 0:
            first = {name: state.params[name].clone() for name in work.exp.model.shared_names()}
    return times, first


def cohort_data(data: ClientData, cohort: np.ndarray) -> ClientData:
    """The cohort's clients' examples as a ClientData of their own."""
    examples = cohort_examples(data, cohort)
    index = examples.example_index
    offsets = np.zeros(len(cohort) + 1, dtype=np.int64)
    np.cumsum(examples.client_sizes, out=offsets[1:])
    return ClientData(offsets, data.users[index], data.items[index], data.targets[index], data.user_items)


def time_central_epochs(clients: int, repeats: int) -> tuple[list[float], int]:
    """Seconds of centralised epochs over the examples of the round-0 cohort, and how many examples."""
    from fedrec.config import load_config
    from fedrec.runtime.centralized import CentralSettings, make_optimizer, train_epoch

    work = load_workload(clients)
    central = load_config(CENTRAL_CONFIG).train
    data = cohort_data(work.exp.clients, sample_cohort(work.exp.clients.num_clients, work.settings.client_fraction, 0, 0))
    params = {name: value.clone().requires_grad_(True) for name, value in work.init.items()}
    optimizer = make_optimizer(params, CentralSettings(central.central_optimizer, central.central_lr,
                                                       central.central_batch_size))
    times = []
    for epoch in range(repeats):
        began = time.perf_counter()
        train_epoch(work.exp.model, params, optimizer, data, central.central_batch_size, 0, epoch)
        times.append(time.perf_counter() - began)
    return times, len(data.users)


def flower_worker(clients: int, rounds: int, out: Path) -> None:
    """In this (fresh) process: run the Flower simulation and save what it measured to ``out``."""
    import logging

    from flwr.simulation import run_simulation

    import _flower_sim

    work = load_workload(clients)  # the ServerApp runs in this process
    run = _flower_sim.FlowerRun(clients, rounds)
    _flower_sim.CURRENT.append(run)
    logging.getLogger("flwr").setLevel(logging.WARNING)
    run.began = time.perf_counter()
    run_simulation(_flower_sim.server_app, _flower_sim.client_app, num_supernodes=work.exp.clients.num_clients,
                   backend_config={"client_resources": {"num_cpus": 1, "num_gpus": 0.0},
                                   "init_args": {"num_cpus": os.cpu_count() or 1, "log_to_driver": False}})
    total = time.perf_counter() - run.began
    torch.save({"startup": run.startup_seconds, "rounds": run.round_seconds, "total": total, "error": run.error,
                "shared": run.shared_after_first_round}, out)


def time_flower(clients: int, rounds: int) -> dict:
    """Flower in a subprocess of its own (Ray, its workers and its memory are gone afterwards)."""
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "flower.pt"
        env = {**os.environ, "FLWR_TELEMETRY_ENABLED": "0",
               "PYTHONPATH": os.pathsep.join([str(BENCH), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep)}
        command = [sys.executable, __file__, "--flower-worker", str(clients), "--flower-rounds", str(rounds),
                   "--flower-out", str(out)]
        done = subprocess.run(command, capture_output=True, text=True, env=env, cwd=ROOT)
        if done.returncode != 0 or not out.exists():
            raise SystemExit(f"the Flower simulation of {clients} clients failed:\n{done.stderr[-4000:]}")
        result = torch.load(out)
    if result["error"] or len(result["rounds"]) != rounds:
        raise SystemExit(f"the Flower simulation of {clients} clients failed: {result['error'] or 'rounds missing'}")
    return result


def max_difference(a: dict, b: dict) -> float:
    return max(float((a[name] - b[name]).abs().max()) for name in a)


def measure(clients: int, repeats: int, reference_repeats: int, flower_rounds: int) -> dict:
    vectorized, first = time_rounds(clients, "vectorized", repeats, warm_up=True)
    reference, _ = time_rounds(clients, "reference", reference_repeats, warm_up=False)
    central, examples = time_central_epochs(clients, repeats)
    row = {"clients": clients, "examples": examples, "vectorized": vectorized, "reference": reference,
           "central": central}
    if flower_rounds:
        flower = time_flower(clients, flower_rounds)
        row.update(flower_rounds=flower["rounds"], flower_startup=flower["startup"],
                   flower_difference=max_difference(flower["shared"], first))
    return row


def report(rows: list[dict]) -> str:
    med = statistics.median
    table = ["| clients per round | examples | vectorised s | reference s | centralised epoch s | Flower s/round | "
             "Flower start-up s | reference / vectorised | Flower / vectorised | vectorised / centralised |",
             "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    notes = []
    for row in rows:
        vec, ref, cen = med(row["vectorized"]), med(row["reference"]), med(row["central"])
        flower = med(row["flower_rounds"]) if "flower_rounds" in row else None
        table.append(f"| {row['clients']:,} | {row['examples']:,} | {vec:.3f} | {ref:.2f} | {cen:.3f} | "
                     + (f"{flower:.2f} | {row['flower_startup']:.1f} |" if flower else "-- | -- |")
                     + f" {ref / vec:.1f}x | " + (f"**{flower / vec:.0f}x** |" if flower else "-- |")
                     + f" {vec / cen:.2f}x |")
        if flower:
            notes.append(f"{row['clients']:,}: {row['flower_difference']:.1e}")
    repeats = (f"Repeats: vectorised {len(rows[0]['vectorized'])} (after 1 warm-up round), reference "
               f"{len(rows[0]['reference'])}, centralised {len(rows[0]['central'])}"
               + (f", Flower {len(rows[0]['flower_rounds'])} rounds" if "flower_rounds" in rows[0] else "") + ".")
    body = "\n".join(table) + "\n\n" + repeats + "\n"
    target = [row for row in rows if row["clients"] == 943 and "flower_rounds" in row]
    if target:
        ratio = med(target[0]["flower_rounds"]) / med(target[0]["vectorized"])
        body += (f"\nTarget: vectorised >= {TARGET_RATIO:.0f}x faster per round than Flower on the 943-client round: "
                 f"**{ratio:.0f}x** ({'met' if ratio >= TARGET_RATIO else 'NOT met'}).\n")
    if notes:
        body += ("\nFlower's shared model after round 1 vs the vectorised simulator's, max |difference| by clients per "
                 "round: " + "; ".join(notes) + ".\n")
    body += ("\nFlower: `run_simulation`, Ray backend, one Flower client per user (943 or 5,000 virtual SuperNodes), "
             "one Ray worker per core (`num_cpus=1` each, torch 1 thread each); each client runs "
             "`fedrec.federated.reference.train_client` on its data and keeps its user vector in its node state; "
             "the ServerApp samples the cohort with fedrec's `sample_cohort`, receives every upload and aggregates "
             "with fedrec's `server_update`. Start-up = `run_simulation` called -> every node registered and its "
             "worker holding the data (a query round). Centralised epoch: Adam, batch 256, over the same cohort's "
             "examples. 100 and 943 clients: ML-100K u1.base; 5,000: synthetic (1,682 items, 106 ratings per user, "
             "80/20 ratio split).\n")
    if any(row["clients"] == QUICK for row in rows):
        body += f"\n({QUICK} clients per round: the --quick smoke workload, 200 synthetic users.)\n"
    return body


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, nargs="+", default=[100, 943, 5000], help="clients per round")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--reference-repeats", type=int, default=3)
    parser.add_argument("--flower-rounds", type=int, default=3, help="0: leave Flower out")
    parser.add_argument("--quick", action="store_true", help="smoke run: 20 of 200 synthetic users per round, 1 repeat each")
    parser.add_argument("--no-write", action="store_true", help="print only; leave BENCHMARKS.md alone")
    parser.add_argument("--flower-worker", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--flower-out", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    torch.use_deterministic_algorithms(True, warn_only=True)  # as fedrec.runtime.trainer.train does
    if args.flower_worker is not None:
        flower_worker(args.flower_worker, args.flower_rounds, args.flower_out)
        return
    if args.quick:
        args.clients, args.repeats, args.reference_repeats, args.flower_rounds = [QUICK], 1, 1, min(args.flower_rounds, 1)
    rows = []
    for clients in args.clients:
        rows.append(measure(clients, args.repeats, args.reference_repeats, args.flower_rounds))
        print(json.dumps({k: v for k, v in rows[-1].items()}), file=sys.stderr)
    body = report(rows)
    print(body)
    if not args.no_write:
        from _report import write_section

        write_section("suite", "Suite: one FedAvg-MF round -- vectorised vs reference vs centralised vs Flower", body)


if __name__ == "__main__":
    main()
