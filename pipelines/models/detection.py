"""Face detection pre/post-processing in pure numpy (no model runtime): YuNet and CenterFace decoders,
non-maximum suppression, tiling of large frames, and the geometry of the tiny-face pass (regions to look at
again upscaled, which of its detections to keep, how to merge them with the normal pass).

Coordinates are pixels of the original image; boxes are (x, y, w, h) with (x, y) the top-left corner.
Landmarks are 5 points (x, y) in the order right eye, left eye, nose tip, right mouth corner, left mouth corner
(the subject's right eye appears on the image left).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterable, Sequence

import numpy as np

YUNET_STRIDES = (8, 16, 32)
YUNET_DIVISOR = 32
CENTERFACE_DIVISOR = 32


@dataclass(frozen=True)
class Detection:
    """One detected face in image pixel coordinates."""

    x: float
    y: float
    w: float
    h: float
    score: float
    landmarks: np.ndarray = field(compare=False, repr=False)  # (5, 2) float32

    @property
    def box(self) -> tuple[float, float, float, float]:
        return (self.x, self.y, self.w, self.h)

    def shifted(self, dx: float, dy: float, scale: float = 1.0) -> "Detection":
        """This detection scaled by ``scale`` then moved by (dx, dy) (tile/resize back to frame coordinates)."""
        lm = (np.asarray(self.landmarks, np.float32) * scale + np.array([dx, dy], np.float32)).astype(np.float32)
        return Detection(self.x * scale + dx, self.y * scale + dy, self.w * scale, self.h * scale,
                         self.score, lm)

    def clipped(self, width: int, height: int) -> "Detection":
        """Box clipped to the frame; landmarks kept as they are."""
        x0, y0 = max(0.0, self.x), max(0.0, self.y)
        x1, y1 = min(float(width), self.x + self.w), min(float(height), self.y + self.h)
        return Detection(x0, y0, max(0.0, x1 - x0), max(0.0, y1 - y0), self.score, self.landmarks)


def padded_size(height: int, width: int, divisor: int = YUNET_DIVISOR) -> tuple[int, int]:
    """Smallest (H, W) >= the input that are multiples of ``divisor``."""
    return (-(-height // divisor) * divisor, -(-width // divisor) * divisor)


def to_blob(image_bgr: np.ndarray, divisor: int, swap_rb: bool) -> np.ndarray:
    """1x3xHxW float32 blob, zero-padded bottom/right to multiples of ``divisor``, pixel values 0..255."""
    if image_bgr.ndim != 3 or image_bgr.shape[2] != 3:
        raise ValueError(f"expected an HxWx3 BGR image, got shape {image_bgr.shape}")
    h, w = image_bgr.shape[:2]
    ph, pw = padded_size(h, w, divisor)
    blob = np.empty((1, 3, ph, pw), np.float32)
    blob[0, :, h:, :] = 0  # zero only the padding strips
    blob[0, :, :h, w:] = 0
    # per-channel copies of contiguous planes: ~30 % faster than one strided HWC->CHW transpose
    planes = [np.ascontiguousarray(image_bgr[:, :, c]) for c in range(3)]
    for c, plane in enumerate(planes[::-1] if swap_rb else planes):
        blob[0, c, :h, :w] = plane
    return blob


def yunet_blob(image_bgr: np.ndarray) -> np.ndarray:
    """YuNet input: BGR, 0..255, no mean, padded to multiples of 32 (as OpenCV's FaceDetectorYN)."""
    return to_blob(image_bgr, YUNET_DIVISOR, swap_rb=False)


def centerface_blob(image_bgr: np.ndarray) -> np.ndarray:
    """CenterFace input: RGB, 0..255, no mean, padded to multiples of 32."""
    return to_blob(image_bgr, CENTERFACE_DIVISOR, swap_rb=True)


def nms(boxes: np.ndarray, scores: np.ndarray, iou_threshold: float = 0.3) -> np.ndarray:
    """Greedy non-maximum suppression on (N, 4) xywh boxes; returns kept indices, best score first."""
    if len(boxes) == 0:
        return np.zeros((0,), np.int64)
    b = np.asarray(boxes, np.float64)
    x0, y0 = b[:, 0], b[:, 1]
    x1, y1 = x0 + b[:, 2], y0 + b[:, 3]
    area = np.maximum(b[:, 2], 0) * np.maximum(b[:, 3], 0)
    order = np.argsort(-np.asarray(scores, np.float64), kind="stable")
    keep: list[int] = []
    while order.size:
        i = int(order[0])
        keep.append(i)
        rest = order[1:]
        iw = np.maximum(0.0, np.minimum(x1[i], x1[rest]) - np.maximum(x0[i], x0[rest]))
        ih = np.maximum(0.0, np.minimum(y1[i], y1[rest]) - np.maximum(y0[i], y0[rest]))
        inter = iw * ih
        union = area[i] + area[rest] - inter
        iou = np.where(union > 0, inter / np.maximum(union, 1e-12), 0.0)
        order = rest[iou <= iou_threshold]
    return np.asarray(keep, np.int64)


def nms_detections(dets: Sequence[Detection], iou_threshold: float = 0.3) -> list[Detection]:
    if not dets:
        return []
    boxes = np.array([d.box for d in dets], np.float64)
    scores = np.array([d.score for d in dets], np.float64)
    return [dets[i] for i in nms(boxes, scores, iou_threshold)]


def decode_yunet(outputs: dict[str, np.ndarray], blob_hw: tuple[int, int], score_threshold: float,
                 nms_threshold: float = 0.3, top_k: int = 5000) -> list[Detection]:
    """Decode YuNet 2023mar heads (cls_/obj_/bbox_/kps_ per stride 8/16/32), as OpenCV's FaceDetectorYN."""
    ph, pw = blob_hw
    all_boxes, all_scores, all_lms = [], [], []
    for stride in YUNET_STRIDES:
        rows, cols = ph // stride, pw // stride
        cls = np.clip(outputs[f"cls_{stride}"].reshape(-1), 0.0, 1.0)
        obj = np.clip(outputs[f"obj_{stride}"].reshape(-1), 0.0, 1.0)
        if cls.size != rows * cols:
            raise ValueError(f"YuNet stride {stride}: {cls.size} anchors for a {ph}x{pw} blob")
        score = np.sqrt(cls * obj)
        idx = np.nonzero(score >= score_threshold)[0]
        if idx.size == 0:
            continue
        bbox = outputs[f"bbox_{stride}"].reshape(-1, 4)[idx]
        kps = outputs[f"kps_{stride}"].reshape(-1, 10)[idx]
        r = (idx // cols).astype(np.float32)
        c = (idx % cols).astype(np.float32)
        cx = (c + bbox[:, 0]) * stride
        cy = (r + bbox[:, 1]) * stride
        w = np.exp(bbox[:, 2]) * stride
        h = np.exp(bbox[:, 3]) * stride
        all_boxes.append(np.stack([cx - w / 2, cy - h / 2, w, h], axis=1))
        all_scores.append(score[idx])
        lx = (kps[:, 0::2] + c[:, None]) * stride
        ly = (kps[:, 1::2] + r[:, None]) * stride
        all_lms.append(np.stack([lx, ly], axis=2))
    return _finish(all_boxes, all_scores, all_lms, nms_threshold, top_k)


def decode_centerface(heatmap: np.ndarray, scale: np.ndarray, offset: np.ndarray, landmarks: np.ndarray,
                      score_threshold: float, nms_threshold: float = 0.3, top_k: int = 5000) -> list[Detection]:
    """Decode CenterFace heads (stride 4): heatmap (1,1,h,w), scale (1,2,h,w), offset (1,2,h,w), lms (1,10,h,w)."""
    hm = heatmap[0, 0]
    c0, c1 = np.nonzero(hm > score_threshold)
    if c0.size == 0:
        return []
    s0 = np.exp(scale[0, 0, c0, c1]) * 4  # height
    s1 = np.exp(scale[0, 1, c0, c1]) * 4  # width
    o0, o1 = offset[0, 0, c0, c1], offset[0, 1, c0, c1]
    x0 = (c1 + o1 + 0.5) * 4 - s1 / 2
    y0 = (c0 + o0 + 0.5) * 4 - s0 / 2
    boxes = np.stack([x0, y0, s1, s0], axis=1)
    lm = landmarks[0][:, c0, c1]  # (10, N): y, x interleaved per point
    lx = lm[1::2].T * s1[:, None] + x0[:, None]
    ly = lm[0::2].T * s0[:, None] + y0[:, None]
    return _finish([boxes], [hm[c0, c1]], [np.stack([lx, ly], axis=2)], nms_threshold, top_k)


def _finish(boxes: list[np.ndarray], scores: list[np.ndarray], lms: list[np.ndarray],
            nms_threshold: float, top_k: int) -> list[Detection]:
    if not boxes:
        return []
    b = np.concatenate(boxes)
    s = np.concatenate(scores)
    lm = np.concatenate(lms).astype(np.float32)
    keep = nms(b, s, nms_threshold)[:top_k]
    return [Detection(float(b[i, 0]), float(b[i, 1]), float(b[i, 2]), float(b[i, 3]), float(s[i]),
                      lm[i].copy()) for i in keep]


def tile_origins(length: int, tile: int, overlap: int) -> list[int]:
    """Start offsets of tiles of size ``tile`` covering [0, length) with at least ``overlap`` shared pixels."""
    if length <= tile:
        return [0]
    step = max(1, tile - overlap)
    starts = list(range(0, length - tile, step))
    starts.append(length - tile)
    return sorted(set(starts))


def tiles(height: int, width: int, tile: int, overlap: int) -> list[tuple[int, int, int, int]]:
    """(x, y, w, h) windows covering the frame."""
    return [(x, y, min(tile, width - x), min(tile, height - y))
            for y in tile_origins(height, tile, overlap) for x in tile_origins(width, tile, overlap)]


def touches_inner_edge(det: Detection, tile: tuple[int, int, int, int], width: int, height: int,
                       margin: float = 8.0) -> bool:
    """True when a detection (tile coordinates) reaches a tile edge that is not also a frame edge."""
    x, y, tw, th = tile
    return ((x > 0 and det.x <= margin) or (y > 0 and det.y <= margin)
            or (x + tw < width and det.x + det.w >= tw - margin)
            or (y + th < height and det.y + det.h >= th - margin))


def merge(dets: Iterable[Detection], width: int, height: int, iou_threshold: float = 0.3) -> list[Detection]:
    """Clip to the frame, drop empty boxes, suppress duplicates (e.g. from overlapping tiles)."""
    clipped = [d.clipped(width, height) for d in dets]
    return nms_detections([d for d in clipped if d.w >= 1 and d.h >= 1], iou_threshold)


# Tiny-face pass: look again at an upscaled copy so 8-16 px faces reach the detector's smallest anchors.
# Chosen by measurement (docs/tiny-faces.md): YuNet at 2x finds faces down to ~8 px at ~4-5x the cost of one
# pass; CenterFace at 2x finds the same faces at ~10x YuNet's 2x cost.
TINY_FACE_FACTOR = 2.0
# Keep only what the upscaled pass finds up to this width (original pixels): larger faces are the normal
# pass's job (it finds them all on the development set), and a region needs this margin to hold a tiny face.
TINY_FACE_MAX_WIDTH = 48.0

Region = tuple[int, int, int, int]  # x, y, w, h in image pixels


def tiny_pass_regions(regions: Sequence[Region] | None, width: int, height: int,
                      margin: float = TINY_FACE_MAX_WIDTH) -> list[Region]:
    """Where the tiny-face pass looks: the whole image (``regions`` None), else each region grown by ``margin``
    on every side (a tiny face that straddles a region edge is then whole inside it), clipped to the image;
    empty regions are dropped and duplicates removed, order kept."""
    if regions is None:
        return [(0, 0, int(width), int(height))] if width > 0 and height > 0 else []
    out: list[Region] = []
    m = max(0.0, float(margin))
    for x, y, w, h in regions:
        x0, y0 = max(0, int(np.floor(x - m))), max(0, int(np.floor(y - m)))
        x1, y1 = min(int(width), int(np.ceil(x + w + m))), min(int(height), int(np.ceil(y + h + m)))
        if x1 > x0 and y1 > y0 and (x0, y0, x1 - x0, y1 - y0) not in out:
            out.append((x0, y0, x1 - x0, y1 - y0))
    return out


def split_region(region: Region, tile: int, overlap: int) -> list[Region]:
    """``region`` as overlapping windows of at most ``tile`` px a side (itself when it fits), image pixels."""
    x, y, w, h = region
    return [(x + tx, y + ty, tw, th) for tx, ty, tw, th in tiles(h, w, max(1, tile), overlap)]


def from_upscaled(dets: Iterable[Detection], region: Region, factor: float,
                  max_width: float = TINY_FACE_MAX_WIDTH) -> list[Detection]:
    """Detections made on ``region`` upscaled by ``factor``, back in image pixels; only faces up to
    ``max_width`` image pixels wide are kept (the normal pass owns larger ones)."""
    x, y = region[0], region[1]
    back = [d.shifted(float(x), float(y), 1.0 / float(factor)) for d in dets]
    return [d for d in back if d.w <= max_width]


def merge_passes(normal: Sequence[Detection], tiny: Sequence[Detection], width: int, height: int,
                 iou_threshold: float = 0.3) -> list[Detection]:
    """One list from the normal and the tiny-face pass: a face both found is kept once (best score)."""
    return merge(list(normal) + list(tiny), width, height, iou_threshold)
