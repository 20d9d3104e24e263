"""Where the price of federation falls: ranking metrics by the popularity of the held-out item, federated vs centralised.

Trains each named config pair (configs/<name>-fedavg.toml and configs/<name>-central.toml) for
train.seed 0..N-1, then ranks the validation and the test interactions again, split into thirds by how
often the held-out item occurs in the training data (the same two cut points for both parts), with
the project's own full-ranking metrics. Also reports the mean training popularity of the items each
model puts in users' top 10. Writes the section to BENCHMARKS.md.

    FEDREC_DATA=../shared/data python bench/bench_popularity.py [--pairs ml100k-bpr ml100k-neumf] [--seeds 1]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from torch import Tensor

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _report import write_section  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
MODES = ("fedavg", "central")
TIERS = ("low", "mid", "high")


def tier_edges(popularity: np.ndarray, targets: np.ndarray) -> np.ndarray:
    """The two cut points that split the targets' training popularity into thirds."""
    return np.quantile(popularity[targets], [1 / 3, 2 / 3])


def metrics_by_tier(score_users: Callable[[Tensor], Tensor], held_out: Any, exclude: list[Any], popularity: np.ndarray,
                    edges: np.ndarray, num_items: int) -> list[dict[str, float]]:
    """HR@10 / NDCG@10 (project metrics, ties by expectation) of the held-out interactions in each popularity third."""
    from fedrec.eval.ranking import full_ranking_metrics, ranking_task

    tier = np.digitize(popularity[held_out.items], edges)  # 0: below the first cut, 1: between, 2: above the second
    out = []
    for t in range(len(TIERS)):
        part = held_out.subset(np.flatnonzero(tier == t))
        values = full_ranking_metrics(score_users, ranking_task(part, exclude, num_items), [10]) if len(part) else {}
        out.append({"n": len(part), "hr@10": values.get("hr@10", float("nan")),
                    "ndcg@10": values.get("ndcg@10", float("nan"))})
    return out


def top10_popularity(scores: Tensor, task: Any, popularity: np.ndarray) -> float:
    """Mean training popularity of the items in the top 10 of each user of ``task`` (its excluded items never count).

    ``scores`` is (num_users, num_items); rows are looked up by ``task.users``.
    """
    masked = scores[torch.from_numpy(task.users)].clone()
    rows = np.repeat(np.arange(len(task.users)), np.diff(task.exclude_offsets))
    masked[torch.from_numpy(rows), torch.from_numpy(task.exclude_items)] = -torch.inf
    return float(popularity[masked.topk(10, dim=1).indices.numpy()].mean())


def _run(pair: str, mode: str, seed: int, out_dir: Path, threads: int) -> dict[str, Any]:
    from fedrec.config import load_config
    from fedrec.eval.ranking import full_ranking_metrics, ranking_task
    from fedrec.models.base import num_catalogue_items, score_all_items
    from fedrec.runtime.checkpoint import CHECKPOINT_NAME, load_checkpoint
    from fedrec.runtime.experiment import prepare
    from fedrec.runtime.trainer import train

    torch.set_num_threads(threads)
    config = load_config(ROOT / "configs" / f"{pair}-{mode}.toml", [f"train.seed={seed}"])
    metrics = train(config, out_dir)
    exp = prepare(config)  # the same data, split and model the run had
    tensors, _ = load_checkpoint(out_dir / CHECKPOINT_NAME)
    params = {spec.name: tensors[f"param/{spec.name}"].float() for spec in exp.model.param_specs()}
    split = exp.split
    num_items = num_catalogue_items(exp.model)
    popularity = np.bincount(split.train.items, minlength=num_items)
    edges = tier_edges(popularity, np.concatenate([split.validation.items, split.test.items]))
    parts = {"val": (split.validation, [split.train]), "test": (split.test, [split.train, split.validation])}
    scores = score_all_items(exp.model, params, torch.arange(exp.dataset.num_users)).float()
    result: dict[str, Any] = {}
    for name, (held_out, exclude) in parts.items():
        result[name] = {"tiers": metrics_by_tier(lambda users: scores[users], held_out, exclude, popularity, edges, num_items),
                        "top10_popularity": top10_popularity(scores, ranking_task(held_out, exclude, num_items), popularity)}
    whole = full_ranking_metrics(lambda users: scores[users], ranking_task(*parts["test"], num_items), [10])
    if abs(whole["hr@10"] - metrics["hr@10"]) > 1e-6:  # the re-ranking must reproduce the run's own test figure
        raise RuntimeError(f"{pair} {mode} seed {seed}: re-ranked test HR@10 {whole['hr@10']:.6f} "
                           f"differs from the run's {metrics['hr@10']:.6f}")
    result["hr@10"], result["ndcg@10"] = metrics["hr@10"], metrics["ndcg@10"]
    result["val_hr@10"], result["val_ndcg@10"] = metrics["val_hr@10"], metrics["val_ndcg@10"]
    return result


def summarise(results: dict[tuple[str, str], list[dict[str, Any]]], pairs: list[str]) -> list[str]:
    """Table rows: per pair, mode and part, the seed means of each third's HR@10 / NDCG@10 and of the top-10 popularity."""
    rows = ["| config | mode | part | held-out items low / mid / high | HR@10 low | HR@10 mid | HR@10 high | "
            "NDCG@10 low | NDCG@10 mid | NDCG@10 high | HR@10 all | NDCG@10 all | top-10 mean popularity |",
            "|---|---|---|---|" + "---:|" * 9]
    for pair in pairs:
        for mode in MODES:
            runs = results[pair, mode]
            for part in ("val", "test"):
                tiers = [r[part]["tiers"] for r in runs]
                counts = " / ".join(str(t["n"]) for t in tiers[0])
                mean = lambda key, t: statistics.mean(r[t][key] for r in tiers)  # noqa: E731
                prefix = "val_" if part == "val" else ""
                cells = [f"{mean('hr@10', t):.4f}" for t in range(len(TIERS))]
                cells += [f"{mean('ndcg@10', t):.4f}" for t in range(len(TIERS))]
                cells += [f"{statistics.mean(r[prefix + 'hr@10'] for r in runs):.4f}",
                          f"{statistics.mean(r[prefix + 'ndcg@10'] for r in runs):.4f}",
                          f"{statistics.mean(r[part]['top10_popularity'] for r in runs):.1f}"]
                rows.append(f"| {pair} | {mode} | {part} | {counts} | " + " | ".join(cells) + " |")
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pairs", nargs="+", default=["ml100k-bpr", "ml100k-neumf"])
    parser.add_argument("--seeds", type=int, default=1, help="train.seed 0..N-1 for every run; the table shows means")
    parser.add_argument("--jobs", type=int, default=1, help="runs at once (processes)")
    parser.add_argument("--threads", type=int, default=2, help="torch threads per run")
    parser.add_argument("--no-write", action="store_true", help="print the table, do not touch BENCHMARKS.md")
    args = parser.parse_args()
    tasks = [(pair, mode, seed) for pair in args.pairs for seed in range(args.seeds) for mode in MODES]
    with tempfile.TemporaryDirectory() as tmp, ProcessPoolExecutor(args.jobs) as pool:
        outputs = list(pool.map(_run, *zip(*[(p, m, s, Path(tmp) / f"{p}-{m}-{s}", args.threads) for p, m, s in tasks])))
    results: dict[tuple[str, str], list[dict[str, Any]]] = {(p, m): [] for p in args.pairs for m in MODES}
    for (pair, mode, _), output in zip(tasks, outputs):
        results[pair, mode].append(output)
    rows = summarise(results, args.pairs)
    body = "\n".join(rows) + (
        f"\n\nEvery figure is the mean over {args.seeds} seed(s) (train.seed 0..{args.seeds - 1}). Each held-out "
        "interaction (validation: second-to-last, test: last) falls in a third by its item's number of training "
        "interactions; the two cut points are the terciles over the validation and test items together, so both "
        "parts use the same thirds and the counts show how many held-out items each has in each. Metrics are the "
        "project's full-ranking HR@10 / NDCG@10 (ties by expectation) within each third; 'all' is the run's own "
        "figure (the re-ranking reproduces it, checked). Top-10 mean popularity: the mean number of training "
        "interactions of the items in the evaluated users' top 10. Configs: configs/<config>-fedavg.toml and "
        "configs/<config>-central.toml, unchanged.\n")
    print(body)
    if not args.no_write:
        write_section("popularity", "Ranking by the held-out item's popularity: federated vs centralised", body)


if __name__ == "__main__":
    main()
