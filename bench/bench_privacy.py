"""Utility of client-level DP-FedAvg on ML-100K: accuracy against epsilon (delta = 1e-4).

Federated MF (configs/ml100k-mf-dp.toml, fold u1, test RMSE) and BPR-MF (configs/ml100k-bpr-fedavg.toml
with central DP and adaptive clipping, leave-last-out, NDCG@10) at epsilon in {1, 2, 4, 8, inf}; for
each finite epsilon the noise multiplier is calibrated to the config's rounds and sampling rate
(RDP accountant), and the PLD epsilon is reported next to it. inf = the same config with privacy off.

    FEDREC_DATA=../shared/data python bench/bench_privacy.py            # full curve, writes BENCHMARKS.md
    FEDREC_DATA=../shared/data python bench/bench_privacy.py --seeds mf=4   # MF: mean over train.seed 0..3
    FEDREC_DATA=../shared/data python bench/bench_privacy.py --quick --no-write   # smoke run (2 rounds, eps 8 and inf)
"""

from __future__ import annotations

import argparse
import math
import statistics
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _report import write_section  # noqa: E402

from fedrec.config import load_config  # noqa: E402
from fedrec.runtime.trainer import train  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
DELTA = 1e-4
MODELS = {
    # name: (config, metric, extra overrides turning central DP on for a config that has no [privacy] section)
    "mf": ("ml100k-mf-dp.toml", "rmse", []),
    "bpr": ("ml100k-bpr-fedavg.toml", "ndcg@10", ["privacy.adaptive_clip=true", "privacy.clip_norm=0.5",
                                                 "privacy.target_quantile=0.5"]),
}


def privacy_overrides(epsilon: float) -> list[str]:
    if math.isinf(epsilon):
        return ["privacy.mode=off"]
    return ["privacy.mode=central", f"privacy.epsilon={epsilon}", f"privacy.delta={DELTA}"]


def parse_seeds(items: list[str]) -> dict[str, int]:
    """``["mf=4"]`` -> ``{"mf": 4}``; a clear error for anything else."""
    seeds = {}
    for item in items:
        name, _, count = item.partition("=")
        if name not in MODELS or not count.isdigit() or int(count) < 1:
            raise SystemExit(f"--seeds takes MODEL=N with MODEL in {sorted(MODELS)} and N >= 1, got {item!r}")
        seeds[name] = int(count)
    return seeds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epsilons", nargs="+", type=float, default=[1.0, 2.0, 4.0, 8.0, math.inf])
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    parser.add_argument("--set", dest="overrides", action="append", default=[], help="override for every run")
    parser.add_argument("--seeds", nargs="+", default=[], metavar="MODEL=N",
                        help="run MODEL with train.seed 0..N-1 and report the mean and range (default: seed 0 only)")
    parser.add_argument("--quick", action="store_true", help="smoke run: 2 rounds, epsilon 8 and inf")
    parser.add_argument("--no-write", action="store_true", help="print the table only; leave BENCHMARKS.md alone")
    args = parser.parse_args()
    epsilons = [8.0, math.inf] if args.quick else args.epsilons
    seeds = parse_seeds(args.seeds)
    quick = ["train.rounds=2", "train.eval_every=2"] if args.quick else []
    rows = ["| model | metric | epsilon (target) | metric value | seeds (range) | epsilon spent (RDP) | epsilon (PLD) | "
            "noise multiplier z | rounds | s per run |", "|---|---|---:|---:|---|---:|---:|---:|---:|---:|"]
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.models:
            toml, metric, dp_extra = MODELS[name]
            for epsilon in epsilons:
                runs = []
                for seed in range(seeds.get(name, 1)):
                    overrides = [*dp_extra, *privacy_overrides(epsilon), *quick, *args.overrides, f"train.seed={seed}"]
                    config = load_config(ROOT / "configs" / toml, overrides)
                    runs.append(train(config, Path(tmp) / f"{name}-{epsilon}-{seed}"))
                values = [m[metric] for m in runs]
                m = runs[0]
                spread = (f"{len(runs)} ({min(values):.4f}..{max(values):.4f})" if len(runs) > 1 else "1")
                spent = m.get("epsilon", "inf")
                row = (f"| {name} | {metric} | {epsilon:g} | {statistics.mean(values):.4f} | {spread} | "
                       + (f"{spent:.3f} | {m['epsilon_pld']:.3f} | {m['noise_multiplier']:.3f}" if spent != "inf" else "inf | inf | 0")
                       + f" | {m['rounds']} | {statistics.mean(r['seconds'] for r in runs):.0f} |")
                rows.append(row)
                print(row, flush=True)
    body = "\n".join(rows) + (
        f"\n\nClient-level DP (add or remove one client's whole data), delta = {DELTA:g}; Poisson sampling of clients with "
        "probability train.client_fraction each round; each client's whole upload clipped to privacy.clip_norm; "
        "Gaussian noise on every shared coordinate; the sum divided by the expected cohort size. Metric value: the "
        "mean over train.seed 0..N-1 where seeds says N > 1 (the seed draws the initial model, the batches and the "
        "DP noise), with the range in brackets. "
        "MF: configs/ml100k-mf-dp.toml (official fold u1, test RMSE; settings chosen on a validation split "
        "carved from u1.base). BPR: configs/ml100k-bpr-fedavg.toml with adaptive clipping (median, Andrew et al. "
        "2021), untuned for DP (leave-last-out, full-ranking NDCG@10).\n")
    print(body)
    if not args.no_write:
        write_section("privacy", "Client-level DP-FedAvg: utility against epsilon (ML-100K)", body)


if __name__ == "__main__":
    main()
