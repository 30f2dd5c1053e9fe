"""Pure numpy detection pre/post-processing: blobs, YuNet/CenterFace decoding, NMS, tiling."""

from __future__ import annotations

import numpy as np
import pytest

from pipelines.models import detection as dp


def _lm() -> np.ndarray:
    return np.zeros((5, 2), np.float32)


def test_padded_size_and_blob_layout() -> None:
    assert dp.padded_size(720, 1280) == (736, 1280)
    assert dp.padded_size(1, 33) == (32, 64)
    img = np.zeros((30, 50, 3), np.uint8)
    img[..., 0], img[..., 2] = 10, 200  # B, R
    yb = dp.yunet_blob(img)
    assert yb.shape == (1, 3, 32, 64) and yb.dtype == np.float32
    assert yb[0, 0, 0, 0] == 10 and yb[0, 2, 0, 0] == 200  # BGR kept
    assert yb[0, :, 30:, :].max() == 0 and yb[0, :, :, 50:].max() == 0  # zero padding bottom/right
    cb = dp.centerface_blob(img)
    assert cb[0, 0, 0, 0] == 200 and cb[0, 2, 0, 0] == 10  # RGB
    with pytest.raises(ValueError):
        dp.yunet_blob(np.zeros((10, 10), np.uint8))


def test_nms_keeps_best_of_overlaps() -> None:
    boxes = np.array([[0, 0, 10, 10], [1, 1, 10, 10], [50, 50, 10, 10], [0, 0, 10, 10]], float)
    scores = np.array([0.9, 0.95, 0.5, 0.3])
    assert nms_list(boxes, scores) == [1, 2]
    assert nms_list(boxes, scores, 0.99) == [1, 0, 2]  # only the exact duplicate goes
    assert dp.nms(np.zeros((0, 4)), np.zeros(0)).size == 0


def nms_list(boxes: np.ndarray, scores: np.ndarray, thr: float = 0.3) -> list[int]:
    return dp.nms(boxes, scores, thr).tolist()


def _yunet_heads(h: int, w: int) -> dict[str, np.ndarray]:
    out = {}
    for s in dp.YUNET_STRIDES:
        n = (h // s) * (w // s)
        out[f"cls_{s}"] = np.zeros((1, n, 1), np.float32)
        out[f"obj_{s}"] = np.zeros((1, n, 1), np.float32)
        out[f"bbox_{s}"] = np.zeros((1, n, 4), np.float32)
        out[f"kps_{s}"] = np.zeros((1, n, 10), np.float32)
    return out


def test_decode_yunet_one_anchor() -> None:
    h, w = 64, 96
    heads = _yunet_heads(h, w)
    cols = w // 16
    idx = 2 * cols + 3  # row 2, col 3 on stride 16
    heads["cls_16"][0, idx, 0] = 0.81
    heads["obj_16"][0, idx, 0] = 1.0
    heads["bbox_16"][0, idx] = [0.5, 0.25, np.log(2.0), np.log(3.0)]
    heads["kps_16"][0, idx] = [0.1, 0.2] * 5
    dets = dp.decode_yunet(heads, (h, w), score_threshold=0.5)
    assert len(dets) == 1
    d = dets[0]
    cx, cy, bw, bh = (3 + 0.5) * 16, (2 + 0.25) * 16, 32.0, 48.0
    assert (d.x, d.y, d.w, d.h) == pytest.approx((cx - bw / 2, cy - bh / 2, bw, bh))
    assert d.score == pytest.approx(0.9)  # sqrt(cls * obj)
    assert d.landmarks.shape == (5, 2) and d.landmarks.dtype == np.float32
    assert d.landmarks[0] == pytest.approx([(3 + 0.1) * 16, (2 + 0.2) * 16])
    assert dp.decode_yunet(heads, (h, w), score_threshold=0.95) == []
    with pytest.raises(ValueError):
        dp.decode_yunet(heads, (h, w + 32), score_threshold=0.5)


def test_decode_centerface_one_peak() -> None:
    hh, ww = 8, 10
    heat = np.zeros((1, 1, hh, ww), np.float32)
    scale = np.zeros((1, 2, hh, ww), np.float32)
    off = np.zeros((1, 2, hh, ww), np.float32)
    lms = np.zeros((1, 10, hh, ww), np.float32)
    heat[0, 0, 3, 4] = 0.8
    scale[0, :, 3, 4] = [np.log(5.0), np.log(4.0)]  # height 20, width 16
    lms[0, 0, 3, 4], lms[0, 1, 3, 4] = 0.5, 0.25  # first point: y, x fractions
    dets = dp.decode_centerface(heat, scale, off, lms, score_threshold=0.5)
    assert len(dets) == 1
    d = dets[0]
    assert (d.x, d.y, d.w, d.h) == pytest.approx(((4 + 0.5) * 4 - 8, (3 + 0.5) * 4 - 10, 16, 20))
    assert d.landmarks[0] == pytest.approx([d.x + 0.25 * 16, d.y + 0.5 * 20])
    assert dp.decode_centerface(heat, scale, off, lms, score_threshold=0.9) == []


def test_tiles_cover_frame_with_overlap() -> None:
    tl = dp.tiles(1000, 3000, 1024, 256)
    cover = np.zeros((1000, 3000), bool)
    for x, y, w, h in tl:
        assert w <= 1024 and h <= 1024
        cover[y:y + h, x:x + w] = True
    assert cover.all()
    xs = sorted({t[0] for t in tl})
    assert all(b - a <= 1024 - 256 for a, b in zip(xs, xs[1:]))
    assert dp.tiles(100, 100, 1024, 256) == [(0, 0, 100, 100)]


def test_shift_clip_merge() -> None:
    a = dp.Detection(10, 10, 20, 20, 0.9, _lm() + 15)
    moved = a.shifted(100, 50, scale=2.0)
    assert (moved.x, moved.y, moved.w, moved.h) == (120, 70, 40, 40)
    assert moved.landmarks[0] == pytest.approx([130, 80])
    edge = dp.Detection(-5, -5, 20, 20, 0.8, _lm())
    dup = dp.Detection(11, 11, 20, 20, 0.7, _lm())
    gone = dp.Detection(500, 500, 10, 10, 0.9, _lm())
    merged = dp.merge([a, edge, dup, gone], 100, 100)
    assert [m.score for m in merged] == [0.9, 0.8]
    assert (merged[1].x, merged[1].y, merged[1].w) == (0, 0, 15)


def test_touches_inner_edge() -> None:
    tile = (100, 0, 200, 200)  # inner left edge at frame x=100, right edge at frame x=300 < width
    inside = dp.Detection(50, 50, 40, 40, 0.9, _lm())
    at_left = dp.Detection(5.0, 50, 40, 40, 0.9, _lm())
    at_top = dp.Detection(50, 0, 40, 40, 0.9, _lm())  # y = 0 is the frame's own top edge
    at_right = dp.Detection(170, 50, 30, 40, 0.9, _lm())
    assert not dp.touches_inner_edge(inside, tile, 400, 200)
    assert dp.touches_inner_edge(at_left, tile, 400, 200)
    assert not dp.touches_inner_edge(at_top, tile, 400, 200)
    assert dp.touches_inner_edge(at_right, tile, 400, 200)
    assert not dp.touches_inner_edge(at_right, (200, 0, 200, 200), 400, 200)  # frame's right edge


def test_tiny_pass_regions_grow_clip_and_dedupe() -> None:
    assert dp.tiny_pass_regions(None, 640, 360) == [(0, 0, 640, 360)]
    assert dp.tiny_pass_regions(None, 0, 360) == []
    got = dp.tiny_pass_regions([(100, 100, 50, 40), (100, 100, 50, 40), (600, 340, 100, 100), (900, 900, 5, 5)],
                               640, 360, margin=20)
    assert got == [(80, 80, 90, 80), (580, 320, 60, 40)]  # grown by 20, clipped, duplicate and outside dropped
    assert dp.tiny_pass_regions([], 640, 360) == []


def test_from_upscaled_maps_back_and_keeps_only_small_faces() -> None:
    small = dp.Detection(40, 20, 24, 30, 0.8, _lm() + 30)  # 12 px wide once mapped back from 2x
    large = dp.Detection(100, 100, 120, 140, 0.9, _lm())  # 60 px: the normal pass's job
    back = dp.from_upscaled([small, large], (10, 5, 200, 200), 2.0, max_width=48)
    assert len(back) == 1
    b = back[0]
    assert (b.x, b.y, b.w, b.h) == (30, 15, 12, 15)
    assert b.landmarks[0] == pytest.approx([25, 20])


def test_merge_passes_keeps_one_copy_of_a_face_seen_twice() -> None:
    normal = [dp.Detection(10, 10, 20, 20, 0.7, _lm())]
    tiny = [dp.Detection(11, 10, 19, 21, 0.9, _lm()), dp.Detection(200, 50, 10, 12, 0.65, _lm())]
    merged = dp.merge_passes(normal, tiny, 400, 200)
    assert [m.score for m in merged] == [0.9, 0.65]
    assert dp.merge_passes([], [], 400, 200) == []


def test_split_region_windows_cover_it_with_overlap() -> None:
    assert dp.split_region((10, 20, 300, 200), 512, 96) == [(10, 20, 300, 200)]
    wins = dp.split_region((100, 0, 1300, 600), 512, 96)
    assert all(w <= 512 and h <= 512 for _, _, w, h in wins)
    xs = sorted({x for x, _, _, _ in wins})
    assert xs[0] == 100 and max(x + w for x, _, w, _ in wins) == 1400
    assert all(b - a <= 512 - 96 for a, b in zip(xs, xs[1:]))
