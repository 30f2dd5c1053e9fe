"""Change-gated detection: run the face detector only where pixels can have changed (pure numpy + OpenCV).

CCTV frames are mostly still background. Per camera, a :class:`ChangeGate` keeps a reduced-scale grey
*reference* of what the detector last looked at, cell by cell. For each new frame it plans either a full-frame
detection (on the first frame, after a gap in sequence numbers, when too much changed, and every
``reset_every`` frames) or detection on the changed regions only, each grown by a margin, plus a *sweep* that
re-searches the still parts a little at a time: every ``refresh_every`` frames the detector's normal pass runs
on the whole frame (cheap; it finds all but the smallest faces) and, spread over the same period, its costly
tiny-face pass runs on one horizontal band of ``1 / slices`` of the frame every few frames. A sweep never costs
a frame more than a band, so no frame waits behind a whole-frame tiny-face pass (the p99 latency of a live
stream). After detection the gate merges the new boxes with the boxes carried over from earlier frames.

The privacy argument (tested in tests/pipelines/tracking/test_change_gate.py on clips with ground truth):

* a cell's reference is only replaced when the detector has just looked at that cell, so slow drift
  accumulates against the old reference until it crosses the threshold: a face cannot creep in below it;
* a face that appears (enters, turns, uncovers) changes its pixels against the reference, so its cells are
  in a changed region and the detector runs on it, with a margin so the whole face is in the crop;
* a box seen earlier is carried over (masked) while its area stays still; where its area changed and was
  searched and nothing was found, it is kept for ``max_misses`` more frames (the tracker's gap-fill length: a
  detector that misses a face for a frame or two does not unmask it), and replaced as soon as a new detection
  overlaps it. Carrying too long masks background (fail closed), never leaves a face bare.

The sweep bounds how long a face the region detector missed can stay unmasked (one sweep period), and a full
detection every ``reset_every`` frames resets everything, stale carried boxes included.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Callable, Sequence

import cv2
import numpy as np

from pipelines.models.detection import Detection, nms_detections

logger = logging.getLogger(__name__)

Region = tuple[int, int, int, int]  # x, y, w, h in frame pixels


@dataclass(frozen=True)
class GateConfig:
    """Thresholds of the change map. Defaults come from bench/change_gate_bench.py (docs/pipeline.md)."""

    scale: int = 8  # the change map is computed at 1/scale of the frame size
    threshold: float = 8.0  # mean absolute grey difference (0..255) of one map pixel that counts as change
    margin: int = 24  # frame pixels added around a changed region ...
    margin_fraction: float = 0.25  # ... or this fraction of the region's larger side, whichever is larger
    min_region: int = 64  # smallest crop side given to the detector (frame pixels)
    refresh_every: int = 50  # sweep period: the normal pass on the whole frame once, all bands once (4 s at 12.5/s)
    slices: int = 10  # bands the tiny-face pass sweeps the frame in, one per refresh_every / slices frames
    slice_overlap: int = 64  # rows shared by neighbouring bands (more than the tiny pass's largest face)
    reset_every: int = 250  # a full detection that also forgets every carried box
    max_changed_fraction: float = 0.35  # above this share of the frame in regions, detect the full frame
    max_misses: int = 5  # frames a carried box is kept after a search of its area first found nothing

    def __post_init__(self) -> None:
        if self.scale < 1 or self.refresh_every < 1 or self.min_region < 1 or self.slices < 1:
            raise ValueError("scale, refresh_every, slices and min_region must be >= 1")
        if self.reset_every < self.refresh_every or self.slice_overlap < 0:
            raise ValueError("reset_every must be >= refresh_every and slice_overlap >= 0")
        if not 0.0 < self.max_changed_fraction <= 1.0:
            raise ValueError("max_changed_fraction must be in (0, 1]")
        if self.threshold <= 0 or self.margin < 0 or self.margin_fraction < 0 or self.max_misses < 0:
            raise ValueError("threshold must be > 0, margins and max_misses >= 0")


@dataclass(frozen=True)
class Plan:
    """What to detect in one frame: the full frame, or ``regions`` (changed, empty when nothing changed) plus
    this frame's part of the sweep: the normal pass on the whole frame (``base_full``) or one band (``sweep``)."""

    full: bool
    regions: tuple[Region, ...] = ()
    reason: str = ""
    base_full: bool = False
    sweep: Region | None = None

    @property
    def searched(self) -> tuple[Region, ...]:
        """Every region the whole detector (both passes) looks at."""
        return self.regions + ((self.sweep,) if self.sweep is not None else ())


def small_grey(image_bgr: np.ndarray, scale: int) -> np.ndarray:
    """The frame in grey at 1/scale, as float32 (area-averaged, which also averages out sensor noise)."""
    h, w = image_bgr.shape[:2]
    grey = cv2.cvtColor(image_bgr, cv2.COLOR_BGR2GRAY) if image_bgr.ndim == 3 else image_bgr
    return cv2.resize(grey, (max(1, w // scale), max(1, h // scale)), interpolation=cv2.INTER_AREA).astype(np.float32)


def changed_regions(diff: np.ndarray, cfg: GateConfig, frame_size: tuple[int, int]) -> list[Region]:
    """Boxes (frame pixels, with margins, merged where they overlap) around map pixels whose diff > threshold."""
    mask = (diff > cfg.threshold).astype(np.uint8)
    if not mask.any():
        return []
    mask = cv2.dilate(mask, np.ones((3, 3), np.uint8))
    n, _, stats, _ = cv2.connectedComponentsWithStats(mask, connectivity=8)
    width, height = frame_size
    boxes = []
    for i in range(1, n):
        x, y, w, h = (int(v) * cfg.scale for v in stats[i, :4])
        grow = max(cfg.margin, int(cfg.margin_fraction * max(w, h)))
        boxes.append(_fit((x - grow, y - grow, w + 2 * grow, h + 2 * grow), cfg.min_region, width, height))
    return merge_regions(boxes, width, height, cfg.min_region)


def _fit(box: Region, min_side: int, width: int, height: int) -> Region:
    """Clip a box to the frame, growing it about its centre to at least ``min_side`` where the frame allows."""
    x, y, w, h = box
    if w < min_side:
        x, w = x - (min_side - w) // 2, min_side
    if h < min_side:
        y, h = y - (min_side - h) // 2, min_side
    x0, y0 = max(0, min(x, width - min(w, width))), max(0, min(y, height - min(h, height)))
    return (x0, y0, min(w, width - x0), min(h, height - y0))


def _overlap(a: Region, b: Region) -> bool:
    return a[0] < b[0] + b[2] and b[0] < a[0] + a[2] and a[1] < b[1] + b[3] and b[1] < a[1] + a[3]


def merge_regions(boxes: Sequence[Region], width: int, height: int, min_side: int = 1) -> list[Region]:
    """Union overlapping boxes into their bounding boxes until no two overlap (few boxes: quadratic is fine)."""
    out = list(boxes)
    merged = True
    while merged:
        merged = False
        for i in range(len(out)):
            for j in range(i + 1, len(out)):
                if _overlap(out[i], out[j]):
                    a, b = out[i], out[j]
                    x0, y0 = min(a[0], b[0]), min(a[1], b[1])
                    x1, y1 = max(a[0] + a[2], b[0] + b[2]), max(a[1] + a[3], b[1] + b[3])
                    out[i] = _fit((x0, y0, x1 - x0, y1 - y0), min_side, width, height)
                    del out[j]
                    merged = True
                    break
            if merged:
                break
    return out


def _det_inside(det: Detection, region: Region) -> bool:
    return (region[0] <= det.x and region[1] <= det.y and det.x + det.w <= region[0] + region[2]
            and det.y + det.h <= region[1] + region[3])


def sweep_band(index: int, slices: int, overlap: int, width: int, height: int) -> Region:
    """Band ``index`` of ``slices`` horizontal bands covering the frame, each grown by half the overlap."""
    y0 = max(0, index * height // slices - overlap // 2)
    y1 = min(height, (index + 1) * height // slices + overlap // 2)
    return (0, y0, width, y1 - y0)


def _det_overlaps(a: Detection, b: Detection) -> bool:
    return a.x < b.x + b.w and b.x < a.x + a.w and a.y < b.y + b.h and b.y < a.y + a.h


@dataclass
class ChangeGate:
    """Per-camera state of change-gated detection (not thread-safe; one gate per camera)."""

    cfg: GateConfig = field(default_factory=GateConfig)
    phase: int = 0  # frames the first refresh comes early by: cameras given different phases refresh apart
    _ref: np.ndarray | None = None
    _since_refresh: int = 0
    _last_seq: int | None = None
    _carried: list[tuple[Detection, int]] = field(default_factory=list)  # (box, searches that missed it)

    def reset(self) -> None:
        """Forget everything: the next frame is detected in full."""
        self._ref, self._since_refresh, self._last_seq, self._carried = None, 0, None, []

    def plan(self, image_bgr: np.ndarray, seq: int | None = None) -> tuple[Plan, np.ndarray]:
        """Decide what to detect in this frame; returns (plan, the frame's small grey map for :meth:`update`)."""
        small = small_grey(image_bgr, self.cfg.scale)
        h, w = image_bgr.shape[:2]
        if self._ref is None or self._ref.shape != small.shape:
            return Plan(True, reason="first"), small
        if seq is not None and self._last_seq is not None and seq != self._last_seq + 1:
            return Plan(True, reason="gap"), small
        if self._since_refresh + 1 >= self.cfg.reset_every:
            return Plan(True, reason="refresh"), small
        regions = changed_regions(np.abs(small - self._ref), self.cfg, (w, h))
        if sum(r[2] * r[3] for r in regions) > self.cfg.max_changed_fraction * w * h:
            return Plan(True, reason="busy"), small
        n = self._since_refresh + 1  # this frame's number since the last full detection
        period, slices = self.cfg.refresh_every, min(self.cfg.slices, self.cfg.refresh_every)
        step = period // slices
        base_full = n % period == 0
        sweep = None
        if not base_full and (n % period) % step == step // 2 and (n % period) // step < slices:
            sweep = sweep_band((n % period) // step, slices, self.cfg.slice_overlap, w, h)
        return Plan(False, tuple(regions), "changed" if regions else "still", base_full, sweep), small

    def update(self, plan: Plan, small: np.ndarray, found: Sequence[Detection], seq: int | None = None) -> list[Detection]:
        """Record what the detector found for ``plan``; returns every box to treat as a face in this frame."""
        self._last_seq = seq
        if plan.full:
            since = self.phase % self.cfg.reset_every if plan.reason == "first" else 0
            self._ref, self._since_refresh, self._carried = small.copy(), since, [(d, 0) for d in found]
            return list(found)
        self._since_refresh += 1
        s = self.cfg.scale
        for x, y, w, h in plan.searched:  # the detector has seen these cells now
            self._ref[y // s:-(-(y + h) // s), x // s:-(-(x + w) // s)] = \
                small[y // s:-(-(y + h) // s), x // s:-(-(x + w) // s)]
        kept = []
        for d, misses in self._carried:
            if any(_det_overlaps(d, f) for f in found):
                continue  # re-found (or the face moved): the new box replaces it
            if misses or any(_det_inside(d, r) for r in plan.searched):
                misses += 1  # searched whole and not found: from then on it ages every frame
            if misses <= self.cfg.max_misses:
                kept.append((d, misses))
        self._carried = kept + [(f, 0) for f in found]
        return [d for d, _ in self._carried]


def detect_regions(detect: Callable[[np.ndarray], list[Detection]], image_bgr: np.ndarray,
                   regions: Sequence[Region]) -> list[Detection]:
    """Run ``detect`` on each region's crop and map its boxes back to frame coordinates."""
    out: list[Detection] = []
    for x, y, w, h in regions:
        crop = np.ascontiguousarray(image_bgr[y:y + h, x:x + w])
        out.extend(d.shifted(float(x), float(y)) for d in detect(crop))
    return out


def gated_detect(gate: ChangeGate, detect: Callable[[np.ndarray], list[Detection]], image_bgr: np.ndarray,
                 seq: int | None = None, base_detect: Callable[[np.ndarray], list[Detection]] | None = None
                 ) -> tuple[list[Detection], Plan]:
    """One frame through the gate: plan, detect what the plan says, merge with carried boxes.

    ``detect`` is the whole detector; ``base_detect`` its normal pass alone (the sweep's whole-frame pass; the
    whole detector when None)."""
    plan, small = gate.plan(image_bgr, seq)
    if plan.full:
        found = detect(image_bgr)
    else:
        found = detect_regions(detect, image_bgr, plan.searched)
        if plan.base_full:
            found += (base_detect or detect)(image_bgr)
        if plan.sweep is not None or plan.base_full:
            found = nms_detections(found)  # the sweep overlaps changed regions: one box per face
    return gate.update(plan, small, found, seq), plan
