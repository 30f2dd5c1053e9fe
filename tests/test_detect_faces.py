"""DetectFaces stage: real YuNet finds real faces; a failing detector marks the frame degraded, never face-free."""

from __future__ import annotations

import apache_beam as beam
import cv2
import pytest
from apache_beam.testing.util import assert_that, equal_to

from pipeline_support import beam_test_pipeline, frame_context
from pipelines.transforms.detect_faces import DetectFaces, detect


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
