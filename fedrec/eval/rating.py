"""Rating-prediction metrics: RMSE and MAE, predictions clipped to the rating range."""

from __future__ import annotations

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


@torch.no_grad()
def predict_ratings(model: RecModel, params: dict[str, Tensor], interactions: Interactions,
                    rating_range: tuple[float, float] | None, batch_size: int = 65536) -> Tensor:
    """Predicted rating of every (user, item) pair in ``interactions``, clipped to the range: (n,)."""
    users = torch.from_numpy(interactions.users)
    items = torch.from_numpy(interactions.items)
    out = []
    for begin in range(0, len(users), batch_size):
        u, i = users[begin:begin + batch_size], items[begin:begin + batch_size].unsqueeze(1)
        out.append(model.predict(gather_rows(model, params, u, i)).squeeze(1))
    predictions = torch.cat(out) if out else torch.zeros(0)
    if rating_range is not None:
        predictions = predictions.clamp(*rating_range)
    return predictions


def rating_metrics(model: RecModel, params: dict[str, Tensor], interactions: Interactions,
                   rating_range: tuple[float, float] | None, prefix: str = "") -> dict[str, float]:
    """``{prefix}rmse`` and ``{prefix}mae`` of the model on these interactions."""
    predictions = predict_ratings(model, params, interactions, rating_range)
    targets = torch.from_numpy(interactions.ratings)
    return {f"{prefix}rmse": rmse(predictions, targets), f"{prefix}mae": mae(predictions, targets)}
