"""Warm items on ML-100K: an ID + text model against its ID-only counterpart, same split, seeds and budget of rounds.

Trains an ID-only config (default configs/ml100k-bpr-fedavg.toml) and an ID + text one (default
configs/ml100k-text-bpr-fedavg.toml) with the same number of rounds and evaluation checkpoints, and
reports full-ranking HR@10 / NDCG@10 on the test interaction (leave-last-out by time) at every
checkpoint, with validation NDCG@10 next to it (settings are chosen on the validation interaction
only). Accuracy only: no timings.
Target: ID + text >= ID-only on full-ranking NDCG@10.

    FEDREC_DATA=../shared/data OMP_NUM_THREADS=1 python bench/bench_text_warm.py [--rounds 80 --eval-every 10]
    FEDREC_DATA=../shared/data OMP_NUM_THREADS=1 python bench/bench_text_warm.py --seeds 3 --jobs 2   # mean of 3 seeds
    FEDREC_DATA=../shared/data OMP_NUM_THREADS=1 python bench/bench_text_warm.py --seeds 3 --jobs 2 \
        --id-config ml100k-bpr-softmax-fedavg --text-config ml100k-text-softmax-fedavg --section text_warm_softmax_configs
    FEDREC_DATA=../shared/data python bench/bench_text_warm.py --quick        # smoke run: 2 rounds, no write
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _report import write_section  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
ID_ONLY, ID_TEXT = "ID-only", "ID + text"
DEFAULT_PAIR = ("ml100k-bpr-fedavg", "ml100k-text-bpr-fedavg")  # (ID-only, ID + text): the text_warm section's runs


def train_with_checkpoints(config_name: str, overrides: list[str], out_dir: Path) -> tuple[list[dict[str, Any]], dict]:
    """Train one config; (the evaluated history records, the final metrics)."""
    from fedrec.config import load_config
    from fedrec.runtime.trainer import train

    config = load_config(ROOT / "configs" / f"{config_name}.toml", overrides)
    records: list[dict[str, Any]] = []
    metrics = train(config, out_dir, on_round=lambda record: records.append(record) if "ndcg@10" in record else None)
    return records, metrics


def configured_rounds(*config_names: str) -> int:
    """The train.rounds every named config sets; exits with a one-line error when they differ."""
    from fedrec.config import load_config

    rounds = {name: load_config(ROOT / "configs" / f"{name}.toml", []).train.rounds for name in config_names}
    if len(set(rounds.values())) != 1:
        sys.exit(f"error: the configs set different train.rounds ({rounds}); pass --rounds N to give both the same budget")
    return next(iter(rounds.values()))


def listed(overrides: list[str]) -> str:
    """Overrides as inline code, comma-separated ("none" when there are none)."""
    return ", ".join(f"`{o}`" for o in overrides) or "none"


def section_title(id_config: str, text_config: str, overrides: list[str]) -> str:
    """The BENCHMARKS.md heading: the configs when they are not the default pair, and any overrides."""
    title = "Warm items: ID + text vs ID-only (ML-100K, full ranking)"
    if (id_config, text_config) != DEFAULT_PAIR:
        title += f", ID + text: {text_config}, ID-only: {id_config}"
    return title + (f", with {listed(overrides)}" if overrides else "")


def same_protocol(id_config: str, id_overrides: list[str], text_config: str, text_overrides: list[str]) -> str:
    """A one-line description of the protocol both runs share; exits with a one-line error when their data differ."""
    from fedrec.config import load_config

    a = load_config(ROOT / "configs" / f"{id_config}.toml", id_overrides)
    b = load_config(ROOT / "configs" / f"{text_config}.toml", text_overrides)
    if a.data != b.data:
        sys.exit(f"error: {id_config} and {text_config} use different data settings; compare them on the same split")
    if (a.train.mode, a.train.server_optimizer, a.train.client_fraction) != \
            (b.train.mode, b.train.server_optimizer, b.train.client_fraction):
        sys.exit(f"error: {id_config} and {text_config} differ in train.mode, server_optimizer or client_fraction")
    how = (f"federated, server optimiser {a.train.server_optimizer}, one client per user, "
           f"{a.train.client_fraction:g} of the clients per round" if a.train.mode == "federated" else a.train.mode)
    return f"{a.data.name}, split {a.data.split}, {how}"


def _run(config_name: str, overrides: list[str], out_dir: Path, threads: int) -> tuple[list[dict[str, Any]], dict]:
    import torch

    torch.set_num_threads(threads)
    return train_with_checkpoints(config_name, overrides, out_dir)


def _mean_runs(runs: list[tuple[list[dict[str, Any]], dict]]) -> tuple[list[dict[str, Any]], dict]:
    """Per-checkpoint and final metrics averaged over seeds (keys every run has)."""
    def mean(dicts: list[dict]) -> dict:
        keys = [k for k, v in dicts[0].items() if isinstance(v, (int, float)) and all(k in d for d in dicts)]
        return {k: statistics.mean(float(d[k]) for d in dicts) for k in keys}
    records = [mean(list(step)) for step in zip(*(r[0] for r in runs))]
    for record in records:
        record["round"] = int(record["round"])
    return records, mean([r[1] for r in runs])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=None,
                        help="rounds for both models (the same budget; default: the configs' train.rounds, which must agree)")
    parser.add_argument("--eval-every", type=int, default=10, help="rounds between checkpoints")
    parser.add_argument("--id-config", default=DEFAULT_PAIR[0], help="the ID-only run's config (configs/NAME.toml)")
    parser.add_argument("--text-config", default=DEFAULT_PAIR[1],
                        help="the ID + text run's config (configs/NAME.toml); its data section must equal --id-config's")
    parser.add_argument("--set", dest="overrides", action="append", default=[], help="override for both runs")
    parser.add_argument("--text-set", dest="text_overrides", action="append", default=[],
                        help="override for the ID + text run only (e.g. a setting tuned on validation)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads")
    parser.add_argument("--seeds", type=int, default=1, help="train.seed 0..N-1 for both models; the table shows means")
    parser.add_argument("--jobs", type=int, default=1, help="runs at once (processes)")
    parser.add_argument("--quick", action="store_true", help="smoke run: 2 rounds, nothing written")
    parser.add_argument("--no-write", action="store_true", help="print the table, do not touch BENCHMARKS.md")
    parser.add_argument("--section", default="text_warm",
                        help="BENCHMARKS.md section to write (required for other configs or --set runs)")
    args = parser.parse_args()
    import torch

    torch.set_num_threads(args.threads)
    if args.quick:
        args.rounds, args.eval_every, args.no_write = 2, 1, True
    if any(o.split("=", 1)[0].strip() == "train.rounds" for o in args.overrides + args.text_overrides):
        parser.error("set the budget with --rounds N, not train.rounds in --set/--text-set: both runs get the same rounds")
    default_run = (args.id_config, args.text_config) == DEFAULT_PAIR and not args.overrides + args.text_overrides
    if args.section == "text_warm" and not default_run and not args.no_write:
        parser.error("other configs or overrides go to their own section: pass --section NAME (text_warm holds the "
                     "default pair's table)")
    if args.rounds is None:
        args.rounds = configured_rounds(args.id_config, args.text_config)
    common = [f"train.rounds={args.rounds}", f"train.eval_every={args.eval_every}", *args.overrides]
    configs = {ID_ONLY: args.id_config, ID_TEXT: args.text_config}
    protocol = same_protocol(args.id_config, common, args.text_config, [*common, *args.text_overrides])
    tasks = [(label, config_name, seed) for label, config_name in configs.items() for seed in range(args.seeds)]
    with tempfile.TemporaryDirectory() as tmp, ProcessPoolExecutor(args.jobs) as pool:
        futures = [pool.submit(_run, config_name, [*common, f"train.seed={seed}",
                                                  *(args.text_overrides if label == ID_TEXT else [])],
                               Path(tmp) / f"{label}-{seed}", args.threads)
                   for label, config_name, seed in tasks]
        runs: dict[str, list[tuple[list[dict[str, Any]], dict]]] = {label: [] for label in configs}
        for (label, _, seed), future in zip(tasks, futures):
            records, final = future.result()
            runs[label].append((records, final))
            print(f"{label} seed {seed}: hr@10={final['hr@10']:.4f} ndcg@10={final['ndcg@10']:.4f} "
                  f"val_ndcg@10={final.get('val_ndcg@10', float('nan')):.4f}", flush=True)
    id_records, id_final = _mean_runs(runs[ID_ONLY])
    text_records, text_final = _mean_runs(runs[ID_TEXT])
    rows = ["| round | ID-only HR@10 | ID-only NDCG@10 | ID-only val NDCG@10 | ID + text HR@10 | ID + text NDCG@10 "
            "| ID + text val NDCG@10 | NDCG@10 ID + text / ID-only |",
            "|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for id_record, text_record in zip(id_records, text_records):
        assert id_record["round"] == text_record["round"]
        rows.append(f"| {id_record['round']} | {id_record['hr@10']:.4f} | {id_record['ndcg@10']:.4f} | "
                    f"{id_record.get('val_ndcg@10', float('nan')):.4f} | {text_record['hr@10']:.4f} | "
                    f"{text_record['ndcg@10']:.4f} | {text_record.get('val_ndcg@10', float('nan')):.4f} | "
                    f"{text_record['ndcg@10'] / max(id_record['ndcg@10'], 1e-12):.3f} |")
    per_seed = "; ".join(
        f"seed {seed}: ID-only {id_run[1]['ndcg@10']:.4f}, ID + text {text_run[1]['ndcg@10']:.4f}"
        for seed, (id_run, text_run) in enumerate(zip(runs[ID_ONLY], runs[ID_TEXT])))
    met = text_final["ndcg@10"] >= id_final["ndcg@10"]
    body = "\n".join(rows) + (
        f"\n\nFinal (round {args.rounds}, mean of {args.seeds} seed(s)): ID-only HR@10 {id_final['hr@10']:.4f}, NDCG@10 {id_final['ndcg@10']:.4f}; "
        f"ID + text HR@10 {text_final['hr@10']:.4f}, NDCG@10 {text_final['ndcg@10']:.4f}. "
        f"Target ID + text >= ID-only on NDCG@10: **{'met' if met else 'not met'}**. Final NDCG@10 by seed: {per_seed}.\n\n"
        f"Both runs: {protocol}, full ranking over every item the user has not interacted with, the same seeds "
        "(train.seed: initial model, batches, negatives) and the same number of rounds; every row is the mean over the seeds. "
        f"ID-only: configs/{args.id_config}.toml; ID + text: configs/{args.text_config}.toml (item vector = ID "
        "embedding + a federated adapter of the text encoder's embedding of title, year and genres). "
        f"Overrides for both runs: {listed(args.overrides)}; for ID + text only: {listed(args.text_overrides)}. "
        "The configs' settings were chosen on the validation interaction only.\n")
    print(body)
    if not args.no_write:
        title = section_title(args.id_config, args.text_config, args.overrides + args.text_overrides)
        write_section(args.section, title, body)


if __name__ == "__main__":
    main()
