"""Privacy audit of federated MF on ML-100K: what an honest-but-curious server infers under each hiding option.

For plain sparse uploads, dense uploads, pseudo-items (several counts), secure aggregation (the real
protocol) and secure aggregation with central DP, trains
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
QUICK = ["data.num_users=60", "data.num_items=150", "model.dim=8", "train.rounds=3"]

DP_CONFIG = ROOT / "configs/ml100k-mf-dp.toml"  # the tuned DP-FedAvg job (dim 1, 20 rounds), epsilon = 8
# (label, config (None: --config), extra config overrides, audit settings)
OPTIONS: list[tuple[str, Path | None, list[str], AuditSettings]] = [
    ("plain sparse upload", None, [], AuditSettings()),
    ("plain, one local step (batch_size=1024)", None, ["train.batch_size=1024"], AuditSettings()),
    ("dense upload", None, [], AuditSettings(HidingSettings("dense"))),
    ("pseudo-items, n = 1x real", None, [], AuditSettings(HidingSettings("pseudo", pseudo_ratio=1.0))),
    ("pseudo-items, n = 4x real", None, [], AuditSettings(HidingSettings("pseudo", pseudo_ratio=4.0))),
    ("pseudo-items, n = 1000", None, [], AuditSettings(HidingSettings("pseudo", pseudo_items=1000))),
    ("pseudo-items, n = 1300", None, [], AuditSettings(HidingSettings("pseudo", pseudo_items=1300))),
    ("pseudo-items, n = 1300, bootstrap values", None, [],
     AuditSettings(HidingSettings("pseudo", pseudo_items=1300, pseudo_values="bootstrap"))),
    ("secure aggregation (real protocol)", None, [], AuditSettings(secagg=True)),
    ("central DP, epsilon = 8 (DP config)", DP_CONFIG, [], AuditSettings()),
    ("secure aggregation + central DP, epsilon = 8 (DP config)", DP_CONFIG, [], AuditSettings(secagg=True)),
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
        options = [(label.replace("1000", "100").replace("1300", "130"), None, sets,
                    AuditSettings(HidingSettings(a.hiding.mode, {1000: 100, 1300: 130}.get(a.hiding.pseudo_items, 0),
                                                 a.hiding.pseudo_ratio, a.hiding.per_round, a.hiding.pseudo_values),
                                  a.secagg))
                   for label, _, sets, a in OPTIONS]
    dp_quick = ["privacy.epsilon=8", "privacy.delta=1e-4"]
    rows, plain_rmse = [], {}
    for label, path, sets, audit in options:
        if args.quick and "DP" in label:
            path, sets = None, [*sets, *dp_quick]
        config = load_config(path or config_path, [*base, *args.overrides, *sets])
        m = run_audit(config, audit)
        reference = plain_rmse.setdefault(str(path), m["rmse"])  # accuracy cost against the first run of that config
        per_round_mb = m["bytes_up_per_round"] / 2**20
        rows.append(f"| {label} | {_number(m['audit_item_auc'])} | {_number(m['audit_item_auc_per_client'])} | "
                    f"{_number(m['audit_item_precision@10'])} | {_number(m['audit_rating_rmse'])} | {_number(m['rmse'])} | "
                    f"{round(m['rmse'] - reference, 4) + 0.0:+.4f} | {per_round_mb:.1f} |")  # + 0.0: no "-0.0000"
        print(rows[-1], flush=True)
    last = m
    table = ["| what the server sees | item AUC (who holds an item) | item AUC per client | precision@10 | rating RMSE | "
             "test RMSE | accuracy cost | MiB up / round |",
             "|---|---:|---:|---:|---:|---:|---:|---:|", *rows]
    body = "\n".join(table) + (
        f"\n\nReference points (last run): popularity guess from the sums alone, item AUC per client "
        f"{_number(last['audit_prior_item_auc_per_client'])}, precision@10 {_number(last['audit_prior_item_precision@10'])}; "
        f"rating guess mu + b_i, RMSE {_number(last['audit_rating_rmse_baseline'])}.\n\n"
        "Item AUC: for each item, how well the server's scores separate the clients that interacted with it from those "
        "that did not (0.5: it learns nothing about who holds the item); best of four scorers (row present and "
        "non-zero, row norm, row weight, and for biased MF how well the row fits an SGD step along the client's user vector), averaged over the 2 observed rounds. Item AUC per client and precision@10 "
        "rank each client's training items among all items, which also credits the item popularity every server "
        "learns from the sums (the reference points). Rating RMSE: Chai et al. (2020) inversion of two consecutive "
        "uploads of biased MF (exact with one local step; see fedrec/privacy/audit.py). Pseudo-items keep one "
        "fixed set per client unless marked; their values are one SGD step on a virtual rating whose error matches "
        "one of the client's real errors (FedRec), taken with the client's private rows before one of its real local "
        "steps (the step of a uniformly drawn example, with that step's batch length), or, where marked, a "
        "per-coordinate bootstrap of its real rows. "
        "Each scorer is also tried negated (a score that ranks fakes first informs just as well). "
        "Secure aggregation runs the real protocol (SecAgg+, fixed point in Z_2^64) in the two observed rounds; "
        "its MiB up / round are the protocol's measured messages (keys, encrypted shares, masked vectors, unmasking "
        "shares); its time per round is in BENCHMARKS.md's secure-aggregation section and in history.jsonl "
        "(secagg_seconds) of `fedrec train --set privacy.secure_aggregation=true`. Central DP alone does not hide the uploads from the server (it sees each "
        "client's rows); DP rows use configs/ml100k-mf-dp.toml (dim 1, 20 rounds, epsilon 8). Test RMSE: the model the audited run trains, "
        "without the final refit of the private rows (train.refit_private_epochs), which the audit does not run. "
        "Accuracy cost: test RMSE minus that of the first row with the same config (plain sparse upload; for the DP rows, central "
        "DP without secure aggregation: the two give the same model).\n")
    print(body)
    if not args.no_write:
        write_section("audit", "Privacy audit: item and rating inference under each hiding option (ML-100K, MF)", body)


if __name__ == "__main__":
    main()
