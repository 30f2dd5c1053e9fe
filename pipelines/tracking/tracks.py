"""Per-camera face tracks (pure): association, constant-velocity extrapolation, gap filling, re-verification.

One :class:`FaceTracker` holds the tracks of one camera. Each frame, :meth:`FaceTracker.step` associates the
detections with the tracks' predicted boxes (IoU first, then centre distance), starts tracks for the rest and
returns, per detection, its track id and whether it must be (re-)embedded; plus a *gap fill* for every track
missed for 1..K frames, so that a face the detector missed on a frame is still masked.

Rules (reasons in docs/recognition.md):
- a track is embedded when it starts, every ``reverify_every`` frames (spread over the interval: see
  :data:`REVERIFY_PHASE_STEP`), when its face grew by
  ``regrow_factor`` in area since the last embedding (a better view), and every ``reverify_crowd_every``
  frames while another face is close to it (tracks can swap identities when faces cross);
- a missed track is extrapolated at constant velocity and its mask enlarged by ``gap_scale`` plus
  ``gap_growth`` per missed frame; near a frame edge or in a crowd it is masked conservatively: the union of
  the last seen and the extrapolated box, enlarged by ``conservative_scale`` (also for a track seen only
  once, whose velocity is unknown);
- a frame of a new epoch (the camera restarted) resets the tracker; a frame that is late or repeated (seq not
  above the last one, e.g. a redelivery) is handled by a scratch tracker: all its faces count as new tracks,
  and the camera's tracks are left untouched.

The tracker is a plain picklable object: the Beam stage keeps one per camera in a stateful DoFn.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from typing import Any, Optional, Sequence

import numpy as np

logger = logging.getLogger(__name__)

DETECTED = "detected"
GAP_FILLED = "gap_filled"
# A track's first re-verification comes after reverify_every - (track_id * step) % ceil(reverify_every / 2)
# frames, every later one after reverify_every. Faces that appear together would otherwise all be re-embedded
# on the same frame every interval (10 faces: ~0.8 s of SFace on one frame, a latency spike); this way they
# spread over half an interval and stay spread, and no interval exceeds reverify_every. The step is coprime
# with the usual half intervals so that consecutive track ids land far apart.
REVERIFY_PHASE_STEP = 7


# Same shape as pipelines/recognition/watchlist_index.py:WatchlistError, Subject: each module's own error, record.
class TrackingError(ValueError):
    """Bad tracker input (non-finite boxes, bad frame size) or configuration."""


@dataclass(frozen=True)
class Box:
    """Axis-aligned box in pixels (float)."""

    x: float
    y: float
    w: float
    h: float

    @property
    def cx(self) -> float:
        return self.x + self.w / 2.0

    @property
    def cy(self) -> float:
        return self.y + self.h / 2.0

    @property
    def area(self) -> float:
        return max(0.0, self.w) * max(0.0, self.h)

    def shifted(self, dx: float, dy: float) -> "Box":
        return Box(self.x + dx, self.y + dy, self.w, self.h)

    def scaled(self, factor: float) -> "Box":
        """Enlarged about its centre."""
        w, h = self.w * factor, self.h * factor
        return Box(self.cx - w / 2.0, self.cy - h / 2.0, w, h)

    def union(self, other: "Box") -> "Box":
        x0, y0 = min(self.x, other.x), min(self.y, other.y)
        x1, y1 = max(self.x + self.w, other.x + other.w), max(self.y + self.h, other.y + other.h)
        return Box(x0, y0, x1 - x0, y1 - y0)

    def clipped(self, width: int, height: int) -> Optional["Box"]:
        x0, y0 = max(0.0, self.x), max(0.0, self.y)
        x1, y1 = min(float(width), self.x + self.w), min(float(height), self.y + self.h)
        if x1 <= x0 or y1 <= y0:
            return None
        return Box(x0, y0, x1 - x0, y1 - y0)

    def pixels(self) -> tuple[int, int, int, int]:
        """Integer (x, y, w, h) that covers the box (rounded outwards)."""
        x0, y0 = math.floor(self.x), math.floor(self.y)
        x1, y1 = math.ceil(self.x + self.w), math.ceil(self.y + self.h)
        return x0, y0, x1 - x0, y1 - y0

    @classmethod
    def of(cls, obj: Any) -> "Box":
        """From anything with x, y, w, h attributes (e.g. a detection)."""
        box = cls(float(obj.x), float(obj.y), float(obj.w), float(obj.h))
        if not all(math.isfinite(v) for v in (box.x, box.y, box.w, box.h)) or box.w <= 0 or box.h <= 0:
            raise TrackingError("box must be finite with positive size")
        return box


def iou(a: Box, b: Box) -> float:
    ix = min(a.x + a.w, b.x + b.w) - max(a.x, b.x)
    iy = min(a.y + a.h, b.y + b.h) - max(a.y, b.y)
    if ix <= 0 or iy <= 0:
        return 0.0
    inter = ix * iy
    return inter / (a.area + b.area - inter)


def centre_distance(a: Box, b: Box) -> float:
    return math.hypot(a.cx - b.cx, a.cy - b.cy)


@dataclass(frozen=True)
class TrackerConfig:
    """Association, gap and re-verification parameters (frames are counted in camera seq units)."""

    iou_match: float = 0.3
    centre_match: float = 0.6      # centre distance / max(w) for the fallback association
    max_gap: int = 5               # K: frames a missed track is still masked
    reverify_every: int = 25       # re-embed a track at least this often (1 s at 25 fps)
    reverify_crowd_every: int = 3  # ... and this often while another face is close
    regrow_factor: float = 1.5     # re-embed when the face area grew this much since the last embedding
    gap_scale: float = 1.25        # mask enlargement of an extrapolated box
    gap_growth: float = 0.05       # extra enlargement per missed frame
    conservative_scale: float = 1.6
    edge_margin: float = 0.25      # a box within this fraction of its size of a border is "near the edge"
    crowd_distance: float = 1.5    # faces whose centres are within this many face widths are "in a crowd"
    velocity_alpha: float = 0.6    # weight of the newest displacement in the velocity estimate
    max_tracks: int = 256

    def __post_init__(self) -> None:
        if self.max_gap < 0 or self.reverify_every < 1 or self.reverify_crowd_every < 1 or self.max_tracks < 1:
            raise TrackingError("max_gap >= 0, reverify intervals >= 1 and max_tracks >= 1 are required")
        if not (0.0 < self.iou_match <= 1.0) or self.centre_match <= 0 or not (0 < self.velocity_alpha <= 1):
            raise TrackingError("iou_match in (0, 1], centre_match > 0 and velocity_alpha in (0, 1] required")
        if self.gap_scale < 1.0 or self.conservative_scale < self.gap_scale or self.gap_growth < 0:
            raise TrackingError("gap masks must be at least as large as the face: scales >= 1")


@dataclass
class Track:
    """One face followed over frames; ``embedding`` is the last template computed for it (personal data)."""

    track_id: int
    box: Box
    last_seq: int
    vx: float = 0.0
    vy: float = 0.0
    hits: int = 1
    embedded_seq: int = -1
    embedded_area: float = 0.0
    embeddings: int = 0  # templates recorded so far
    embedding: Optional[np.ndarray] = field(default=None, repr=False)

    def predicted(self, seq: int) -> Box:
        dt = seq - self.last_seq
        return self.box.shifted(self.vx * dt, self.vy * dt)


@dataclass(frozen=True)
class Assignment:
    """Where detection ``index`` went: its track, whether to embed it now, and why."""

    index: int
    track_id: int
    embed: bool
    reason: str  # new | periodic | grown | crowd | held
    crowded: bool
    near_edge: bool


@dataclass(frozen=True)
class GapFill:
    """A mask for a track the detector missed on this frame (box already enlarged and clipped)."""

    track_id: int
    box: Box
    missed: int
    scale: float
    conservative: bool


@dataclass(frozen=True)
class StepResult:
    assignments: tuple[Assignment, ...]
    gap_fills: tuple[GapFill, ...]
    reset: bool
    out_of_order: bool = False


class FaceTracker:
    """Tracks of one camera. Not thread-safe; one instance per camera key."""

    def __init__(self, config: TrackerConfig = TrackerConfig()) -> None:
        self.config = config
        self.tracks: dict[int, Track] = {}
        self.next_id = 1
        self.epoch: Optional[int] = None
        self.last_seq: Optional[int] = None

    def step(self, epoch: int, seq: int, frame_w: int, frame_h: int, detections: Sequence[Any]) -> StepResult:
        """Advance to frame ``seq`` with this frame's ``detections`` (objects with x, y, w, h)."""
        if frame_w <= 0 or frame_h <= 0:
            raise TrackingError("frame size must be positive")
        boxes = [Box.of(d) for d in detections]
        if self.epoch is not None and (epoch < self.epoch or (epoch == self.epoch and self.last_seq is not None
                                                              and seq <= self.last_seq)):
            # Late or repeated frame: its faces cannot be tied to the current tracks; treat them as new
            # (embedded again) in a scratch tracker and keep this camera's tracks as they are.
            scratch = FaceTracker(self.config)
            scratch.next_id = self.next_id
            res = scratch.step(epoch, seq, frame_w, frame_h, detections)
            self.next_id = scratch.next_id
            return StepResult(res.assignments, (), False, True)
        reset = self._maybe_reset(epoch)
        cfg = self.config
        live = {tid: t for tid, t in self.tracks.items() if seq - t.last_seq <= cfg.max_gap + 1}
        self.tracks = live
        predicted = {tid: t.predicted(seq) for tid, t in live.items()}
        pairs = self._associate(predicted, boxes)

        assignments: list[Assignment] = []
        matched_tracks: set[int] = set()
        for i, box in enumerate(boxes):
            crowded = _crowded(box, [b for j, b in enumerate(boxes) if j != i], cfg.crowd_distance)
            edge = _near_edge(box, frame_w, frame_h, cfg.edge_margin)
            tid = pairs.get(i)
            if tid is None:
                tid = self._new_track(box, seq)
                assignments.append(Assignment(i, tid, True, "new", crowded, edge))
                matched_tracks.add(tid)
                continue
            matched_tracks.add(tid)
            track = self.tracks[tid]
            self._update_motion(track, box, seq)
            embed, reason = self._needs_embedding(track, box, seq, crowded)
            assignments.append(Assignment(i, tid, embed, reason, crowded, edge))

        gap_fills: list[GapFill] = []
        for tid, track in sorted(self.tracks.items()):
            if tid in matched_tracks:
                continue
            missed = seq - track.last_seq
            if missed < 1 or missed > cfg.max_gap:
                continue
            fill = self._gap_fill(track, predicted[tid], missed, boxes, frame_w, frame_h)
            if fill is not None:
                gap_fills.append(fill)
        self.last_seq = seq
        self._cap_tracks()
        return StepResult(tuple(assignments), tuple(gap_fills), reset)

    def record_embedding(self, track_id: int, seq: int, embedding: np.ndarray, area: float) -> None:
        """Remember the template computed for ``track_id`` at ``seq`` (face area in px^2 at that time)."""
        track = self.tracks.get(track_id)
        if track is None:
            return
        track.embedding = np.asarray(embedding, dtype=np.float32).copy()
        track.embedded_seq = seq
        track.embedded_area = float(area)
        track.embeddings += 1

    def forget_embedding(self, track_id: int) -> None:
        """Drop a track's template so that it is embedded again on its next detection."""
        track = self.tracks.get(track_id)
        if track is not None:
            track.embedding, track.embedded_seq, track.embedded_area = None, -1, 0.0

    def held_embedding(self, track_id: int) -> tuple[Optional[np.ndarray], int]:
        track = self.tracks.get(track_id)
        if track is None or track.embedding is None:
            return None, -1
        return track.embedding, track.embedded_seq

    # -- internals -----------------------------------------------------------------------------------------

    def _maybe_reset(self, epoch: int) -> bool:
        if self.epoch is None or epoch == self.epoch:
            self.epoch = epoch
            return False
        # New epoch (the camera restarted): the faces may not be where the tracks say; start afresh and
        # embed every face again.
        logger.info("tracker reset: epoch %s after epoch %s", epoch, self.epoch)
        self.tracks = {}
        self.epoch = epoch
        self.last_seq = None
        return True

    def _associate(self, predicted: dict[int, Box], boxes: list[Box]) -> dict[int, int]:
        """Greedy: highest IoU first, then nearest centres among similar sizes. Returns detection -> track."""
        cfg = self.config
        pairs: dict[int, int] = {}
        used: set[int] = set()
        cands = [(iou(p, b), i, tid) for tid, p in predicted.items() for i, b in enumerate(boxes)]
        for score, i, tid in sorted(cands, key=lambda c: (-c[0], c[1], c[2])):
            if score < cfg.iou_match:
                break
            if i in pairs or tid in used:
                continue
            pairs[i] = tid
            used.add(tid)
        near = []
        for tid, p in predicted.items():
            if tid in used:
                continue
            for i, b in enumerate(boxes):
                if i in pairs:
                    continue
                ratio = b.w / p.w
                d = centre_distance(p, b) / max(p.w, b.w)
                if 0.5 <= ratio <= 2.0 and d <= cfg.centre_match:
                    near.append((d, i, tid))
        for _, i, tid in sorted(near):
            if i in pairs or tid in used:
                continue
            pairs[i] = tid
            used.add(tid)
        return pairs

    def _new_track(self, box: Box, seq: int) -> int:
        tid = self.next_id
        self.next_id += 1
        self.tracks[tid] = Track(tid, box, seq)
        return tid

    def _update_motion(self, track: Track, box: Box, seq: int) -> None:
        dt = max(1, seq - track.last_seq)
        a = self.config.velocity_alpha
        vx, vy = (box.cx - track.box.cx) / dt, (box.cy - track.box.cy) / dt
        if track.hits == 1:
            track.vx, track.vy = vx, vy
        else:
            track.vx, track.vy = a * vx + (1 - a) * track.vx, a * vy + (1 - a) * track.vy
        track.box, track.last_seq, track.hits = box, seq, track.hits + 1

    def _needs_embedding(self, track: Track, box: Box, seq: int, crowded: bool) -> tuple[bool, str]:
        cfg = self.config
        if track.embedding is None:
            return True, "new"
        since = seq - track.embedded_seq
        interval = cfg.reverify_every
        if track.embeddings <= 1:  # the first re-verification is staggered (see REVERIFY_PHASE_STEP)
            interval -= (track.track_id * REVERIFY_PHASE_STEP) % math.ceil(cfg.reverify_every / 2)
        if since >= interval:
            return True, "periodic"
        if track.embedded_area > 0 and box.area >= cfg.regrow_factor * track.embedded_area:
            return True, "grown"
        if crowded and since >= cfg.reverify_crowd_every:
            return True, "crowd"
        return False, "held"

    def _gap_fill(self, track: Track, pred: Box, missed: int, boxes: list[Box], frame_w: int,
                  frame_h: int) -> Optional[GapFill]:
        cfg = self.config
        others = boxes + [t.box for t in self.tracks.values() if t.track_id != track.track_id]
        # A track seen once has no velocity estimate: hold it, but as conservatively as at an edge.
        conservative = (track.hits < 2 or _near_edge(track.box, frame_w, frame_h, cfg.edge_margin)
                        or _near_edge(pred, frame_w, frame_h, cfg.edge_margin)
                        or _crowded(pred, others, cfg.crowd_distance))
        if conservative:
            scale = cfg.conservative_scale + cfg.gap_growth * missed
            box = track.box.union(pred).scaled(scale)
        else:
            scale = cfg.gap_scale + cfg.gap_growth * missed
            box = pred.scaled(scale)
        clipped = box.clipped(frame_w, frame_h)
        if clipped is None:
            return None  # the face has left the picture
        return GapFill(track.track_id, clipped, missed, scale, conservative)

    def _cap_tracks(self) -> None:
        over = len(self.tracks) - self.config.max_tracks
        if over > 0:
            for tid in sorted(self.tracks, key=lambda t: (self.tracks[t].last_seq, t))[:over]:
                del self.tracks[tid]


def _near_edge(box: Box, frame_w: int, frame_h: int, margin: float) -> bool:
    m = margin * max(box.w, box.h)
    return box.x < m or box.y < m or box.x + box.w > frame_w - m or box.y + box.h > frame_h - m


def _crowded(box: Box, others: Sequence[Box], factor: float) -> bool:
    for o in others:
        if centre_distance(box, o) <= factor * max(box.w, o.w) or iou(box, o) > 0:
            return True
    return False


@dataclass(frozen=True, eq=False)
class TrackedFace:
    """One face of a frame as the recognition stages see it; replaces the detector's ``Detection`` in
    ``FrameContext.detections`` (same ``x, y, w, h, score, landmarks`` attributes, so any stage that only
    needs a box keeps working).

    ``source`` is ``detected`` or ``gap_filled`` (a track the detector missed; box already enlarged by
    ``mask_scale``, no landmarks). EmbedFaces sets ``embedding`` (fresh or held from the track); EnrichRisk
    sets ``identity``/``risk``/``suspect``/``subject_ref`` and removes the embedding, so no template travels
    past it. ``risk`` is None unless ``identity == "matched"``.
    """

    x: float
    y: float
    w: float
    h: float
    score: float
    track_id: int
    landmarks: Optional[np.ndarray] = field(default=None, repr=False)
    source: str = DETECTED
    mask_scale: float = 1.0
    conservative: bool = False
    crowded: bool = False
    embedding: Optional[np.ndarray] = field(default=None, repr=False)
    embedding_fresh: bool = False
    embedded_seq: int = -1
    identity: str = "unknown"
    risk: Optional[int] = None
    suspect: bool = False
    subject_ref: Optional[str] = field(default=None, repr=False)
    match_score: float = -1.0

    @property
    def box(self) -> tuple[float, float, float, float]:
        return (self.x, self.y, self.w, self.h)

    def replace(self, **changes: Any) -> "TrackedFace":
        import dataclasses

        return dataclasses.replace(self, **changes)
