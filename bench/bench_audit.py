"""Privacy audit of federated MF on ML-100K: what an honest-but-curious server infers under each hiding option.

For plain sparse uploads, dense uploads, pseudo-items (several counts) and secure aggregation, trains
configs/ml100k-mf-fedavg.toml (all rounds, with the hiding applied to every upload), attacks the
last two rounds' uploads and reports the item-inference AUC and precision@10, the rating-inference
RMSE, the test RMSE (the accuracy cost of hiding) and the upload bytes. Writes BENCHMARKS.md.

    FEDREC_DATA=../shared/data python bench/bench_audit.py [--set key=value ...] [--no-write]
    python bench/bench_audit.py --quick --no-write     # smoke run on a tiny synthetic job
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _report import write_section  # noqa: E402

from fedrec.config import load_config  # noqa: E402
from fedrec.privacy.audit import AuditSettings, run_audit  # noqa: E402
from fedrec.privacy.hiding import HidingSettings  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
QUICK = ["data.num_users=200", "data.num_items=150", "model.dim=8", "train.rounds=3"]

# (label, extra config overrides, audit settings)
OPTIONS: list[tuple[str, list[str], AuditSettings]] = [
    ("plain sparse upload", [], AuditSettings()),
    ("plain, one local step (batch_size=1024)", ["train.batch_size=1024"], AuditSettings()),
    ("dense upload", [], AuditSettings(HidingSettings("dense"))),
    ("pseudo-items, n = 1x real", [], AuditSettings(HidingSettings("pseudo", pseudo_ratio=1.0))),
    ("pseudo-items, n = 1x real, new set every round", [], AuditSettings(HidingSettings("pseudo", pseudo_ratio=1.0, per_round=True))),
    ("pseudo-items, n = 4x real", [], AuditSettings(HidingSettings("pseudo", pseudo_ratio=4.0))),
    ("pseudo-items, n = 4x real, bootstrap values", [], AuditSettings(HidingSettings("pseudo", pseudo_ratio=4.0, pseudo_values="bootstrap"))),
    ("pseudo-items, n = 1000", [], AuditSettings(HidingSettings("pseudo", pseudo_items=1000))),
    ("pseudo-items, n = 1300", [], AuditSettings(HidingSettings("pseudo", pseudo_items=1300))),
    ("secure aggregation (server sees the sum)", [], AuditSettings(secagg=True)),
]


def _number(value: object, digits: int = 4) -> str:
    return f"{value:.{digits}f}" if isinstance(value, float) else "n/a"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", type=Path, default=ROOT / "configs/ml100k-mf-fedavg.toml")
    parser.add_argument("--set", dest="overrides", action="append", default=[], help="config override for every run")
    parser.add_argument("--quick", action="store_true", help="tiny synthetic job (configs/default.toml, 3 rounds): smoke test")
    parser.add_argument("--no-write", action="store_true", help="print the table, leave BENCHMARKS.md alone")
    args = parser.parse_args()
    config_path, base = (ROOT / "configs/default.toml", QUICK) if args.quick else (args.config, [])
    options = OPTIONS
    if args.quick:  # the tiny catalogue has 150 items: scale the absolute pseudo-item counts down
        options = [(label.replace("1000", "100").replace("1300", "130"), sets,
                    AuditSettings(HidingSettings(a.hiding.mode, {1000: 100, 1300: 130}.get(a.hiding.pseudo_items, 0),
                                                 a.hiding.pseudo_ratio, a.hiding.per_round, a.hiding.pseudo_values),
                                  a.secagg))
                   for label, sets, a in OPTIONS]
    rows, plain_rmse = [], None
    for label, sets, audit in options:
        config = load_config(config_path, [*base, *args.overrides, *sets])
        m = run_audit(config, audit)
        if plain_rmse is None:
            plain_rmse = m["rmse"]
        per_round_mb = m["bytes_up"] / m["rounds"] / 2**20
        rows.append(f"| {label} | {_number(m['audit_item_auc'])} | {_number(m['audit_item_auc_per_client'])} | "
                    f"{_number(m['audit_item_precision@10'])} | {_number(m['audit_rating_rmse'])} | {_number(m['rmse'])} | "
                    f"{m['rmse'] - plain_rmse:+.4f} | {per_round_mb:.1f} | {m['seconds']:.0f} |")
        print(rows[-1], flush=True)
    last = m
    table = ["| hiding | item AUC (who holds an item) | item AUC per client | precision@10 | rating RMSE | test RMSE | "
             "accuracy cost | MiB up / round | s |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|", *rows]
    body = "\n".join(table) + (
        f"\n\nReference points (last run): popularity guess from the sums alone, item AUC per client "
        f"{_number(last['audit_prior_item_auc_per_client'])}, precision@10 {_number(last['audit_prior_item_precision@10'])}; "
        f"rating guess mu + b_i, RMSE {_number(last['audit_rating_rmse_baseline'])}.\n\n"
        "Item AUC: for each item, how well the server's scores separate the clients that interacted with it from those "
        "that did not (0.5: it learns nothing about who holds the item); best of three scorers (row present and "
        "non-zero, row norm, row weight), averaged over the 2 observed rounds. Item AUC per client and precision@10 "
        "rank each client's training items among all items, which also credits the item popularity every server "
        "learns from the sums (the reference points). Rating RMSE: Chai et al. (2020) inversion of two consecutive "
        "uploads of biased MF (exact with one local step; see fedrec/privacy/audit.py). Pseudo-items keep one "
        "fixed set per client unless marked; their values are one SGD step on a virtual rating whose error matches "
        "one of the client's real errors (FedRec), or, where marked, a per-coordinate bootstrap of its real rows. "
        "Each scorer is also tried negated (a score that ranks fakes first informs just as well). "
        "Secure aggregation is modelled as the server seeing only the cohort's sums (protocol overhead not in the "
        "bytes). Accuracy cost: test RMSE minus the plain run's.\n")
    print(body)
    if not args.no_write:
        write_section("audit", "Privacy audit: item and rating inference under each hiding option (ML-100K, MF)", body)


if __name__ == "__main__":
    main()
