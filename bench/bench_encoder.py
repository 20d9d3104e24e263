"""Encoding every ML-100K item text: first run (empty cache, model load included) and from the cache.

Each measurement runs in a fresh Python process, so the first-run time includes importing the
encoder code and loading all-MiniLM-L6-v2, exactly as ``fedrec train`` pays it; the cached time is
a second fresh process reading the safetensors cache (it never loads the model). Dataset loading
is timed separately and not included. Targets: <= 10 s first, <= 0.5 s cached.

Two paths are measured, interleaved run by run so that both see the same machine: ``fast`` (the
default: fedrec/text/bert_fast.py, no transformers import) and ``general`` (transformers
AutoModel/AutoTokenizer, what every non-BERT model uses); their ratio is reported.

    FEDREC_DATA=../shared/data python bench/bench_encoder.py [--batch-sizes 32 64 128] [--threads 2] [--paths fast]
    FEDREC_DATA=../shared/data python bench/bench_encoder.py --quick --no-write   # smoke run
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _report import write_section  # noqa: E402

_CHILD = r"""
import json, sys, time
began = time.perf_counter()
import torch
if {threads} > 0:
    torch.set_num_threads({threads})
from fedrec.data.registry import load_dataset
from fedrec.text.item_text import build_item_texts
texts = build_item_texts(load_dataset("ml-100k")).texts[:{limit}]
data_seconds = time.perf_counter() - began
began = time.perf_counter()
from fedrec.text.encoder import TextEncoder, encode_texts
encoder = TextEncoder("{model}", max_length={max_length}, batch_size={batch_size}, fast={fast})
embeddings, report = encode_texts(encoder, texts, cache_dir="{cache}", progress=False)
seconds = time.perf_counter() - began
print(json.dumps(dict(seconds=seconds, data_seconds=data_seconds, encoded=report.encoded, cached=report.cached,
                      texts=report.texts, truncated=report.truncated, dim=embeddings.shape[1],
                      threads=torch.get_num_threads())))
"""


def measure(cache: Path, batch_size: int, path: str, args: argparse.Namespace) -> dict:
    code = _CHILD.format(threads=args.threads, limit=args.limit, model=args.model, batch_size=batch_size,
                         max_length=args.max_length, cache=str(cache), fast=path == "fast")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=dict(os.environ))
    if done.returncode != 0:
        raise SystemExit(f"benchmark child failed:\n{done.stderr[-2000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch-sizes", nargs="+", type=int, default=[32, 64, 128])
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    parser.add_argument("--max-length", type=int, default=None, help="token cap (default: the encoder's limit)")
    parser.add_argument("--model", default="all-MiniLM-L6-v2")
    parser.add_argument("--repeats", type=int, default=3, help="runs per setting; the median is reported")
    parser.add_argument("--limit", type=int, default=100_000, help="encode only the first N item texts")
    parser.add_argument("--paths", nargs="+", choices=["fast", "general"], default=["fast", "general"],
                        help="fast: transformers-free BERT path (default for BERT folders); general: transformers")
    parser.add_argument("--quick", action="store_true", help="smoke run: 200 texts, one batch size, one repeat")
    parser.add_argument("--no-write", action="store_true", help="print the table, do not touch BENCHMARKS.md")
    args = parser.parse_args()
    if args.quick:
        args.batch_sizes, args.repeats, args.limit = args.batch_sizes[:1], 1, 200
    rows = ["| path | batch size | texts | first run s (load + encode) | from cache s | general / fast (first run) "
            "| truncated | torch threads |",
            "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for batch_size in args.batch_sizes:
        first: dict[str, list[float]] = {path: [] for path in args.paths}
        cached: dict[str, list[float]] = {path: [] for path in args.paths}
        for _ in range(args.repeats):
            for path in args.paths:  # interleaved: both paths see the same machine load
                with tempfile.TemporaryDirectory() as tmp:
                    cold = measure(Path(tmp), batch_size, path, args)
                    warm = measure(Path(tmp), batch_size, path, args)
                assert cold["encoded"] > 0 and warm["encoded"] == 0, "the second run must come from the cache"
                first[path].append(cold["seconds"])
                cached[path].append(warm["seconds"])
        medians = {path: statistics.median(first[path]) for path in args.paths}
        for path in args.paths:
            ratio = (f"{medians['general'] / medians['fast']:.2f}" if path == "fast" and "general" in medians else "")
            rows.append(f"| {path} | {batch_size} | {cold['texts']} | {medians[path]:.2f} | "
                        f"{statistics.median(cached[path]):.3f} | {ratio} | {cold['truncated']} | {cold['threads']} |")
            print(rows[-1], flush=True)
    body = "\n".join(rows) + (
        f"\n\nEncoder {args.model} (the packaged offline copy by default), mean pooling, L2-normalised, "
        f"max length {args.max_length or 'the encoder limit (256)'}; texts sorted by length within batches. Each "
        f"figure is the median of {args.repeats} fresh processes; the first run starts from an empty cache and "
        "includes importing the encoder code and loading the model (path fast: fedrec/text/bert_fast.py, torch's own transformer layers and the Rust tokenizer, no transformers import; path general: transformers AutoModel/AutoTokenizer, what non-BERT models use; the two give the same embeddings, cosine >= 0.9999, tested); the cached run reads the safetensors cache and never "
        "loads the model. Targets: <= 10 s first, <= 0.5 s cached.\n")
    print(body)
    if not args.no_write:
        write_section("encoder", "Text encoder: ML-100K item texts, first run and cached", body)


if __name__ == "__main__":
    main()
