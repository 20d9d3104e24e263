"""Next-item ranking on ML-100K: federated SASRec vs centralised SASRec vs federated BPR-MF.

All three on the same split and protocol: leave-last-out by time (last interaction = test,
second-to-last = validation), full ranking over every item the user has not interacted with.
Writes an accuracy table (no timings) to BENCHMARKS.md unless ``--no-write``.

    FEDREC_DATA=../shared/data python bench/bench_sequence.py            # full runs (about 10 min each, quiet 2 cores; --jobs 3 runs them at once)
    FEDREC_DATA=../shared/data python bench/bench_sequence.py --quick    # 1 round / epoch each, writes nothing
"""

from __future__ import annotations

import argparse
import multiprocessing
import sys
import tempfile
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _report import write_section  # noqa: E402

import torch  # noqa: E402

from fedrec.config import load_config  # noqa: E402
from fedrec.runtime.trainer import train  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
KEYS = ("hr@10", "ndcg@10", "hr@20", "ndcg@20", "val_hr@10", "val_ndcg@10", "sampled_hr@10")
#: the centralised baseline: the same model, windows and loss, trained with Adam on all windows at once
CENTRAL = ["train.mode=centralized", "train.rounds=60", "train.central_optimizer=adam", "train.central_lr=0.001",
           "train.central_batch_size=64", "train.eval_every=10"]
RUNS = {
    "SASRec, federated": ("ml100k-sasrec-fedavg.toml", []),
    "SASRec, centralised": ("ml100k-sasrec-fedavg.toml", CENTRAL),
    "BPR-MF, federated": ("ml100k-bpr-fedavg.toml", ["data.split=leave_last_out"]),
}


def _run(job: tuple[str, str, list[str], list[str], int]) -> dict:
    """Train one run of the table in a temporary folder; returns its metrics."""
    name, config_name, overrides, extra, threads = job
    torch.set_num_threads(threads)
    config = load_config(ROOT / "configs" / config_name, overrides + extra)
    with tempfile.TemporaryDirectory() as tmp:
        metrics = train(config, Path(tmp) / "run")
    print(f"{name}: HR@10 {metrics['hr@10']:.4f} NDCG@10 {metrics['ndcg@10']:.4f}", flush=True)
    return metrics


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="1 round (epoch) per run; implies --no-write")
    parser.add_argument("--no-write", action="store_true", help="print the table, leave BENCHMARKS.md alone")
    parser.add_argument("--runs", nargs="+", choices=sorted(RUNS), default=list(RUNS))
    parser.add_argument("--set", dest="overrides", action="append", default=[], help="override for every run")
    parser.add_argument("--threads", type=int, default=1, help="torch threads per run (default 1)")
    parser.add_argument("--jobs", type=int, default=1, help="runs trained at once, one process each (default 1)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    quick = ["train.rounds=1", "train.eval_every=1"] if args.quick else []
    rows = ["| model | config | HR@10 | NDCG@10 | HR@20 | NDCG@20 | val HR@10 | val NDCG@10 | sampled HR@10 | rounds |",
            "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    jobs = [(name, *RUNS[name], args.overrides + quick, args.threads) for name in args.runs]
    if args.jobs > 1:  # one process per run, each with its own torch threads
        with ProcessPoolExecutor(args.jobs, mp_context=multiprocessing.get_context("spawn")) as pool:
            finished = list(pool.map(_run, jobs))
    else:
        finished = [_run(job) for job in jobs]
    results = {}
    for (name, config_name, overrides, _, _), metrics in zip(jobs, finished):
        results[name] = metrics
        shown = " ".join(["configs/" + config_name, *[f"--set {o}" for o in overrides]])
        rows.append(f"| {name} | `{shown}` | " + " | ".join(f"{metrics.get(k, float('nan')):.4f}" for k in KEYS) +
                    f" | {metrics['rounds']} |")
        print(rows[-1], flush=True)
    popularity = next(iter(results.values()))
    rows.append(f"| popularity | (training counts) | {popularity['popularity_hr@10']:.4f} | "
                f"{popularity['popularity_ndcg@10']:.4f} | {popularity['popularity_hr@20']:.4f} | "
                f"{popularity['popularity_ndcg@20']:.4f} |  |  |  |  |")
    verdict = ""
    fed, bpr = results.get("SASRec, federated"), results.get("BPR-MF, federated")
    if fed is not None and bpr is not None:
        verdict = (f"\n\nTargets: federated SASRec NDCG@10 {fed['ndcg@10']:.4f} vs federated BPR-MF {bpr['ndcg@10']:.4f} "
                   f"({'met' if fed['ndcg@10'] >= bpr['ndcg@10'] else 'NOT met'}); HR@10 {fed['hr@10']:.4f} vs 0.110 "
                   f"({'met' if fed['hr@10'] >= 0.110 else 'NOT met'}).")
    body = "\n".join(rows) + verdict + (
        "\n\nProtocol: ML-100K as implicit feedback, leave-last-out by time, ranking over all items the user has not "
        "interacted with (ties broken at random, expected value reported). SASRec ranks from the user's latest 50 "
        "items before the test interaction (validation: before the validation interaction); it trains on windows of "
        "each user's training sequence with a sampled softmax against 100 negatives per window. Federated: one client "
        "per user, a random 10% of them per round (BPR-MF: all of them); settings chosen on validation only (see the "
        "config's comments). Centralised SASRec: the same model, windows and loss, Adam on all windows, not tuned.\n")
    print(body)
    if not (args.quick or args.no_write):
        write_section("sequence", "Next-item ranking: federated SASRec vs BPR-MF (ML-100K, leave-last-out)", body)


if __name__ == "__main__":
    main()
