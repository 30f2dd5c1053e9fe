"""Building DeadLetter records: coordinates, a reason and a digest of the payload, never the payload itself."""

from __future__ import annotations

import hashlib
import time
from typing import Optional

from pipelines.frame import DEDUPE_HEADER, SOURCE_HEADER, OutboundMessage, source_ref
from schemas.messages import DeadLetter

DLQ_TAG = "dlq"
MAX_DETAIL_CHARS = 300


def dead_letter(topic: str, partition: int, offset: int, stage: str, reason: str, payload: Optional[bytes],
                detail: str = "", camera_id: Optional[str] = None, epoch: Optional[int] = None,
                seq: Optional[int] = None, payload_sha256: Optional[bytes] = None,
                payload_size: Optional[int] = None) -> DeadLetter:
    """A DeadLetter for ``payload`` (or its given digest and size): no pixels ever reach the DLQ."""
    if payload is not None:
        payload_sha256, payload_size = hashlib.sha256(payload).digest(), len(payload)
    if payload_sha256 is None or payload_size is None:
        raise ValueError("a dead letter needs the payload or its digest and size")
    return DeadLetter(source_topic=topic, source_partition=partition, source_offset=offset, stage=stage,
                      reason=reason, payload_sha256=payload_sha256, payload_size=payload_size,
                      ts_us=time.time_ns() // 1000, camera_id=camera_id, epoch=epoch, seq=seq,
                      detail=detail[:MAX_DETAIL_CHARS])


def dead_letter_message(dl: DeadLetter) -> OutboundMessage:
    """The Kafka record of a DeadLetter: key = camera id (when known), dedupe key = source coordinates."""
    ref = source_ref(dl.source_topic, dl.source_partition, dl.source_offset).encode()
    key = dl.camera_id.encode() if dl.camera_id else None
    return OutboundMessage(key=key, value=dl.to_bytes(), headers=((DEDUPE_HEADER, ref), (SOURCE_HEADER, ref)))
