"""DetectFaces stage: find every face in a FrameContext.

The detector is loaded once per DoFn instance in ``setup()`` (a missing or tampered model file stops the
pipeline before any frame is read: nothing can be masked without it). If detection fails on a frame, the
frame is marked degraded and MaskFaces masks all of it (fail closed); it is never passed on as face-free.

With a change gate (:mod:`pipelines.tracking.change_gate`, on by default) each camera's frames are detected only where
pixels changed since the detector last looked, plus a sweep of the still parts (the normal pass on the whole
frame every ``refresh_every`` frames, the tiny-face pass one band at a time); boxes over still regions are
carried over. A detector failure resets the camera's gate, so its next frame is searched in
full.
"""

from __future__ import annotations

import functools
import logging
import time
import zlib
from collections import OrderedDict
from typing import Any, Callable, Iterator, Optional

import apache_beam as beam
import cv2
from apache_beam.metrics import Metrics
from apache_beam.utils.windowed_value import WindowedValue

from pipelines.frame import FrameContext
from pipelines.tracking.change_gate import ChangeGate, GateConfig, gated_detect
from pipelines.transforms.lookahead import Lookahead

logger = logging.getLogger(__name__)

STAGE = "detect_faces"
MAX_GATED_CAMERAS = 1024  # per DoFn instance; the least recently seen camera's gate is dropped beyond it
DetectorFactory = Callable[[], Any]


def detect(detector: Any, frame: FrameContext, gate: Optional[ChangeGate] = None) -> FrameContext:
    """Run ``detector`` on the frame (through ``gate`` if given); a failure marks the frame degraded."""
    try:
        if gate is None:
            found = detector.detect(frame.image)
        else:
            base = getattr(detector, "base", None)  # the normal pass of a detector with a tiny-face pass
            found, _ = gated_detect(gate, detector.detect, frame.image, seq=frame.seq,
                                    base_detect=base.detect if base is not None else None)
    except Exception as exc:  # any detector failure: fail closed downstream
        if gate is not None:
            gate.reset()
        logger.warning("detector failed on %s: %s; frame will be fully masked", frame.source_ref,
                       type(exc).__name__)
        return frame.replace(detections=(), detector_id=str(getattr(detector, "model_id", "")), degraded=True,
                             degraded_reason=f"detector_error:{type(exc).__name__}")
    clipped = tuple(d.clipped(frame.width, frame.height) for d in found)
    return frame.replace(detections=tuple(d for d in clipped if d.w > 0 and d.h > 0),
                         detector_id=str(detector.model_id))


class _DetectFn(beam.DoFn):
    """Detects on worker threads, ``lookahead`` frames ahead of what it emits (0: on the calling thread).

    The runner drives one fused chain per bundle on one thread (read, decode, detect, track, mask, encode,
    write). With a look-ahead (:class:`~pipelines.transforms.lookahead.Lookahead`) the detector (onnxruntime,
    which releases the GIL) works on frame k while the chain finishes frame k-1 and decodes frame k+1, so the
    second core is used. Frames leave in arrival order with their own timestamp and window, and
    ``finish_bundle`` drains every frame still in flight, so a bundle's outputs are all written before its
    offsets are committed, exactly as without the look-ahead.

    With ``workers`` > 1 each camera is bound to one worker thread (the least loaded when the camera is first
    seen), so several cameras are detected at once while each camera's frames still reach its change gate one
    at a time, in order. The workers share one detector: onnxruntime sessions accept concurrent runs.
    ``lookahead`` must be at least ``workers`` for them all to be busy.
    """

    def __init__(self, name: str, threads: int, score_threshold: Optional[float],
                 factory: Optional[DetectorFactory], lookahead: int = 0,
                 gate: Optional[GateConfig] = None, workers: int = 1) -> None:
        self._name = name
        self._workers = max(1, int(workers))
        self._gate_cfg = gate
        self._gates: "OrderedDict[tuple[str, int], ChangeGate]" = OrderedDict()
        self._threads = threads
        self._threshold = score_threshold
        self._factory = factory
        self._lookahead = max(0, int(lookahead))
        self._detector: Any = None
        self._ahead: Optional[Lookahead] = None
        self._latency = Metrics.distribution(STAGE, "frame_us")
        self._degraded = Metrics.counter(STAGE, "frames_degraded")

    def setup(self) -> None:
        # The pipeline already runs frames and cameras in parallel (runner thread + detector workers). OpenCV's
        # own thread pool on top made small blurs and JPEG work wait for busy cores: 23.8 -> 28.7 frames/s
        # for two 720p cameras with it off (bench/pipeline_bench.py, docs/pipeline.md).
        cv2.setNumThreads(1)
        if self._factory is not None:
            self._detector = self._factory()
        else:
            # deferred: onnxruntime loads in setup() on the worker, not at import
            from pipelines.models.detector import load_detector

            self._detector = load_detector(self._name, threads=self._threads, score_threshold=self._threshold)
        self._ahead = Lookahead(self._lookahead, self._workers, "riskmask-detect", finish=self._done)

    def start_bundle(self) -> None:
        if self._ahead is not None:
            self._ahead.reset()

    def _gate(self, frame: FrameContext) -> Optional[ChangeGate]:
        """The frame's camera gate (per camera and epoch: a restarted camera starts afresh), None when off."""
        if self._gate_cfg is None:
            return None
        key = (frame.camera_id, frame.epoch)
        gate = self._gates.get(key)
        if gate is None:
            # Cameras refresh at different frames, so two cameras' full-frame refreshes rarely coincide.
            phase = zlib.crc32(frame.camera_id.encode("utf-8"))
            gate = self._gates[key] = ChangeGate(self._gate_cfg, phase=phase)
            while len(self._gates) > MAX_GATED_CAMERAS:
                self._gates.popitem(last=False)
        self._gates.move_to_end(key)
        return gate

    def _timed(self, frame: FrameContext, gate: Optional[ChangeGate]) -> tuple[FrameContext, float]:
        # Runs on the camera's worker (or the caller's thread): a camera's frames reach its gate in arrival
        # order, one at a time. The gate was looked up on the runner's thread, which alone touches the table.
        start = time.perf_counter()
        return detect(self._detector, frame, gate), time.perf_counter() - start

    def _done(self, result: tuple[FrameContext, float]) -> FrameContext:
        out, seconds = result
        self._latency.update(int(seconds * 1e6))
        self._degraded.inc(int(out.degraded))
        return out

    def process(self, frame: FrameContext, timestamp: Any = beam.DoFn.TimestampParam,
                window: Any = beam.DoFn.WindowParam) -> Iterator[Any]:
        gate = self._gate(frame)
        yield from self._ahead.submit(functools.partial(self._timed, frame, gate), timestamp, window,
                                      lane=frame.camera_id)

    def finish_bundle(self) -> Iterator[WindowedValue]:
        yield from self._ahead.drain()

    def teardown(self) -> None:
        if self._ahead is not None:
            self._ahead.close()
            self._ahead = None


class DetectFaces(beam.PTransform):
    """FrameContext -> FrameContext with ``detections`` and ``detector_id`` set (or ``degraded``).

    ``detector_factory`` (a picklable zero-argument callable) replaces the model loader, e.g. to run another
    detector implementation; by default ``load_detector(detector, threads, score_threshold)`` is used.
    ``lookahead`` frames are detected ahead on a worker thread (see :class:`_DetectFn`; 0 turns it off).
    ``change_gate`` limits detection to changed regions per camera (None: every frame in full); ``workers``
    threads detect different cameras at once.
    """

    def __init__(self, detector: str = "yunet", threads: int = 1, score_threshold: Optional[float] = None,
                 detector_factory: Optional[DetectorFactory] = None, lookahead: int = 0,
                 change_gate: Optional[GateConfig] = None, workers: int = 1) -> None:
        super().__init__()
        self._fn = _DetectFn(detector, threads, score_threshold, detector_factory, lookahead, change_gate, workers)

    def expand(self, pcoll: beam.PCollection) -> beam.PCollection:
        return pcoll | "Detect" >> beam.ParDo(self._fn).with_output_types(FrameContext)
