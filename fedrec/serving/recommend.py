"""Recommendations from a finished run: top-K per user, top-K for everyone, nearest items.

A run directory written by ``fedrec train`` holds ``config.json``, ``checkpoint.safetensors``
(``param/<name>`` tensors) and ``metrics.json`` (written last, so its presence marks a finished
run). :func:`load_run` rebuilds dataset, split and model from the config through
:func:`fedrec.runtime.experiment.prepare` and loads the parameters; everything else here is a pure
function of the loaded :class:`TrainedRun`.

"Seen" items are the user's interactions in the training part of the split (what the model was
trained on); they are never recommended. Raw user and item IDs are the dataset's own (strings).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import scipy.sparse as sp
import torch
from pydantic import ValidationError
from torch import Tensor

from fedrec.config import RunConfig
from fedrec.data.dataset import Dataset, Interactions
from fedrec.errors import FedrecError
from fedrec.models.base import ParamKind, RecModel, num_catalogue_items, score_all_items
from fedrec.runtime.checkpoint import CHECKPOINT_NAME, load_checkpoint

RUN_FILES = ("config.json", CHECKPOINT_NAME, "metrics.json")


@dataclass(frozen=True)
class TrainedRun:
    """A finished run, ready to score: the dataset, the model, its parameters and who saw what."""

    run_dir: Path
    config: RunConfig
    dataset: Dataset
    model: RecModel
    params: dict[str, Tensor]
    train: Interactions  # what the model was trained on
    seen: sp.csr_matrix  # (num_users, num_items) bool: the same, as a matrix
    user_index: dict[str, int]  # raw user ID -> internal index
    item_index: dict[str, int]  # raw item ID -> internal index

    @property
    def num_items(self) -> int:
        return num_catalogue_items(self.model)

    @property
    def model_name(self) -> str:
        return self.config.model.name


@dataclass(frozen=True)
class Ranked:
    """Top-K items (internal indices) with their scores, best first."""

    items: np.ndarray  # (K,) int64
    scores: np.ndarray  # (K,) float32


def _read_config(path: Path) -> RunConfig:
    try:
        return RunConfig.model_validate(json.loads(path.read_text()))
    except (OSError, json.JSONDecodeError, ValidationError) as error:
        first = str(error).splitlines()[0]
        raise FedrecError(f"{path} is not a valid fedrec run config ({first}); retrain the run with fedrec train") from None


def checkpoint_params(model: RecModel, tensors: dict[str, Tensor], path: Path) -> dict[str, Tensor]:
    """The model's parameters from a recommender checkpoint's ``param/<name>`` tensors, checked against its specs."""
    params = {}
    for spec in model.param_specs():
        value = tensors.get(f"param/{spec.name}")
        if value is None or tuple(value.shape) != spec.shape:
            found = "missing" if value is None else f"shape {tuple(value.shape)}"
            raise FedrecError(f"{path} does not match its config (param/{spec.name}: {found}, "
                              f"expected {spec.shape}); was the dataset changed since training? retrain the run")
        params[spec.name] = value.float()
    return params


def load_run(run_dir: Path, data_dir: Path | None = None) -> TrainedRun:
    """Load a finished run; ``data_dir`` overrides where its dataset is read from."""
    from fedrec.runtime.experiment import prepare

    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise FedrecError(f"run directory {run_dir} not found; pass the --out folder of a finished fedrec train")
    missing = [name for name in RUN_FILES if not (run_dir / name).is_file()]
    if "config.json" in missing or CHECKPOINT_NAME in missing:
        raise FedrecError(f"{run_dir} is not a fedrec run (missing {', '.join(missing)}); "
                          "pass the --out folder of a finished fedrec train")
    if missing:
        raise FedrecError(f"the run in {run_dir} has not finished (no metrics.json); "
                          f"finish it with fedrec train CONFIG --out {run_dir} --resume")
    config = _read_config(run_dir / "config.json")
    if data_dir is not None:
        config = config.model_copy(update={"data": config.data.model_copy(update={"data_dir": str(data_dir)})})
    # Sampled evaluation negatives are not needed to serve; skip drawing them.
    config_to_prepare = config.model_copy(update={"eval": config.eval.model_copy(update={"sampled_negatives": 0})})
    tensors, _ = load_checkpoint(run_dir / CHECKPOINT_NAME)
    if config.model.name == "lora_bpr":  # federated LoRA: served as the text tower it trains
        from fedrec.text.lora_run import served_params, tower_config

        exp = prepare(tower_config(config_to_prepare))
        params = served_params(config, exp, tensors, run_dir / CHECKPOINT_NAME)
    else:
        exp = prepare(config_to_prepare)
        params = checkpoint_params(exp.model, tensors, run_dir / CHECKPOINT_NAME)
    train = exp.split.train
    seen = sp.csr_matrix((np.ones(len(train), dtype=bool), (train.users, train.items)),
                         shape=(exp.dataset.num_users, exp.dataset.num_items), dtype=bool)
    user_index = {str(raw): index for index, raw in enumerate(exp.dataset.user_ids)}
    item_index = {str(raw): index for index, raw in enumerate(exp.dataset.item_ids)}
    return TrainedRun(run_dir, config, exp.dataset, exp.model, params, train, seen, user_index, item_index)


# -- IDs, titles and history ----------------------------------------------------------------------


def user_of(run: TrainedRun, user_id: str | int) -> int:
    """Internal index of a raw user ID."""
    index = run.user_index.get(str(user_id))
    if index is None:
        examples = ", ".join(str(u) for u in run.dataset.user_ids[:3])
        raise FedrecError(f"unknown user ID {str(user_id)!r} in {run.dataset.name}; use a raw user ID such as {examples}")
    return index


def item_of(run: TrainedRun, item_id: str | int) -> int:
    """Internal index of a raw item ID."""
    index = run.item_index.get(str(item_id))
    if index is None:
        examples = ", ".join(str(i) for i in run.dataset.item_ids[:3])
        raise FedrecError(f"unknown item ID {str(item_id)!r} in {run.dataset.name}; use a raw item ID such as {examples}")
    return index


def item_title(run: TrainedRun, item: int) -> str:
    return run.dataset.item_titles[item] if item < len(run.dataset.item_titles) else ""


def item_metadata(run: TrainedRun, item: int) -> dict[str, str]:
    """Raw ID, title and description of an internal item index."""
    texts = run.dataset.item_texts
    return {"item": str(run.dataset.item_ids[item]), "title": item_title(run, item),
            "text": texts[item] if item < len(texts) else ""}


def seen_items(run: TrainedRun, user: int) -> np.ndarray:
    """Internal indices of the items a user interacted with in the training data, ascending."""
    row = run.seen[user]
    return np.sort(row.indices.astype(np.int64))


def user_history(run: TrainedRun, user: int) -> list[dict[str, object]]:
    """The user's training interactions, most recent first (raw item ID, title, rating, timestamp)."""
    train = run.train
    mine = np.flatnonzero(train.users == user)
    mine = mine[np.argsort(-train.timestamps[mine], kind="stable")]
    return [{"item": str(run.dataset.item_ids[i]), "title": item_title(run, int(i)), "rating": float(r), "timestamp": int(t)}
            for i, r, t in zip(train.items[mine], train.ratings[mine], train.timestamps[mine])]


# -- scoring ------------------------------------------------------------------------------------


def check_k(k: int, candidates: int) -> None:
    """K must be in 1..candidates."""
    if k < 1:
        raise FedrecError(f"K={k} is not a positive number of items; use K >= 1")
    if k > candidates:
        raise FedrecError(f"K={k} is more than the {candidates} candidate items; use K <= {candidates}")


@torch.no_grad()
def masked_scores(run: TrainedRun, users: np.ndarray) -> Tensor:
    """Every item's score for each user, seen (training) items set to -inf: (B, num_items)."""
    scores = score_all_items(run.model, run.params, torch.as_tensor(users, dtype=torch.long)).float()
    mask = torch.from_numpy(run.seen[users].toarray())
    return scores.masked_fill(mask, float("-inf"))


def top_k_from_scores(scores: Tensor, k: int) -> tuple[Tensor, Tensor]:
    """Top-K (values, indices) per row, ties broken towards the lower index; rows of (B, I)."""
    # A stable descending sort keeps equal scores in index order, so results are reproducible.
    values, indices = torch.sort(scores, dim=-1, descending=True, stable=True)
    return values[..., :k], indices[..., :k]


def recommend_for_user(run: TrainedRun, user: int, k: int) -> Ranked:
    """Top-K unseen items for one user (internal index)."""
    check_k(k, run.num_items - run.seen[user].nnz)
    values, indices = top_k_from_scores(masked_scores(run, np.array([user]))[0], k)
    return Ranked(indices.numpy().astype(np.int64), values.numpy())


def recommend_all(run: TrainedRun, k: int, chunk: int = 512) -> pd.DataFrame:
    """Top-K unseen items of every user: columns user, rank, item, score, title (raw IDs)."""
    candidates = run.num_items - np.diff(run.seen.indptr)
    fewest = int(candidates.min()) if len(candidates) else 0
    if k > fewest:
        user = int(np.argmin(candidates))
        raise FedrecError(f"K={k} is more than the {fewest} unseen items of user {run.dataset.user_ids[user]}; "
                          f"use K <= {fewest} for --all")
    check_k(k, run.num_items)
    users_out, items_out, scores_out = [], [], []
    for begin in range(0, run.dataset.num_users, chunk):
        users = np.arange(begin, min(begin + chunk, run.dataset.num_users))
        values, indices = top_k_from_scores(masked_scores(run, users), k)
        users_out.append(np.repeat(users, k))
        items_out.append(indices.reshape(-1).numpy())
        scores_out.append(values.reshape(-1).numpy())
    users_all = np.concatenate(users_out) if users_out else np.zeros(0, dtype=np.int64)
    items_all = np.concatenate(items_out) if items_out else np.zeros(0, dtype=np.int64)
    titles = np.asarray(run.dataset.item_titles, dtype=object)
    return pd.DataFrame({
        "user": run.dataset.user_ids[users_all].astype(str),
        "rank": np.tile(np.arange(1, k + 1), len(users_all) // k if k else 0),
        "item": run.dataset.item_ids[items_all].astype(str),
        "score": np.concatenate(scores_out).astype(np.float32) if scores_out else np.zeros(0, np.float32),
        "title": titles[items_all] if len(titles) else "",
    })


def export_recommendations(frame: pd.DataFrame, path: Path) -> None:
    """Write top-K recommendations as CSV or Parquet, by the file's extension."""
    suffix = Path(path).suffix.lower()
    if suffix not in (".csv", ".parquet"):
        raise FedrecError(f"cannot write {path}: the output must end in .csv or .parquet")
    if not Path(path).parent.is_dir():
        raise FedrecError(f"cannot write {path}: folder {Path(path).parent} does not exist")
    if suffix == ".csv":
        frame.to_csv(path, index=False)
    else:
        frame.to_parquet(path, index=False)


# -- on-device scoring ------------------------------------------------------------------------------


def private_row_shapes(model: RecModel) -> dict[str, tuple[int, ...]]:
    """What a client holds privately: each private table's row shape (e.g. user_vec (d,), user_bias (1,))."""
    return {spec.name: spec.row_shape for spec in model.specs_by_kind(ParamKind.PRIVATE_ROWS)}


def private_rows_of(run: TrainedRun, user: int) -> dict[str, Tensor]:
    """A user's private rows as the client holds them (for demos and tests; a real client keeps its own)."""
    return {name: run.params[name][user] for name in private_row_shapes(run.model)}


@torch.no_grad()
def score_private_rows(run: TrainedRun, rows: dict[str, Tensor]) -> Tensor:
    """Every item's score for a client that supplies its own private rows: (num_items,).

    The shared parameters come from the run; the private tables are replaced by the single row
    given, so the result equals the server-side score of a user holding those rows.
    """
    shapes = private_row_shapes(run.model)
    if set(rows) != set(shapes):
        raise FedrecError(f"the {run.model_name} model needs private rows {', '.join(sorted(shapes))}, "
                          f"got {', '.join(sorted(rows)) or 'none'}")
    params = dict(run.params)
    for name, shape in shapes.items():
        row = torch.as_tensor(rows[name], dtype=torch.float32)
        if tuple(row.shape) != shape:
            raise FedrecError(f"private row {name} must have shape {shape}, got {tuple(row.shape)}")
        params[name] = row.unsqueeze(0)
    return score_all_items(run.model, params, torch.zeros(1, dtype=torch.long))[0].float()


def top_k_excluding(scores: Tensor, exclude: np.ndarray, k: int) -> Ranked:
    """Top-K of a score vector with the ``exclude`` indices removed."""
    masked = scores.clone()
    if len(exclude):
        masked[torch.as_tensor(exclude, dtype=torch.long)] = float("-inf")
    check_k(k, len(scores) - len(np.unique(exclude)))
    values, indices = top_k_from_scores(masked, k)
    return Ranked(indices.numpy().astype(np.int64), values.numpy())


# -- similar items ----------------------------------------------------------------------------------


def item_embedding_tables(run: TrainedRun) -> list[str]:
    """Which item vectors define item similarity (:meth:`RecModel.similarity_vectors`).

    MF and BPR-MF: ``item_vec``; NCF: ``item_gmf`` (GMF), ``item_mlp`` (MLP), both concatenated
    (NeuMF, each normalised first); text models: the vector they score with, ID part and adapted text.
    """
    return list(_similarity_vectors(run))


def _similarity_vectors(run: TrainedRun) -> dict[str, Tensor]:
    vectors = run.model.similarity_vectors(run.params)
    if not vectors:
        raise FedrecError("this model has no item vectors to compare; similar items need an embedding model")
    return vectors


def item_vectors(run: TrainedRun) -> Tensor:
    """Unit-length item vectors (those of :func:`item_embedding_tables`, each normalised, concatenated)."""
    parts = [torch.nn.functional.normalize(value.detach().reshape(run.num_items, -1).float(), dim=-1)
             for value in _similarity_vectors(run).values()]
    return torch.nn.functional.normalize(torch.cat(parts, -1), dim=-1)


def similar_items(vectors: Tensor, item: int, k: int) -> Ranked:
    """The K items nearest to ``item`` by cosine similarity of unit vectors (the item itself excluded)."""
    check_k(k, len(vectors) - 1)
    similarity = vectors @ vectors[item]
    similarity[item] = float("-inf")
    values, indices = top_k_from_scores(similarity, k)
    return Ranked(indices.numpy().astype(np.int64), values.numpy())


def ranked_records(run: TrainedRun, ranked: Ranked, score_name: str = "score") -> list[dict[str, object]]:
    """Ranked items as plain records: rank, raw item ID, title, score."""
    return [{"rank": rank, "item": str(run.dataset.item_ids[item]), "title": item_title(run, int(item)),
             score_name: float(score)}
            for rank, (item, score) in enumerate(zip(ranked.items, ranked.scores), start=1)]
