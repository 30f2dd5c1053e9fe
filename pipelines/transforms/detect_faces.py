"""DetectFaces stage: find every face in a FrameContext.

The detector is loaded once per DoFn instance in ``setup()`` (a missing or tampered model file stops the
pipeline before any frame is read: nothing can be masked without it). If detection fails on a frame, the
frame is marked degraded and MaskFaces masks all of it (fail closed); it is never passed on as face-free.
"""

from __future__ import annotations

import logging
import time
from typing import Any, Callable, Iterator, Optional

import apache_beam as beam
from apache_beam.metrics import Metrics

from pipelines.frame import FrameContext

logger = logging.getLogger(__name__)

STAGE = "detect_faces"
DetectorFactory = Callable[[], Any]


def detect(detector: Any, frame: FrameContext) -> FrameContext:
    """Run ``detector`` on the frame; an exception marks the frame degraded instead of propagating."""
    try:
        found = detector.detect(frame.image)
    except Exception as exc:  # any detector failure: fail closed downstream
        logger.warning("detector failed on %s: %s; frame will be fully masked", frame.source_ref,
                       type(exc).__name__)
        return frame.replace(detections=(), detector_id=str(getattr(detector, "model_id", "")), degraded=True,
                             degraded_reason=f"detector_error:{type(exc).__name__}")
    clipped = tuple(d.clipped(frame.width, frame.height) for d in found)
    return frame.replace(detections=tuple(d for d in clipped if d.w > 0 and d.h > 0),
                         detector_id=str(detector.model_id))


class _DetectFn(beam.DoFn):
    def __init__(self, name: str, threads: int, score_threshold: Optional[float],
                 factory: Optional[DetectorFactory]) -> None:
        self._name = name
        self._threads = threads
        self._threshold = score_threshold
        self._factory = factory
        self._detector: Any = None
        self._latency = Metrics.distribution(STAGE, "frame_us")
        self._degraded = Metrics.counter(STAGE, "frames_degraded")

    def setup(self) -> None:
        if self._factory is not None:
            self._detector = self._factory()
        else:
            from pipelines.models.detector import load_detector

            self._detector = load_detector(self._name, threads=self._threads, score_threshold=self._threshold)

    def process(self, frame: FrameContext) -> Iterator[FrameContext]:
        start = time.perf_counter()
        out = detect(self._detector, frame)
        self._latency.update(int((time.perf_counter() - start) * 1e6))
        self._degraded.inc(int(out.degraded))
        yield out


class DetectFaces(beam.PTransform):
    """FrameContext -> FrameContext with ``detections`` and ``detector_id`` set (or ``degraded``).

    ``detector_factory`` (a picklable zero-argument callable) replaces the model loader, e.g. to run another
    detector implementation; by default ``load_detector(detector, threads, score_threshold)`` is used.
    """

    def __init__(self, detector: str = "yunet", threads: int = 1, score_threshold: Optional[float] = None,
                 detector_factory: Optional[DetectorFactory] = None) -> None:
        super().__init__()
        self._fn = _DetectFn(detector, threads, score_threshold, detector_factory)

    def expand(self, pcoll: beam.PCollection) -> beam.PCollection:
        return pcoll | "Detect" >> beam.ParDo(self._fn)
