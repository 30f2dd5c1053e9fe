"""In-pipeline element types: what flows between the Kafka source, the stages and the sinks.

``KafkaRecord`` is one consumed record with its coordinates; ``FrameContext`` is one decoded frame plus what
each stage learned about it; ``OutboundMessage`` is what a Kafka sink writes. All are frozen: a stage returns a
new value with ``dataclasses.replace``.

Each field of a FrameContext keeps one type along the whole path: DetectFaces sets ``detections`` (the
detector's :class:`~pipelines.models.detection.Detection` boxes); EmbedFaces sets ``tracked`` (one
:class:`~pipelines.tracking.tracks.TrackedFace` per detection, plus gap-filled tracks), which EnrichRisk replaces with
identity and risk filled in; MaskFaces masks ``tracked`` when recognition ran (``tracked`` is not None) and
the bare ``detections`` otherwise, and records ``faces``.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Optional

import numpy as np

from pipelines.models.detection import Detection
from pipelines.tracking.tracks import TrackedFace
from schemas.messages import FaceDecision

DEDUPE_HEADER = "riskmask-dedupe"
SOURCE_HEADER = "riskmask-source"


@dataclass(frozen=True)
class KafkaRecord:
    """One record read from Kafka; ``timestamp_ms`` is the record's broker/producer timestamp."""

    topic: str
    partition: int
    offset: int
    key: Optional[bytes]
    value: bytes
    timestamp_ms: int = -1
    headers: tuple[tuple[str, bytes], ...] = ()


@dataclass(frozen=True)
class OutboundMessage:
    """One record to produce: the sink owns the topic, this owns key, value and headers.

    ``decisions`` travels inside the pipeline only (never written by a sink): the per-face decisions of a
    redacted frame, which the Audit stage seals for the auditor. The record written to Kafka has none of them.
    """

    key: Optional[bytes]
    value: bytes
    headers: tuple[tuple[str, bytes], ...] = ()
    decisions: tuple[FaceDecision, ...] = ()


@dataclass(frozen=True, eq=False)
class FrameContext:
    """A decoded camera frame travelling through the stages (pixels are BGR uint8, HxWx3)."""

    source_topic: str
    source_partition: int
    source_offset: int
    camera_id: str
    epoch: int
    seq: int
    capture_ts_us: int
    width: int
    height: int
    raw_sha256: bytes
    image: np.ndarray
    raw_size: int = 0  # bytes of the encoded input image
    detections: tuple[Detection, ...] = ()  # set by DetectFaces
    detector_id: str = ""
    tracked: Optional[tuple[TrackedFace, ...]] = None  # EmbedFaces, then EnrichRisk; None: no recognition
    faces: tuple[FaceDecision, ...] = ()  # set by MaskFaces
    policy_id: str = ""
    recognizer_id: str = ""  # set by EmbedFaces when recognition runs
    watchlist_height: int = -1  # ledger height of the watchlist EnrichRisk used; -1 when none
    degraded: bool = False
    degraded_reason: Optional[str] = None

    def replace(self, **changes: Any) -> "FrameContext":
        return dataclasses.replace(self, **changes)

    @property
    def dedupe_key(self) -> str:
        return dedupe_key(self.camera_id, self.epoch, self.seq)

    @property
    def source_ref(self) -> str:
        return source_ref(self.source_topic, self.source_partition, self.source_offset)


def dedupe_key(camera_id: str, epoch: int, seq: int) -> str:
    """The key that identifies one captured frame across restarts and replays."""
    return f"{camera_id}/{epoch}/{seq}"


def source_ref(topic: str, partition: int, offset: int) -> str:
    return f"{topic}/{partition}/{offset}"
