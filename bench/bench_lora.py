"""Federated LoRA of the text encoder on ML-100K: accuracy with and without LoRA, and the bytes that travel.

Runs ``configs/ml100k-lora-fedavg.toml`` (model lora_bpr; ``lora.compare_frozen`` trains the same
model with the encoder frozen in the same run) and writes a table to BENCHMARKS.md: full-ranking
HR@10 / NDCG@10 on warm items, cold-start NDCG@10 on the held-out items next to a random ranking
and popularity, and the bytes each client uploads per round next to the encoder's parameter bytes
(target: <= 1%). No timings: those are measured separately on a quiet machine.

    FEDREC_DATA=../shared/data python bench/bench_lora.py                 # the config as shipped (~10 min)
    FEDREC_DATA=../shared/data python bench/bench_lora.py --quick --no-write   # 2 rounds, smoke run
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(ROOT))
from _report import write_section  # noqa: E402

CONFIG = ROOT / "configs" / "ml100k-lora-fedavg.toml"


def run(overrides: list[str]) -> dict:
    from fedrec.config import load_config
    from fedrec.runtime.trainer import train

    with tempfile.TemporaryDirectory() as out:
        return train(load_config(CONFIG, overrides), Path(out) / "run")


def table(metrics: dict) -> str:
    def row(name: str, keys: tuple[str, str, str]) -> str:
        values = [metrics.get(key) for key in keys]
        return f"| {name} | " + " | ".join(f"{v:.4f}" if isinstance(v, float) else "-" for v in values) + " |"

    lines = ["| item tower | HR@10 | NDCG@10 | cold NDCG@10 |", "|---|---|---|---|",
             row("all-MiniLM-L6-v2 + federated LoRA (lora_bpr)", ("hr@10", "ndcg@10", "cold_ndcg@10")),
             row("same model, encoder frozen", ("frozen_hr@10", "frozen_ndcg@10", "frozen_cold_ndcg@10")),
             row("popularity", ("popularity_hr@10", "popularity_ndcg@10", "cold_popularity_ndcg@10")),
             row("random ranking (held-out items)", ("-", "-", "cold_random_ndcg@10"))]
    comm = (f"\nEach client uploads **{metrics['upload_bytes_per_client']:,} bytes** per round (safetensors of its "
            f"{metrics['adapter_params']:,} LoRA values in layers {metrics['lora_layers']} + the {metrics['head_params']:,}-value "
            f"head) against **{metrics['encoder_bytes']:,} bytes** of encoder parameters "
            f"({metrics['encoder_params']:,} float32): **{100 * metrics['upload_ratio']:.3f}%** (target <= 1%). "
            f"{metrics['rounds']} rounds, {metrics['clients']} clients (8 per round), "
            f"{metrics['bytes_up']:,} bytes uploaded in total.")
    return "\n".join(lines) + "\n" + comm


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="2 rounds (smoke run)")
    parser.add_argument("--no-write", action="store_true", help="print the table, do not touch BENCHMARKS.md")
    parser.add_argument("--set", dest="overrides", action="append", default=[], help="config override section.key=value")
    args = parser.parse_args()
    overrides = list(args.overrides)
    if args.quick:
        overrides += ["train.rounds=2", "train.eval_every=2"]
    metrics = run(overrides)
    body = (f"`fedrec train {CONFIG.relative_to(ROOT)}`"
            + (f" with `{' '.join(overrides)}`" if overrides else "") + "\n\n" + table(metrics))
    print(body)
    print(json.dumps({k: v for k, v in metrics.items() if "@10" in k or "bytes" in k or "ratio" in k}, indent=1))
    if not args.no_write:
        write_section("lora", "Federated LoRA of the text encoder (ML-100K, lora_bpr)", body)


if __name__ == "__main__":
    main()
