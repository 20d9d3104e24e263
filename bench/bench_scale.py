"""Scale: seconds per federated round and peak memory on synthetic populations of 10^4 to 10^6 users.

Workload: the model and local settings of configs/default.toml (biased MF, dim 32, 1 local epoch,
batch 8, FedAdam), one client per user, on :func:`fedrec.data.synthetic.synthetic_population`
(800 items, 40 ratings per user on average), vectorised backend. For each population, 1% and 10%
of the users are sampled per round; each population runs in its own process, fractions in
ascending order, so a row's peak RSS is that process's peak up to and including that row.

    python bench/bench_scale.py                 # full: 10^4, 10^5, 10^6 users (writes BENCHMARKS.md)
    python bench/bench_scale.py --quick --no-write
    python bench/bench_scale.py --profile 1000000 0.01 --no-write   # cProfile of one round
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(Path(__file__).resolve().parent))
TARGET_USERS, TARGET_CLIENTS, TARGET_SECONDS, TARGET_GB = 10**6, 10**4, 2.0, 8.0


def peak_rss_gb() -> float:
    """Peak resident memory of this process so far (ru_maxrss is KiB on Linux)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def measure_population(users: int, fractions: list[float], rounds: int, profile: bool = False,
                       threads: int | None = None) -> list[dict]:
    """Set up one population, then time ``rounds`` rounds (after one warm-up) at each fraction."""
    import torch

    from fedrec.config import load_config
    from fedrec.data.synthetic import synthetic_population
    from fedrec.federated.server import ServerState, run_round
    from fedrec.models.registry import build_model
    from fedrec.runtime.trainer import fedavg_settings

    torch.use_deterministic_algorithms(True, warn_only=True)  # as fedrec.runtime.trainer.train does
    if threads:
        torch.set_num_threads(threads)
    config = load_config(ROOT / "configs/default.toml")
    began = time.perf_counter()
    data = synthetic_population(users, config.data.num_items, mean_interactions=config.data.mean_interactions, seed=0)
    options = {**config.model.options(), "global_mean": float(data.targets.mean())}
    model = build_model(config.model.name, options, users, config.data.num_items)
    params = model.init_params(torch.Generator().manual_seed(0))
    setup_seconds = time.perf_counter() - began
    setup_gb = peak_rss_gb()
    rows = []
    for fraction in sorted(fractions):
        settings = fedavg_settings(load_config(ROOT / "configs/default.toml", [f"train.client_fraction={fraction}"]))
        settings = replace(settings, private_rows_in_place=True)  # as the trainer runs it
        state = ServerState(0, params)
        state, stats = run_round(model, state, data, settings, seed=0)  # warm-up
        if profile:
            import cProfile
            import pstats

            profiler = cProfile.Profile()
            profiler.enable()
            state, stats = run_round(model, state, data, settings, seed=0)
            profiler.disable()
            pstats.Stats(profiler, stream=sys.stderr).sort_stats("tottime").print_stats(25)
        seconds, cpu, examples = [], [], []
        for _ in range(rounds):
            began, began_cpu = time.perf_counter(), time.process_time()
            state, stats = run_round(model, state, data, settings, seed=0)
            seconds.append(time.perf_counter() - began)
            cpu.append(time.process_time() - began_cpu)
            examples.append(stats.examples)
        params = state.params
        rows.append({"users": users, "fraction": fraction, "clients": stats.clients,
                     "examples": int(statistics.median(examples)), "seconds": seconds, "cpu": cpu,
                     "peak_gb": peak_rss_gb(), "setup_seconds": setup_seconds, "setup_gb": setup_gb,
                     "interactions": len(data.users), "threads": torch.get_num_threads()})
    return rows


def run_in_subprocess(users: int, fractions: list[float], rounds: int, threads: int | None) -> list[dict]:
    """One population in a fresh process, so its peak memory is its own."""
    command = [sys.executable, __file__, "--worker", str(users), "--fractions", *map(str, fractions),
               "--rounds", str(rounds)] + (["--threads", str(threads)] if threads else [])
    done = subprocess.run(command, capture_output=True, text=True, cwd=ROOT)
    if done.returncode != 0:
        raise SystemExit(f"population {users} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def report(rows: list[dict]) -> str:
    table = ["| users | sampled | clients per round | examples per round | median s/round | median CPU s/round | "
             "rounds | peak RSS GB | setup s (data + model) |", "|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for row in rows:
        table.append(f"| {row['users']:,} | {row['fraction']:.0%} | {row['clients']:,} | {row['examples']:,} | "
                     f"{statistics.median(row['seconds']):.3f} | {statistics.median(row['cpu']):.3f} | {len(row['seconds'])} | {row['peak_gb']:.2f} | "
                     f"{row['setup_seconds']:.1f} |")
    body = "\n".join(table) + "\n\n"
    target = [r for r in rows if r["users"] == TARGET_USERS and r["clients"] == TARGET_CLIENTS]
    if target:
        row = target[0]
        sec, gb = statistics.median(row["seconds"]), row["peak_gb"]
        met = "met" if sec <= TARGET_SECONDS and gb <= TARGET_GB else "NOT met"
        body += (f"Target (10^6 users, 10^4 clients per round: <= {TARGET_SECONDS:g} s per round, <= {TARGET_GB:g} GB "
                 f"peak): {sec:.2f} s, {gb:.2f} GB -- **{met}**.\n\n")
    body += ("Workload: configs/default.toml's biased MF (dim 32, FedAdam, 1 local epoch, batch 8), one client per "
             "user, `synthetic_population` data (800 items, 40 ratings per user on average), vectorised backend, "
             f"torch {rows[0]['threads'] if rows else '?'} threads. Seconds per round: the whole `run_round` "
             "(sampling, local training, aggregation, server step, private-row write-back), median over the "
             "timed rounds after one warm-up; CPU s: the process's CPU time over the same rounds (all threads). Peak RSS: the population's process (data, model, rounds at that "
             "and smaller fractions).\n")
    return body


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--populations", type=int, nargs="+", default=[10**4, 10**5, 10**6])
    parser.add_argument("--fractions", type=float, nargs="+", default=[0.01, 0.1])
    parser.add_argument("--rounds", type=int, default=5, help="timed rounds per row (after one warm-up)")
    parser.add_argument("--quick", action="store_true", help="smoke run: 2,000 and 5,000 users, 1 round")
    parser.add_argument("--no-write", action="store_true", help="print only; leave BENCHMARKS.md alone")
    parser.add_argument("--profile", nargs=2, metavar=("USERS", "FRACTION"), help="cProfile one round and exit")
    parser.add_argument("--threads", type=int, help="torch threads (default: torch's choice)")
    parser.add_argument("--worker", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker is not None:
        print(json.dumps(measure_population(args.worker, args.fractions, args.rounds, threads=args.threads)))
        return
    if args.profile:
        rows = measure_population(int(args.profile[0]), [float(args.profile[1])], 1, profile=True, threads=args.threads)
        print(report(rows))
        return
    populations, rounds = (([2000, 5000], 1) if args.quick else (args.populations, args.rounds))
    rows = [row for users in populations for row in run_in_subprocess(users, args.fractions, rounds, args.threads)]
    body = report(rows)
    print(body)
    if not args.no_write:
        from _report import write_section

        write_section("scale", "Scale: seconds per round and peak memory, synthetic populations", body)


if __name__ == "__main__":
    main()
