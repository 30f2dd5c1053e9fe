"""Encode stage: masked FrameContext -> RedactedFrame (JPEG) -> Kafka record for frames.redacted.

The record carries the SHA-256 of the raw input image and of the redacted output, the policy and detector
ids and the source coordinates, so an auditor can tie every output to its input. Per face it carries only
what a viewer needs to draw: the masked region and the masking method (:func:`mask_regions`); a disclosed
face is not listed, and no identity class, risk group, suspect flag or track id leaves on frames.redacted.
The full per-face decisions ride along in memory (``OutboundMessage.decisions``) to the Audit stage, which
seals them for the auditor. Its Kafka key is the camera
id and its headers hold the dedupe key (camera_id/epoch/seq) and the source topic/partition/offset.
If JPEG encoding fails the frame goes to the DLQ (never out unmasked, never silently dropped).
"""

from __future__ import annotations

import hashlib
import logging
import time
from typing import Iterator

import apache_beam as beam
import cv2
from apache_beam import pvalue
from apache_beam.metrics import Metrics

from pipelines.frame import DEDUPE_HEADER, SOURCE_HEADER, FrameContext, OutboundMessage
from pipelines.masking.filters import mask_region
from pipelines.progress import DEFAULT_INTERVAL_S, ProgressWindow
from pipelines.transforms.dead_letter import DLQ_TAG, dead_letter
from schemas.messages import FaceDecision, MaskRegion, RedactedFrame

logger = logging.getLogger(__name__)

STAGE = "encode"
DEFAULT_JPEG_QUALITY = 90


class EncodeError(RuntimeError):
    """The masked image could not be encoded."""


def mask_regions(faces: tuple[FaceDecision, ...], width: int, height: int) -> tuple[MaskRegion, ...]:
    """The regions actually masked (face box scaled by its mask_scale, clipped), for a viewer to draw.

    Disclosed faces (mode ``none``) are left out; nothing about who, how risky or which track is kept."""
    out = []
    for f in faces:
        if f.mode == "none":
            continue
        region = mask_region((f.x, f.y, f.w, f.h), f.mask_scale, width, height)
        if region is None:
            continue
        x0, y0, x1, y1 = region
        out.append(MaskRegion(x=x0, y=y0, w=x1 - x0, h=y1 - y0, mode=f.mode, shape=f.shape))
    return tuple(out)


def encode_frame(frame: FrameContext, quality: int = DEFAULT_JPEG_QUALITY) -> RedactedFrame:
    """The RedactedFrame of a masked frame."""
    ok, buf = cv2.imencode(".jpg", frame.image, [int(cv2.IMWRITE_JPEG_QUALITY), int(quality)])
    if not ok:
        raise EncodeError("JPEG encoder refused the image")
    data = buf.tobytes()
    return RedactedFrame(
        camera_id=frame.camera_id, epoch=frame.epoch, seq=frame.seq, capture_ts_us=frame.capture_ts_us,
        processed_ts_us=time.time_ns() // 1000, width=frame.width, height=frame.height, image=data,
        raw_sha256=frame.raw_sha256, redacted_sha256=hashlib.sha256(data).digest(), policy_id=frame.policy_id,
        detector_id=frame.detector_id, masks=mask_regions(frame.faces, frame.width, frame.height), encoding="jpeg", recognizer_id=frame.recognizer_id,
        watchlist_height=frame.watchlist_height, degraded=frame.degraded,
        degraded_reason=frame.degraded_reason, source_topic=frame.source_topic,
        source_partition=frame.source_partition, source_offset=frame.source_offset)


def redacted_message(rf: RedactedFrame, decisions: tuple[FaceDecision, ...] = ()) -> OutboundMessage:
    """Kafka record of a RedactedFrame: key = camera id; dedupe and source headers. ``decisions`` (the
    frame's per-face decisions) stay in memory for the Audit stage; the sink never writes them."""
    return OutboundMessage(
        key=rf.camera_id.encode(), value=rf.to_bytes(),
        headers=((DEDUPE_HEADER, f"{rf.camera_id}/{rf.epoch}/{rf.seq}".encode()),
                 (SOURCE_HEADER, f"{rf.source_topic}/{rf.source_partition}/{rf.source_offset}".encode())),
        decisions=tuple(decisions))


class _EncodeFn(beam.DoFn):
    def __init__(self, quality: int, progress_interval_s: float) -> None:
        self._quality = quality
        self._progress = ProgressWindow(progress_interval_s)
        self._latency = Metrics.distribution(STAGE, "frame_us")

    def setup(self) -> None:
        self._progress = ProgressWindow(self._progress.interval_s)  # a fresh window per worker instance

    def process(self, frame: FrameContext) -> Iterator[object]:
        try:
            start = time.perf_counter()
            msg = redacted_message(encode_frame(frame, self._quality), frame.faces)
            self._latency.update(int((time.perf_counter() - start) * 1e6))
            self._progress.add(frame.camera_id, len(frame.faces), frame.degraded,
                               (time.time_ns() // 1000 - frame.capture_ts_us) / 1000)
            self._log_progress()
            yield msg
        except Exception as exc:  # encoder or schema failure: the frame goes to the DLQ, never out unmasked
            self._progress.add_failure()
            logger.warning("encode failed on %s: %s", frame.source_ref, type(exc).__name__)
            yield pvalue.TaggedOutput(DLQ_TAG, dead_letter(
                frame.source_topic, frame.source_partition, frame.source_offset, STAGE, "encode_error",
                None, type(exc).__name__, camera_id=frame.camera_id, epoch=frame.epoch, seq=frame.seq,
                payload_sha256=frame.raw_sha256, payload_size=frame.raw_size))

    def _log_progress(self) -> None:
        if self._progress.due():
            logger.info("%s", self._progress.take_line())


class Encode(beam.PTransform):
    """FrameContext -> OutboundMessage of a RedactedFrame (main) | DeadLetter (``dlq``).

    Every ``progress_interval_s`` (0: never) it logs one progress line (:mod:`pipelines.progress`)."""

    def __init__(self, quality: int = DEFAULT_JPEG_QUALITY, progress_interval_s: float = DEFAULT_INTERVAL_S) -> None:
        super().__init__()
        if not 1 <= quality <= 100:
            raise ValueError(f"JPEG quality must be 1..100, got {quality}")
        self._fn = _EncodeFn(quality, progress_interval_s)

    def expand(self, pcoll: beam.PCollection) -> pvalue.DoOutputsTuple:
        return pcoll | "Encode" >> beam.ParDo(self._fn).with_outputs(DLQ_TAG, main="redacted")
