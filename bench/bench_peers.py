"""Centralised peers in the project's ranking protocol: popularity, EASE, and the `implicit` library's ALS and BPR.

The split, the candidate sets and the metrics are fedrec's own (the split of the named config, full
ranking over every item the user has not interacted with, ties by expectation), so these figures compare
directly with `fedrec train`. Each peer's hyperparameters are chosen on the validation interaction (a small
grid, fitted on the training part); the chosen setting is then scored on the test interaction twice:
fitted on the training part, and refitted on training + validation (the final fit that
`data.train_on_validation = true` gives a fedrec run). Writes the section to BENCHMARKS.md.

Needs the `implicit` package (pip install -e '.[peers]').

    FEDREC_DATA=../shared/data python bench/bench_peers.py [--config configs/ml100k-bpr-fedavg.toml] [--set k=v ...]
"""

from __future__ import annotations

import argparse
import itertools
import sys
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _report import write_section  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent

#: each peer's grid (chosen on validation NDCG@10)
GRIDS: dict[str, dict[str, list[Any]]] = {
    "EASE": {"l2": [50.0, 100.0, 200.0, 400.0, 800.0, 1600.0]},
    "ALS (implicit)": {"factors": [32, 64, 128], "regularization": [0.01, 0.1, 1.0], "alpha": [1.0, 5.0, 20.0],
                       "iterations": [15]},
    "BPR (implicit)": {"factors": [64, 128], "learning_rate": [0.01, 0.05], "regularization": [0.001, 0.01],
                       "iterations": [100, 300]},
}


def interaction_matrix(part: Any, num_users: int, num_items: int) -> Any:
    """Binary user x item CSR matrix of ``part``'s interactions (duplicates count once)."""
    from scipy.sparse import csr_matrix

    matrix = csr_matrix((np.ones(len(part), np.float32), (part.users, part.items)), shape=(num_users, num_items))
    matrix.data[:] = 1.0
    return matrix


def ease_scores(matrix: Any, l2: float) -> np.ndarray:
    """EASE (Steck 2019): B = I - P diag(1 / diag P), P = (X^T X + l2 I)^-1; scores X B."""
    gram = (matrix.T @ matrix).toarray().astype(np.float64)
    gram[np.diag_indices_from(gram)] += l2
    inverse = np.linalg.inv(gram)
    weights = -inverse / np.diag(inverse)
    weights[np.diag_indices_from(weights)] = 0.0
    return np.asarray(matrix @ weights, dtype=np.float32)


def implicit_scores(kind: str, matrix: Any, seed: int, **options: Any) -> np.ndarray:
    """User x item scores of an `implicit` ALS or BPR model fitted on ``matrix`` (users x items)."""
    from implicit.cpu.als import AlternatingLeastSquares
    from implicit.cpu.bpr import BayesianPersonalizedRanking

    if kind == "ALS (implicit)":
        alpha = options.pop("alpha")
        model = AlternatingLeastSquares(random_state=seed, **options)
        model.fit((matrix * alpha).tocsr(), show_progress=False)
    else:
        model = BayesianPersonalizedRanking(random_state=seed, num_threads=1, **options)  # one thread: repeatable
        model.fit(matrix, show_progress=False)
    return np.asarray(model.user_factors @ model.item_factors.T, dtype=np.float32)


def peer_scores(name: str, matrix: Any, setting: dict[str, Any], seed: int) -> np.ndarray:
    if name == "EASE":
        return ease_scores(matrix, setting["l2"])
    return implicit_scores(name, matrix, seed, **setting)


def ranking(scores: np.ndarray, held_out: Any, exclude: list[Any], num_items: int) -> dict[str, float]:
    """The project's full-ranking HR@10 / NDCG@10 (ties by expectation)."""
    from fedrec.eval.ranking import full_ranking_metrics, ranking_task

    table = torch.from_numpy(scores)
    return full_ranking_metrics(lambda users: table[users], ranking_task(held_out, exclude, num_items), [10])


def evaluate_peer(name: str, grid: dict[str, list[Any]], split: Any, num_users: int, num_items: int, seed: int,
                  progress: Callable[[str], None]) -> dict[str, Any]:
    """Grid on validation (fit on train), then test with the chosen setting: fit on train, and on train + validation."""
    from fedrec.data.dataset import Interactions

    train = interaction_matrix(split.train, num_users, num_items)
    best: dict[str, Any] | None = None
    for values in itertools.product(*grid.values()):
        setting = dict(zip(grid, values))
        started = time.perf_counter()
        scores = peer_scores(name, train, dict(setting), seed)
        seconds = time.perf_counter() - started
        val = ranking(scores, split.validation, [split.train], num_items)
        progress(f"{name} {setting}: val NDCG@10 {val['ndcg@10']:.4f}")
        if best is None or val["ndcg@10"] > best["val"]["ndcg@10"]:
            best = {"setting": setting, "val": val, "scores": scores, "seconds": seconds}
    assert best is not None
    setting, val, seconds = best["setting"], best["val"], best["seconds"]
    test = ranking(best["scores"], split.test, [split.train, split.validation], num_items)  # the same fit
    both = Interactions.concat([split.train, split.validation])
    refit = ranking(peer_scores(name, interaction_matrix(both, num_users, num_items), dict(setting), seed),
                    split.test, [both], num_items)
    return {"setting": setting, "val": val, "test": test, "refit": refit, "seconds": seconds}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="configs/ml100k-bpr-fedavg.toml", help="the config whose data and split to use")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override a data setting of the config (e.g. data.time_ties=random)")
    parser.add_argument("--peers", nargs="+", default=list(GRIDS), choices=list(GRIDS))
    parser.add_argument("--seed", type=int, default=0, help="random state of ALS and BPR")
    parser.add_argument("--section", default="peers", help="BENCHMARKS.md section to write")
    parser.add_argument("--no-write", action="store_true", help="print the table, do not touch BENCHMARKS.md")
    args = parser.parse_args()
    if any(name != "EASE" for name in args.peers):
        try:
            import implicit  # noqa: F401
        except ImportError:
            sys.exit("bench_peers.py needs the implicit package for ALS and BPR: pip install -e '.[peers]' "
                     "(or run with --peers EASE)")
    from fedrec.config import load_config
    from fedrec.runtime.experiment import keep_min_rating, load_data, make_split

    config = load_config(ROOT / args.config if not Path(args.config).is_absolute() else Path(args.config), args.overrides)
    if config.data.split != "leave_last_out" or config.data.train_on_validation:
        sys.exit("bench_peers.py needs a leave_last_out config without data.train_on_validation (it refits on "
                 "train + validation itself)")
    dataset = keep_min_rating(load_data(config), config.data.min_rating)
    split, _ = make_split(config, dataset)
    num_users, num_items = dataset.num_users, dataset.num_items
    popularity = np.bincount(split.train.items, minlength=num_items).astype(np.float32)
    both_popularity = popularity + np.bincount(split.validation.items, minlength=num_items)
    rows = ["| peer | chosen on validation | val HR@10 | val NDCG@10 | test HR@10 | test NDCG@10 | "
            "test HR@10, refit on train + val | test NDCG@10, refit on train + val | fit s |",
            "|---|---|---:|---:|---:|---:|---:|---:|---:|"]
    from fedrec.data.dataset import Interactions

    both = Interactions.concat([split.train, split.validation])
    pop = {"val": ranking(np.tile(popularity, (num_users, 1)), split.validation, [split.train], num_items),
           "test": ranking(np.tile(popularity, (num_users, 1)), split.test, [split.train, split.validation], num_items),
           "refit": ranking(np.tile(both_popularity, (num_users, 1)), split.test, [both], num_items)}
    rows.append(f"| popularity | (training counts) | {pop['val']['hr@10']:.4f} | {pop['val']['ndcg@10']:.4f} | "
                f"{pop['test']['hr@10']:.4f} | {pop['test']['ndcg@10']:.4f} | {pop['refit']['hr@10']:.4f} | "
                f"{pop['refit']['ndcg@10']:.4f} | |")
    torch.set_num_threads(2)
    for name in args.peers:
        result = evaluate_peer(name, GRIDS[name], split, num_users, num_items, args.seed,
                               lambda line: print(line, file=sys.stderr, flush=True))
        setting = ", ".join(f"{k} {v}" for k, v in result["setting"].items())
        rows.append(f"| {name} | {setting} | {result['val']['hr@10']:.4f} | {result['val']['ndcg@10']:.4f} | "
                    f"{result['test']['hr@10']:.4f} | {result['test']['ndcg@10']:.4f} | {result['refit']['hr@10']:.4f} | "
                    f"{result['refit']['ndcg@10']:.4f} | {result['seconds']:.1f} |")
    overrides = ", ".join(f"`{o}`" for o in args.overrides) or "none"
    body = "\n".join(rows) + (
        f"\n\nData and split: `{args.config}` (overrides: {overrides}): leave-last-out by time, full ranking over every "
        "item the user has not interacted with, fedrec's own metrics (ties by expectation). Each peer's setting is the "
        "best validation NDCG@10 of its grid (bench/bench_peers.py GRIDS), fitted on the training part; test is "
        "scored with that setting fitted on the training part, and refitted on training + validation (what "
        f"`data.train_on_validation = true` does for a fedrec run). ALS and BPR: the implicit library "
        f"{_implicit_version()} on the CPU, random_state {args.seed} (BPR on one thread, so runs repeat), ALS with every interaction weighted alpha (its confidence). "
        "EASE: Steck (2019), closed form (a dense items x items matrix). Fit s: seconds of one fit of the chosen setting on the training part, scoring included.\n")
    print(body)
    if not args.no_write:
        title = "Centralised peers in the ranking protocol (ML-100K, leave-last-out, full ranking)"
        if args.overrides:
            title += ", with " + ", ".join(f"`{o}`" for o in args.overrides)
        write_section(args.section, title, body)


def _implicit_version() -> str:
    try:
        import implicit

        return implicit.__version__
    except ImportError:
        return "(not installed)"


if __name__ == "__main__":
    main()
