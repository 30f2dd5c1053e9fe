"""Per-camera tracker: association, embedding schedule, gap filling (held/extrapolated/conservative), resets."""

from __future__ import annotations

import pytest
from hypothesis import given, settings, strategies as st

from pipelines.tracking.tracks import Box, FaceTracker, TrackerConfig, TrackingError, iou


def _contains(outer: Box, inner: Box, tol: float = 1e-6) -> bool:
    return (outer.x <= inner.x + tol and outer.y <= inner.y + tol
            and outer.x + outer.w >= inner.x + inner.w - tol and outer.y + outer.h >= inner.y + inner.h - tol)


def test_moving_face_keeps_its_track_and_is_embedded_once_then_periodically() -> None:
    cfg = TrackerConfig(reverify_every=10)
    tr = FaceTracker(cfg)
    embeds, ids = [], set()
    for seq in range(25):
        box = Box(100 + 4 * seq, 200, 80, 90)
        res = tr.step(0, seq, 1280, 720, [box])
        (a,) = res.assignments
        ids.add(a.track_id)
        if a.embed:
            embeds.append((seq, a.reason))
            tr.record_embedding(a.track_id, seq, [1.0] * 128, box.area)
        assert not res.gap_fills
    assert len(ids) == 1
    # Track 1's first re-verification is staggered by (1 * 7) % 5 = 2 frames, then every 10 frames.
    assert embeds == [(0, "new"), (8, "periodic"), (18, "periodic")]
    emb, at = tr.held_embedding(ids.pop())
    assert emb is not None and at == 18


def test_faces_that_appear_together_are_reverified_on_different_frames() -> None:
    cfg = TrackerConfig(reverify_every=25)
    tr = FaceTracker(cfg)
    boxes = [Box(60 + 120 * i, 300, 70, 80) for i in range(10)]  # ten faces, far apart, all from frame 0
    per_frame, last = [], {}
    for seq in range(100):
        res = tr.step(0, seq, 1280, 720, boxes)
        n = 0
        for a in res.assignments:
            if a.embed:
                assert seq - last.get(a.track_id, seq) <= cfg.reverify_every  # never later than the interval
                last[a.track_id] = seq
                tr.record_embedding(a.track_id, seq, [1.0] * 128, boxes[a.index].area)
                n += 1
        per_frame.append(n)
    assert per_frame[0] == 10
    assert max(per_frame[1:]) <= 2  # spread out, not ten at once every 25 frames
    assert sum(per_frame[25:75]) == 20  # steady state: still one re-verification per track per interval


def test_missed_frames_are_gap_filled_with_extrapolated_enlarged_box() -> None:
    tr = FaceTracker(TrackerConfig(max_gap=3))
    for seq in range(5):
        tr.step(0, seq, 1280, 720, [Box(300 + 10 * seq, 300, 80, 80)])
    for seq in range(5, 8):  # missed for 1..3 frames: the face keeps moving at 10 px/frame
        res = tr.step(0, seq, 1280, 720, [])
        (g,) = res.gap_fills
        truth = Box(300 + 10 * seq, 300, 80, 80)
        assert g.missed == seq - 4 and not g.conservative
        assert _contains(g.box, truth)
        assert g.box.w > 80 and g.scale >= 1.25
    assert tr.step(0, 8, 1280, 720, []).gap_fills == ()  # beyond K: the track is gone


def test_track_resumes_after_gap_without_reembedding() -> None:
    tr = FaceTracker(TrackerConfig(max_gap=3, reverify_every=100))
    first = tr.step(0, 0, 640, 480, [Box(200, 200, 60, 60)]).assignments[0]
    tr.record_embedding(first.track_id, 0, [0.5] * 128, 3600)
    tr.step(0, 1, 640, 480, [])
    tr.step(0, 2, 640, 480, [])
    again = tr.step(0, 3, 640, 480, [Box(202, 200, 60, 60)]).assignments[0]
    assert again.track_id == first.track_id and not again.embed and again.reason == "held"


def test_lost_near_edge_is_masked_conservatively() -> None:
    tr = FaceTracker()
    for seq in range(3):
        tr.step(0, seq, 640, 480, [Box(600 - 2 * seq, 200, 36, 40)])  # touching the right border
    (g,) = tr.step(0, 3, 640, 480, []).gap_fills
    assert g.conservative and g.scale >= 1.6
    last = Box(596, 200, 36, 40)
    assert _contains(g.box, last.clipped(640, 480))
    assert g.box.x + g.box.w <= 640  # clipped to the frame


def test_lost_in_a_crowd_is_masked_conservatively_and_crowded_tracks_reverify() -> None:
    cfg = TrackerConfig(reverify_every=100, reverify_crowd_every=3)
    tr = FaceTracker(cfg)
    reasons = []
    for seq in range(7):
        res = tr.step(0, seq, 1280, 720, [Box(400, 300, 80, 80), Box(470, 300, 80, 80)])
        for a in res.assignments:
            assert a.crowded
            if a.embed:
                tr.record_embedding(a.track_id, seq, [1.0] * 128, 6400)
                reasons.append((seq, a.reason))
    assert reasons == [(0, "new"), (0, "new"), (3, "crowd"), (3, "crowd"), (6, "crowd"), (6, "crowd")]
    res = tr.step(0, 7, 1280, 720, [Box(400, 300, 80, 80)])
    (g,) = res.gap_fills
    assert g.conservative and _contains(g.box, Box(470, 300, 80, 80))


def test_face_leaving_the_frame_needs_no_gap_fill() -> None:
    tr = FaceTracker(TrackerConfig(max_gap=5))
    for seq in range(3):
        tr.step(0, seq, 640, 480, [Box(100 - 40 * seq, 100, 50, 50)])  # walking out on the left
    fills = [tr.step(0, seq, 640, 480, []).gap_fills for seq in range(3, 9)]
    assert fills[0] and fills[0][0].conservative  # still partly visible at the edge: masked
    assert fills[-1] == ()  # long gone


def test_grown_face_is_reembedded() -> None:
    tr = FaceTracker(TrackerConfig(reverify_every=100, regrow_factor=1.5))
    a = tr.step(0, 0, 1280, 720, [Box(500, 300, 40, 40)]).assignments[0]
    tr.record_embedding(a.track_id, 0, [1.0] * 128, 1600)
    b = tr.step(0, 1, 1280, 720, [Box(495, 295, 52, 52)]).assignments[0]
    assert b.track_id == a.track_id and b.embed and b.reason == "grown"


def test_new_epoch_resets_and_late_frames_leave_tracks_alone() -> None:
    tr = FaceTracker()
    a = tr.step(0, 10, 640, 480, [Box(100, 100, 50, 50)]).assignments[0]
    tr.record_embedding(a.track_id, 10, [1.0] * 128, 2500)
    late = tr.step(0, 10, 640, 480, [Box(300, 300, 50, 50)])  # repeated seq (a redelivery)
    assert late.out_of_order and not late.reset and late.gap_fills == ()
    assert late.assignments[0].embed and late.assignments[0].track_id != a.track_id
    assert set(tr.tracks) == {a.track_id} and tr.last_seq == 10
    again = tr.step(0, 11, 640, 480, [Box(101, 100, 50, 50)]).assignments[0]
    assert again.track_id == a.track_id and not again.embed
    res2 = tr.step(1, 0, 640, 480, [Box(100, 100, 50, 50)])  # the camera restarted: new epoch
    assert res2.reset and res2.assignments[0].reason == "new" and res2.assignments[0].track_id not in (a.track_id,)
    assert not tr.step(1, 1, 640, 480, [Box(100, 100, 50, 50)]).reset
    assert tr.step(0, 99, 640, 480, []).out_of_order  # an old epoch's frame


def test_dropped_frames_count_as_misses() -> None:
    tr = FaceTracker(TrackerConfig(max_gap=2))
    tr.step(0, 0, 640, 480, [Box(100, 100, 50, 50)])
    assert tr.step(0, 2, 640, 480, []).gap_fills  # missed 2 frames (seq 1 never arrived)
    assert tr.step(0, 3, 640, 480, []).gap_fills == ()


def test_two_faces_keep_their_ids_when_passing() -> None:
    tr = FaceTracker()
    ids = None
    for seq in range(10):
        res = tr.step(0, seq, 1280, 720, [Box(100 + 30 * seq, 100, 60, 60), Box(800 - 30 * seq, 400, 60, 60)])
        now = [a.track_id for a in res.assignments]
        ids = ids or now
        assert now == ids


def test_bad_input() -> None:
    tr = FaceTracker()
    with pytest.raises(TrackingError):
        tr.step(0, 0, 0, 480, [])
    with pytest.raises(TrackingError):
        tr.step(0, 0, 640, 480, [Box(float("nan"), 0, 10, 10)])
    with pytest.raises(TrackingError):
        tr.step(0, 0, 640, 480, [Box(0, 0, 0, 10)])
    with pytest.raises(TrackingError):
        TrackerConfig(gap_scale=0.9)


def test_track_count_is_bounded() -> None:
    tr = FaceTracker(TrackerConfig(max_tracks=4))
    tr.step(0, 0, 4000, 4000, [Box(100 * i, 0, 20, 20) for i in range(10)])
    assert len(tr.tracks) == 4


@settings(max_examples=60, deadline=None)
@given(vx=st.floats(-12, 12), vy=st.floats(-8, 8), size=st.floats(30, 160),
       misses=st.lists(st.booleans(), min_size=30, max_size=30))
def test_linear_motion_is_always_covered(vx: float, vy: float, size: float, misses: list[bool]) -> None:
    """With at most K consecutive misses, every frame has a detection or a gap fill covering the face."""
    k = 3
    tr = FaceTracker(TrackerConfig(max_gap=k))
    run = 0
    misses[0] = misses[1] = False  # two sightings give the velocity
    for seq, missed in enumerate(misses):
        run = run + 1 if missed else 0
        if run > k:
            missed, run = False, 0
        truth = Box(600 + vx * seq, 340 + vy * seq, size, size)
        res = tr.step(0, seq, 1280, 720, [] if missed else [truth])
        if missed:
            visible = truth.clipped(1280, 720)
            assert visible is None or any(_contains(g.box, visible) for g in res.gap_fills)
        else:
            assert len(res.assignments) == 1


def test_iou_helper() -> None:
    assert iou(Box(0, 0, 10, 10), Box(0, 0, 10, 10)) == pytest.approx(1.0)
    assert iou(Box(0, 0, 10, 10), Box(20, 0, 10, 10)) == 0.0
    assert iou(Box(0, 0, 10, 10), Box(5, 0, 10, 10)) == pytest.approx(1 / 3)
