"""Helpers shared by the pipeline tests: scenes with ground truth, producing frames, reading topics, SFace checks."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Callable, Optional, Sequence

import cv2
import numpy as np
from apache_beam.options.pipeline_options import PipelineOptions
from apache_beam.testing.test_pipeline import TestPipeline

from pipelines.frame import FrameContext, KafkaRecord
from schemas.messages import CameraFrame

Box = tuple[int, int, int, int]


def beam_test_pipeline() -> TestPipeline:
    """A TestPipeline on the FnApiRunner (DirectRunner would first try to download the Prism runner)."""
    return TestPipeline(runner="FnApiRunner", options=PipelineOptions([]))


@dataclass(frozen=True)
class Scene:
    image: np.ndarray
    boxes: list[Box]


def scenes(n: int, faces_per_frame: int = 3, min_width: int = 20, max_width: int = 300,
           size: tuple[int, int] = (1280, 720), seed: int = 0) -> list[Scene]:
    """``n`` frames composed from real faces (astronaut, NASA public domain) with ground-truth boxes."""
    from infra import sample_data, scenes as sc

    src = [sample_data.astronaut_source()]
    bg = sample_data.background("coffee")
    out = []
    for i in range(n):
        placements = sc.random_placements(src, faces_per_frame, size=size, min_width=min_width,
                                          max_width=max_width, seed=seed + i)
        image, boxes = sc.compose_frame(src, placements, bg, size=size)
        out.append(Scene(image, [tuple(int(v) for v in b) for b in boxes]))
    return out


def jpeg(image: np.ndarray, quality: int = 90) -> bytes:
    ok, buf = cv2.imencode(".jpg", image, [int(cv2.IMWRITE_JPEG_QUALITY), quality])
    assert ok
    return buf.tobytes()


def camera_frame(image: np.ndarray, seq: int, camera_id: str = "cam-t", epoch: int = 1,
                 encoding: str = "jpeg", data: Optional[bytes] = None) -> CameraFrame:
    h, w = image.shape[:2]
    if data is None:
        data = jpeg(image) if encoding == "jpeg" else cv2.imencode(".png", image)[1].tobytes()
    return CameraFrame(camera_id=camera_id, epoch=epoch, seq=seq, capture_ts_us=time.time_ns() // 1000,
                       width=w, height=h, image=data, encoding=encoding)


def record(value: bytes, offset: int = 0, topic: str = "frames.raw", partition: int = 0,
           key: Optional[bytes] = b"cam-t") -> KafkaRecord:
    return KafkaRecord(topic=topic, partition=partition, offset=offset, key=key, value=value,
                       timestamp_ms=int(time.time() * 1000))


def frame_context(image: np.ndarray, seq: int = 0) -> FrameContext:
    import hashlib

    data = jpeg(image)
    h, w = image.shape[:2]
    return FrameContext(source_topic="frames.raw", source_partition=0, source_offset=seq, camera_id="cam-t",
                        epoch=1, seq=seq, capture_ts_us=1_000_000 + seq, width=w, height=h,
                        raw_sha256=hashlib.sha256(data).digest(), raw_size=len(data), image=image)


def send_raw(bootstrap: str, topic: str, values: Sequence[tuple[Optional[bytes], bytes]]) -> None:
    """Produce (key, value) records and wait until every one is acknowledged."""
    from kafka import KafkaProducer

    prod = KafkaProducer(bootstrap_servers=bootstrap, acks="all", max_request_size=32 * 1024 * 1024)
    try:
        futures = [prod.send(topic, key=k, value=v) for k, v in values]
        prod.flush()
        for f in futures:
            f.get(timeout=30)
    finally:
        prod.close()


class TopicReader:
    """Reads a topic from the beginning, accumulating records across calls."""

    def __init__(self, bootstrap: str, topic: str) -> None:
        from kafka import KafkaConsumer

        self._consumer = KafkaConsumer(topic, bootstrap_servers=bootstrap, auto_offset_reset="earliest",
                                       group_id=None, fetch_max_bytes=64 * 1024 * 1024,
                                       max_partition_fetch_bytes=64 * 1024 * 1024)
        self.records: list = []

    def poll_until(self, done: Callable[[list], bool], timeout_s: float,
                   alive: Optional[Callable[[], bool]] = None) -> list:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline and not done(self.records):
            if alive is not None and not alive():
                break
            for msgs in self._consumer.poll(timeout_ms=250).values():
                self.records.extend(msgs)
        return self.records

    def close(self) -> None:
        self._consumer.close()


def header(msg, name: str) -> str:
    return dict(msg.headers)[name].decode()


def face_similarity(recognizer, detector, original: np.ndarray, output: np.ndarray, box: Box) -> float:
    """SFace cosine between a ground-truth face in ``original`` and the same region of ``output``.

    The face is aligned with the landmarks the detector finds on the original (the same crop geometry is
    used on the output); if the detector does not find it, both sides use the plain box crop.
    """
    from pipelines.models.alignment import cosine

    match = None
    for det in detector.detect(original):
        if _iou(box, (det.x, det.y, det.w, det.h)) > 0.3:
            match = det
            break
    if match is not None:
        a, b = recognizer.embed(original, [match])[0], recognizer.embed(output, [match])[0]
    else:
        x, y, w, h = box
        crops = [cv2.resize(img[y:y + h, x:x + w], (112, 112), interpolation=cv2.INTER_LINEAR)
                 for img in (original, output)]
        a, b = recognizer.embed_aligned(crops)
    return float(cosine(a, b))


def _iou(a, b) -> float:
    ax0, ay0, ax1, ay1 = a[0], a[1], a[0] + a[2], a[1] + a[3]
    bx0, by0, bx1, by1 = b[0], b[1], b[0] + b[2], b[1] + b[3]
    iw, ih = max(0.0, min(ax1, bx1) - max(ax0, bx0)), max(0.0, min(ay1, by1) - max(ay0, by0))
    inter = iw * ih
    union = a[2] * a[3] + b[2] * b[3] - inter
    return inter / union if union > 0 else 0.0
