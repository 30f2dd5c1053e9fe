"""Acceptance: a detector that fails on some frames, inside a real pipeline run (Kafka in, Kafka out, bounded).

Fail closed: every frame the detector failed on comes out wholly masked and flagged degraded; the others
come out normally; nothing is lost.
"""

from __future__ import annotations

import itertools
import json
import uuid

import cv2
import numpy as np

from pipelines.runner import run_pipeline
from schemas.messages import RedactedFrame
from tests.pipeline_support import TopicReader, camera_frame, scenes, send_raw

N_FRAMES = 6


class _FlakyDetector:
    """The real YuNet detector, except that every second call fails (as a crashed session would)."""

    def __init__(self) -> None:
        from pipelines.models.detector import load_detector

        self._inner = load_detector("yunet")
        self.model_id = self._inner.model_id
        self._calls = itertools.count()

    def detect(self, image):
        if next(self._calls) % 2 == 1:
            raise RuntimeError("onnxruntime: session crashed")
        return self._inner.detect(image)


def _flaky_factory():
    return _FlakyDetector()


def test_detector_failure_masks_whole_frame_and_flags_degraded(kafka_bootstrap, tmp_path):
    from infra import broker as embedded

    tag = uuid.uuid4().hex[:8]
    raw, redacted, dlq = f"raw-{tag}", f"red-{tag}", f"dlq-{tag}"
    embedded.create_topics(kafka_bootstrap, [raw, redacted, dlq])
    frames = scenes(N_FRAMES, faces_per_frame=2, min_width=30, max_width=80, size=(640, 360), seed=7)
    send_raw(kafka_bootstrap, raw, [(b"cam-f", camera_frame(s.image, seq=i, camera_id="cam-f").to_bytes())
                                    for i, s in enumerate(frames)])
    state = run_pipeline([f"--kafka_bootstrap_servers={kafka_bootstrap}", "--runner=FnApiRunner", "--bounded",
                          f"--raw_topic={raw}", f"--redacted_topic={redacted}", f"--dlq_topic={dlq}",
                          f"--group_id=g-{tag}"], detector_factory=_flaky_factory,
                         metrics_out=str(tmp_path / "metrics.json"))
    assert "DONE" in state
    # Every stage timed every frame; the degraded frames are counted.
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    for stage in ("decode", "detect_faces", "embed_faces", "mask_faces", "encode"):
        assert metrics["distributions"][f"{stage}/frame_us"]["count"] == N_FRAMES, stage
        assert metrics["distributions"][f"{stage}/frame_us"]["sum"] > 0
    assert metrics["counters"]["detect_faces/frames_degraded"] == 3
    reader = TopicReader(kafka_bootstrap, redacted)
    outputs = reader.poll_until(lambda r: len(r) >= N_FRAMES, 30)
    reader.close()
    by_seq = {rf.seq: rf for rf in (RedactedFrame.from_bytes(m.value) for m in outputs)}
    assert sorted(by_seq) == list(range(N_FRAMES))
    degraded = sorted(s for s, rf in by_seq.items() if rf.degraded)
    assert degraded == [1, 3, 5]
    for seq, rf in by_seq.items():
        image = cv2.imdecode(np.frombuffer(rf.image, np.uint8), cv2.IMREAD_COLOR)
        changed = (np.abs(image.astype(int) - frames[seq].image.astype(int)).mean(axis=2) > 8).mean()
        if rf.degraded:
            assert rf.degraded_reason == "detector_error:RuntimeError"
            assert [(m.x, m.y, m.w, m.h) for m in rf.masks] == [(0, 0, 640, 360)]  # the whole frame
            assert changed > 0.5, changed  # the whole frame, not only faces
        else:
            # tracking may add gap-filled masks where faces of earlier frames were (fail closed); the two
            # faces of this frame must be masked (frames.redacted carries masked regions only, no decisions)
            assert len(rf.masks) >= 2
            for x, y, w, h in frames[seq].boxes:
                assert any(m.x <= x + w / 2 <= m.x + m.w and m.y <= y + h / 2 <= m.y + m.h for m in rf.masks)
            diff = np.abs(image.astype(int) - frames[seq].image.astype(int)).mean(axis=2) > 8
            for f in rf.masks:
                diff[max(0, f.y - f.h):f.y + 2 * f.h, max(0, f.x - f.w):f.x + 2 * f.w] = False
            assert diff.mean() < 0.3, diff.mean()  # faces only
