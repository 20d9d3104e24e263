"""Convergence of FedAvg / FedProx / FedAdam / FedYogi on cross-silo and cross-device ML-100K MF (test RMSE per round).

Both settings start from configs/ml100k-mf-fedavg.toml (biased MF, official fold u1, a fixed number of
rounds). Cross-device: one client per user (943 clients, all of them every round). Cross-silo: users
grouped by occupation into 10 silos (the 9 largest occupations and one silo of the rest), local batch
32 (a silo's epoch is hundreds of local steps). Each algorithm's one hyperparameter (FedProx's mu, the
adaptive methods' server learning rate; FedAvg has none: server lr 1) is chosen by the final
validation RMSE on a 10% validation split carved from u1.base; the chosen value is then trained on all
of u1.base and scored on u1.test every few rounds. Accuracy only (no timings).

    FEDREC_DATA=../shared/data python bench/bench_algorithms.py [--rounds 40] [--every 5] [--threads 1]
    python bench/bench_algorithms.py --quick --no-write     # a smoke run: 2 rounds, one grid value, nothing written
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _report import write_section  # noqa: E402

import fedrec.data  # noqa: E402,F401  (loads the data package before the federated modules)
from fedrec.config import load_config  # noqa: E402
from fedrec.runtime.trainer import train  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
CONFIG = ROOT / "configs/ml100k-mf-fedavg.toml"

SETTINGS = {
    "cross-silo": ["data.clients=silos", "data.silo_feature=occupation", "data.num_silos=10", "train.batch_size=32"],
    "cross-device": [],
}


@dataclass(frozen=True)
class Algorithm:
    overrides: tuple[str, ...]
    tuned: str | None = None  # the config key searched on validation
    grid: tuple[float, ...] = ()


ALGORITHMS = {
    "FedAvg": Algorithm(("train.server_optimizer=sgd", "train.server_lr=1.0")),
    "FedProx": Algorithm(("train.server_optimizer=sgd", "train.server_lr=1.0"), "train.prox_mu", (0.001, 0.01, 0.1)),
    "FedAdam": Algorithm(("train.server_optimizer=adam", "train.server_beta2=0.999"), "train.server_lr", (0.02, 0.06, 0.2)),
    "FedYogi": Algorithm(("train.server_optimizer=yogi", "train.server_beta2=0.999"), "train.server_lr", (0.02, 0.06, 0.2)),
}


def run(overrides: list[str], out: Path) -> tuple[dict, list[dict]]:
    """Train one configuration; returns the final metrics and the history records."""
    history: list[dict] = []
    metrics = train(load_config(CONFIG, overrides), out, on_round=history.append)
    return metrics, history


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=40)
    parser.add_argument("--every", type=int, default=5, help="evaluate the test metric every this many rounds")
    parser.add_argument("--settings", nargs="+", default=list(SETTINGS), choices=list(SETTINGS))
    parser.add_argument("--algorithms", nargs="+", default=list(ALGORITHMS), choices=list(ALGORITHMS))
    parser.add_argument("--set", dest="overrides", action="append", default=[], help="extra config override (every run)")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (1 helps on a busy machine)")
    parser.add_argument("--quick", action="store_true", help="2 rounds, first grid value only: a smoke run")
    parser.add_argument("--no-write", action="store_true", help="print the tables, do not touch BENCHMARKS.md")
    args = parser.parse_args()
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    rounds, every = (2, 1) if args.quick else (args.rounds, args.every)
    common = [f"train.rounds={rounds}", f"train.eval_every={every}", f"train.checkpoint_every={rounds}", *args.overrides]
    sections, chosen_lines = [], []
    began = time.time()
    with tempfile.TemporaryDirectory() as tmp:
        for setting in args.settings:
            curves: dict[str, dict[int, float]] = {}
            for name in args.algorithms:
                algo = ALGORITHMS[name]
                base = [*SETTINGS[setting], *algo.overrides, *common]
                chosen, note = [], "none"
                if algo.tuned is not None:
                    scores = {}
                    for value in algo.grid[:1] if args.quick else algo.grid:
                        tune = [*base, f"{algo.tuned}={value}", "data.validation_ratio=0.1"]
                        metrics, _ = run(tune, Path(tmp) / f"{setting}-{name}-{value}-val")
                        scores[value] = metrics["val_rmse"]
                        print(f"{setting} {name} {algo.tuned}={value}: val_rmse {scores[value]:.4f} "
                              f"({time.time() - began:.0f} s)", flush=True)
                    best = min(scores, key=scores.get)
                    chosen = [f"{algo.tuned}={best}"]
                    note = f"`{algo.tuned}={best}` (validation RMSE " + ", ".join(
                        f"{v:g}: {s:.4f}" for v, s in scores.items()) + ")"
                metrics, history = run([*base, *chosen], Path(tmp) / f"{setting}-{name}")
                curves[name] = {entry["round"]: entry["rmse"] for entry in history if "rmse" in entry}
                print(f"{setting} {name}: test rmse {metrics['rmse']:.4f} ({time.time() - began:.0f} s)", flush=True)
                chosen_lines.append(f"- {setting}, {name}: {note}")
            marks = sorted(set().union(*(c.keys() for c in curves.values())))
            table = ["| round | " + " | ".join(curves) + " |", "|---:|" + "---:|" * len(curves)]
            for mark in marks:
                values = [curves[n].get(mark) for n in curves]
                best = round(min(v for v in values if v is not None), 4)
                cells = [("**%.4f**" if round(v, 4) == best else "%.4f") % v if v is not None else "" for v in values]
                table.append(f"| {mark} | " + " | ".join(cells) + " |")
            sections.append(f"**{setting}** (test RMSE on u1.test; best per round in bold)\n\n" + "\n".join(table))
    body = "\n\n".join(sections) + (
        "\n\nBiased MF (configs/ml100k-mf-fedavg.toml: dim 128, one local epoch, local lr 0.05) on the official "
        "fold u1. Cross-device: 943 clients (one per user), all of them every round, local batch 8. Cross-silo: "
        "10 occupation silos (9 largest occupations + the rest), local batch 32. FedAvg: server SGD, lr 1. "
        "FedProx: the same plus the proximal term mu/2 ||w - w_global||^2 on the shared parameters. FedAdam / "
        "FedYogi: server Adam / Yogi (beta1 0.9, beta2 0.999, tau 1e-3). Item rows are averaged over the clients "
        "that updated them (row_weighting = row_count). Hyperparameters chosen on a 10% validation split of "
        "u1.base (final validation RMSE), never on u1.test:\n\n" + "\n".join(chosen_lines) + "\n")
    print(body)
    if not args.no_write:
        write_section("algorithms", "Federated algorithms: convergence on ML-100K MF (test RMSE per round)", body)


if __name__ == "__main__":
    main()
