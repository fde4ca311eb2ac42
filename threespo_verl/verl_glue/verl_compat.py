"""The glue's uses of verl's and TransferQueue's batch plumbing, in one place."""

from __future__ import annotations

from typing import Any

import transfer_queue as tq
from transfer_queue import KVBatchMeta


def _concat(batches: list[KVBatchMeta], partition_id: str = "train") -> KVBatchMeta:
    keys = [k for b in batches for k in b.keys]
    tags = [t for b in batches for t in b.tags]
    return KVBatchMeta(partition_id=partition_id, keys=keys, tags=tags)


def _select(batch: KVBatchMeta, keep: list[bool]) -> tuple[KVBatchMeta, list[str]]:
    kept = KVBatchMeta(partition_id=batch.partition_id, keys=[k for k, m in zip(batch.keys, keep) if m],
                       tags=[t for t, m in zip(batch.tags, keep) if m])
    return kept, [k for k, m in zip(batch.keys, keep) if not m]


def _extra_fields(batch: KVBatchMeta) -> list[dict[str, Any]]:
    if not len(batch):
        return []
    data = tq.kv_batch_get(keys=batch.keys, partition_id=batch.partition_id, select_fields=["extra_fields"])
    return [getattr(e, "data", e) for e in data.pop("extra_fields").tolist()]
