"""Composed scenes: faces where the ground truth says, at the sizes asked, reproducible from a seed."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest

from infra import sample_data, scenes
from infra.scenes import FaceSource, Placement, SceneError, Track

SIZE = (1280, 720)


@pytest.fixture(scope="module")
def sources() -> list[FaceSource]:
    return sample_data.face_sources()


@pytest.fixture(scope="module")
def coffee() -> np.ndarray:
    return sample_data.background("coffee")


def _inside(box: tuple[int, int, int, int], size: tuple[int, int]) -> bool:
    x, y, w, h = box
    return x >= 0 and y >= 0 and w > 0 and h > 0 and x + w <= size[0] and y + h <= size[1]


def test_face_pixels_at_the_ground_truth_box_are_the_scaled_source_face(coffee: np.ndarray) -> None:
    src = sample_data.astronaut_source()
    frame, boxes = scenes.compose_frame([src], [Placement(0, 180, (400.0, 300.0))], coffee, SIZE)
    (x, y, w, h), = boxes
    assert frame.shape == (720, 1280, 3) and frame.dtype == np.uint8
    assert abs(w - 180) <= 1 and abs(x + w / 2 - 400) <= 1 and abs(y + h / 2 - 300) <= 1
    fx, fy, fw, fh = src.face_box
    expected = cv2.resize(src.image[fy:fy + fh, fx:fx + fw], (w, h), interpolation=cv2.INTER_CUBIC)
    diff = np.abs(frame[y:y + h, x:x + w].astype(int) - expected.astype(int))
    assert diff.mean() < 6  # same face (only edge resampling differs)
    # The background around the pasted head is the real photo, not a flat colour.
    assert frame[:, 900:].std() > 15


@pytest.mark.parametrize("width", [12, 20, 48, 120, 300])
def test_requested_face_widths_are_honoured(sources: list[FaceSource], coffee: np.ndarray, width: int) -> None:
    placements = [Placement(i, width, (160.0 + 240 * i, 360.0)) for i in range(5)]
    _, boxes = scenes.compose_frame(sources[:5], placements, coffee, SIZE, context=0.1)
    for src, box in zip(sources, boxes):
        assert abs(box[2] - width) <= 1
        assert box[3] == pytest.approx(width * src.face_box[3] / src.face_box[2], abs=1.5)


def test_random_scene_boxes_are_inside_sized_and_unoccluded(sources: list[FaceSource], coffee: np.ndarray) -> None:
    placements = scenes.random_placements(sources, 10, SIZE, min_width=12, max_width=300, seed=7)
    frame, boxes = scenes.compose_frame(sources, placements, coffee, SIZE)
    assert len(boxes) == 10
    widths = [b[2] for b in boxes]
    assert min(widths) >= 11 and max(widths) <= 301 and max(widths) > 3 * min(widths)
    for p, box in zip(placements, boxes):
        assert _inside(box, SIZE)
        assert abs(box[2] - p.face_width) <= 1
    # No face is covered by a later paste: each box still shows its own source face.
    for p, (x, y, w, h) in zip(placements, boxes):
        src = sources[p.source]
        fx, fy, fw, fh = src.face_box
        interp = cv2.INTER_AREA if w < fw else cv2.INTER_CUBIC
        expected = cv2.resize(src.image[fy:fy + fh, fx:fx + fw], (w, h), interpolation=interp)
        assert np.abs(frame[y:y + h, x:x + w].astype(int) - expected.astype(int)).mean() < 12, (src.label, w)
    # Sources cycle in order, so every person appears.
    assert {sources[p.source].label for p in placements} == {s.label for s in sources}


def test_same_seed_same_scene_other_seed_other_scene(sources: list[FaceSource], coffee: np.ndarray) -> None:
    a = scenes.compose_frame(sources, scenes.random_placements(sources, 6, SIZE, seed=1), coffee, SIZE)
    b = scenes.compose_frame(sources, scenes.random_placements(sources, 6, SIZE, seed=1), coffee, SIZE)
    c = scenes.compose_frame(sources, scenes.random_placements(sources, 6, SIZE, seed=2), coffee, SIZE)
    assert a[1] == b[1] and np.array_equal(a[0], b[0])
    assert a[1] != c[1]


def test_impossible_requests_raise_scene_errors(sources: list[FaceSource], coffee: np.ndarray) -> None:
    with pytest.raises(SceneError, match="not inside"):
        scenes.compose_frame(sources, [Placement(0, 200, (20.0, 20.0))], coffee, SIZE)
    with pytest.raises(SceneError, match="out of range"):
        scenes.compose_frame(sources, [Placement(99, 50, (300.0, 300.0))], coffee, SIZE)
    with pytest.raises(SceneError, match="does not fit"):
        scenes.random_placements(sources, 1, (320, 240), min_width=300, max_width=300)
    with pytest.raises(SceneError, match="no room"):
        scenes.random_placements(sources, 12, (640, 480), min_width=100, max_width=120)
    with pytest.raises(SceneError, match="not inside"):
        FaceSource(np.zeros((10, 10, 3), np.uint8), (5, 5, 10, 10), "bad")
    with pytest.raises(SceneError, match="uint8"):
        FaceSource(np.zeros((10, 10), np.uint8), (1, 1, 2, 2), "gray")


def test_clip_faces_move_smoothly_and_stay_inside(sources: list[FaceSource], coffee: np.ndarray) -> None:
    n = 30
    tracks = scenes.random_tracks(sources, 4, n, SIZE, min_width=24, max_width=160, seed=5)
    frames, boxes = scenes.make_clip(sources, tracks, coffee, n, SIZE, seed=5)
    assert len(frames) == n and all(f.shape == (720, 1280, 3) for f in frames)
    assert all(len(b) == 4 for b in boxes)
    for j in range(4):
        centres = np.array([(b[j][0] + b[j][2] / 2, b[j][1] + b[j][3] / 2) for b in boxes])
        steps = np.linalg.norm(np.diff(centres, axis=0), axis=1)
        travel = np.linalg.norm(centres[-1] - centres[0])
        assert steps.max() <= 0.4 * SIZE[0] * 1.5 / (n - 1) + 2  # no jumps: eased, at most 1.5x mean speed
        assert travel > 0.1 * 0.4 * SIZE[0] * 0.9
        assert all(_inside(b[j], SIZE) for b in boxes)
    # Noise differs between frames (a live camera), the faces do not jump.
    assert not np.array_equal(frames[0], frames[1])


def test_written_mp4_reads_back(tmp_path: Path, sources: list[FaceSource], coffee: np.ndarray) -> None:
    tracks = scenes.random_tracks(sources, 2, 12, (640, 360), min_width=30, max_width=80, seed=3)
    frames, _ = scenes.make_clip(sources, tracks, coffee, 12, (640, 360), seed=3)
    path = scenes.write_mp4(frames, tmp_path / "clip.mp4", fps=25.0)
    assert path.read_bytes()[4:8] == b"ftyp"
    cap = cv2.VideoCapture(str(path))
    read = []
    while True:
        ok, frame = cap.read()
        if not ok:
            break
        read.append(frame)
    cap.release()
    assert len(read) == 12 and read[0].shape == (360, 640, 3)
    assert np.abs(read[5].astype(int) - frames[5].astype(int)).mean() < 12  # lossy, but the same picture
    with pytest.raises(SceneError):
        scenes.write_mp4([], tmp_path / "empty.mp4")


def test_track_easing_starts_and_ends_at_its_placements() -> None:
    track = Track(0, (100.0, 100.0), (300.0, 200.0), 40, 60)
    assert track.at(0.0) == Placement(0, 40, (100.0, 100.0))
    assert track.at(1.0) == Placement(0, 60, (300.0, 200.0))
    mid = track.at(0.5)
    assert mid.center == pytest.approx((200.0, 150.0)) and mid.face_width == 50
