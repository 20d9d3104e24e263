"""Personalisation against the global model: local fine-tuning and a PFedRec-style private score head.

For each named pair (configs/<name>-fedavg.toml and configs/<name>-central.toml) and train.seed 0..N-1:
the federated run with ``eval.finetune_epochs`` set reports the global model and, from the same run,
every client's locally fine-tuned copy (``finetuned_*``); a second federated run with
``model.private_head = true`` (NCF only: each client keeps its own final score layer) reports the
private-head model; the centralised run of the same model is the reference. The table gives seed means
on the test and validation interactions, each arm against the global model and against centralised.

    FEDREC_DATA=../shared/data OMP_NUM_THREADS=1 python bench/bench_personalize.py --seeds 3 --jobs 2
    FEDREC_DATA=../shared/data python bench/bench_personalize.py --quick     # smoke run: 2 rounds, no write
"""

from __future__ import annotations

import argparse
import math
import statistics
import sys
import tempfile
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _report import write_section  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
KEYS = ("hr@10", "ndcg@10", "val_hr@10", "val_ndcg@10")


def arm_metrics(fed: dict[str, Any], head: dict[str, Any] | None, central: dict[str, Any]) -> dict[str, dict]:
    """The arms' metrics under one set of keys: global and fine-tuned from one run, the private head, centralised."""
    arms = {"global": {k: fed[k] for k in KEYS if k in fed},
            "local fine-tuning": {k: fed[f"finetuned_{k}"] for k in KEYS if f"finetuned_{k}" in fed}}
    if head is not None:
        arms["private score head"] = {k: head[k] for k in KEYS if k in head}
    arms["centralised"] = {k: central[k] for k in KEYS if k in central}
    return arms


def summarise(pair: str, runs: list[dict[str, dict]]) -> list[str]:
    """Table rows for one pair: seed means, ratios of the means to the global model and to centralised."""
    rows = []
    for arm in runs[0]:
        means = {k: statistics.mean(r[arm].get(k, math.nan) for r in runs) for k in KEYS}
        globals_ = {k: statistics.mean(r["global"][k] for r in runs) for k in KEYS}
        central = {k: statistics.mean(r["centralised"][k] for r in runs) for k in KEYS}
        vs_global = " | ".join("" if arm in ("global", "centralised") else f"{means[k] / globals_[k]:.3f}"
                               for k in KEYS)
        vs_central = " | ".join("" if arm == "centralised" else f"{means[k] / central[k]:.3f}"
                                for k in ("hr@10", "ndcg@10", "val_hr@10", "val_ndcg@10"))
        rows.append(f"| {pair} | {arm} | " + " | ".join(f"{means[k]:.4f}" for k in KEYS) +
                    f" | {vs_global} | {vs_central} |")
    return rows


def _run(config_name: str, overrides: list[str], out_dir: Path, threads: int) -> dict[str, Any]:
    import torch

    from fedrec.config import load_config
    from fedrec.runtime.trainer import train

    torch.set_num_threads(threads)
    return train(load_config(ROOT / "configs" / f"{config_name}.toml", overrides), out_dir)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pairs", nargs="+", default=["ml100k-neumf", "ml100k-bpr"], help="config pairs")
    parser.add_argument("--finetune-epochs", type=int, default=1, help="eval.finetune_epochs of the fine-tuned copies")
    parser.add_argument("--mix-beta", type=float, default=1.0, help="eval.mix_beta of the fine-tuned copies")
    parser.add_argument("--finetune", action="append", default=[], metavar="PAIR=EPOCHS:BETA",
                        help="fine-tuning epochs and mix_beta for one pair (others: --finetune-epochs, --mix-beta)")
    parser.add_argument("--head-set", dest="head_overrides", action="append", default=[],
                        help="override for the private-head runs only (e.g. a learning rate chosen on validation)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], help="override for every run")
    parser.add_argument("--fed-set", dest="fed_overrides", action="append", default=[],
                        help="override for the federated runs only (e.g. train.* settings centralised runs refuse)")
    parser.add_argument("--chosen-on-validation", action="store_true",
                        help="say in BENCHMARKS.md that the --finetune / --head-set values were chosen on validation")
    parser.add_argument("--seeds", type=int, default=1, help="train.seed 0..N-1; the table shows means")
    parser.add_argument("--jobs", type=int, default=1, help="runs at once (processes)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads per run")
    parser.add_argument("--quick", action="store_true", help="smoke run: 2 rounds / epochs, nothing written")
    parser.add_argument("--no-write", action="store_true", help="print the table, do not touch BENCHMARKS.md")
    parser.add_argument("--section", default="personalize", help="BENCHMARKS.md section to write")
    args = parser.parse_args()
    finetune = {pair: (args.finetune_epochs, args.mix_beta) for pair in args.pairs}
    for spec in args.finetune:
        pair, _, setting = spec.partition("=")
        epochs, _, beta = setting.partition(":")
        if pair not in finetune or not epochs.isdigit():
            sys.exit(f"--finetune expects PAIR=EPOCHS[:BETA] for a pair in --pairs (e.g. {args.pairs[0]}=2:0.5), "
                     f"got {spec!r}")
        finetune[pair] = (int(epochs), float(beta) if beta else 1.0)
    if min(epochs for epochs, _ in finetune.values()) < 1:
        sys.exit("fine-tuning epochs must be at least 1 (it is the fine-tuning being measured)")
    from fedrec.config import load_config

    common = list(args.overrides) + (["train.rounds=2"] if args.quick else [])
    args.no_write = args.no_write or args.quick
    tasks: list[tuple[str, str, int, list[str]]] = []  # (pair, arm, seed, overrides)
    for pair in args.pairs:
        fed_config = load_config(ROOT / "configs" / f"{pair}-fedavg.toml", [*common, *args.fed_overrides])
        for seed in range(args.seeds):
            run = [*common, f"train.seed={seed}"]
            fed = [*run, *args.fed_overrides]
            epochs, beta = finetune[pair]
            tasks.append((pair, "fedavg", seed, [*fed, f"eval.finetune_epochs={epochs}", f"eval.mix_beta={beta}"]))
            if fed_config.model.name == "ncf":
                tasks.append((pair, "private_head", seed, [*fed, "model.private_head=true", *args.head_overrides]))
            tasks.append((pair, "central", seed, run))
    with tempfile.TemporaryDirectory() as tmp, ProcessPoolExecutor(args.jobs) as pool:
        futures = {(pair, arm, seed): pool.submit(_run, f"{pair}-{'central' if arm == 'central' else 'fedavg'}",
                                                  overrides, Path(tmp) / f"{pair}-{arm}-{seed}", args.threads)
                   for pair, arm, seed, overrides in tasks}
        results = {key: future.result() for key, future in futures.items()}
    rows = ["| config | model | HR@10 | NDCG@10 | val HR@10 | val NDCG@10 | HR@10 / global | NDCG@10 / global | "
            "val HR@10 / global | val NDCG@10 / global | HR@10 / centralised | NDCG@10 / centralised | "
            "val HR@10 / centralised | val NDCG@10 / centralised |",
            "|---|---|" + "---:|" * 12]
    per_seed = []
    for pair in args.pairs:
        runs = [arm_metrics(results[pair, "fedavg", s], results.get((pair, "private_head", s)),
                            results[pair, "central", s]) for s in range(args.seeds)]
        rows += summarise(pair, runs)
        per_seed.append(f"{pair}: " + "; ".join(
            f"seed {s} " + ", ".join(f"{arm} {m['hr@10']:.4f} / {m['ndcg@10']:.4f}" for arm, m in r.items())
            for s, r in enumerate(runs)))
    settings = ", ".join(f"`{o}`" for o in args.overrides) or "none"
    fed_settings = ", ".join(f"`{o}`" for o in args.fed_overrides) or "none"
    head_settings = ", ".join(f"`{o}`" for o in args.head_overrides) or "none"
    chosen = ("The fine-tuning epochs and mixing were chosen on the fine-tuned copies' validation metrics "
              "(finetuned_val_*), the private head's overrides on val_*, at seed 0, never on the test interaction."
              if args.chosen_on_validation else "The fine-tuning and private-head settings are the ones given on "
              "the command line (not chosen by this script).")
    body = "\n".join(rows) + (
        f"\n\nEvery figure is the mean over {args.seeds} seed(s) (train.seed 0..{args.seeds - 1}); ratios are ratios "
        f"of the means. Test HR@10 / NDCG@10 by seed: {' | '.join(per_seed)}.\n\n"
        "Protocol: each pair's configs (the ranking section's protocol unless overridden), full ranking over every "
        "item the user has not interacted with. *global*: the federated config as it is (one shared model; each "
        "client keeps its own user embedding, refitted after the last round when the config sets "
        "train.refit_private_epochs); *local fine-tuning*: after the last round each client trains a copy of the "
        "whole model (shared parts included) on its own training interactions with the config's local learning "
        "rates (train.local_lr; train.private_lr for private rows when set) for E local epochs and keeps "
        "theta_g + beta (theta_i - theta_g) (the same run, so the same global model; E, beta: "
        + ", ".join(f"{pair} {e}, {b}" for pair, (e, b) in finetune.items()) + "); *private score "
        "head*: a separate federated run with model.private_head = true, each client's final score layer trained "
        f"and kept on the client, never aggregated (NCF only; its own overrides: {head_settings}); *centralised*: "
        f"configs/<pair>-central.toml. Overrides for every run: {settings}; for the federated runs: "
        f"{fed_settings}. {chosen}\n")
    print(body)
    if not args.no_write:
        write_section(args.section, "Personalisation vs the global model (leave-last-out, full ranking)"
                      + ("" if args.section == "personalize" else f", with {settings}"), body)


if __name__ == "__main__":
    main()
