"""Poisoning attacks against defences: exposure of the target items and ranking quality.

Runs configs/ml100k-poison-clean.toml (BPR-MF on ML-100K, 5 target items) clean, then under each attack
(random, bandwagon, fedrec_attack, pip_attack; 1% malicious clients) with no defence and with each defence of
fedrec/federated/robust.py, and tabulates ER@5, ER@10, HR@10 and NDCG@10. Then checks the target: the
FedRecAttack-style attack must raise ER@10 clearly above clean without defence, and the best defence must keep
ER@10 <= 2x the clean ER@10 while HR@10 drops <= 5% relative to the clean run.

    FEDREC_DATA=/path/to/data python bench/bench_poison.py            # full table into BENCHMARKS.md
    python bench/bench_poison.py --quick --no-write                   # smoke run: synthetic data, 3 rounds

Accuracy only (no timings). Every run is a full ``fedrec train`` of the config with ``--set`` overrides.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from _report import write_section  # noqa: E402

from fedrec.config import load_config  # noqa: E402
from fedrec.runtime.trainer import train  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
ATTACKS = ("random", "bandwagon", "fedrec_attack", "pip_attack")
DEFENCES: dict[str, list[str]] = {
    "none": [],
    "validation": ["defence.check_uploads=true"],
    "median": ["defence.check_uploads=true", "defence.aggregator='median'"],
    "trimmed_mean": ["defence.check_uploads=true", "defence.aggregator='trimmed_mean'", "defence.trim_fraction=0.1"],
    "krum": ["defence.check_uploads=true", "defence.aggregator='krum'"],
    "multi_krum": ["defence.check_uploads=true", "defence.aggregator='multi_krum'"],
    "norm_bound": ["defence.check_uploads=true", "defence.aggregator='norm_bound'", "defence.clip_norm=0.1"],
}
ATTACK_SETTINGS = ["attack.malicious_fraction=0.01", "attack.public_fraction=0.02", "attack.filler_items=60",
                   "attack.norm_multiplier=5.0"]
QUICK = ["data.name='synthetic'", "data.num_users=200", "data.num_items=120", "data.mean_interactions=15",
         "model.dim=8", "train.rounds=3", "train.eval_every=3", "eval.sampled_negatives=0"]
COLUMNS = ("er@5", "er@10", "hr@10", "ndcg@10")


def run(config: Path, overrides: list[str], out: Path) -> dict[str, float]:
    metrics = train(load_config(config, overrides), out)
    return {key: float(metrics[key]) for key in COLUMNS}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", type=Path, default=ROOT / "configs" / "ml100k-poison-clean.toml")
    parser.add_argument("--attacks", nargs="+", default=list(ATTACKS), choices=ATTACKS)
    parser.add_argument("--defences", nargs="+", default=list(DEFENCES), choices=list(DEFENCES))
    parser.add_argument("--set", dest="overrides", action="append", default=[], help="extra config overrides")
    parser.add_argument("--quick", action="store_true", help="tiny synthetic smoke run (implies --no-write)")
    parser.add_argument("--no-write", action="store_true", help="print the table, leave BENCHMARKS.md alone")
    args = parser.parse_args()
    base = (QUICK if args.quick else []) + args.overrides
    results: dict[tuple[str, str], dict[str, float]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        results[("none", "none")] = run(args.config, base, Path(tmp) / "clean")
        print("clean", results[("none", "none")], flush=True)
        for attack in args.attacks:
            for defence in args.defences:
                overrides = base + [f"attack.method='{attack}'", *ATTACK_SETTINGS, *DEFENCES[defence]]
                results[(attack, defence)] = run(args.config, overrides, Path(tmp) / f"{attack}-{defence}")
                print(attack, defence, results[(attack, defence)], flush=True)
    clean = results[("none", "none")]
    lines = ["| attack | defence | ER@5 | ER@10 | HR@10 | NDCG@10 |", "|---|---|---|---|---|---|"]
    for (attack, defence), row in results.items():
        lines.append(f"| {attack} | {defence} | " + " | ".join(f"{row[c]:.4f}" for c in COLUMNS) + " |")
    verdict = []
    if ("fedrec_attack", "none") in results:
        undefended = results[("fedrec_attack", "none")]
        verdict.append(f"FedRecAttack-style, no defence: ER@10 {undefended['er@10']:.4f} vs clean {clean['er@10']:.4f}.")
        passing = [(row["er@10"], -row["hr@10"], defence) for (attack, defence), row in results.items()
                   if attack == "fedrec_attack" and defence != "none" and row["er@10"] <= 2 * clean["er@10"]
                   and row["hr@10"] >= 0.95 * clean["hr@10"]]
        if passing:
            er, _, best = min(passing)  # lowest ER@10, then highest HR@10
            row = results[("fedrec_attack", best)]
            verdict.append(f"Best defence: {best}, ER@10 {er:.4f} (<= 2x clean = {2 * clean['er@10']:.4f}), HR@10 "
                           f"{row['hr@10']:.4f} ({(row['hr@10'] / clean['hr@10'] - 1) * 100:+.1f}% vs clean): target met.")
        else:
            verdict.append("No defence keeps ER@10 <= 2x clean with HR@10 within 5% of clean: target not met.")
    body = ("Config: `configs/ml100k-poison-clean.toml` (BPR-MF, ML-100K leave-last-out, full ranking; 5 target items "
            "drawn among the less popular half). Attacks: 1% malicious clients (9 next to 943), 2% public "
            "interactions, fake profiles of the targets + 60 fillers, each upload's norm <= 5x the client's own honest "
            "update. Defences: `check_uploads` (validation, norms > 10x the cohort median rejected) plus the "
            "aggregator named. ER@K: fraction of (benign user, target) pairs, over users who never interacted with "
            "the target, with the target in the user's full-ranking top K.\n\n" + "\n".join(lines) + "\n\n"
            + " ".join(verdict))
    if args.quick:
        body = "QUICK SMOKE RUN on tiny synthetic data (not the benchmark). " + body
    print(body)
    if not (args.quick or args.no_write):
        write_section("poison", "Poisoning attacks and defences (ML-100K, BPR-MF)", body)


if __name__ == "__main__":
    main()
