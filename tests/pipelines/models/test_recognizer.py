"""SFace recogniser through onnxruntime, and the 5-landmark alignment, on real faces."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from infra import sample_data
from pipelines.models.alignment import SFACE_TEMPLATE, align_crop, cosine, similarity_transform
from pipelines.models.detector import load_detector
from pipelines.models.recognizer import MATCH_THRESHOLD, FaceRecognizer, load_recognizer


@pytest.fixture(scope="module")
def detector():
    return load_detector("yunet")


@pytest.fixture(scope="module")
def recognizer() -> FaceRecognizer:
    return load_recognizer()


def _embed_largest(detector, recognizer, image: np.ndarray) -> np.ndarray:
    dets = detector.detect(image)
    assert dets, "no face found"
    best = max(dets, key=lambda d: d.w * d.h)
    return recognizer.embed(image, [best])[0]


def test_similarity_transform_recovers_known_transform() -> None:
    angle, scale, t = np.deg2rad(20), 1.7, np.array([12.0, -5.0])
    rot = np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
    src = SFACE_TEMPLATE
    dst = (scale * (rot @ src.T)).T + t
    m = similarity_transform(src, dst)
    assert m[:, :2] == pytest.approx(scale * rot, abs=1e-9)
    assert m[:, 2] == pytest.approx(t, abs=1e-9)
    with pytest.raises(ValueError):
        similarity_transform(np.zeros((5, 2)), SFACE_TEMPLATE)


def test_align_crop_puts_landmarks_on_template() -> None:
    img = np.zeros((300, 400, 3), np.uint8)
    lm = SFACE_TEMPLATE * 2.0 + np.array([100.0, 50.0])
    for i, (x, y) in enumerate(lm):
        cv2.circle(img, (int(round(x)), int(round(y))), 3, (255, 255, 255), -1)
    crop = align_crop(img, lm)
    assert crop.shape == (112, 112, 3)
    for x, y in SFACE_TEMPLATE:
        assert crop[int(round(y)), int(round(x))].max() > 128


def test_embeddings_shape_and_norm(detector, recognizer) -> None:
    img = sample_data.astronaut()
    dets = detector.detect(img)
    emb = recognizer.embed(img, dets + dets)
    assert emb.shape == (2, 128) and emb.dtype == np.float32
    assert np.linalg.norm(emb, axis=1) == pytest.approx([1.0, 1.0], abs=1e-5)
    assert emb[0] == pytest.approx(emb[1], abs=1e-5)  # batched = same result
    assert recognizer.embed(img, []).shape == (0, 128)
    assert recognizer.model_id == "sface-2021dec"


def test_same_person_high_different_person_low(detector, recognizer) -> None:
    photos = {p.name: p for p in sample_data.sample_photos()}
    emb = {name: _embed_largest(detector, recognizer, cv2.imread(str(photos[name].path)))
           for name in ("obama.jpg", "obama2.jpg", "obama3.jpg", "biden.jpg")}
    emb["astronaut"] = _embed_largest(detector, recognizer, sample_data.astronaut())
    for a, b in (("obama.jpg", "obama2.jpg"), ("obama.jpg", "obama3.jpg"), ("obama2.jpg", "obama3.jpg")):
        assert cosine(emb[a], emb[b]) > 0.6, (a, b)
    for other in ("biden.jpg", "astronaut"):
        for a in ("obama.jpg", "obama2.jpg", "obama3.jpg"):
            assert cosine(emb[a], emb[other]) < MATCH_THRESHOLD, (a, other)


def test_same_face_rescaled_still_matches(detector, recognizer) -> None:
    img = sample_data.astronaut()
    small = cv2.resize(img, (256, 256), interpolation=cv2.INTER_AREA)
    assert cosine(_embed_largest(detector, recognizer, img), _embed_largest(detector, recognizer, small)) > 0.8


def test_cosine_edge_cases() -> None:
    assert cosine(np.zeros(4), np.ones(4)) == 0.0
    assert cosine([1, 0], [0, 1]) == 0.0
    assert cosine([1, 2], [2, 4]) == pytest.approx(1.0)
