"""Masking functions: exact regions per mode/shape, and real SFace re-identification defeated by the strongest
level of the default policy at several face sizes."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from infra import sample_data
from pipelines.masking.filters import apply_mask, mask_region, mask_whole_frame
from pipelines.masking.policy import MaskDecision, Policy
from pipelines.models.detector import load_detector
from pipelines.models.recognizer import MATCH_THRESHOLD, load_recognizer


def _noise(h: int = 120, w: int = 160, seed: int = 1) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def _decision(mode: str, shape: str = "box", strength: float = 6.0, scale: float = 1.0) -> MaskDecision:
    return MaskDecision(1, mode, shape, strength, 0, scale, False)


def test_mask_region_scaling_and_clipping() -> None:
    assert mask_region((10, 20, 30, 40), 1.0, 100, 100) == (10, 20, 40, 60)
    assert mask_region((10, 20, 30, 40), 1.5, 100, 100) == (2, 10, 48, 70)
    assert mask_region((-10, 90, 30, 40), 1.0, 100, 100) == (0, 90, 20, 100)
    assert mask_region((200, 200, 10, 10), 1.0, 100, 100) is None
    assert mask_region((10, 10, 0, 10), 1.0, 100, 100) is None
    assert mask_region((float("nan"), 10, 5, 5), 1.0, 100, 100) is None
    assert mask_region((10, 10, 20, 20), 0.5, 100, 100) == (10, 10, 30, 30)  # never shrinks below the box


@pytest.mark.parametrize("mode", ["gaussian", "pixelate", "solid"])
@pytest.mark.parametrize("shape", ["box", "ellipse"])
def test_only_the_region_changes(mode: str, shape: str) -> None:
    img = _noise()
    orig = img.copy()
    box, scale = (40.0, 30.0, 50.0, 40.0), 1.4
    apply_mask(img, box, _decision(mode, shape, 6.0 if mode != "gaussian" else 8.0, scale))
    x0, y0, x1, y1 = mask_region(box, scale, 160, 120)
    changed = np.any(img != orig, axis=2)
    outside = changed.copy()
    outside[y0:y1, x0:x1] = False
    assert not outside.any(), "pixels outside the enlarged box changed"
    inside = changed[y0:y1, x0:x1]
    if shape == "box":
        assert inside.mean() > 0.9
    else:
        h, w = inside.shape
        assert not inside[0, 0] and not inside[0, w - 1] and not inside[h - 1, 0] and not inside[h - 1, w - 1]
        assert inside[h // 2, w // 2] and inside[h // 2].mean() > 0.9
        assert 0.6 < inside.mean() < 0.85  # an ellipse fills pi/4 of its box


def test_solid_is_black_and_disclosed_is_untouched() -> None:
    img = _noise()
    apply_mask(img, (10, 10, 20, 20), _decision("solid"))
    assert img[10:30, 10:30].max() == 0
    before = img.copy()
    apply_mask(img, (50, 50, 30, 30), MaskDecision(4, "none", "box", 0.0, 0, 1.0, True))
    assert np.array_equal(img, before)


def test_paper_kernel_is_exact() -> None:
    img = _noise()
    ref = cv2.GaussianBlur(img[20:80, 30:90].copy(), (33, 33), 11.3, borderType=cv2.BORDER_REPLICATE)
    apply_mask(img, (30, 20, 60, 60), MaskDecision(1, "gaussian", "box", 11.3, 33, 1.0, False))
    assert np.array_equal(img[20:80, 30:90], ref)


def test_large_sigma_fast_path_blurs_strongly() -> None:
    img = _noise(400, 400)
    apply_mask(img, (50, 50, 300, 300), MaskDecision(1, "gaussian", "box", 45.0, 271, 1.0, False))
    region = img[60:340, 60:340].astype(float)
    assert region.std() < 12  # noise with std ~74 is flattened


def test_whole_frame_mask() -> None:
    img = _noise(90, 160)
    orig = img.copy()
    mask_whole_frame(img)
    assert img.shape == orig.shape
    assert np.abs(img.astype(int) - orig.astype(int)).mean() > 30
    mask_whole_frame(np.zeros((0, 10, 3), np.uint8))  # empty frame: no error


@pytest.fixture(scope="module")
def models():
    return load_detector("yunet"), load_recognizer()


def _face_at_width(image: np.ndarray, det, width: int):
    f = width / det.w
    interp = cv2.INTER_AREA if f < 1 else cv2.INTER_CUBIC
    scaled = cv2.resize(image, (round(image.shape[1] * f), round(image.shape[0] * f)), interpolation=interp)
    return scaled, det.shifted(0, 0, f)


@pytest.mark.parametrize("width", [24, 48, 90, 178, 300])
def test_strongest_level_defeats_sface(models, width: int) -> None:
    detector, recognizer = models
    policy = Policy.load("default")
    sources = [sample_data.astronaut()]
    sources += [cv2.imread(str(p.path)) for p in sample_data.sample_photos() if p.name in ("obama2.jpg", "biden.jpg")]
    for src in sources:
        det = max(detector.detect(src), key=lambda d: d.w)
        img, d = _face_at_width(src, det, width)
        clean = recognizer.embed(img, [d])[0]
        for suspect in (None, True):
            masked = img.copy()
            decision = policy.decide(d.w, d.h, None if suspect is None else 20, suspect)
            assert decision.level == "strongest"
            apply_mask(masked, d.box, decision)
            cos = float(clean @ recognizer.embed(masked, [d])[0])
            assert cos < MATCH_THRESHOLD, (width, suspect, cos)
            assert cos < 0.25, (width, suspect, cos)  # clear margin (measured <= 0.10)


def test_light_level_keeps_suspect_identifiable(models) -> None:
    detector, recognizer = models
    policy = Policy.load("default")
    img = sample_data.astronaut()
    d = detector.detect(img)[0]
    clean = recognizer.embed(img, [d])[0]
    decision = policy.decide(d.w, d.h, 80, True)
    assert decision.level == "light" and not decision.disclosed
    apply_mask(img, d.box, decision)
    assert float(clean @ recognizer.embed(img, [d])[0]) >= 0.6


@settings(max_examples=60, deadline=None)
@given(x=st.floats(-80, 200), y=st.floats(-80, 150), w=st.floats(0, 150), h=st.floats(0, 150),
       scale=st.floats(1.0, 2.0), mode=st.sampled_from(["gaussian", "pixelate", "solid"]),
       shape=st.sampled_from(["box", "ellipse"]), strength=st.floats(0.5, 40))
def test_any_box_changes_nothing_outside_its_region(x, y, w, h, scale, mode, shape, strength) -> None:
    img = _noise(100, 140, seed=3)
    orig = img.copy()
    apply_mask(img, (x, y, w, h), MaskDecision(1, mode, shape, strength, 0, scale, False))
    region = mask_region((x, y, w, h), scale, 140, 100)
    changed = np.any(img != orig, axis=2)
    if region is None:
        assert not changed.any()
    else:
        x0, y0, x1, y1 = region
        changed[y0:y1, x0:x1] = False
        assert not changed.any()
