"""EmbedFaces: per-camera face tracks, SFace embeddings once per track (re-verified periodically), gap fills.

Sits between DetectFaces and EnrichRisk. One :class:`~pipelines.tracking.tracks.FaceTracker` per camera holds the
tracks, in one of two places (``EmbedConfig.state``), never behind a GroupByKey (on the local runner a GBK
after the unbounded Kafka source never fires):

- ``"beam"``: frames are keyed by camera and go through a stateful DoFn; the tracker is Beam keyed state
  (checkpointed with the offsets on Flink). On the FnApiRunner a stateful DoFn is a fusion root: the frame
  path is cut in two stages, so the source's offsets can be committed before the sink flushed.
- ``"instance"`` (default): the trackers live in the DoFn instance, keyed by camera, and the stage stays
  fused with the source and the sink. Frames of one camera share a Kafka partition, hence one fused chain.
  Losing the trackers (restart, rebalance) is safe: every face is embedded again, and a frame that reaches
  another instance only looks like missed or new faces there.

For each frame the tracker associates the detections with
tracks; only faces of new tracks, or tracks due for re-verification, are aligned and embedded, in one batch;
the others carry their track's held template, except in a crowd, where only a template of the frame itself
counts (close faces can swap tracks). Tracks the detector missed for up to K frames come out as
``gap_filled`` faces with enlarged boxes, so they are still masked.

The element gets ``tracked``, its :class:`~pipelines.tracking.tracks.TrackedFace` values (``detections`` stay the
detector's boxes). Fail closed:
a face that cannot be embedded (too small, degenerate landmarks, runtime error) carries no embedding and is
treated as unknown (strongest mask) downstream; a frame the tracker cannot process is flagged degraded.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator, Optional, Sequence

import apache_beam as beam
import numpy as np
from apache_beam.coders import PickleCoder
from apache_beam.metrics import Metrics
from apache_beam.transforms.userstate import ReadModifyWriteStateSpec

from pipelines.tracking.tracks import DETECTED, GAP_FILLED, FaceTracker, TrackedFace, TrackerConfig, TrackingError

logger = logging.getLogger(__name__)

STAGE = "embed_faces"


@dataclass(frozen=True)
class EmbedConfig:
    """``min_face_px``: faces narrower than this are not embedded (SFace templates of tiny faces are noise
    and could only produce false matches); they stay unknown and get the strongest mask.

    ``embed=False`` keeps tracking and gap filling but embeds nothing and loads no recogniser: used when no
    watchlist is configured, where every face is unknown anyway (SFace costs ~50 ms per face on one core)."""

    tracker: TrackerConfig = field(default_factory=TrackerConfig)
    min_face_px: int = 24
    recognizer_threads: int = 1
    state: str = "instance"  # or "beam" (see the module docstring)
    embed: bool = True  # False: track and gap-fill only (no watchlist to match against, so no SFace cost)
    max_cameras: int = 4096  # instance state: least recently seen cameras are forgotten beyond this

    def __post_init__(self) -> None:
        if self.state not in ("instance", "beam"):
            raise ValueError(f"state must be 'instance' or 'beam', got {self.state!r}")
        if self.min_face_px < 1 or self.max_cameras < 1:
            raise ValueError("min_face_px and max_cameras must be >= 1")


class RecognizerFactory:
    """Picklable factory of the SFace recogniser (loaded once per DoFn instance in ``setup``)."""

    def __init__(self, threads: int = 1, model_dir: Optional[str] = None) -> None:
        self.threads = threads
        self.model_dir = model_dir

    def __call__(self) -> Any:
        from pipelines.models.recognizer import load_recognizer  # deferred: loads cv2, which only this path needs

        return load_recognizer(threads=self.threads, model_dir=self.model_dir)


def set_if_field(frame: Any, **changes: Any) -> Any:
    """``frame.replace`` for the given fields that the element type has (others are left out)."""
    names = {f.name for f in dataclasses.fields(frame)}
    present = {k: v for k, v in changes.items() if k in names}
    return frame.replace(**present) if present else frame


def embed_batch(recognizer: Any, image: np.ndarray, dets: Sequence[Any]) -> list[Optional[np.ndarray]]:
    """Embeddings for ``dets`` in one batch; on a batch failure, face by face; None where a face fails."""
    if not dets:
        return []
    try:
        out = np.asarray(recognizer.embed(image, list(dets)), dtype=np.float32)
        if out.shape[0] == len(dets) and np.all(np.isfinite(out)):
            return [row for row in out]
    except Exception as exc:  # noqa: BLE001 - any model/alignment failure must fail closed, not crash
        logger.warning("batch embedding failed (%s); retrying face by face", type(exc).__name__)
    result: list[Optional[np.ndarray]] = []
    for d in dets:
        try:
            row = np.asarray(recognizer.embed(image, [d]), dtype=np.float32).reshape(-1)
            result.append(row if np.all(np.isfinite(row)) and row.size else None)
        except Exception as exc:  # noqa: BLE001
            logger.warning("face embedding failed: %s", type(exc).__name__)
            result.append(None)
    return result


def track_and_embed(frame: Any, tracker: FaceTracker, recognizer: Any, config: EmbedConfig,
                    recognizer_id: str = "") -> tuple[Any, dict[str, int]]:
    """Advance ``tracker`` with ``frame`` and return the frame with tracked faces, plus counters."""
    stats = {"embedded": 0, "held": 0, "gap_filled": 0, "embed_failed": 0, "too_small": 0, "crowd_unverified": 0}
    if frame.degraded:
        return frame, stats  # the whole frame is masked downstream; keep the tracks as they are
    dets = list(frame.detections)
    try:
        step = tracker.step(frame.epoch, frame.seq, frame.width, frame.height, dets)
    except (TrackingError, TypeError, ValueError, AttributeError) as exc:
        logger.warning("tracking failed on %s: %s", frame.dedupe_key, type(exc).__name__)
        return frame.replace(degraded=True, degraded_reason=f"{STAGE}: tracking failed"), stats

    to_embed = [a for a in step.assignments
                if config.embed and recognizer is not None
                and (a.embed or tracker.held_embedding(a.track_id)[0] is None)
                and min(dets[a.index].w, dets[a.index].h) >= config.min_face_px
                and getattr(dets[a.index], "landmarks", None) is not None]
    fresh = embed_batch(recognizer, frame.image, [dets[a.index] for a in to_embed])
    fresh_by_index: dict[int, Optional[np.ndarray]] = {}
    for a, emb in zip(to_embed, fresh):
        fresh_by_index[a.index] = emb
        d = dets[a.index]
        if emb is None:
            tracker.forget_embedding(a.track_id)
            stats["embed_failed"] += 1
        else:
            tracker.record_embedding(a.track_id, frame.seq, emb, float(d.w) * float(d.h))
            stats["embedded"] += 1

    faces: list[TrackedFace] = []
    for a in step.assignments:
        d = dets[a.index]
        if a.index in fresh_by_index:
            emb, emb_seq, is_fresh = fresh_by_index[a.index], frame.seq, True
            if emb is None:
                emb_seq = -1
        elif min(d.w, d.h) < config.min_face_px:
            # Too small to recognise: never let an older, larger view's template vouch for it.
            emb, emb_seq, is_fresh = None, -1, False
            tracker.forget_embedding(a.track_id)
            stats["too_small"] += 1
        elif a.crowded:
            # Close faces can swap tracks between re-verifications: in a crowd only a template of this very
            # frame may identify a face (the track is re-embedded every reverify_crowd_every frames).
            emb, emb_seq, is_fresh = None, -1, False
            stats["crowd_unverified"] += 1
        else:
            emb, emb_seq = tracker.held_embedding(a.track_id)
            is_fresh = False
            stats["held"] += int(emb is not None)
        faces.append(TrackedFace(
            x=float(d.x), y=float(d.y), w=float(d.w), h=float(d.h), score=float(d.score), track_id=a.track_id,
            landmarks=getattr(d, "landmarks", None), source=DETECTED, conservative=a.near_edge,
            crowded=a.crowded, embedding=emb, embedding_fresh=is_fresh, embedded_seq=emb_seq))
    for g in step.gap_fills:
        x, y, w, h = g.box.pixels()
        faces.append(TrackedFace(x=float(x), y=float(y), w=float(w), h=float(h), score=0.0, track_id=g.track_id,
                                 source=GAP_FILLED, mask_scale=g.scale, conservative=g.conservative))
        stats["gap_filled"] += 1
    out = frame.replace(tracked=tuple(faces))
    return set_if_field(out, recognizer_id=recognizer_id), stats


class _EmbedFnBase(beam.DoFn):
    def __init__(self, recognizer_factory: Callable[[], Any], config: EmbedConfig) -> None:
        self._factory = recognizer_factory
        self._config = config
        self._recognizer: Any = None
        self._embedded = Metrics.counter(STAGE, "faces_embedded")
        self._held = Metrics.counter(STAGE, "faces_held")
        self._gap = Metrics.counter(STAGE, "faces_gap_filled")
        self._failed = Metrics.counter(STAGE, "embed_failed")
        self._latency = Metrics.distribution(STAGE, "frame_us")

    def setup(self) -> None:
        self._recognizer = self._factory() if self._config.embed else None

    def _run(self, frame: Any, tracker: FaceTracker) -> Any:
        start = time.perf_counter()
        out, stats = track_and_embed(frame, tracker, self._recognizer, self._config,
                                     getattr(self._recognizer, "model_id", ""))
        self._embedded.inc(stats["embedded"])
        self._held.inc(stats["held"])
        self._gap.inc(stats["gap_filled"])
        self._failed.inc(stats["embed_failed"])
        self._latency.update(int((time.perf_counter() - start) * 1e6))
        return out


class _InstanceStateEmbedFn(_EmbedFnBase):
    """Trackers in the DoFn instance (an LRU over cameras); keeps the frame path fused."""

    def setup(self) -> None:
        super().setup()
        self._trackers: "OrderedDict[str, FaceTracker]" = OrderedDict()

    def process(self, frame: Any) -> Iterator[Any]:
        tracker = self._trackers.pop(frame.camera_id, None) or FaceTracker(self._config.tracker)
        self._trackers[frame.camera_id] = tracker
        while len(self._trackers) > self._config.max_cameras:
            self._trackers.popitem(last=False)
        yield self._run(frame, tracker)


class _BeamStateEmbedFn(_EmbedFnBase):
    """Stateful per camera: the tracker (with its held templates) lives in Beam keyed state."""

    TRACKER = ReadModifyWriteStateSpec("tracker", PickleCoder())

    def process(self, element: tuple[str, Any],
                tracker_state: Any = beam.DoFn.StateParam(TRACKER)) -> Iterator[Any]:
        _, frame = element
        tracker = tracker_state.read() or FaceTracker(self._config.tracker)
        out = self._run(frame, tracker)
        tracker_state.write(tracker)
        yield out


class EmbedFaces(beam.PTransform):
    """FrameContext -> FrameContext with tracked, embedded faces (see the module docstring)."""

    def __init__(self, config: EmbedConfig = EmbedConfig(),
                 recognizer_factory: Optional[Callable[[], Any]] = None) -> None:
        super().__init__()
        self._config = config
        self._factory = recognizer_factory or RecognizerFactory(config.recognizer_threads)

    def expand(self, frames: beam.PCollection) -> beam.PCollection:
        if self._config.state == "instance":
            return frames | "TrackAndEmbed" >> beam.ParDo(_InstanceStateEmbedFn(self._factory, self._config))
        keyed = (frames | "KeyByCamera" >> beam.Map(lambda f: (f.camera_id, f))
                 .with_output_types(beam.typehints.Tuple[str, Any]))
        return keyed | "TrackAndEmbed" >> beam.ParDo(_BeamStateEmbedFn(self._factory, self._config))


__all__ = ["EmbedFaces", "EmbedConfig", "RecognizerFactory", "track_and_embed", "embed_batch", "set_if_field"]
