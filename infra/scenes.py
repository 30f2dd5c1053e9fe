"""Camera frames and clips with known ground truth, composed from real face photos (pure numpy + OpenCV).

A ``FaceSource`` is a real photo plus the box of its face. A face is pasted with its surrounding head and
shoulders (``context``), scaled so the face is the requested width, and blended into a blurred real
background with a feathered edge; the face box itself is copied unblended, so the returned ground-truth box
(x, y, w, h) is exactly where the face's pixels are. Placements are drawn so that no pasted region covers
another face, so no ground-truth face is occluded. Everything is deterministic for a given seed.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import cv2
import numpy as np

logger = logging.getLogger(__name__)

Box = tuple[int, int, int, int]  # x, y, w, h in pixels
DEFAULT_SIZE = (1280, 720)  # width, height
DEFAULT_CONTEXT = 0.5  # head/shoulder margin around the face, as a fraction of the face's size
MAX_TRIES = 300  # random positions tried per face
RESTARTS = 40  # whole layouts tried before giving up


class SceneError(ValueError):
    """A scene cannot be composed as asked (face outside the frame, no room for the faces, bad input)."""


@dataclass(frozen=True)
class FaceSource:
    """A real photo (BGR uint8) and the box of the one face in it that may be pasted."""

    image: np.ndarray
    face_box: Box
    label: str

    def __post_init__(self) -> None:
        if self.image.ndim != 3 or self.image.shape[2] != 3 or self.image.dtype != np.uint8:
            raise SceneError(f"{self.label}: image must be HxWx3 uint8, got {self.image.shape} {self.image.dtype}")
        x, y, w, h = self.face_box
        ih, iw = self.image.shape[:2]
        if w <= 0 or h <= 0 or x < 0 or y < 0 or x + w > iw or y + h > ih:
            raise SceneError(f"{self.label}: face box {self.face_box} is not inside the {iw}x{ih} image")


@dataclass(frozen=True)
class Placement:
    """Which source to paste, how wide its face should be, and where the face centre goes (frame pixels)."""

    source: int
    face_width: int
    center: tuple[float, float]


@dataclass(frozen=True)
class Track:
    """A face moving (and growing or shrinking) smoothly from one placement to another over a clip."""

    source: int
    start: tuple[float, float]
    end: tuple[float, float]
    start_width: int
    end_width: int

    def at(self, t: float) -> Placement:
        """The placement at clip time t in [0, 1], eased (smoothstep) so motion starts and stops gently."""
        e = t * t * (3.0 - 2.0 * t)
        cx = self.start[0] + (self.end[0] - self.start[0]) * e
        cy = self.start[1] + (self.end[1] - self.start[1]) * e
        width = round(self.start_width + (self.end_width - self.start_width) * e)
        return Placement(self.source, width, (cx, cy))


def _geometry(source: FaceSource, face_width: int, context: float) -> tuple[Box, tuple[int, int], Box]:
    """(crop in the photo, scaled patch size (w, h), face box in the scaled patch) for a face width."""
    x, y, w, h = source.face_box
    ih, iw = source.image.shape[:2]
    x0, x1 = max(0, round(x - context * w)), min(iw, round(x + w + context * w))
    y0, y1 = max(0, round(y - context * h)), min(ih, round(y + h + context * h))
    cw, ch = x1 - x0, y1 - y0
    scale = face_width / w
    new_w, new_h = max(1, round(cw * scale)), max(1, round(ch * scale))
    sx, sy = new_w / cw, new_h / ch
    bx0, by0 = round((x - x0) * sx), round((y - y0) * sy)
    bx1, by1 = max(bx0 + 1, round((x - x0 + w) * sx)), max(by0 + 1, round((y - y0 + h) * sy))
    return (x0, y0, cw, ch), (new_w, new_h), (bx0, by0, bx1 - bx0, by1 - by0)


def head_crop(source: FaceSource, context: float = DEFAULT_CONTEXT) -> tuple[np.ndarray, Box]:
    """The face with ``context`` x its size around it (clipped to the photo); returns (crop, face box in crop)."""
    (x0, y0, cw, ch), _, _ = _geometry(source, source.face_box[2], context)
    x, y, w, h = source.face_box
    return source.image[y0:y0 + ch, x0:x0 + cw], (x - x0, y - y0, w, h)


def _patch(source: FaceSource, face_width: int, context: float) -> tuple[np.ndarray, np.ndarray, Box]:
    """Scaled head crop, its blending weights (1 on the face, fading to 0 at the edge) and the face box in it."""
    (x0, y0, cw, ch), (new_w, new_h), (bx0, by0, bw, bh) = _geometry(source, face_width, context)
    crop = source.image[y0:y0 + ch, x0:x0 + cw]
    interp = cv2.INTER_AREA if new_w < cw else cv2.INTER_CUBIC  # AREA avoids aliasing on big reductions
    patch = cv2.resize(crop, (new_w, new_h), interpolation=interp)
    bx1, by1 = bx0 + bw, by0 + bh
    # Feather only the context margin: a linear ramp from the patch edge, full weight on the face itself.
    xs, ys = np.arange(new_w, dtype=np.float32), np.arange(new_h, dtype=np.float32)
    ramp_x = max(1.0, 0.8 * min(bx0, new_w - bx1))
    ramp_y = max(1.0, 0.8 * min(by0, new_h - by1))
    ax = np.clip((np.minimum(xs, new_w - 1 - xs) + 1.0) / ramp_x, 0.0, 1.0)
    ay = np.clip((np.minimum(ys, new_h - 1 - ys) + 1.0) / ramp_y, 0.0, 1.0)
    alpha = np.outer(ay, ax)
    alpha[by0:by1, bx0:bx1] = 1.0
    return patch, alpha, (bx0, by0, bw, bh)


def _layout(source: FaceSource, placement: Placement, context: float) -> tuple[Box, Box]:
    """(face box, pasted region) in frame pixels for a placement, exactly as compose_frame draws it."""
    _, (new_w, new_h), (bx, by, bw, bh) = _geometry(source, placement.face_width, context)
    cx, cy = placement.center
    fx, fy = round(cx - bw / 2), round(cy - bh / 2)
    return (fx, fy, bw, bh), (fx - bx, fy - by, new_w, new_h)


def fit_background(image: np.ndarray, size: tuple[int, int] = DEFAULT_SIZE, blur_sigma: float = 2.0) -> np.ndarray:
    """Scale a real photo to cover ``size`` (width, height), centre-crop it and blur it slightly (BGR uint8)."""
    width, height = size
    if width <= 0 or height <= 0:
        raise SceneError(f"frame size must be positive, got {size}")
    if image.ndim == 2:
        image = cv2.cvtColor(image, cv2.COLOR_GRAY2BGR)
    ih, iw = image.shape[:2]
    scale = max(width / iw, height / ih)
    resized = cv2.resize(image, (max(width, round(iw * scale)), max(height, round(ih * scale))),
                         interpolation=cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR)
    y0 = (resized.shape[0] - height) // 2
    x0 = (resized.shape[1] - width) // 2
    out = resized[y0:y0 + height, x0:x0 + width]
    if blur_sigma > 0:
        out = cv2.GaussianBlur(out, (0, 0), blur_sigma)
    return np.ascontiguousarray(out, dtype=np.uint8)


def compose_frame(sources: Sequence[FaceSource], placements: Sequence[Placement], background: np.ndarray,
                  size: tuple[int, int] = DEFAULT_SIZE, context: float = DEFAULT_CONTEXT,
                  blur_sigma: float = 2.0) -> tuple[np.ndarray, list[Box]]:
    """Paste each placement's face onto the background; returns (BGR frame, face boxes in placement order).

    Every face box must lie fully inside the frame (the head context may be cut by the border). Faces are
    pasted in order, so a later placement whose region covers an earlier face hides it: use
    ``random_placements`` / ``random_tracks`` for layouts that avoid that.
    """
    width, height = size
    if background.shape[:2] == (height, width) and blur_sigma == 0:
        frame = background.copy()
    else:
        frame = fit_background(background, size, blur_sigma)
    boxes: list[Box] = []
    for p in placements:
        if not 0 <= p.source < len(sources):
            raise SceneError(f"placement source {p.source} out of range (have {len(sources)} sources)")
        if p.face_width < 1:
            raise SceneError(f"face width must be >= 1 px, got {p.face_width}")
        src = sources[p.source]
        patch, alpha, _ = _patch(src, p.face_width, context)
        face, (ox, oy, _, _) = _layout(src, p, context)
        if not _inside(face, size):
            raise SceneError(f"face box {face} of {src.label} is not inside the {width}x{height} frame")
        # Paste the part of the patch that falls inside the frame.
        x0, y0 = max(0, ox), max(0, oy)
        x1, y1 = min(width, ox + patch.shape[1]), min(height, oy + patch.shape[0])
        pp = patch[y0 - oy:y1 - oy, x0 - ox:x1 - ox].astype(np.float32)
        aa = alpha[y0 - oy:y1 - oy, x0 - ox:x1 - ox, None]
        roi = frame[y0:y1, x0:x1].astype(np.float32)
        frame[y0:y1, x0:x1] = np.clip(aa * pp + (1.0 - aa) * roi + 0.5, 0, 255).astype(np.uint8)
        boxes.append(face)
    return frame, boxes


def _overlap(a: Box, b: Box) -> bool:
    return a[0] < b[0] + b[2] and b[0] < a[0] + a[2] and a[1] < b[1] + b[3] and b[1] < a[1] + a[3]


def _free(face: Box, region: Box, laid: Sequence[tuple[Box, Box]]) -> bool:
    """True when neither this pasted region nor any laid one would cover the other's face.

    Head contexts may overlap each other (a crowd); faces are never covered, whatever the paste order.
    """
    return not any(_overlap(region, f) or _overlap(r, face) for f, r in laid)


def _inside(box: Box, size: tuple[int, int]) -> bool:
    return box[0] >= 0 and box[1] >= 0 and box[0] + box[2] <= size[0] and box[1] + box[3] <= size[1]


def _draw_widths(rng: np.random.Generator, n: int, min_width: int, max_width: int) -> list[int]:
    if not 1 <= min_width <= max_width:
        raise SceneError(f"need 1 <= min_width <= max_width, got {min_width}, {max_width}")
    # Log-uniform: as many small faces as large ones, since small faces are where detectors fail.
    return [int(round(np.exp(rng.uniform(np.log(min_width), np.log(max_width))))) for _ in range(n)]


def _draw_center(rng: np.random.Generator, src: FaceSource, width: int, size: tuple[int, int]) -> tuple[float, float]:
    fh = src.face_box[3] * width / src.face_box[2]
    if width + 2 >= size[0] or fh + 2 >= size[1]:
        raise SceneError(f"a {width} px wide face of {src.label} does not fit in a {size} frame")
    return (float(rng.uniform(width / 2 + 1, size[0] - width / 2 - 1)),
            float(rng.uniform(fh / 2 + 1, size[1] - fh / 2 - 1)))


def random_placements(sources: Sequence[FaceSource], n_faces: int, size: tuple[int, int] = DEFAULT_SIZE,
                      min_width: int = 12, max_width: int = 300, seed: int = 0,
                      context: float = DEFAULT_CONTEXT) -> list[Placement]:
    """``n_faces`` placements, sources cycled in order, widths log-uniform, no face covered by another paste.

    Faces are placed largest first; when one finds no room the whole layout starts again (same widths).
    """
    if not sources:
        raise SceneError("need at least one face source")
    rng = np.random.default_rng(seed)
    widths = sorted(_draw_widths(rng, n_faces, min_width, max_width), reverse=True)
    for _ in range(RESTARTS):
        placed: list[Placement] = []
        laid: list[tuple[Box, Box]] = []
        for i, width in enumerate(widths):
            src_index = i % len(sources)
            src = sources[src_index]
            for _ in range(MAX_TRIES):
                p = Placement(src_index, width, _draw_center(rng, src, width, size))
                face, region = _layout(src, p, context)
                if _inside(face, size) and _free(face, region, laid):
                    placed.append(p)
                    laid.append((face, region))
                    break
            else:
                break  # no room for this face in this layout: start again
        if len(placed) == n_faces:
            return placed
    raise SceneError(f"no room for {n_faces} faces of {min_width}-{max_width} px in a {size} frame")


def random_tracks(sources: Sequence[FaceSource], n_faces: int, n_frames: int, size: tuple[int, int] = DEFAULT_SIZE,
                  min_width: int = 24, max_width: int = 200, max_travel: float = 0.4, seed: int = 0,
                  context: float = DEFAULT_CONTEXT) -> list[Track]:
    """Smooth face tracks that stay inside the frame, no face covered by another in any of the ``n_frames`` frames.

    Each face travels at most ``max_travel`` x the frame width and changes width by at most a factor 1.5.
    """
    if not sources:
        raise SceneError("need at least one face source")
    if n_frames < 1:
        raise SceneError(f"n_frames must be >= 1, got {n_frames}")
    rng = np.random.default_rng(seed)
    times = [i / max(1, n_frames - 1) for i in range(n_frames)]
    tracks: list[Track] = []
    for i in range(n_faces):
        src_index = i % len(sources)
        src = sources[src_index]
        for _ in range(MAX_TRIES):
            w0 = _draw_widths(rng, 1, min_width, max_width)[0]
            w1 = int(np.clip(round(w0 * rng.uniform(1 / 1.5, 1.5)), min_width, max_width))
            start = _draw_center(rng, src, w0, size)
            angle, dist = rng.uniform(0, 2 * np.pi), rng.uniform(0.1, 1.0) * max_travel * size[0]
            end = (start[0] + dist * np.cos(angle), start[1] + dist * np.sin(angle))
            track = Track(src_index, start, (float(end[0]), float(end[1])), w0, w1)
            if _track_fits(track, tracks, sources, times, size, context):
                tracks.append(track)
                break
        else:
            raise SceneError(f"no room for {n_faces} moving faces of {min_width}-{max_width} px in a {size} frame")
    return tracks


def _track_fits(track: Track, others: list[Track], sources: Sequence[FaceSource], times: list[float],
                size: tuple[int, int], context: float) -> bool:
    for t in times:
        face, region = _layout(sources[track.source], track.at(t), context)
        if not _inside(face, size):
            return False
        if not _free(face, region, [_layout(sources[o.source], o.at(t), context) for o in others]):
            return False
    return True


def make_clip(sources: Sequence[FaceSource], tracks: Sequence[Track], background: np.ndarray, n_frames: int,
              size: tuple[int, int] = DEFAULT_SIZE, noise_sigma: float = 2.0, seed: int = 0,
              context: float = DEFAULT_CONTEXT) -> tuple[list[np.ndarray], list[list[Box]]]:
    """Frames of faces moving along ``tracks`` over a still background with a little sensor noise.

    Returns (frames, boxes per frame); box j of frame i belongs to track j.
    """
    rng = np.random.default_rng(seed)
    base = fit_background(background, size)
    frames: list[np.ndarray] = []
    all_boxes: list[list[Box]] = []
    for i in range(n_frames):
        t = i / max(1, n_frames - 1)
        frame, boxes = compose_frame(sources, [tr.at(t) for tr in tracks], base, size, context, blur_sigma=0)
        if noise_sigma > 0:
            noise = rng.normal(0.0, noise_sigma, frame.shape).astype(np.float32)
            frame = np.clip(frame.astype(np.float32) + noise + 0.5, 0, 255).astype(np.uint8)
        frames.append(frame)
        all_boxes.append(boxes)
    return frames, all_boxes


def write_mp4(frames: Sequence[np.ndarray], path: Path | str, fps: float = 25.0) -> Path:
    """Write BGR frames of one size to an MPEG-4 ('mp4v') file and return its path."""
    if not frames:
        raise SceneError("no frames to write")
    height, width = frames[0].shape[:2]
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    writer = cv2.VideoWriter(str(out), cv2.VideoWriter_fourcc(*"mp4v"), fps, (width, height))
    if not writer.isOpened():
        raise SceneError(f"OpenCV cannot open an mp4v writer for {out}")
    try:
        for frame in frames:
            if frame.shape[:2] != (height, width):
                raise SceneError(f"frame size {frame.shape[:2]} differs from the first frame's {(height, width)}")
            writer.write(frame)
    finally:
        writer.release()
    return out
