"""A CCTV-like clip with ground truth: a still background, people entering, walking, standing still and leaving.

Built from real faces (infra.sample_data) with infra.scenes' compositing. The frame is split into horizontal
lanes; each lane hosts people one after another (never two at once), so no face ever covers another. A person
appears at an entry point, walks to a spot, stands still there, walks on to an exit point and disappears. The
camera adds sensor noise and a slow brightness drift, as real ones do. Deterministic for a seed.

Used by bench/pipeline_bench.py (``--scene cctv``) and tests/pipelines/tracking/test_change_gate.py.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Sequence

import numpy as np

from infra import sample_data, scenes

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Walker:
    """One person's visit: present in frames [enter, leave), standing still in [stand_from, stand_to)."""

    source: int
    width: int
    lane_y: float
    enter: int
    stand_from: int
    stand_to: int
    leave: int
    x_in: float
    x_stand: float
    x_out: float

    def placement(self, i: int) -> scenes.Placement | None:
        """Where this person's face is in frame ``i``, or None when absent."""
        if not self.enter <= i < self.leave:
            return None
        if i < self.stand_from:
            t = (i - self.enter) / max(1, self.stand_from - self.enter)
            x = self.x_in + (self.x_stand - self.x_in) * t
        elif i < self.stand_to:
            x = self.x_stand
        else:
            t = (i - self.stand_to) / max(1, self.leave - 1 - self.stand_to)
            x = self.x_stand + (self.x_out - self.x_stand) * t
        moving = not self.stand_from <= i < self.stand_to
        bob = 1.5 * np.sin(i * 0.7) if moving else 0.0  # a walking head bobs a little
        return scenes.Placement(self.source, self.width, (float(x), float(self.lane_y + bob)))


@dataclass(frozen=True)
class CctvClip:
    frames: list[np.ndarray]
    boxes: list[list[tuple[int, int, int, int]]]  # ground-truth face boxes per frame
    walkers: list[Walker]


def plan_walkers(n_sources: int, n_frames: int, size: tuple[int, int] = scenes.DEFAULT_SIZE, lanes: int = 4,
                 min_width: int = 14, max_width: int = 72, seed: int = 0) -> list[Walker]:
    """Visits for every lane until the clip ends; widths log-uniform in [min_width, max_width]."""
    rng = np.random.default_rng(seed)
    width, height = size
    lane_h = height / lanes
    walkers: list[Walker] = []
    for lane in range(lanes):
        t = int(rng.integers(0, max(1, n_frames // 6)))  # lanes start at different times
        while t < n_frames - 10:
            w = int(round(np.exp(rng.uniform(np.log(min_width), np.log(max_width)))))
            w = min(w, int(lane_h / (1.25 * (1 + 2 * scenes.DEFAULT_CONTEXT))))  # head region fits the lane
            walk_in, stand, walk_out = (int(rng.integers(a, b)) for a, b in ((15, 40), (10, 60), (15, 40)))
            margin = w / 2 + 2
            left_to_right = bool(rng.integers(0, 2))
            ends = (margin, width - margin) if left_to_right else (width - margin, margin)
            x_stand = float(rng.uniform(0.25 * width, 0.75 * width))
            walkers.append(Walker(int(rng.integers(0, n_sources)), w, (lane + 0.5) * lane_h, t, t + walk_in,
                                  t + walk_in + stand, t + walk_in + stand + walk_out, ends[0], x_stand, ends[1]))
            t += walk_in + stand + walk_out + int(rng.integers(5, 40))  # the lane stays empty for a while
    return walkers


def make_cctv_clip(sources: Sequence[scenes.FaceSource], background: np.ndarray, n_frames: int,
                   size: tuple[int, int] = scenes.DEFAULT_SIZE, seed: int = 0, noise_sigma: float = 2.0,
                   drift: float = 3.0, lanes: int = 4, min_width: int = 14, max_width: int = 72) -> CctvClip:
    """The clip's frames (BGR uint8) and ground-truth boxes; ``drift`` is the brightness swing in grey levels."""
    walkers = plan_walkers(len(sources), n_frames, size, lanes, min_width, max_width, seed)
    rng = np.random.default_rng(seed + 1)
    base = scenes.fit_background(background, size)
    frames, all_boxes = [], []
    for i in range(n_frames):
        placements = [p for p in (wk.placement(i) for wk in walkers) if p is not None]
        frame, boxes = scenes.compose_frame(sources, placements, base, size, blur_sigma=0)
        offset = drift * np.sin(2 * np.pi * i / max(1, n_frames))
        noise = rng.normal(offset, noise_sigma, frame.shape).astype(np.float32) if noise_sigma > 0 else offset
        frames.append(np.clip(frame.astype(np.float32) + noise + 0.5, 0, 255).astype(np.uint8))
        all_boxes.append(boxes)
    return CctvClip(frames, all_boxes, walkers)


def default_cctv_clip(n_frames: int = 150, seed: int = 11) -> CctvClip:
    """The bench's clip: every real face source the project fetches, over the 'coffee' background."""
    return make_cctv_clip(sample_data.face_sources(), sample_data.background("coffee"), n_frames, seed=seed)
