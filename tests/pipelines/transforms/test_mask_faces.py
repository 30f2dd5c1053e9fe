"""MaskFaces stage: unknown faces get the strongest mask (de-identified, measured with SFace); degraded or
failed frames are masked whole; the input image is never modified."""

from __future__ import annotations

import apache_beam as beam
import cv2
import numpy as np
import pytest
from apache_beam.testing.util import assert_that, equal_to

from pipelines.models.detection import Detection
from pipelines.transforms.mask_faces import MaskFaces, mask_frame
from tests.pipeline_support import beam_test_pipeline, frame_context


@pytest.fixture(scope="module")
def scene():
    from infra import sample_data

    return sample_data.astronaut()


@pytest.fixture(scope="module")
def detections(scene):
    from pipelines.models.detector import load_detector

    found = load_detector("yunet").detect(scene)
    assert found
    return tuple(found)


@pytest.fixture(scope="module")
def policy():
    from pipelines.masking.policy import Policy

    return Policy.load("default")


class _ExplodingPolicy:
    policy_id = "explodes-1"

    def decide(self, *args):
        raise RuntimeError("bad policy file")

    strongest = decide


def test_unknown_faces_get_strongest_mask_and_are_deidentified(scene, detections, policy):
    from pipelines.models.recognizer import MATCH_THRESHOLD, load_recognizer

    ctx = frame_context(scene).replace(detections=detections, detector_id="yunet-2023mar")
    before = scene.copy()
    out = mask_frame(policy, ctx)
    assert np.array_equal(ctx.image, before), "the stage must not modify its input"
    assert out.policy_id == policy.policy_id and not out.degraded
    assert len(out.faces) == len(detections)
    for face, det in zip(out.faces, detections):
        strongest = policy.strongest(det.w, det.h)
        assert (face.mode, face.strength, face.risk_group) == (strongest.mode, pytest.approx(strongest.strength),
                                                               strongest.risk_group)
        assert face.identity == "unknown" and face.source == "detected" and not face.suspect
    rec = load_recognizer()
    a, b = rec.embed(scene, list(detections)), rec.embed(out.image, list(detections))
    for i in range(len(detections)):
        assert float(a[i] @ b[i]) < MATCH_THRESHOLD
    # pixels far from every face are untouched
    assert np.array_equal(out.image[480:, :60], scene[480:, :60])


def test_degraded_frame_is_masked_whole(scene, policy):
    ctx = frame_context(scene).replace(degraded=True, degraded_reason="detector_error:RuntimeError")
    out = mask_frame(policy, ctx)
    assert out.degraded and out.degraded_reason == "detector_error:RuntimeError"
    assert [f.source for f in out.faces] == ["whole_frame"]
    diff = np.abs(out.image.astype(int) - scene.astype(int)).mean(axis=2)
    assert (diff > 2).mean() > 0.5  # most of the frame changed, not just a face box


def test_masking_failure_masks_whole_frame(scene, detections):
    out = mask_frame(_ExplodingPolicy(), frame_context(scene).replace(detections=detections))
    assert out.degraded and out.degraded_reason == "mask_error:RuntimeError"
    assert out.faces[-1].source == "whole_frame"
    assert not np.array_equal(out.image[480:, :60], scene[480:, :60])


def test_stage_in_pipeline(scene):
    small = cv2.resize(scene, (256, 256))
    det = Detection(80.0, 30.0, 60.0, 70.0, 0.9, np.zeros((5, 2), np.float32))
    frames = [frame_context(small, seq=0).replace(detections=(det,)),
              frame_context(small, seq=1).replace(degraded=True, degraded_reason="detector_error:X")]
    with beam_test_pipeline() as p:
        out = p | beam.Create(frames, reshuffle=False) | MaskFaces("default")

        def summary(f):
            changed = not np.array_equal(f.image[30:100, 80:140], small[30:100, 80:140])
            return f.seq, f.degraded, tuple(x.source for x in f.faces), changed

        assert_that(out | beam.Map(summary), equal_to([(0, False, ("detected",), True),
                                                         (1, True, ("whole_frame",), True)]))


def _Face(identity, risk, suspect=False, source="detected", subject_ref="ref-1"):
    """A risk-enriched face as the recognition stages hand it over."""
    from pipelines.tracking.tracks import TrackedFace

    return TrackedFace(x=150.0, y=50.0, w=120.0, h=140.0, score=0.9, track_id=3, identity=identity, risk=risk,
                       suspect=suspect, source=source, subject_ref=subject_ref)


def test_only_matched_detected_faces_use_their_risk(policy):
    from pipelines.transforms.mask_faces import decide_face, face_decision

    strongest = policy.strongest(120.0, 140.0)
    for face in (_Face("unknown", None), _Face("ambiguous", None), _Face("stale", 95),
                 _Face("matched", 95, source="gap_filled"), _Face("matched", None)):
        assert decide_face(policy, face) == strongest, face
    high = decide_face(policy, _Face("matched", 95, suspect=True))
    assert high == policy.decide(120.0, 140.0, 95, True)
    rec = face_decision(_Face("matched", 95, suspect=True), high)
    assert (rec.track_id, rec.identity, rec.suspect) == (3, "matched", True)
    assert rec.subject_ref == ("ref-1" if high.disclosed else None)
    assert face_decision(_Face("unknown", None), strongest).subject_ref is None  # never for a masked face
    bare = Detection(150.0, 50.0, 120.0, 140.0, 0.9, np.zeros((5, 2), np.float32))
    assert decide_face(policy, bare) == strongest  # a bare detection is an unknown face
    rec = face_decision(bare, strongest)
    assert (rec.track_id, rec.identity, rec.source, rec.suspect) == (None, "unknown", "detected", False)


def test_tracked_faces_are_masked_and_the_detector_boxes_keep_their_type(scene, policy):
    """EmbedFaces/EnrichRisk fill ``tracked``; ``detections`` keep the detector's Detection boxes, and
    MaskFaces masks the tracked faces (one decision per tracked face) when recognition ran."""
    det = Detection(150.0, 50.0, 120.0, 140.0, 0.9, np.zeros((5, 2), np.float32))
    matched = _Face("matched", 95, suspect=True)
    gap = _Face("unknown", None, source="gap_filled")
    out = mask_frame(policy, frame_context(scene).replace(detections=(det,), tracked=(matched, gap)))
    assert isinstance(out.detections[0], Detection)
    assert [(f.identity, f.source, f.track_id) for f in out.faces] == [("matched", "detected", 3),
                                                                        ("unknown", "gap_filled", 3)]
    assert out.faces[0].risk_group == policy.decide(120.0, 140.0, 95, True).risk_group
