"""Tensors and cohort updates as Flower records, and what they weigh on the wire.

A node's upload is one ``ArrayRecord`` (keys below) plus the cohort positions of its clients. The
server turns the uploads of all nodes back into exactly the :class:`CohortUpdate` the in-process
simulator builds for the same cohort (:func:`merge_in_cohort_order`), so ``aggregate`` and the server
optimiser see identical inputs in both runtimes. Byte counts are the sizes of the serialised Flower
objects (:func:`serialized_bytes`), not estimates.
"""

from __future__ import annotations

import numpy as np
import torch
from flwr.app import ArrayRecord, RecordDict
from torch import Tensor

from fedrec.errors import FedrecError
from fedrec.federated.aggregation import CohortUpdate
from fedrec.federated.compression import Compression, EncodedUpload, UploadLayout, decode_upload
from fedrec.models.base import RecModel

ROW_ITEMS, ROW_CLIENTS, ROW_COUNTS, CLIENT_SIZES = "row_items", "row_clients", "row_counts", "client_sizes"
ROW_PREFIX, DENSE_PREFIX = "row/", "dense/"
COMPRESSED_PREFIX = "compressed/"  # a compressed upload's arrays (fedrec/federated/compression.py)


def tensors_to_record(tensors: dict[str, Tensor]) -> ArrayRecord:
    """An ArrayRecord holding these tensors (contiguous CPU copies) under their names."""
    return ArrayRecord({name: value.detach().cpu().contiguous() for name, value in tensors.items()})


def record_to_tensors(record: ArrayRecord) -> dict[str, Tensor]:
    """The tensors of an ArrayRecord, by name."""
    return dict(record.to_torch_state_dict())


def update_to_record(update: CohortUpdate) -> ArrayRecord:
    """A node's CohortUpdate as one ArrayRecord; indices travel as int32, client-local positions."""
    tensors = {
        ROW_ITEMS: update.row_items.to(torch.int32),
        ROW_CLIENTS: update.row_clients.to(torch.int32),
        ROW_COUNTS: update.row_counts,
        CLIENT_SIZES: update.client_sizes,
    }
    tensors.update({ROW_PREFIX + name: value for name, value in update.row_deltas.items()})
    tensors.update({DENSE_PREFIX + name: value for name, value in update.dense_deltas.items()})
    return tensors_to_record(tensors)


def record_to_update(record: ArrayRecord) -> CohortUpdate:
    """The CohortUpdate a node serialised with :func:`update_to_record`."""
    tensors = record_to_tensors(record)
    return CohortUpdate(
        row_items=tensors[ROW_ITEMS].to(torch.int64),
        row_clients=tensors[ROW_CLIENTS].to(torch.int64),
        row_counts=tensors[ROW_COUNTS],
        row_deltas={k[len(ROW_PREFIX):]: v for k, v in tensors.items() if k.startswith(ROW_PREFIX)},
        dense_deltas={k[len(DENSE_PREFIX):]: v for k, v in tensors.items() if k.startswith(DENSE_PREFIX)},
        client_sizes=tensors[CLIENT_SIZES],
    )


def encoded_to_record(encoded: EncodedUpload) -> ArrayRecord:
    """A node's compressed upload as one ArrayRecord: the payload's arrays, dtypes kept (int8, int32, float32)."""
    return tensors_to_record({COMPRESSED_PREFIX + name: torch.from_numpy(np.ascontiguousarray(array))
                              for name, array in encoded.arrays().items()})


def record_to_upload(record: ArrayRecord, model: RecModel, compression: Compression | None) -> CohortUpdate:
    """The CohortUpdate a node sent: as it is, or decoded from its compressed payload."""
    tensors = record_to_tensors(record)
    compressed = any(name.startswith(COMPRESSED_PREFIX) for name in tensors)
    if compressed != (compression is not None):
        raise FedrecError("a SuperNode's upload is " + ("compressed" if compressed else "not compressed") +
                          " but the server's job says otherwise; give the nodes and the server the same [compression]")
    if compression is None:
        return record_to_update(record)
    arrays = {name[len(COMPRESSED_PREFIX):]: value.numpy() for name, value in tensors.items()}
    return decode_upload(EncodedUpload.from_arrays(arrays), UploadLayout.of(model), compression)


def serialized_bytes(content: RecordDict | ArrayRecord) -> int:
    """Bytes of the serialised Flower objects making up ``content`` (each distinct object once)."""
    seen: dict[str, int] = {}
    stack = [content]
    while stack:
        obj = stack.pop()
        key = obj.object_id
        if key in seen:
            continue
        seen[key] = len(obj.deflate())
        stack.extend((obj.children or {}).values())
    return sum(seen.values())


def merge_in_cohort_order(parts: list[tuple[np.ndarray, CohortUpdate]], num_items: int) -> CohortUpdate:
    """Node uploads joined into the simulator's layout for the same cohort.

    Each part is (cohort positions of the node's clients, in the node's order; its update). The
    result lists clients by cohort position and rows by (client, item), as the vectorised
    backend lays out a whole cohort, so aggregation sums in the same order and gives the same
    floats. Positions no part covers (a node that did not answer) are left out, and the remaining
    clients renumbered in order.
    """
    parts = [(np.asarray(positions, dtype=np.int64), update) for positions, update in parts if len(positions)]
    if not parts:
        raise ValueError("no uploads to merge")
    covered = np.sort(np.concatenate([positions for positions, _ in parts]))
    if len(np.unique(covered)) != len(covered):
        raise ValueError("two uploads claim the same cohort position")
    joined = CohortUpdate.concat([update for _, update in parts])
    # position of each joined client in the merged update
    client_rank = np.searchsorted(covered, np.concatenate([positions for positions, _ in parts]))
    client_rank_t = torch.from_numpy(client_rank)
    row_client = client_rank_t[joined.row_clients]
    order = torch.argsort(row_client * num_items + joined.row_items, stable=True)
    client_order = torch.from_numpy(np.argsort(client_rank, kind="stable"))
    return CohortUpdate(
        row_items=joined.row_items[order],
        row_clients=row_client[order],
        row_counts=joined.row_counts[order],
        row_deltas={name: value[order] for name, value in joined.row_deltas.items()},
        dense_deltas={name: value[client_order] for name, value in joined.dense_deltas.items()},
        client_sizes=joined.client_sizes[client_order],
    )
