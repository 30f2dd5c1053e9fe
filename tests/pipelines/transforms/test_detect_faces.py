"""DetectFaces stage: real YuNet finds real faces; a failing detector marks the frame degraded, never face-free."""

from __future__ import annotations

import apache_beam as beam
import cv2
import pytest
from apache_beam.testing.util import assert_that, equal_to

from pipelines.transforms.detect_faces import DetectFaces, detect
from tests.pipeline_support import beam_test_pipeline, frame_context


@pytest.fixture(scope="module")
def astronaut():
    from infra import sample_data

    return sample_data.astronaut()


@pytest.fixture(scope="module")
def detector():
    from pipelines.models.detector import load_detector

    return load_detector("yunet")


class _Broken:
    model_id = "broken-1"

    def detect(self, image):
        raise RuntimeError("onnxruntime session failed")


def _broken_factory():
    return _Broken()


def test_real_detector_finds_the_astronaut(astronaut, detector):
    from infra.sample_data import ASTRONAUT_FACE_BOX

    out = detect(detector, frame_context(astronaut))
    assert not out.degraded and out.detector_id == detector.model_id
    x, y, w, h = ASTRONAUT_FACE_BOX
    centres = [(d.x + d.w / 2, d.y + d.h / 2) for d in out.detections]
    assert any(abs(cx - (x + w / 2)) < w / 3 and abs(cy - (y + h / 2)) < h / 3 for cx, cy in centres), centres
    for d in out.detections:  # boxes are clipped to the frame
        assert 0 <= d.x and 0 <= d.y and d.x + d.w <= 512 + 1e-3 and d.y + d.h <= 512 + 1e-3


def test_detector_failure_marks_frame_degraded(astronaut):
    out = detect(_Broken(), frame_context(astronaut))
    assert out.degraded and out.detections == ()
    assert out.degraded_reason == "detector_error:RuntimeError"
    assert out.detector_id == "broken-1"


def test_stage_in_pipeline_real_and_broken(astronaut):
    small = cv2.resize(astronaut, (256, 256))
    frames = [frame_context(small, seq=i) for i in range(2)]
    with beam_test_pipeline() as p:
        src = p | beam.Create(frames, reshuffle=False)
        real = src | "real" >> DetectFaces("yunet")
        broken = src | "broken" >> DetectFaces(detector_factory=_broken_factory)
        assert_that(real | "r" >> beam.Map(lambda f: (f.seq, f.degraded, len(f.detections) >= 1)),
                    equal_to([(0, False, True), (1, False, True)]), label="real")
        assert_that(broken | "b" >> beam.Map(lambda f: (f.seq, f.degraded, len(f.detections))),
                    equal_to([(0, True, 0), (1, True, 0)]), label="broken")


class _SlowRecording:
    """A unit-test stand-in detector: slow, records the thread and order of its calls; fails on frame 2."""

    model_id = "slow-1"

    def __init__(self) -> None:
        import threading

        self.threads: set[int] = set()
        self.calls = 0
        self._lock = threading.Lock()

    def detect(self, image):
        import threading
        import time

        with self._lock:
            self.threads.add(threading.get_ident())
            self.calls += 1
            n = self.calls
        time.sleep(0.02)
        if n == 3:
            raise RuntimeError("session failed")
        return []


@pytest.mark.parametrize("lookahead", [0, 1, 3])
def test_lookahead_keeps_order_timestamps_windows_and_drains_the_bundle(astronaut, lookahead):
    import threading

    from apache_beam.transforms.window import GlobalWindow
    from apache_beam.utils.timestamp import Timestamp
    from apache_beam.utils.windowed_value import WindowedValue

    from pipelines.transforms.detect_faces import _DetectFn

    fake = _SlowRecording()
    fn = _DetectFn("yunet", 1, None, lambda: fake, lookahead)
    fn.setup()
    try:
        small = cv2.resize(astronaut, (64, 64))
        out = []
        fn.start_bundle()
        for i in range(6):
            for item in fn.process(frame_context(small, seq=i), Timestamp(100 + i), GlobalWindow()):
                out.append(item)
            assert len(out) == max(0, i + 1 - lookahead)  # at most `lookahead` frames in flight
        out.extend(fn.finish_bundle() or [])
        assert fn._ahead.in_flight == 0
    finally:
        fn.teardown()
    values = [o.value if isinstance(o, WindowedValue) else o for o in out]
    assert [f.seq for f in values] == list(range(6))
    assert [f.degraded for f in values] == [False, False, True, False, False, False]  # the failure fails closed
    if lookahead:
        assert all(isinstance(o, WindowedValue) for o in out)
        assert [o.timestamp for o in out] == [Timestamp(100 + i) for i in range(6)]
        assert all(o.windows == (GlobalWindow(),) for o in out)
        assert threading.get_ident() not in fake.threads  # detection ran on the worker thread
    else:
        assert fake.threads == {threading.get_ident()}


class _PerCameraRecorder:
    """A unit-test stand-in detector: records which thread saw which camera's frames, in call order."""

    model_id = "rec-1"

    def __init__(self) -> None:
        import threading

        self.seen: list[tuple[int, int]] = []  # (thread, first pixel value = camera tag)
        self._lock = threading.Lock()

    def detect(self, image):
        import threading
        import time

        time.sleep(0.01)
        with self._lock:
            self.seen.append((threading.get_ident(), int(image[0, 0, 0])))
        return []


def test_two_workers_detect_two_cameras_at_once_and_keep_each_cameras_order():
    import dataclasses

    import numpy as np
    from apache_beam.transforms.window import GlobalWindow
    from apache_beam.utils.timestamp import Timestamp

    from pipelines.transforms.detect_faces import _DetectFn

    fake = _PerCameraRecorder()
    fn = _DetectFn("yunet", 1, None, lambda: fake, lookahead=4, gate=None, workers=2)
    fn.setup()
    cams = ("cam-1", "cam-2")
    try:
        out = []
        fn.start_bundle()
        for i in range(12):
            cam = cams[i % 2]
            img = np.full((32, 32, 3), 10 + (i % 2), np.uint8)
            frame = dataclasses.replace(frame_context(img, seq=i // 2), camera_id=cam)
            out.extend(fn.process(frame, Timestamp(i), GlobalWindow()))
        out.extend(fn.finish_bundle() or [])
    finally:
        fn.teardown()
    values = [o.value for o in out]
    assert [(f.camera_id, f.seq) for f in values] == [(cams[i % 2], i // 2) for i in range(12)]  # arrival order
    threads_by_cam: dict[int, set[int]] = {}
    for thread, tag in fake.seen:
        threads_by_cam.setdefault(tag, set()).add(thread)
    assert all(len(t) == 1 for t in threads_by_cam.values())  # one camera, one worker: its gate sees it in order
    assert threads_by_cam[10] != threads_by_cam[11]  # two cameras, two workers


def test_gated_stage_searches_only_changes_and_a_failure_resets_the_gate(astronaut):
    import numpy as np

    from pipelines.tracking.change_gate import GateConfig
    from pipelines.transforms.detect_faces import _DetectFn

    calls: list[tuple[int, int]] = []

    class Sizes:
        model_id = "sizes-1"
        fail_next = False

        def detect(self, image):
            calls.append(image.shape[:2])
            if Sizes.fail_next:
                Sizes.fail_next = False
                raise RuntimeError("session failed")
            return []

    fn = _DetectFn("yunet", 1, None, Sizes, lookahead=0, gate=GateConfig(refresh_every=100, min_region=32))
    fn.setup()
    base = np.full((240, 320, 3), 90, np.uint8)
    fn.start_bundle()
    list(fn.process(frame_context(base, seq=0)))  # first frame: full
    list(fn.process(frame_context(base, seq=1)))  # nothing changed: no detector call
    moved = base.copy()
    moved[100:130, 150:180] = 200
    list(fn.process(frame_context(moved, seq=2)))  # a changed patch: a crop, not the frame
    Sizes.fail_next = True
    failed = list(fn.process(frame_context(moved, seq=3)))  # still, so nothing to search ...
    moved2 = moved.copy()
    moved2[10:40, 10:40] = 250
    failed = list(fn.process(frame_context(moved2, seq=4)))  # ... a crop, which fails: degraded, gate reset
    list(fn.process(frame_context(moved2, seq=5)))  # after the reset: the full frame again
    fn.teardown()
    assert calls[0] == (240, 320) and len(calls) == 4, calls
    assert calls[1][0] < 240 and calls[1][1] < 320 and calls[2][0] < 240
    assert failed[0].degraded and calls[3] == (240, 320)
