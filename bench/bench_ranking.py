"""Top-K ranking, federated vs centralised, on ML-100K and Last.fm-2K (leave-last-out, full ranking).

Runs each named config pair (configs/<name>-fedavg.toml and configs/<name>-central.toml) end to end
and writes one table to BENCHMARKS.md, with the popularity baseline in the same protocol.

    FEDREC_DATA=../shared/data python bench/bench_ranking.py [--pairs ml100k-bpr ml100k-neumf lastfm-bpr]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _report import write_section  # noqa: E402

from fedrec.config import load_config  # noqa: E402
from fedrec.runtime.trainer import train  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
KEYS = ("hr@10", "ndcg@10", "sampled_hr@10", "sampled_ndcg@10")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pairs", nargs="+", default=["ml100k-bpr", "ml100k-neumf", "lastfm-bpr"])
    parser.add_argument("--set", dest="overrides", action="append", default=[], help="override for every run")
    args = parser.parse_args()
    rows = ["| config | mode | HR@10 | NDCG@10 | sampled HR@10 | sampled NDCG@10 | popularity HR@10 | "
            "fed/central HR@10 | fed/central NDCG@10 | mean s/round | total s |",
            "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    with tempfile.TemporaryDirectory() as tmp:
        for pair in args.pairs:
            results = {}
            for mode in ("fedavg", "central"):
                config = load_config(ROOT / "configs" / f"{pair}-{mode}.toml", args.overrides)
                results[mode] = train(config, Path(tmp) / f"{pair}-{mode}")
                results[mode]["round_seconds"] = results[mode]["seconds"] / max(results[mode]["rounds"], 1)
            fed, central = results["fedavg"], results["central"]
            for mode, m in results.items():
                ratio = (f"{fed['hr@10'] / central['hr@10']:.3f} | {fed['ndcg@10'] / central['ndcg@10']:.3f}"
                         if mode == "fedavg" else " | ")
                rows.append(f"| {pair} | {mode} | " + " | ".join(f"{m[k]:.4f}" for k in KEYS) +
                            f" | {m['popularity_hr@10']:.4f} | {ratio} | {m['round_seconds']:.2f} | {m['seconds']:.1f} |")
                print(rows[-1], flush=True)
    body = "\n".join(rows) + (
        "\n\nProtocol: leave-last-out by time (last interaction = test, second-to-last = validation), ranking "
        "over all items the user has not interacted with; ties broken uniformly at random and the metrics' "
        "expected value reported. Sampled ranking: 1 positive vs 99 sampled non-interacted items (fixed seed). "
        "Federated: one client per user, all clients every round; user embeddings never leave the client. Seconds per round include the periodic evaluation. Hyperparameters were chosen on the validation interaction, never on the test one.\n")
    print(body)
    write_section("ranking", "Top-K ranking: federated vs centralised (leave-last-out, full ranking)", body)


if __name__ == "__main__":
    main()
