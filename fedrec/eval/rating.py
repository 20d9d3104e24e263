"""Rating-prediction metrics: RMSE and MAE, predictions clipped to the rating range."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from fedrec.data.dataset import Interactions
from fedrec.models.base import RecModel, gather_rows


def rmse(predictions: Tensor, targets: Tensor) -> float:
    """Root mean squared error: sqrt(mean((p - r)^2))."""
    return float(torch.sqrt(torch.mean((predictions.double() - targets.double()) ** 2)))


def mae(predictions: Tensor, targets: Tensor) -> float:
    """Mean absolute error: mean(|p - r|)."""
    return float(torch.mean(torch.abs(predictions.double() - targets.double())))


RowGather = Callable[[Tensor, Tensor], dict[str, Tensor]]


@torch.no_grad()
def predict_ratings(model: RecModel, params: dict[str, Tensor], interactions: Interactions,
                    rating_range: tuple[float, float] | None, batch_size: int = 65536,
                    gather: RowGather | None = None) -> Tensor:
    """Predicted rating of every (user, item) pair in ``interactions``, clipped to the range: (n,).

    ``gather(users, items)`` supplies the rows (default: the global model's).
    """
    gather = gather or (lambda u, i: gather_rows(model, params, u, i))
    users = torch.from_numpy(interactions.users)
    items = torch.from_numpy(interactions.items)
    out = []
    for begin in range(0, len(users), batch_size):
        u, i = users[begin:begin + batch_size], items[begin:begin + batch_size].unsqueeze(1)
        out.append(model.predict(gather(u, i)).reshape(-1))
    predictions = torch.cat(out) if out else torch.zeros(0)
    if rating_range is not None:
        predictions = predictions.clamp(*rating_range)
    return predictions


def rating_metrics(model: RecModel, params: dict[str, Tensor], interactions: Interactions,
                   rating_range: tuple[float, float] | None, prefix: str = "",
                   gather: RowGather | None = None) -> dict[str, float]:
    """``{prefix}rmse`` and ``{prefix}mae`` of the model on these interactions."""
    predictions = predict_ratings(model, params, interactions, rating_range, gather=gather)
    targets = torch.from_numpy(interactions.ratings)
    return {f"{prefix}rmse": rmse(predictions, targets), f"{prefix}mae": mae(predictions, targets)}
