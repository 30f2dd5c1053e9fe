"""Real detectors (YuNet default, CenterFace) through onnxruntime on real faces."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from infra.sample_data import ASTRONAUT_FACE_BOX, astronaut
from pipelines.models.detector import FaceDetector, load_detector
from pipelines.models.fetch import ModelError


def _iou(a, b) -> float:
    ax0, ay0, aw, ah = a
    bx0, by0, bw, bh = b
    iw = max(0.0, min(ax0 + aw, bx0 + bw) - max(ax0, bx0))
    ih = max(0.0, min(ay0 + ah, by0 + bh) - max(ay0, by0))
    return iw * ih / (aw * ah + bw * bh - iw * ih)


@pytest.fixture(scope="module")
def yunet() -> FaceDetector:
    return load_detector("yunet")


@pytest.fixture(scope="module")
def image() -> np.ndarray:
    return astronaut()


def test_yunet_finds_the_astronaut(yunet, image) -> None:
    assert isinstance(yunet, FaceDetector) and yunet.model_id == "yunet-2023mar+tiny2x"  # tiny-face pass on
    assert yunet.score_threshold == 0.6  # privacy first: low default
    dets = yunet.detect(image)
    assert len(dets) == 1
    d = dets[0]
    assert _iou(d.box, ASTRONAUT_FACE_BOX) > 0.8
    assert d.score > 0.9
    lm = d.landmarks
    assert lm.shape == (5, 2)
    assert lm[0, 0] < lm[1, 0]  # first eye is on the image left
    assert lm[0, 1] < lm[2, 1] < lm[3, 1]  # eyes above nose above mouth
    assert all(d.x <= x <= d.x + d.w and d.y <= y <= d.y + d.h for x, y in lm)


def test_threshold_behaviour(image) -> None:
    strict = load_detector("yunet", score_threshold=0.99)
    assert strict.detect(image) == []  # the astronaut scores ~0.93
    loose = load_detector("yunet", score_threshold=0.3)
    assert len(loose.detect(image)) >= 1
    with pytest.raises(ModelError):
        load_detector("yunet", score_threshold=1.5)
    with pytest.raises(ModelError, match="unknown detector"):
        load_detector("haar")


def test_no_face_and_bad_input(yunet) -> None:
    assert yunet.detect(np.zeros((240, 320, 3), np.uint8)) == []
    with pytest.raises(ValueError):
        yunet.detect(np.zeros((240, 320), np.uint8))
    with pytest.raises(ValueError):
        yunet.detect(np.zeros((0, 320, 3), np.uint8))


def test_odd_sizes_are_padded(yunet, image) -> None:
    crop = image[5:400, 3:333]  # 395 x 330, not a multiple of 32
    dets = yunet.detect(np.ascontiguousarray(crop))
    assert len(dets) == 1
    x, y, w, h = ASTRONAUT_FACE_BOX
    assert _iou(dets[0].box, (x - 3, y - 5, w, h)) > 0.8


def test_large_frame_tiles_keep_small_and_large_faces(image) -> None:
    det = load_detector("yunet", max_side=1024, tiny_factor=0)  # the model's own tiling, no tiny-face pass
    assert det.model_id == "yunet-2023mar"
    frame = np.full((1800, 2600, 3), 90, np.uint8)
    small = cv2.resize(image, (128, 128), interpolation=cv2.INTER_AREA)  # face ~22 px wide
    frame[1500:1628, 2300:2428] = small
    big = cv2.resize(image, (1400, 1400), interpolation=cv2.INTER_CUBIC)  # face ~246 px, spans tiles
    frame[200:1600, 100:1500] = big
    dets = det.detect(frame)
    sx, sy, sw, sh = (v * 0.25 for v in ASTRONAUT_FACE_BOX)
    bx, by, bw, bh = (v * 1400 / 512 for v in ASTRONAUT_FACE_BOX)
    assert any(_iou(d.box, (sx + 2300, sy + 1500, sw, sh)) > 0.5 for d in dets)
    assert any(_iou(d.box, (bx + 100, by + 200, bw, bh)) > 0.6 for d in dets)
    assert len(dets) == 2  # overlapping tiles do not duplicate a face


def test_centerface_finds_the_astronaut(image) -> None:
    det = load_detector("centerface")
    assert det.model_id == "centerface"
    dets = det.detect(image)
    assert len(dets) == 1 and _iou(dets[0].box, ASTRONAUT_FACE_BOX) > 0.7


def test_onnx_dims_made_symbolic_without_touching_the_file() -> None:
    from pipelines.models.detector import make_session
    from pipelines.models.fetch import MODELS, model_path, sha256_file
    from pipelines.models.onnx_shapes import OnnxEditError, set_io_dims

    path = model_path("yunet")
    raw = path.read_bytes()
    session = make_session(set_io_dims(raw, {"input": [1, 3, "H", "W"]}))
    assert session.get_inputs()[0].shape == [1, 3, "H", "W"]
    out = session.run(None, {"input": np.zeros((1, 3, 96, 160), np.float32)})
    assert out[0].shape == (1, (96 // 8) * (160 // 8), 1)
    assert sha256_file(path) == MODELS["yunet"].sha256
    with pytest.raises(OnnxEditError, match="no input/output named"):
        set_io_dims(raw, {"image": [1, 3, "H", "W"]})
    with pytest.raises(OnnxEditError):
        set_io_dims(b"\xff\xff\xff", {"input": [1]})
