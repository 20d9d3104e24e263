"""Seconds per federated round (vectorised and reference backends) vs one centralised epoch.

Workload: biased MF from configs/ml100k-mf-fedavg.toml on ML-100K fold u1, all 943 clients per
round, one local epoch. Every figure comes from this one run; medians over repeats.

    FEDREC_DATA=../shared/data python bench/bench_backends.py [--repeats 5] [--reference-repeats 3]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _report import write_section  # noqa: E402

from fedrec.config import load_config  # noqa: E402
from fedrec.federated.server import ServerState, run_round  # noqa: E402
from fedrec.runtime.centralized import make_optimizer, train_epoch  # noqa: E402
from fedrec.runtime.experiment import prepare  # noqa: E402
from fedrec.runtime.trainer import _Run, fedavg_settings  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent


def time_rounds(config, exp, repeats: int) -> list[float]:
    settings = fedavg_settings(config)
    state = ServerState(0, exp.model.init_params(torch.Generator().manual_seed(0)))
    times = []
    for _ in range(repeats):
        began = time.perf_counter()
        state, _ = run_round(exp.model, state, exp.clients, settings, seed=0)
        times.append(time.perf_counter() - began)
    return times


def time_epochs(config, exp, repeats: int) -> list[float]:
    run = _Run(config, exp, Path("."))
    optimizer = make_optimizer(run.params, run.central_settings())
    times = []
    for epoch in range(repeats):
        began = time.perf_counter()
        train_epoch(exp.model, run.params, optimizer, exp.clients, config.train.central_batch_size, 0, epoch)
        times.append(time.perf_counter() - began)
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--reference-repeats", type=int, default=3)
    args = parser.parse_args()
    torch.use_deterministic_algorithms(True, warn_only=True)  # as fedrec.runtime.trainer.train does

    fed = load_config(ROOT / "configs/ml100k-mf-fedavg.toml", ["train.local_epochs=1"])
    central = load_config(ROOT / "configs/ml100k-mf-central.toml")
    exp = prepare(fed)
    vectorized = time_rounds(fed, exp, args.repeats)
    reference = time_rounds(load_config(ROOT / "configs/ml100k-mf-fedavg.toml", ["train.backend=reference"]), exp,
                            args.reference_repeats)
    epoch = time_epochs(central, prepare(central), args.repeats)
    med_vec, med_ref, med_epoch = (statistics.median(x) for x in (vectorized, reference, epoch))
    rows = [
        ("centralised epoch (Adam, batch 256, 80,000 ratings)", med_epoch, len(epoch)),
        ("federated round, vectorised backend (943 clients, 1 local epoch, batch 8)", med_vec, len(vectorized)),
        ("federated round, reference backend (same round, clients one by one)", med_ref, len(reference)),
    ]
    table = ["| workload | median seconds | repeats |", "|---|---:|---:|"]
    table += [f"| {name} | {sec:.3f} | {n} |" for name, sec, n in rows]
    body = "\n".join(table) + (
        f"\n\nRatios from this run: vectorised round / centralised epoch = **{med_vec / med_epoch:.2f}x** "
        f"(target <= 2x); reference / vectorised = **{med_ref / med_vec:.1f}x** faster (target >= 20x).\n"
    )
    print(body)
    write_section("backends", "Backends: federated round vs centralised epoch (ML-100K u1, biased MF)", body)


if __name__ == "__main__":
    main()
