"""The clients' side of a round under item hiding and secure aggregation: what travels, what the server receives.

:func:`cohort_upload` sits between local training and :func:`fedrec.federated.server.server_update`
in :func:`fedrec.federated.server.run_round`:

- ``hiding = "dense"`` without secure aggregation: every client sends every shared row (zeros where
  it trained nothing). The server aggregates exactly what it would from the sparse rows (a zero row
  carries zero weight; tested), so the sparse update is passed on and only ``bytes_up`` changes.
- ``hiding = "pseudo"``: each client adds fake rows (:mod:`fedrec.privacy.hiding`), made in chunks of
  clients; the server streams them into a :class:`~fedrec.privacy.cohort_sum.CohortSum`.
- secure aggregation: each client lays out its (hidden) upload as one fixed-point vector
  (:mod:`fedrec.privacy.cohort_sum`), the real protocol (:mod:`fedrec.privacy.secagg`) runs over the
  cohort, and the server receives only the decoded sum. ``bytes_up`` is every protocol message
  the clients sent, as measured by the protocol run.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
from torch import Tensor

from fedrec.errors import FedrecError
from fedrec.federated.aggregation import CohortUpdate, RowWeighting
from fedrec.federated.cohort import ClientData
from fedrec.federated.local import CohortResult, LocalTraining
from fedrec.federated.server import FedAvgSettings, full_upload_bytes, shared_shapes, upload_bytes, write_private_rows
from fedrec.models.base import RecModel, num_catalogue_items
from fedrec.privacy.cohort_sum import (ClientVectors, CohortSum, Contributions, SecureSumReport, contributions,
                                       SumLayout, secure_cohort_sum, sum_layout)
from fedrec.privacy.hiding import (HidingSettings, apply_hiding, client_chunks, select_clients,
                                   virtual_example_values)

MIN_SECURE_COHORT = 3  # the protocol needs at least 3 clients (a client's input must hide among others)


@dataclass(frozen=True)
class UploadReport:
    """What the cohort's upload cost this round."""

    bytes_up: int
    secagg: SecureSumReport | None = None
    secagg_skipped: bool = False  # cohort too small for the protocol: nobody's input reached the server


def hidden_chunks(model: RecModel, params: dict[str, Tensor], data: ClientData, cohort: np.ndarray,
                  result: CohortResult, update: CohortUpdate, hiding: HidingSettings, weighting: RowWeighting,
                  local: LocalTraining, seed: int, round_index: int) -> Iterator[tuple[np.ndarray, CohortUpdate, RowWeighting]]:
    """(cohort positions, their upload as hidden by ``hiding``, its weighting), chunk by chunk of clients."""
    num_items = num_catalogue_items(model)
    virtual = hiding.needs_private_path  # virtual fake rows read the recorded private rows
    for positions in client_chunks(update, num_items, hiding):
        part = select_clients(update, positions)
        fakes = (virtual_example_values(model, params, data, cohort[positions], local, seed,
                                        round_index, result) if virtual else None)
        hidden, hidden_weighting = apply_hiding(part, num_items, hiding, weighting, seed, round_index,
                                                cohort[positions], fakes)
        yield positions, hidden, hidden_weighting


def cohort_upload(model: RecModel, params: dict[str, Tensor], data: ClientData, cohort: np.ndarray,
                  result: CohortResult, update: CohortUpdate, settings: FedAvgSettings, seed: int, round_index: int,
                  clip_norm: float | None) -> tuple[CohortUpdate | CohortSum, UploadReport]:
    """What the server receives from the cohort under ``settings.hiding`` / ``settings.secure_aggregation``.

    ``params`` is the model sent this round, ``update`` the cohort's trained upload, ``clip_norm``
    the round's DP clip norm (clients clip before encoding; None without DP).
    """
    hiding = settings.hiding or HidingSettings()
    secure = settings.secure_aggregation
    pseudo = hiding.mode == "pseudo"
    if secure is None and not pseudo:
        sent = full_upload_bytes(model, update.num_clients) if hiding.mode == "dense" else upload_bytes(model, update)
        return update, UploadReport(sent)
    if pseudo and update.num_clients != len(cohort):
        raise FedrecError("privacy.hiding = 'pseudo' cannot be combined with simulated client dropouts or deadlines "
                          "(train.client_dropout, train.deadline_*) yet; switch one of them off")
    layout = sum_layout(shared_shapes(model), settings.row_weighting, settings.privacy)
    chunks = hidden_chunks(model, params, data, cohort, result, update, hiding if pseudo else HidingSettings(),
                           settings.row_weighting, settings.local, seed, round_index)
    if secure is None:  # pseudo-items in the clear: the server streams the uploads into sums
        total, sent = CohortSum.zeros(layout), 0
        for _, hidden, weighting in chunks:
            total.add(contributions(hidden, layout, weighting, clip_norm))
            sent += upload_bytes(model, hidden)
        return total, UploadReport(sent)
    if update.num_clients < MIN_SECURE_COHORT:
        return CohortSum.zeros(layout), UploadReport(0, secagg_skipped=True)
    vectors = _ChunkedVectors(chunks, layout, clip_norm)
    total, report = secure_cohort_sum(vectors, layout.length, update.num_clients, layout, secure.protocol, seed,
                                      round_index, secure.dropout)
    return total, UploadReport(report.bytes_up, report)


class _ChunkedVectors:
    """Client ``u``'s vector, made from its chunk's (hidden) upload; chunks come in order, one in memory."""

    def __init__(self, chunks: Iterator[tuple[np.ndarray, CohortUpdate, RowWeighting]], layout: SumLayout,
                 clip_norm: float | None) -> None:
        self.chunks, self.layout, self.clip_norm = chunks, layout, clip_norm
        self.positions = np.zeros(0, dtype=np.int64)
        self.vectors: ClientVectors | None = None

    def __call__(self, client: int) -> np.ndarray:
        while not (len(self.positions) and self.positions[0] <= client <= self.positions[-1]):
            positions, hidden, weighting = next(self.chunks)  # the protocol asks for clients in increasing order
            parts: Contributions = contributions(hidden, self.layout, weighting, self.clip_norm)
            self.positions, self.vectors = positions, ClientVectors(parts, self.layout)
        assert self.vectors is not None
        return self.vectors[client - int(self.positions[0])]
