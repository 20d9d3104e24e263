"""The accuracy cost of compressed uploads: top-k, 8-bit and both, with and without error feedback.

Trains ML-100K MF (configs/ml100k-mf-fedavg.toml, test RMSE) and BPR-MF (configs/ml100k-bpr-fedavg.toml, full-
ranking NDCG@10) with every upload compressed as listed below, and reports the metric, the bytes sent up per round
(the encoded payload's length) and the compression ratio against uncompressed uploads. Accuracy and bytes only, no
timings. Writes the ``compression`` section of BENCHMARKS.md unless --no-write.

    FEDREC_DATA=../shared/data python bench/bench_compression.py [--models mf bpr] [--set train.rounds=20] [--no-write]
    python bench/bench_compression.py --quick --no-write     # tiny synthetic smoke run (seconds)
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _report import write_section  # noqa: E402

import fedrec.data  # noqa: E402,F401  (the data package first: fedrec.federated.cohort imports it)
from fedrec.config import load_config  # noqa: E402
from fedrec.runtime.trainer import train  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
CONFIGS = {"mf": ("ml100k-mf-fedavg", "rmse"), "bpr": ("ml100k-bpr-fedavg", "ndcg@10")}
#: (label, overrides); every compressed variant runs with and without error feedback
VARIANTS = [
    ("none", []),
    ("8-bit", ["compression.bits=8"]),
    ("top-k 10%", ["compression.topk=0.1"]),
    ("top-k 1%", ["compression.topk=0.01"]),
    ("top-k 10% + 8-bit", ["compression.topk=0.1", "compression.bits=8"]),
]
QUICK = ["data.name='synthetic'", "data.split='ratio'", "data.num_users=200", "data.num_items=150",
         "data.mean_interactions=20",
         "model.dim=16", "train.rounds=3", "train.eval_every=3", "eval.sampled_negatives=0"]


def runs() -> list[tuple[str, bool, list[str]]]:
    """(label, error feedback, overrides) of every run, uncompressed first."""
    out = [(VARIANTS[0][0], False, [])]
    for label, overrides in VARIANTS[1:]:
        for feedback in (True, False):
            out.append((label, feedback, overrides + [f"compression.error_feedback={str(feedback).lower()}"]))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", choices=list(CONFIGS), default=list(CONFIGS))
    parser.add_argument("--set", dest="overrides", action="append", default=[], help="override for every run")
    parser.add_argument("--quick", action="store_true", help="tiny synthetic data, 3 rounds (a smoke run)")
    parser.add_argument("--no-write", action="store_true", help="print the table, do not touch BENCHMARKS.md")
    args = parser.parse_args()
    common = (QUICK if args.quick else []) + args.overrides
    rows = ["| model (metric) | rounds | uploads | error feedback | metric | change vs none | bytes up / round | "
            "compression ratio |",
            "|---|---:|---|---|---:|---:|---:|---:|"]
    with tempfile.TemporaryDirectory() as tmp:
        for model in args.models:
            config_name, metric = CONFIGS[model]
            baseline: dict = {}
            for index, (label, feedback, overrides) in enumerate(runs()):
                config = load_config(ROOT / "configs" / f"{config_name}.toml", common + overrides)
                result = train(config, Path(tmp) / f"{model}-{index}")
                per_round = result["bytes_up"] / max(result["rounds"], 1)
                baseline = baseline or {"metric": result[metric], "bytes": per_round}
                change = result[metric] - baseline["metric"]
                rows.append(f"| {model} ({metric}) | {result['rounds']} | {label} | "
                            f"{('on' if feedback else 'off') if label != 'none' else '-'} | {result[metric]:.4f} | "
                            f"{change:+.4f} | {per_round:,.0f} | {baseline['bytes'] / per_round:.1f}x |")
                print(rows[-1], flush=True)
    body = "\n".join(rows) + (
        "\n\nEach upload is compressed per client (fedrec/federated/compression.py): top-k keeps the ceil(f x n) "
        "largest-magnitude of the client's n uploaded coordinates (its item rows and dense tensors); a sent row "
        "carries its item id, example count and number of kept values, each value its column (one byte for rows of "
        "up to 255 values); rows with nothing kept are not sent. 8-bit: int8 values with one float32 scale per "
        "uploaded row of the item vectors, per client for biases; stochastic (unbiased) rounding. Error feedback: "
        "each client adds what it did not send to its next upload. Bytes up = the encoded payload, measured, not "
        "estimated; the ratio is against uncompressed float32 uploads with int32 item ids. Same seed, split and "
        "hyperparameters as the configs" + (f"; overrides: `{' '.join(args.overrides)}`" if args.overrides else "")
        + ".\n")
    print(body)
    if not args.no_write:
        write_section("compression", "Communication compression: accuracy cost and bytes (ML-100K)", body)


if __name__ == "__main__":
    main()
