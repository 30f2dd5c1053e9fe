"""Change-gated detection: planning rules on synthetic frames, and on a real-face CCTV clip with ground truth
no face is left unmasked and recall per size bin is no lower than full-frame detection on every frame."""

from __future__ import annotations

import numpy as np
import pytest

from pipelines.models.detection import Detection
from pipelines.tracking.change_gate import ChangeGate, GateConfig, Plan, changed_regions, gated_detect, merge_regions

W, H = 640, 360


def _frame(value: int = 100) -> np.ndarray:
    return np.full((H, W, 3), value, np.uint8)


def _det(x: float, y: float, w: float = 20, h: float = 24) -> Detection:
    return Detection(x, y, w, h, 0.9, np.zeros((5, 2), np.float32))


def test_first_frame_gap_and_refresh_are_full() -> None:
    gate = ChangeGate(GateConfig(refresh_every=3, slices=1, reset_every=3))
    plan, small = gate.plan(_frame(), seq=0)
    assert plan.full and plan.reason == "first"
    gate.update(plan, small, [], seq=0)
    plan, small = gate.plan(_frame(), seq=1)
    assert not plan.full and plan.regions == () and plan.reason == "still"
    gate.update(plan, small, [], seq=1)
    plan, small = gate.plan(_frame(), seq=2)
    gate.update(plan, small, [], seq=2)
    plan, small = gate.plan(_frame(), seq=3)  # every third frame is a full reset: 0, 3, 6 ...
    assert plan.full and plan.reason == "refresh"
    gate.update(plan, small, [], seq=3)
    plan, _ = gate.plan(_frame(), seq=7)  # frames 4-6 never arrived
    assert plan.full and plan.reason == "gap"


def test_changed_patch_gives_one_region_with_margin() -> None:
    gate = ChangeGate(GateConfig(margin=16, margin_fraction=0.0, min_region=8))
    plan, small = gate.plan(_frame(), seq=0)
    gate.update(plan, small, [], seq=0)
    img = _frame()
    img[100:140, 200:232] = 200
    plan, _ = gate.plan(img, seq=1)
    assert not plan.full and len(plan.regions) == 1
    x, y, w, h = plan.regions[0]
    assert x <= 200 - 16 and y <= 100 - 16 and x + w >= 232 + 16 and y + h >= 140 + 16
    assert w < 120 and h < 120  # the margin is added once, not to the whole frame


def test_slow_drift_accumulates_against_the_last_detection() -> None:
    # A patch brightening by 2 grey levels a frame never crosses a per-frame threshold of 8, but it must be
    # searched once its total change does: the reference is the last frame the detector saw there.
    gate = ChangeGate(GateConfig(threshold=8.0, refresh_every=1000, reset_every=1000))
    plan, small = gate.plan(_frame(), seq=0)
    gate.update(plan, small, [], seq=0)
    searched = []
    for i in range(1, 10):
        img = _frame()
        img[100:160, 300:360] = 100 + 2 * i
        plan, small = gate.plan(img, seq=i)
        searched.append(bool(plan.regions))
        gate.update(plan, small, [], seq=i)
    assert searched[:3] == [False, False, False] and any(searched), searched


def test_busy_frame_falls_back_to_full() -> None:
    gate = ChangeGate(GateConfig(max_changed_fraction=0.3))
    plan, small = gate.plan(_frame(), seq=0)
    gate.update(plan, small, [], seq=0)
    plan, _ = gate.plan(_frame(180), seq=1)
    assert plan.full and plan.reason == "busy"


def test_carried_boxes_stay_until_replaced_missed_or_refreshed() -> None:
    gate = ChangeGate(GateConfig(refresh_every=1000, reset_every=1000, max_misses=2))
    plan, small = gate.plan(_frame(), seq=0)
    out = gate.update(plan, small, [_det(100, 100), _det(400, 200)], seq=0)
    assert len(out) == 2
    # Frame 1: something changed near the first face and the detector found it slightly moved.
    moved = _det(104, 101)
    out = gate.update(Plan(False, ((60, 60, 120, 120),), "changed"), small, [moved], seq=1)
    assert {(d.x, d.y) for d in out} == {(104, 101), (400, 200)}
    # Frames 2-3: the region was searched and nothing found: the box is kept (fail closed) for max_misses searches.
    for seq in (2, 3):
        out = gate.update(Plan(False, ((60, 60, 120, 120),), "changed"), small, [], seq=seq)
        assert {(d.x, d.y) for d in out} == {(104, 101), (400, 200)}
    out = gate.update(Plan(False, ((60, 60, 120, 120),), "changed"), small, [], seq=4)
    assert {(d.x, d.y) for d in out} == {(400, 200)}  # the third empty search drops it; the still one stays
    out = gate.update(Plan(False, (), "still"), small, [], seq=5)
    assert {(d.x, d.y) for d in out} == {(400, 200)}  # never missed: a still face stays masked
    # A box missed once keeps ageing when its area goes still (the face left and the background settled).
    gate.update(Plan(False, (), "still"), small, [_det(700, 300)], seq=6)
    gate.update(Plan(False, ((650, 250, 120, 120),), "changed"), small, [], seq=7)
    out = gate.update(Plan(False, (), "still"), small, [], seq=8)
    assert (700, 300) in {(d.x, d.y) for d in out}
    out = gate.update(Plan(False, (), "still"), small, [], seq=9)
    assert (700, 300) not in {(d.x, d.y) for d in out}
    out = gate.update(Plan(True, (), "refresh"), small, [], seq=10)
    assert out == []


def test_merge_regions_unions_overlaps() -> None:
    merged = merge_regions([(0, 0, 50, 50), (40, 40, 50, 50), (300, 300, 10, 10)], W, H)
    assert sorted(merged) == [(0, 0, 90, 90), (300, 300, 10, 10)]


def test_changed_regions_empty_when_nothing_changed() -> None:
    assert changed_regions(np.zeros((45, 80), np.float32), GateConfig(), (W, H)) == []


def test_bad_config_is_refused() -> None:
    with pytest.raises(ValueError):
        GateConfig(refresh_every=0)
    with pytest.raises(ValueError):
        GateConfig(max_changed_fraction=0)
    with pytest.raises(ValueError):
        GateConfig(refresh_every=25, reset_every=10)


def _covered(gt: tuple[int, int, int, int], dets: list[Detection]) -> bool:
    x, y, w, h = gt
    for d in dets:
        ix = max(0.0, min(x + w, d.x + d.w) - max(x, d.x))
        iy = max(0.0, min(y + h, d.y + d.h) - max(y, d.y))
        if ix * iy >= 0.5 * w * h:
            return True
    return False


BINS = ((0, 16), (16, 24), (24, 40), (40, 1000))


def _recall_by_bin(clip, detections: list[list[Detection]]) -> tuple[dict, int]:
    hits: dict = {b: [0, 0] for b in BINS}
    missed = 0
    for gts, dets in zip(clip.boxes, detections):
        for g in gts:
            b = next(b for b in BINS if b[0] <= g[2] < b[1])
            ok = _covered(g, dets)
            hits[b][0] += ok
            hits[b][1] += 1
            missed += not ok
    return hits, missed


def test_gated_detection_masks_every_face_the_full_detector_masks(cctv_clip) -> None:
    from pipelines.models.detector import load_detector

    detector = load_detector("yunet", threads=1)
    full = [detector.detect(f) for f in cctv_clip.frames]
    gate = ChangeGate()
    gated, reasons = [], []
    for i, frame in enumerate(cctv_clip.frames):
        dets, plan = gated_detect(gate, detector.detect, frame, seq=i)
        gated.append(dets)
        reasons.append(plan.reason)
    full_hits, _ = _recall_by_bin(cctv_clip, full)
    gated_hits, gated_missed = _recall_by_bin(cctv_clip, gated)
    assert gated_missed == 0, gated_hits
    for b in BINS:
        assert gated_hits[b][0] >= full_hits[b][0], (b, gated_hits, full_hits)
    # The gate must actually save work: most frames are not full-frame detections.
    assert reasons.count("changed") + reasons.count("still") > len(reasons) // 2, reasons


@pytest.fixture(scope="module")
def cctv_clip():
    from infra.cctv_scene import default_cctv_clip

    clip = default_cctv_clip(n_frames=100)
    assert sum(len(b) for b in clip.boxes) > 150  # enough faces to mean something
    return clip


def test_phase_moves_the_first_refresh_earlier() -> None:
    reasons = {}
    for phase in (0, 3):
        gate = ChangeGate(GateConfig(refresh_every=5, reset_every=5), phase=phase)
        seen = []
        for i in range(11):
            plan, small = gate.plan(_frame(), seq=i)
            gate.update(plan, small, [], seq=i)
            seen.append(plan.full)
        reasons[phase] = [i for i, full in enumerate(seen) if full]
    assert reasons[0] == [0, 5, 10]
    assert reasons[3] == [0, 2, 7]


def test_sweep_covers_the_frame_once_per_period_and_never_two_parts_in_one_frame() -> None:
    cfg = GateConfig(refresh_every=10, slices=5, slice_overlap=16, reset_every=1000)
    gate = ChangeGate(cfg)
    plan, small = gate.plan(_frame(), seq=0)
    gate.update(plan, small, [], seq=0)
    bands, base = [], []
    for i in range(1, 21):
        plan, small = gate.plan(_frame(), seq=i)
        assert not (plan.base_full and plan.sweep is not None)
        if plan.sweep is not None:
            bands.append(plan.sweep)
        if plan.base_full:
            base.append(i)
        gate.update(plan, small, [], seq=i)
    assert base == [10, 20]
    assert len(bands) == 10 and bands[:5] == bands[5:]  # five bands a period
    rows = np.zeros(H, bool)
    for x, y, w, h in bands[:5]:
        assert (x, w) == (0, W)
        rows[y:y + h] = True
    assert rows.all()  # together they cover the frame
    assert all(b[1] + b[3] > c[1] + 8 for b, c in zip(bands[:4], bands[1:5]))  # neighbours overlap


def test_sweep_finds_a_face_the_changed_regions_never_showed() -> None:
    # A face that was there from a frame the detector missed it on stays still: only the sweep can find it.
    cfg = GateConfig(refresh_every=10, slices=5, reset_every=1000)
    gate = ChangeGate(cfg)
    calls = []

    def detector(img):  # misses the face on the first (full) frame, finds it in whatever it is shown next
        calls.append(img.shape[:2])
        return [] if len(calls) == 1 else [_det(10, 10)]

    found_at = None
    for i in range(12):
        dets, plan = gated_detect(gate, detector, _frame(), seq=i)
        if dets and found_at is None:
            found_at = (i, plan)
    assert found_at is not None and found_at[0] < 10 and found_at[1].sweep is not None
