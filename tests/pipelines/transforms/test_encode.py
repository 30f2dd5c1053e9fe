"""Encode stage: RedactedFrame with hashes, ids and source coordinates; Kafka key and dedupe headers;
an encoder failure goes to the DLQ."""

from __future__ import annotations

import hashlib

import apache_beam as beam
import cv2
import numpy as np
from apache_beam.testing.util import assert_that, equal_to

from pipelines.frame import DEDUPE_HEADER, SOURCE_HEADER
from pipelines.transforms.dead_letter import DLQ_TAG
from pipelines.transforms.encode import Encode, encode_frame, redacted_message
from schemas.messages import FaceDecision, MaskRegion, RedactedFrame
from tests.pipeline_support import beam_test_pipeline, frame_context


def _masked(seq: int = 4):
    img = np.full((120, 160, 3), 90, np.uint8)
    face = FaceDecision(x=10, y=20, w=30, h=40, score=0.8, risk_group=1, mode="pixelate", strength=6.0)
    return frame_context(img, seq=seq).replace(faces=(face,), policy_id="default-v1", detector_id="yunet-2023mar")


def test_encode_frame_fields():
    ctx = _masked()
    rf = encode_frame(ctx)
    assert (rf.camera_id, rf.epoch, rf.seq, rf.width, rf.height) == ("cam-t", 1, 4, 160, 120)
    assert rf.raw_sha256 == ctx.raw_sha256 and rf.redacted_sha256 == hashlib.sha256(rf.image).digest()
    assert (rf.policy_id, rf.detector_id) == ("default-v1", "yunet-2023mar")
    assert rf.masks == (MaskRegion(x=10, y=20, w=30, h=40, mode="pixelate", shape="box"),)
    assert (rf.source_topic, rf.source_partition, rf.source_offset) == ("frames.raw", 0, 4)
    assert rf.processed_ts_us >= rf.capture_ts_us and not rf.degraded
    assert (rf.recognizer_id, rf.watchlist_height) == ("", -1)
    with_recognition = encode_frame(ctx.replace(recognizer_id="sface-2021dec", watchlist_height=12))
    assert (with_recognition.recognizer_id, with_recognition.watchlist_height) == ("sface-2021dec", 12)
    decoded = cv2.imdecode(np.frombuffer(rf.image, np.uint8), cv2.IMREAD_COLOR)
    assert decoded.shape == (120, 160, 3) and abs(int(decoded.mean()) - 90) <= 2


def test_redacted_message_key_and_headers():
    msg = redacted_message(encode_frame(_masked(seq=9)))
    assert msg.key == b"cam-t"
    headers = dict(msg.headers)
    assert headers[DEDUPE_HEADER] == b"cam-t/1/9" and headers[SOURCE_HEADER] == b"frames.raw/0/9"
    assert RedactedFrame.from_bytes(msg.value).seq == 9


def test_stage_in_pipeline_with_encoder_failure():
    good = [_masked(seq=i) for i in range(2)]
    broken = _masked(seq=7).replace(image=np.zeros((0, 0, 3), np.uint8))  # nothing to encode
    with beam_test_pipeline() as p:
        out = p | beam.Create(good + [broken], reshuffle=False) | Encode()
        assert_that(out["redacted"] | "r" >> beam.Map(lambda m: RedactedFrame.from_bytes(m.value).seq),
                    equal_to([0, 1]), label="redacted")
        assert_that(out[DLQ_TAG] | "d" >> beam.Map(lambda d: (d.seq, d.stage, d.reason, d.payload_size > 0)),
                    equal_to([(7, "encode", "encode_error", True)]), label="dlq")


def test_mask_regions_are_the_masked_areas_and_leave_out_disclosed_faces():
    from pipelines.transforms.encode import mask_regions

    faces = (FaceDecision(x=100, y=50, w=40, h=60, score=0.9, risk_group=1, mode="gaussian", strength=6.0,
                          mask_scale=1.5, track_id=4, identity="unknown"),
             FaceDecision(x=0, y=0, w=20, h=20, score=0.9, risk_group=1, mode="gaussian", strength=6.0,
                          mask_scale=2.0, shape="ellipse"),
             FaceDecision(x=10, y=10, w=30, h=30, score=0.9, risk_group=4, mode="none", strength=0.0,
                          suspect=True, identity="matched", track_id=9, subject_ref="ab"))
    assert mask_regions(faces, 160, 120) == (MaskRegion(x=90, y=35, w=60, h=85, mode="gaussian"),
                                             MaskRegion(x=0, y=0, w=30, h=30, mode="gaussian", shape="ellipse"))
    msg = redacted_message(encode_frame(_masked().replace(faces=faces)), faces)
    assert msg.decisions == faces  # in memory, for the Audit stage
    header = msg.value[:msg.value.index(b"\xff\xd8")]  # every field before the JPEG bytes
    assert b"cam-t" in header and b"matched" not in header and b"unknown" not in header
