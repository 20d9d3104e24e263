"""Poisoning attacks against defences, over several seeds: exposure of the target items and ranking quality.

Every row is a full ``fedrec train`` of configs/ml100k-poison-clean.toml (BPR-MF on ML-100K, 5 target items) with
``--set`` overrides, repeated for the same seeds (``train.seed`` and ``attack.seed`` = s for s in 0..seeds-1; the
target items stay fixed). The rows separate where a defended run loses HR@10:

- ``clean``: no malicious clients (the reference);
- ``clean+<defence>``: the defence alone, no attack -- its cost on honest clients (every rejection is an honest one);
- ``zero-uploads``: 1% malicious clients present but uploading (almost) nothing -- the population effect;
- ``attack``: the FedRecAttack-style attack, no defence;
- ``attack+<defence>``: the attack against each defence.

Defences: ``validation-raw`` rejects norms > 3x the cohort median (the earlier setting), ``validation-size`` compares
norm / sqrt(client size) instead (``defence.norm_scaling='sqrt_size'``, the defended config), ``trimmed-mean`` is
validation-size plus a 5% per-row trimmed mean. Each cell is mean +- sd over the seeds; the HR@10 drop is the relative
drop of the means against ``clean``, with the paired standard error of the per-seed differences. The verdict reads the
means only.

    FEDREC_DATA=/path/to/data python bench/bench_poison.py                 # 5 seeds, table into BENCHMARKS.md
    FEDREC_DATA=/path/to/data python bench/bench_poison.py --jobs 2        # two runs at a time (1 thread each)
    python bench/bench_poison.py --quick                                   # smoke run: tiny synthetic data, no write

Accuracy only (no timings).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import statistics
import sys
import tempfile
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

ROOT = Path(__file__).resolve().parent.parent
ATTACK = ["attack.method='fedrec_attack'", "attack.malicious_fraction=0.01", "attack.public_fraction=0.02",
          "attack.filler_items=60", "attack.norm_multiplier=5.0"]
# Malicious clients that are present (sampled, weighted, counted in the cohort) but upload ~nothing: random fake
# profiles scaled to 1e-9 of their honest update.
ZERO = ["attack.method='random'", "attack.malicious_fraction=0.01", "attack.filler_items=60",
        "attack.norm_multiplier=1e-9"]
DEFENCES: dict[str, list[str]] = {
    "validation-raw": ["defence.check_uploads=true", "defence.max_norm_ratio=3.0"],
    "validation-size": ["defence.check_uploads=true", "defence.max_norm_ratio=3.0", "defence.norm_scaling='sqrt_size'"],
    "trimmed-mean": ["defence.check_uploads=true", "defence.max_norm_ratio=3.0", "defence.norm_scaling='sqrt_size'",
                     "defence.aggregator='trimmed_mean'", "defence.trim_fraction=0.05"],
}
ROWS: dict[str, list[str]] = {
    "clean": [],
    "clean+validation-raw": DEFENCES["validation-raw"],
    "clean+validation-size": DEFENCES["validation-size"],
    "zero-uploads": ZERO,
    "attack": ATTACK,
    "attack+validation-raw": ATTACK + DEFENCES["validation-raw"],
    "attack+validation-size": ATTACK + DEFENCES["validation-size"],
    "attack+trimmed-mean": ATTACK + DEFENCES["trimmed-mean"],
}
DEFENDED = "attack+validation-size"  # the setting of configs/ml100k-poison-defended.toml
DEFAULT_ROWS = [name for name in ROWS if name != "attack+trimmed-mean"]
FAST_EVAL = ["eval.sampled_negatives=0", "train.eval_every=1000"]  # only the final full-ranking evaluation
QUICK = ["data.name='synthetic'", "data.num_users=200", "data.num_items=120", "data.mean_interactions=15",
         "model.dim=8", "train.rounds=3"]
COLUMNS = ("er@5", "er@10", "hr@10", "ndcg@10", "val_hr@10")


def run_one(config: str, overrides: list[str], out: str) -> dict[str, float]:
    """One training run in this (worker) process, single-threaded: its metrics and rejections per round."""
    os.environ["OMP_NUM_THREADS"] = "1"
    import torch

    from fedrec.config import load_config
    from fedrec.runtime.trainer import train

    torch.set_num_threads(1)
    metrics = train(load_config(Path(config), overrides), Path(out))
    history = [json.loads(line) for line in (Path(out) / "history.jsonl").read_text().splitlines() if line.strip()]
    result = {key: float(metrics[key]) for key in COLUMNS if key in metrics}
    result["rejected"] = statistics.fmean(entry.get("rejected", 0) for entry in history) if history else 0.0
    return result


def cache_file(folder: Path | None, config: Path, overrides: list[str]) -> Path | None:
    """Where a run's metrics are kept: named by a hash of the config's text and the overrides (None: no cache)."""
    if folder is None:
        return None
    folder.mkdir(parents=True, exist_ok=True)
    key = hashlib.sha256((config.read_text() + "\n" + "\n".join(overrides)).encode()).hexdigest()[:16]
    return folder / f"{key}.json"


def mean_sd(values: list[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (0 for a single value)."""
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


def paired_drop(row: list[float], clean: list[float]) -> tuple[float, float, float]:
    """(relative drop of the means, mean per-seed difference, its standard error) of ``row`` against ``clean``."""
    differences = [r - c for r, c in zip(row, clean)]
    mean_clean = statistics.fmean(clean)
    drop = 1.0 - statistics.fmean(row) / mean_clean if mean_clean > 0 else 0.0
    se = statistics.stdev(differences) / math.sqrt(len(differences)) if len(differences) > 1 else 0.0
    return drop, statistics.fmean(differences), se


def table(results: dict[str, list[dict[str, float]]], seeds: int,
          defended: str = DEFENDED) -> tuple[list[str], list[str]]:
    """Markdown table lines and verdict sentences from per-row, per-seed results; the target is judged on ``defended``."""
    clean = results["clean"]
    lines = ["| row | ER@5 | ER@10 | HR@10 | NDCG@10 | val HR@10 | HR@10 drop vs clean (paired SE) | rejected / round |",
             "|---|---|---|---|---|---|---|---|"]
    for name, runs in results.items():
        cells = []
        for column in COLUMNS:
            if all(column in r for r in runs):
                mean, sd = mean_sd([r[column] for r in runs])
                cells.append(f"{mean:.4f} +- {sd:.4f}")
            else:
                cells.append("-")
        drop, diff, se = paired_drop([r["hr@10"] for r in runs], [r["hr@10"] for r in clean])
        beyond = "beyond 1 SE" if abs(diff) > se else "within 1 SE"
        drop_cell = "-" if name == "clean" else f"{drop * 100:+.1f}% ({diff:+.4f} +- {se:.4f}, {beyond})"
        rejected = statistics.fmean(r["rejected"] for r in runs)
        lines.append(f"| {name} | " + " | ".join(cells) + f" | {drop_cell} | {rejected:.1f} |")
    verdict = []
    clean_er = statistics.fmean(r["er@10"] for r in clean)
    if "attack" in results:
        undefended = statistics.fmean(r["er@10"] for r in results["attack"])
        verdict.append(f"FedRecAttack-style attack, no defence: ER@10 {undefended:.4f} (mean of {seeds} seeds) vs "
                       f"clean {clean_er:.4f}.")
    met: dict[str, bool] = {}
    for name, runs in results.items():
        if not name.startswith("attack+"):
            continue
        er = statistics.fmean(r["er@10"] for r in runs)
        drop, diff, se = paired_drop([r["hr@10"] for r in runs], [r["hr@10"] for r in clean])
        met[name] = er <= 2 * clean_er and drop <= 0.05
        verdict.append(f"{name}: ER@10 {er:.4f} ({'<=' if er <= 2 * clean_er else '>'} 2x clean = {2 * clean_er:.4f}), "
                       f"HR@10 drop {drop * 100:+.1f}% of the mean ({'within' if drop <= 0.05 else 'beyond'} 5%; "
                       f"{'exceeds' if abs(diff) > se else 'does not exceed'} one paired SE of {se:.4f}).")
        if "zero-uploads" in results:  # the same population (malicious clients present), attacking or not
            matched, matched_diff, matched_se = paired_drop([r["hr@10"] for r in runs],
                                                            [r["hr@10"] for r in results["zero-uploads"]])
            verdict[-1] += (f" Against `zero-uploads` (the same population, no attack): HR@10 drop {matched * 100:+.1f}% "
                            f"({matched_diff:+.4f} +- {matched_se:.4f}).")
    if defended in met:  # the target is judged on the defence chosen beforehand, never on the best test row
        verdict.append(f"Target, judged on `{defended}` (the defended config, chosen on validation HR@10 and honest "
                       f"rejections): **{'met' if met[defended] else 'not met'}** (means over {seeds} seeds, against "
                       "`clean`).")
    return lines, verdict


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", type=Path, default=ROOT / "configs" / "ml100k-poison-clean.toml")
    parser.add_argument("--rows", nargs="+", default=DEFAULT_ROWS, choices=list(ROWS),
                        help="rows to run ('clean' is always run: the reference)")
    parser.add_argument("--seeds", type=int, default=5, help="seeds 0..N-1 for every row (train.seed, attack.seed)")
    parser.add_argument("--jobs", type=int, default=1, help="runs at a time, each single-threaded")
    parser.add_argument("--set", dest="overrides", action="append", default=[], help="extra config overrides")
    parser.add_argument("--cache", type=Path, default=None,
                        help="folder keeping each finished run's metrics; a rerun reuses them (same config, overrides)")
    parser.add_argument("--quick", action="store_true", help="tiny synthetic smoke run (implies --no-write)")
    parser.add_argument("--no-write", action="store_true", help="print the table, leave BENCHMARKS.md alone")
    args = parser.parse_args()
    if args.seeds < 1 or args.jobs < 1:
        parser.error("--seeds and --jobs must be >= 1")
    rows = ["clean"] + [name for name in args.rows if name != "clean"]
    base = FAST_EVAL + (QUICK if args.quick else []) + args.overrides
    results: dict[str, list[dict[str, float]]] = {name: [{} for _ in range(args.seeds)] for name in rows}
    with tempfile.TemporaryDirectory() as tmp, ProcessPoolExecutor(args.jobs, mp_context=get_context("spawn")) as pool:
        futures, cached = {}, {}
        for seed in range(args.seeds):
            for name in rows:
                overrides = base + ROWS[name] + [f"train.seed={seed}", f"attack.seed={seed}"]
                cached[(name, seed)] = cache_file(args.cache, args.config, overrides)
                if cached[(name, seed)] is not None and cached[(name, seed)].exists():
                    results[name][seed] = json.loads(cached[(name, seed)].read_text())
                    continue
                out = str(Path(tmp) / f"{name}-{seed}")
                futures[(name, seed)] = pool.submit(run_one, str(args.config), overrides, out)
        for (name, seed), future in futures.items():
            results[name][seed] = future.result()
            if cached[(name, seed)] is not None:
                cached[(name, seed)].write_text(json.dumps(results[name][seed]))
            print(name, seed, {k: round(v, 4) for k, v in results[name][seed].items()}, flush=True)
    lines, verdict = table(results, args.seeds)
    body = (f"Config: `configs/ml100k-poison-clean.toml` (BPR-MF, ML-100K leave-last-out, 20 rounds, full ranking; 5 "
            f"target items drawn among the less popular half), {args.seeds} seeds per row (`train.seed` = `attack.seed` "
            "= 0..n-1, the same for every row). Attack: 1% malicious clients (9 next to 943), 2% public interactions, "
            "fake profiles of the targets + 60 fillers, each upload's norm <= 5x the client's own honest update. "
            "`zero-uploads`: the same 9 clients present, uploading 1e-9 of an honest update. Defences: "
            "`validation-raw` rejects uploads whose norm exceeds 3x the cohort median; `validation-size` compares "
            "norm / sqrt(client size) to 3x its cohort median (`defence.norm_scaling = \"sqrt_size\"`, the setting of "
            "`configs/ml100k-poison-defended.toml`); `trimmed-mean` adds a 5% per-row trimmed mean. Cells: mean +- sd "
            "over the seeds. HR@10 drop: relative drop of the mean against `clean`, then the mean per-seed difference "
            "+- its paired standard error. Rejected / round: uploads the validation rejected, per round (in `clean+*` "
            "rows every one is an honest client). ER@K: fraction of (benign user, target) pairs, over users who never "
            "interacted with the target, with the target in the user's full-ranking top K. val HR@10: the "
            "second-to-last interaction (what defence settings are chosen on; never the test HR@10). Note: the models "
            "draw the user table before the item table from one generator, so adding the 9 fake users changes the "
            "item table's initialisation -- at one seed an attack row also differs from `clean` by that init noise; "
            "the means over seeds average it out. Reading the rows: `clean+<defence>` is the defence's cost on honest "
            "clients alone, `zero-uploads` the population's, and `attack+<defence>` against `zero-uploads` what is left "
            "of the attack and the defence together. Seeds run here: fewer than the default 5 when the command says "
            "`--seeds`; `python bench/bench_poison.py --jobs 2` reruns all 5 on a quiet machine.\n\n"
            + "\n".join(lines) + "\n\n" + "\n\n".join(verdict))
    if args.quick:
        body = "QUICK SMOKE RUN on tiny synthetic data (not the benchmark). " + body
    print(body)
    if not (args.quick or args.no_write):
        from _report import write_section

        write_section("poison", "Poisoning attacks and defences (ML-100K, BPR-MF, several seeds)", body)


if __name__ == "__main__":
    main()
