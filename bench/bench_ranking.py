"""Top-K ranking, federated vs centralised, on ML-100K and Last.fm-2K (leave-last-out, full ranking).

Runs each named config pair (configs/<name>-fedavg.toml and configs/<name>-central.toml) end to end,
for train.seed 0..N-1, and writes one table of seed means to BENCHMARKS.md, with the popularity
baseline in the same protocol and the federated/centralised ratio of the means.

    FEDREC_DATA=../shared/data python bench/bench_ranking.py [--pairs ml100k-bpr ml100k-neumf lastfm-bpr]
    FEDREC_DATA=../shared/data OMP_NUM_THREADS=1 python bench/bench_ranking.py --seeds 3 --jobs 2 --threads 1
"""

from __future__ import annotations

import argparse
import math
import statistics
import sys
import tempfile
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _report import write_section  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
KEYS = ("hr@10", "ndcg@10", "val_hr@10", "val_ndcg@10", "sampled_hr@10", "sampled_ndcg@10", "popularity_hr@10",
        "coverage@10")
RATIO_KEYS = ("hr@10", "ndcg@10", "val_hr@10", "val_ndcg@10")
MODES = ("fedavg", "central")


def _run(pair: str, mode: str, overrides: list[str], out_dir: Path, threads: int) -> dict[str, Any]:
    import torch

    from fedrec.config import load_config
    from fedrec.runtime.trainer import train

    torch.set_num_threads(threads)
    metrics = train(load_config(ROOT / "configs" / f"{pair}-{mode}.toml", overrides), out_dir)
    metrics["round_seconds"] = metrics["seconds"] / max(metrics["rounds"], 1)
    return metrics


def _cell(value: float, digits: int = 4) -> str:
    """A table cell; blank for a figure the runs do not have (no validation part with data.train_on_validation)."""
    return "" if math.isnan(value) else f"{value:.{digits}f}"


def _spread(values: list[float]) -> str:
    return f"{min(values):.3f}..{max(values):.3f}" if len(values) > 1 else f"{values[0]:.3f}"


def summarise(results: dict[tuple[str, str], list[dict[str, Any]]], pairs: list[str]) -> tuple[list[str], list[str]]:
    """The table rows (means over seeds, fed/central ratio of the means, range of per-seed ratios) and per-seed lines."""
    rows = ["| config | mode | HR@10 | NDCG@10 | val HR@10 | val NDCG@10 | sampled HR@10 | sampled NDCG@10 | "
            "popularity HR@10 | coverage@10 | fed/central HR@10 | fed/central NDCG@10 | fed/central val HR@10 | "
            "fed/central val NDCG@10 | seed ratios HR@10 | seed ratios NDCG@10 | mean s/round |",
            "|---|---|" + "---:|" * 15]
    per_seed = []
    for pair in pairs:
        fed_runs, central_runs = results[pair, "fedavg"], results[pair, "central"]
        means = {mode: {k: statistics.mean(r.get(k, math.nan) for r in results[pair, mode])
                        for k in (*KEYS, "round_seconds")} for mode in MODES}
        for mode in MODES:
            if mode == "fedavg":
                ratios = " | ".join(_cell(means['fedavg'][k] / means['central'][k], 3) for k in RATIO_KEYS)
                spreads = " | ".join(_spread([f[k] / c[k] for f, c in zip(fed_runs, central_runs)])
                                     for k in ("hr@10", "ndcg@10"))
            else:
                ratios, spreads = " | " * (len(RATIO_KEYS) - 1), " | "
            rows.append(f"| {pair} | {mode} | " + " | ".join(_cell(means[mode][k]) for k in KEYS) +
                        f" | {ratios} | {spreads} | {means[mode]['round_seconds']:.2f} |")
        per_seed.append(f"{pair}: " + "; ".join(
            f"seed {seed} fed {f['hr@10']:.4f} / {f['ndcg@10']:.4f}, central {c['hr@10']:.4f} / {c['ndcg@10']:.4f}"
            for seed, (f, c) in enumerate(zip(fed_runs, central_runs))))
    return rows, per_seed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pairs", nargs="+", default=["ml100k-bpr", "ml100k-neumf", "lastfm-bpr"])
    parser.add_argument("--set", dest="overrides", action="append", default=[], help="override for every run")
    parser.add_argument("--seeds", type=int, default=1, help="train.seed 0..N-1 for every run; the table shows means")
    parser.add_argument("--jobs", type=int, default=1, help="runs at once (processes)")
    parser.add_argument("--threads", type=int, default=2, help="torch threads per run")
    parser.add_argument("--no-write", action="store_true", help="print the table, do not touch BENCHMARKS.md")
    parser.add_argument("--section", default="ranking",
                        help="BENCHMARKS.md section to write (another name keeps the default table, e.g. for --set runs)")
    args = parser.parse_args()
    tasks = [(pair, mode, seed) for pair in args.pairs for seed in range(args.seeds) for mode in MODES]
    # submitted last pair first: the default order ends with the longest runs (Last.fm), which should start first
    results: dict[tuple[str, str], list[dict[str, Any]]] = {(p, m): [] for p in args.pairs for m in MODES}
    failures = []
    with tempfile.TemporaryDirectory() as tmp, ProcessPoolExecutor(args.jobs) as pool:
        futures = {pool.submit(_run, pair, mode, [*args.overrides, f"train.seed={seed}"],
                               Path(tmp) / f"{pair}-{mode}-{seed}", args.threads): (pair, mode, seed)
                   for pair, mode, seed in reversed(tasks)}
        finished: dict[tuple[str, str, int], dict[str, Any]] = {}
        for future in as_completed(futures):  # report each run as it ends; one failure does not lose the others
            pair, mode, seed = futures[future]
            try:
                metrics = finished[pair, mode, seed] = future.result()
            except Exception as error:  # noqa: BLE001 -- reported, and the bench exits non-zero below
                failures.append(f"{pair} {mode} seed {seed}: {error}")
                print(f"{pair} {mode} seed {seed}: FAILED: {error}", flush=True)
                continue
            print(f"{pair} {mode} seed {seed}: hr@10={metrics['hr@10']:.4f} ndcg@10={metrics['ndcg@10']:.4f} "
                  f"val_hr@10={metrics.get('val_hr@10', float('nan')):.4f} "
                  f"val_ndcg@10={metrics.get('val_ndcg@10', float('nan')):.4f}", flush=True)
    if failures:
        raise SystemExit("runs failed, nothing written:\n" + "\n".join(failures))
    for pair, mode, seed in tasks:
        results[pair, mode].append(finished[pair, mode, seed])
    rows, per_seed = summarise(results, args.pairs)
    for row in rows[2:]:
        print(row, flush=True)
    body = "\n".join(rows) + (
        f"\n\nEvery figure is the mean over {args.seeds} seed(s) (train.seed 0..{args.seeds - 1}: initial model, "
        "batches, negatives); fed/central is the ratio of the means, and the seed-ratio columns give the range of "
        "the per-seed test ratios (same seed for both modes); val is the validation interaction. Test HR@10 / NDCG@10 by seed: "
        + " | ".join(per_seed) + ".\n\n"
        "Protocol: leave-last-out by time (last interaction = test, second-to-last = validation), ranking "
        "over all items the user has not interacted with; ties broken uniformly at random and the metrics' "
        "expected value reported (Last.fm has no timestamps: one random interaction each for test and validation). "
        "Sampled ranking: 1 positive vs 99 sampled non-interacted items (fixed seed). coverage@10: the fraction of "
        "the catalogue in at least one test user's top 10. "
        "Federated: one client per user, all clients every round; user embeddings never leave the client. "
        f"Seconds per round include the periodic evaluation ({args.threads} torch thread(s) per run, {args.jobs} "
        "run(s) at once). Hyperparameters, the federated rounds and the centralised epochs alike, were chosen "
        "on the validation interaction, never on the test one. Overrides for every run: "
        + (", ".join(f"`{o}`" for o in args.overrides) + " (the configs' settings as chosen without them, not "
           "re-tuned)" if args.overrides else "none") + ".\n")
    print(body)
    if not args.no_write:
        title = "Top-K ranking: federated vs centralised (leave-last-out, full ranking)"
        if args.section != "ranking":
            title += ": " + ", ".join(args.pairs)
            if args.overrides:
                title += ", with " + ", ".join(f"`{o}`" for o in args.overrides)
        write_section(args.section, title, body)


if __name__ == "__main__":
    main()
