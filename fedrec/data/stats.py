"""Summary statistics of a dataset, as a dict and as text for the CLI."""

from __future__ import annotations

from typing import Any

import numpy as np

from fedrec.data.dataset import Dataset


def _summary(values: np.ndarray) -> dict[str, float]:
    if len(values) == 0:
        return {"min": 0, "median": 0.0, "max": 0}
    return {"min": int(values.min()), "median": float(np.median(values)), "max": int(values.max())}


def dataset_stats(dataset: Dataset) -> dict[str, Any]:
    """Counts, density, per-user/per-item interaction summaries and (explicit data) the rating histogram."""
    inter = dataset.interactions
    n_users, n_items, n = dataset.num_users, dataset.num_items, len(inter)
    per_user = np.bincount(inter.users, minlength=n_users)
    per_item = np.bincount(inter.items, minlength=n_items)
    stats: dict[str, Any] = {
        "name": dataset.name,
        "users": n_users,
        "items": n_items,
        "interactions": n,
        "density": n / (n_users * n_items) if n_users and n_items else 0.0,
        "per_user": _summary(per_user),
        "per_item": _summary(per_item),
        "items_without_interactions": int((per_item == 0).sum()),
        "implicit": dataset.implicit,
        "rating_range": dataset.rating_range,
        "rating_histogram": None,
        "weight": None,
        "has_timestamps": bool(n and np.any(inter.timestamps != 0)),
        "official_splits": list(dataset.official_splits),
        "user_features": sorted(dataset.user_features),
    }
    if dataset.implicit:
        if n:
            weights = inter.ratings
            stats["weight"] = {
                "min": float(weights.min()), "median": float(np.median(weights)), "max": float(weights.max())
            }
    else:
        values, counts = np.unique(inter.ratings, return_counts=True)
        stats["rating_histogram"] = {float(v): int(c) for v, c in zip(values, counts)}
        stats["rating_mean"] = float(inter.ratings.mean()) if n else 0.0
    return stats


def format_stats(stats: dict[str, Any]) -> str:
    """Human-readable multi-line rendering of ``dataset_stats``."""
    lines = [
        f"dataset       {stats['name']}",
        f"users         {stats['users']:,}",
        f"items         {stats['items']:,} ({stats['items_without_interactions']:,} without interactions)",
        f"interactions  {stats['interactions']:,} (density {stats['density']:.4%})",
    ]
    for key, label in (("per_user", "per user"), ("per_item", "per item")):
        s = stats[key]
        lines.append(f"{label:<14}min {s['min']:,}  median {s['median']:g}  max {s['max']:,}")
    if stats["implicit"]:
        weight = stats["weight"]
        if weight:
            lines.append(
                f"feedback      implicit; weight min {weight['min']:g}  median {weight['median']:g}  "
                f"max {weight['max']:g}"
            )
        else:
            lines.append("feedback      implicit")
    else:
        lo, hi = stats["rating_range"]
        lines.append(f"feedback      explicit ratings {lo:g}..{hi:g}, mean {stats['rating_mean']:.3f}")
        total = max(stats["interactions"], 1)
        for value, count in stats["rating_histogram"].items():
            lines.append(f"  {value:>5g}       {count:>10,}  {count / total:6.1%}")
    if stats["official_splits"]:
        lines.append(f"folds         {', '.join(stats['official_splits'])}")
    if stats["user_features"]:
        lines.append(f"user features {', '.join(stats['user_features'])}")
    lines.append(f"timestamps    {'yes' if stats['has_timestamps'] else 'no'}")
    return "\n".join(lines)
