"""Local DP in a deployment: each node noises its clients' clipped uploads before they leave it.

In the simulator the server draws the sum of the cohort's independent per-client noise as one
Gaussian of the summed variance (:func:`fedrec.federated.server.private_aggregate`). In a deployment
the noise must be added where the data is: a node clips each of its clients' uploads to the clip
norm, sums them and adds N(0, n sigma^2) on every shared coordinate, n being its clients in the
round -- exactly the distribution of the sum of n per-client noisy uploads, so every client's upload
is (epsilon, delta)-DP as configured, and the server only sees noisy sums. The server adds the nodes'
sums and divides by the clients that took part, as the simulator does. The noise is seeded from
(seed, round, partition): reproducible, but not the simulator's draw (same distribution, other numbers).
"""

from __future__ import annotations

import torch
from torch import Tensor

from fedrec.config import RunConfig
from fedrec.federated import rng
from fedrec.federated.aggregation import CohortUpdate
from fedrec.federated.server import shared_shapes
from fedrec.models.base import RecModel
from fedrec.privacy.dp import STREAM_DP_NOISE, SharedShapes, add_gaussian_noise, clip_update, sum_update
from fedrec.privacy.ldp import LocalDP, summed_noise_stddev


def local_privacy(config: RunConfig) -> LocalDP | None:
    """The job's local-DP settings, None unless privacy.mode = 'local' is on."""
    if not config.privacy.enabled or config.privacy.mode != "local" or config.train.mode != "federated":
        return None
    from fedrec.runtime.trainer import privacy_settings

    privacy = privacy_settings(config, 0)
    assert isinstance(privacy, LocalDP)
    return privacy


def node_noise_generator(seed: int, round_index: int, partition_id: int) -> torch.Generator:
    """A generator whose draws are a pure function of (seed, round, partition)."""
    key = int(rng.hash64(seed, STREAM_DP_NOISE, round_index, partition_id + 1)) & ((1 << 63) - 1)
    return torch.Generator().manual_seed(key)


def noisy_local_sum(model: RecModel, update: CohortUpdate, privacy: LocalDP,
                    generator: torch.Generator) -> dict[str, Tensor]:
    """Sum over this node's clients of their clipped uploads, plus their summed local noise (full shapes)."""
    clipped, _ = clip_update(update, privacy.clip_norm)
    sums = sum_update(clipped, shared_shapes(model))
    return add_gaussian_noise(sums, summed_noise_stddev(privacy.stddev, update.num_clients), generator)


def mean_of_noisy_sums(sums: list[dict[str, Tensor]], shapes: SharedShapes, clients: int) -> dict[str, Tensor]:
    """The server's mean update: the nodes' noisy sums added, divided by the clients that took part."""
    total = {name: torch.zeros(shape, dtype=torch.float32) for name, shape in {**shapes.rows, **shapes.dense}.items()}
    for part in sums:
        for name in total:
            total[name] += part[name].to(torch.float32)
    return {name: value / max(clients, 1) for name, value in total.items()}
