"""Kafka round trip of 720p camera frames through the embedded broker (or any Kafka): throughput and integrity.

1. N pre-encoded 1280x720 JPEG frames (the astronaut photo tiled into a 720p scene, a frame counter drawn into
   each so every frame differs) are sent by ``CameraProducer.send_encoded`` from several cameras, then
   consumed back with kafka-python using ``assign()`` (no consumer group: Tansu holds JoinGroup ~23 s).
   Every frame must come back exactly once, byte-identical (SHA-256 of the JPEG) and in seq order per camera.
2. The producer's frames/s from a real video file, decode + resize + JPEG encode + send included
   (``CameraProducer.run`` at --fps 0).

    python bench/kafka_roundtrip.py                      # starts its own Tansu broker
    python bench/kafka_roundtrip.py --bootstrap-servers host:9092 --frames 1000 --video clip.mp4

Prints MB/s both ways and writes bench/results/kafka_roundtrip.json.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import hashlib
import importlib.util
import json
import logging
import platform
import sys
import tempfile
import time
import uuid
from pathlib import Path

import cv2
import numpy as np

from infra import broker as embedded
from pipelines.ingest.producer import CameraProducer, ProducerConfig, make_kafka_producer
from schemas.messages import CameraFrame

logger = logging.getLogger("bench.kafka_roundtrip")
RESULTS = Path(__file__).resolve().parent / "results" / "kafka_roundtrip.json"
WIDTH, HEIGHT = 1280, 720


def scene_720p() -> np.ndarray:
    """Two copies of the astronaut photo (real face, public domain) side by side in a 1280x720 BGR frame."""
    from skimage import data

    face = cv2.cvtColor(data.astronaut(), cv2.COLOR_RGB2BGR)
    canvas = np.full((HEIGHT, WIDTH, 3), 96, np.uint8)
    big = cv2.resize(face, (640, 640), interpolation=cv2.INTER_AREA)
    canvas[40:680, 0:640] = big
    canvas[40:680, 640:1280] = cv2.flip(big, 1)
    return canvas


def numbered(base: np.ndarray, i: int) -> np.ndarray:
    frame = base.copy()
    cv2.putText(frame, f"frame {i:05d}", (24, 32), cv2.FONT_HERSHEY_SIMPLEX, 0.9, (255, 255, 255), 2)
    return frame


def make_frames(n: int, quality: int = 90) -> list[bytes]:
    base = scene_720p()
    return [cv2.imencode(".jpg", numbered(base, i), [cv2.IMWRITE_JPEG_QUALITY, quality])[1].tobytes()
            for i in range(n)]


def make_video(path: Path, n: int, fps: float = 25.0) -> Path:
    """A real mp4 (mp4v) of the 720p scene with a frame counter: decode cost like a camera recording."""
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), fps, (WIDTH, HEIGHT))
    if not writer.isOpened():
        raise RuntimeError("cv2.VideoWriter cannot write mp4v here")
    base = scene_720p()
    for i in range(n):
        writer.write(numbered(base, i))
    writer.release()
    return path


def produce(bootstrap: str, topic: str, jpegs: list[bytes], cameras: int) -> dict:
    """Send every JPEG once, round-robin over ``cameras`` producers; returns timings and what was sent."""
    shared = make_kafka_producer(bootstrap, client_id="bench-roundtrip")  # one client, like a multi-camera NVR
    producers = [CameraProducer(ProducerConfig(source="bench", camera_id=f"bench-cam-{c}", bootstrap_servers=bootstrap,
                                               topic=topic), kafka_producer=shared) for c in range(cameras)]
    expected: dict[str, list[str]] = {p.config.camera_id: [] for p in producers}
    sent_bytes = 0
    try:
        t0 = time.perf_counter()
        for i, jpeg in enumerate(jpegs):
            p = producers[i % cameras]
            msg = p.send_encoded(jpeg, WIDTH, HEIGHT)
            expected[msg.camera_id].append(hashlib.sha256(jpeg).hexdigest())
            sent_bytes += len(jpeg)
        for p in producers:
            p.flush()
        seconds = time.perf_counter() - t0
    finally:
        shared.close(timeout=10)
    return {"seconds": seconds, "bytes": sent_bytes, "expected": expected,
            "epochs": {p.config.camera_id: p.epoch for p in producers}}


def consume(bootstrap: str, topic: str, n: int, timeout_s: float = 120.0) -> dict:
    """Read ``n`` records from every partition with assign(); returns frames per camera in offset order."""
    from kafka import KafkaConsumer, TopicPartition

    consumer = KafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False, request_timeout_ms=30000,
                             fetch_max_bytes=64 << 20, max_partition_fetch_bytes=16 << 20)
    try:
        parts = [TopicPartition(topic, p) for p in sorted(consumer.partitions_for_topic(topic) or ())]
        consumer.assign(parts)
        consumer.seek_to_beginning()
        records = []
        t0 = time.perf_counter()
        deadline = time.monotonic() + timeout_s
        while len(records) < n and time.monotonic() < deadline:
            for batch in consumer.poll(timeout_ms=1000, max_records=1000).values():
                records.extend(batch)
        seconds = time.perf_counter() - t0
        extra = sum(len(b) for b in consumer.poll(timeout_ms=500).values())
    finally:
        consumer.close()
    per_camera: dict[str, list[CameraFrame]] = {}
    payload = 0
    for rec in sorted(records, key=lambda r: (r.partition, r.offset)):
        frame = CameraFrame.from_bytes(rec.value)
        if rec.key != frame.camera_id.encode():
            raise AssertionError(f"key {rec.key!r} != camera id {frame.camera_id!r}")
        per_camera.setdefault(frame.camera_id, []).append(frame)
        payload += len(frame.image)
    return {"seconds": seconds, "records": len(records) + extra, "bytes": payload, "per_camera": per_camera}


def verify(sent: dict, got: dict) -> dict:
    """Exactly once, byte-identical, in order per camera: returns counts of each kind of failure."""
    lost = corrupt = out_of_order = duplicated = 0
    for cam, hashes in sent["expected"].items():
        frames = got["per_camera"].get(cam, [])
        seqs = [f.seq for f in frames]
        duplicated += len(seqs) - len(set(seqs))
        out_of_order += sum(1 for a, b in zip(seqs, seqs[1:]) if b <= a)
        lost += len(set(range(len(hashes))) - set(seqs))
        for f in frames:
            if f.epoch != sent["epochs"][cam] or f.seq >= len(hashes) or \
                    hashlib.sha256(f.image).hexdigest() != hashes[f.seq]:
                corrupt += 1
    unexpected = sum(len(v) for k, v in got["per_camera"].items() if k not in sent["expected"])
    return {"lost": lost, "corrupt": corrupt, "out_of_order": out_of_order, "duplicated": duplicated,
            "unexpected": unexpected, "ok": lost == corrupt == out_of_order == duplicated == unexpected == 0}


def video_producer_fps(bootstrap: str, topic: str, video: Path, max_frames: int, quality: int) -> dict:
    cfg = ProducerConfig(source=str(video), camera_id="bench-video", bootstrap_servers=bootstrap, topic=topic,
                         fps=0, max_frames=max_frames, resize=(WIDTH, HEIGHT), jpeg_quality=quality)
    with CameraProducer(cfg) as p:
        stats = p.run()
    return {"video": video.name, "frames": stats.frames, "seconds": round(stats.seconds, 3),
            "fps": round(stats.fps, 1), "mb_per_s": round(stats.megabytes / max(stats.seconds, 1e-9), 1)}


def run(bootstrap: str, frames: int, cameras: int, partitions: int, video: Path | None, video_frames: int,
        quality: int) -> dict:
    topic = f"bench-roundtrip-{uuid.uuid4().hex[:8]}"
    embedded.create_topics(bootstrap, [topic, topic + "-video"], partitions=partitions)
    t = time.perf_counter()
    jpegs = make_frames(frames, quality)
    logger.info("encoded %d frames in %.1f s", frames, time.perf_counter() - t)
    sent = produce(bootstrap, topic, jpegs, cameras)
    got = consume(bootstrap, topic, frames)
    check = verify(sent, got)
    mb = sent["bytes"] / 1e6
    with tempfile.TemporaryDirectory() as tmp:
        clip = video or make_video(Path(tmp) / "astronaut_720p.mp4", video_frames)
        vid = video_producer_fps(bootstrap, topic + "-video", clip, video_frames, quality)
    return {
        "frames": frames, "cameras": cameras, "partitions": partitions, "jpeg_quality": quality,
        "frame_bytes_mean": round(sent["bytes"] / frames), "megabytes": round(mb, 1),
        "produce": {"seconds": round(sent["seconds"], 3), "mb_per_s": round(mb / sent["seconds"], 1),
                    "frames_per_s": round(frames / sent["seconds"], 1)},
        "consume": {"seconds": round(got["seconds"], 3), "records": got["records"],
                    "mb_per_s": round(got["bytes"] / 1e6 / got["seconds"], 1),
                    "frames_per_s": round(got["records"] / got["seconds"], 1)},
        "integrity": check,
        "video_producer": vid,
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--bootstrap-servers", default=None, help="use this Kafka instead of starting Tansu")
    ap.add_argument("--frames", type=int, default=1000)
    ap.add_argument("--cameras", type=int, default=4)
    ap.add_argument("--partitions", type=int, default=4)
    ap.add_argument("--jpeg-quality", type=int, default=90)
    ap.add_argument("--video", type=Path, default=None, help="a real clip for the producer fps (default: generated)")
    ap.add_argument("--video-frames", type=int, default=250)
    ap.add_argument("--out", type=Path, default=RESULTS)
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    logging.getLogger("kafka").setLevel(logging.CRITICAL)

    brk = None
    bootstrap = args.bootstrap_servers
    with tempfile.TemporaryDirectory() as state:
        if bootstrap is None:
            brk = embedded.EmbeddedBroker(state_dir=state)
            bootstrap = brk.start(topics=(), die_with_parent=True).bootstrap
        try:
            result = run(bootstrap, args.frames, args.cameras, args.partitions, args.video, args.video_frames,
                         args.jpeg_quality)
        finally:
            if brk is not None:
                brk.stop()
    result.update({
        "broker": "external" if args.bootstrap_servers else "tansu (embedded, memory storage)",
        "crc32c_c_extension": importlib.util.find_spec("crc32c") is not None,
        "python": platform.python_version(), "machine": platform.machine(), "cpus": _cpus(),
        "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
    })
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    p, c, v, i = result["produce"], result["consume"], result["video_producer"], result["integrity"]
    print(f"{result['frames']} x 720p JPEG ({result['frame_bytes_mean'] / 1e3:.0f} kB mean, {result['megabytes']} MB)")
    print(f"produce: {p['mb_per_s']} MB/s ({p['frames_per_s']} frames/s)")
    print(f"consume: {c['mb_per_s']} MB/s ({c['frames_per_s']} frames/s)")
    print(f"integrity: lost {i['lost']}, corrupt {i['corrupt']}, out of order {i['out_of_order']}, "
          f"duplicated {i['duplicated']} -> {'OK' if i['ok'] else 'FAILED'}")
    print(f"producer from video ({v['video']}, decode + JPEG encode + send): {v['fps']} frames/s")
    print(f"wrote {args.out}")
    return 0 if i["ok"] else 1


def _cpus() -> int:
    import os

    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


if __name__ == "__main__":
    sys.exit(main())
