"""The camera producer against the real embedded broker: library class and `riskmask produce`."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import pytest

from pipelines.ingest import producer as prod
from schemas.messages import CameraFrame

N_VIDEO_FRAMES = 12


def _astronaut_bgr() -> np.ndarray:
    from skimage import data

    return cv2.cvtColor(data.astronaut(), cv2.COLOR_RGB2BGR)


@pytest.fixture(scope="module")
def video_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A real mp4 of the astronaut photo, a frame counter drawn into each frame."""
    path = tmp_path_factory.mktemp("video") / "astronaut.mp4"
    base = cv2.resize(_astronaut_bgr(), (320, 240))
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), 25.0, (320, 240))
    assert writer.isOpened()
    for i in range(N_VIDEO_FRAMES):
        frame = base.copy()
        cv2.putText(frame, str(i), (10, 40), cv2.FONT_HERSHEY_SIMPLEX, 1.2, (255, 255, 255), 2)
        writer.write(frame)
    writer.release()
    return path


@pytest.fixture(scope="module")
def image_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("images")
    img = _astronaut_bgr()
    cv2.imwrite(str(path / "a.jpg"), img)
    cv2.imwrite(str(path / "b.png"), cv2.resize(img, (256, 256)))
    (path / "c.jpg").write_bytes(b"not a jpeg")  # unreadable: skipped with a warning
    (path / "notes.txt").write_text("ignored")
    return path


def _consume(bootstrap: str, topic: str, expected: int, timeout_s: float = 60.0) -> list:
    from kafka import KafkaConsumer, TopicPartition

    consumer = KafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False, request_timeout_ms=30000,
                             max_partition_fetch_bytes=16 << 20, fetch_max_bytes=64 << 20)
    try:
        parts = [TopicPartition(topic, p) for p in sorted(consumer.partitions_for_topic(topic) or ())]
        consumer.assign(parts)
        consumer.seek_to_beginning()
        out: list = []
        deadline = time.monotonic() + timeout_s
        while len(out) < expected and time.monotonic() < deadline:
            for records in consumer.poll(timeout_ms=1000).values():
                out.extend(records)
        # a short extra poll: nothing beyond what was expected may be there
        for records in consumer.poll(timeout_ms=500).values():
            out.extend(records)
        return out
    finally:
        consumer.close()


def test_video_file_to_kafka(kafka_bootstrap: str, topic_factory, video_file: Path) -> None:
    topic = topic_factory(partitions=2)
    cfg = prod.ProducerConfig(source=str(video_file), camera_id="gate-3", bootstrap_servers=kafka_bootstrap,
                              topic=topic, fps=0, resize=(640, 360), jpeg_quality=80)
    before = prod.now_us()
    with prod.CameraProducer(cfg) as p:
        stats = p.run()
    assert stats.frames == N_VIDEO_FRAMES and stats.bytes > 0 and not stats.interrupted
    assert before <= stats.epoch <= prod.now_us()

    records = _consume(kafka_bootstrap, topic, N_VIDEO_FRAMES)
    assert len(records) == N_VIDEO_FRAMES
    assert {r.key for r in records} == {b"gate-3"} and len({r.partition for r in records}) == 1
    frames = [CameraFrame.from_bytes(r.value) for r in sorted(records, key=lambda r: r.offset)]
    assert [f.seq for f in frames] == list(range(N_VIDEO_FRAMES))
    assert {f.epoch for f in frames} == {stats.epoch} and {f.camera_id for f in frames} == {"gate-3"}
    ts = [f.capture_ts_us for f in frames]
    assert ts == sorted(ts) and before <= ts[0]
    for f in frames:
        img = cv2.imdecode(np.frombuffer(f.image, np.uint8), cv2.IMREAD_COLOR)
        assert img.shape == (360, 640, 3) and (f.width, f.height) == (640, 360) and f.encoding == "jpeg"
    assert stats.bytes == sum(len(r.value) for r in records)


def test_image_dir_loop_and_max_frames(kafka_bootstrap: str, topic_factory, image_dir: Path) -> None:
    topic = topic_factory()
    cfg = prod.ProducerConfig(source=str(image_dir), camera_id="lobby", bootstrap_servers=kafka_bootstrap,
                              topic=topic, loop=True, max_frames=5)
    with prod.CameraProducer(cfg) as p:
        stats = p.run()
    assert stats.frames == 5
    frames = [CameraFrame.from_bytes(r.value) for r in _consume(kafka_bootstrap, topic, 5)]
    # a.jpg (512x512), b.png (256x256), a, b, a: the junk file is skipped, the directory starts over
    assert [(f.width, f.height) for f in sorted(frames, key=lambda f: f.seq)] == [(512, 512), (256, 256)] * 2 + [
        (512, 512)]


def test_pacing_and_new_epoch_per_producer(kafka_bootstrap: str, topic_factory, video_file: Path) -> None:
    topic = topic_factory()
    cfg = prod.ProducerConfig(source=str(video_file), bootstrap_servers=kafka_bootstrap, topic=topic, fps=20,
                              max_frames=8)
    with prod.CameraProducer(cfg) as p1:
        stats = p1.run()
    assert stats.frames == 8
    assert stats.seconds >= 7 / 20 * 0.95, "frames must be paced at the requested rate"
    with prod.CameraProducer(dataclass_replace(cfg, fps=0)) as p2:
        again = p2.run()
    assert again.epoch > stats.epoch, "a restarted producer gets a new epoch so (camera, epoch, seq) stays unique"
    frames = [CameraFrame.from_bytes(r.value) for r in _consume(kafka_bootstrap, topic, 16)]
    assert sorted((f.epoch, f.seq) for f in frames) == [(stats.epoch, i) for i in range(8)] + [
        (again.epoch, i) for i in range(8)]


def dataclass_replace(cfg: prod.ProducerConfig, **changes) -> prod.ProducerConfig:
    import dataclasses

    return dataclasses.replace(cfg, **changes)


def test_send_encoded_keeps_bytes(kafka_bootstrap: str, topic_factory) -> None:
    topic = topic_factory()
    payload = cv2.imencode(".png", _astronaut_bgr())[1].tobytes()
    cfg = prod.ProducerConfig(source="unused", bootstrap_servers=kafka_bootstrap, topic=topic)
    with prod.CameraProducer(cfg, epoch=42) as p:
        sent = p.send_encoded(payload, 512, 512, capture_ts_us=7, encoding="png")
        p.flush()
    (rec,) = _consume(kafka_bootstrap, topic, 1)
    assert CameraFrame.from_bytes(rec.value) == sent
    assert sent.image == payload and sent.epoch == 42 and sent.seq == 0 and sent.capture_ts_us == 7


@pytest.mark.parametrize("kwargs, match", [
    ({"fps": -1}, "fps"),
    ({"max_frames": 0}, "max frames"),
    ({"jpeg_quality": 0}, "jpeg quality"),
    ({"jpeg_quality": 101}, "jpeg quality"),
    ({"camera_id": ""}, "camera id"),
    ({"camera_id": "a\nb"}, "camera id"),
    ({"resize": (0, 10)}, "resize"),
    ({"topic": ""}, "topic"),
])
def test_config_rejects_bad_values(kwargs: dict, match: str) -> None:
    with pytest.raises(prod.ProducerError, match=match):
        prod.ProducerConfig(source="x", **kwargs)


@pytest.mark.parametrize("text, expected", [("1280x720", (1280, 720)), (" 64X48 ", (64, 48))])
def test_parse_resize(text: str, expected: tuple[int, int]) -> None:
    assert prod.parse_resize(text) == expected


@pytest.mark.parametrize("text", ["", "1280", "1280x", "x720", "-1x5", "12.5x7", "axb"])
def test_parse_resize_rejects(text: str) -> None:
    with pytest.raises(prod.ProducerError):
        prod.parse_resize(text)


def test_frame_source_errors(tmp_path: Path) -> None:
    with pytest.raises(prod.ProducerError, match="not found"):
        prod.FrameSource(str(tmp_path / "missing.mp4"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(prod.ProducerError, match="no image files"):
        prod.FrameSource(str(tmp_path / "empty"))
    junk = tmp_path / "junk.mp4"
    junk.write_bytes(os.urandom(2048))
    with pytest.raises(prod.ProducerError):
        list(prod.FrameSource(str(junk)))
    bad_img = tmp_path / "bad.jpg"
    bad_img.write_bytes(b"\xff\xd8 truncated")
    with pytest.raises(prod.ProducerError, match="cannot read image"):
        prod.FrameSource(str(bad_img))
    only_junk = tmp_path / "only_junk"
    only_junk.mkdir()
    (only_junk / "x.jpg").write_bytes(b"nope")
    with pytest.raises(prod.ProducerError, match="no readable image"):
        list(prod.FrameSource(str(only_junk)))


def test_video_native_fps_and_loop(video_file: Path) -> None:
    src = prod.FrameSource(str(video_file), loop=True)
    assert src.kind == "video" and src.native_fps == pytest.approx(25.0)
    frames = []
    for frame in src:
        frames.append(frame)
        if len(frames) == N_VIDEO_FRAMES + 3:
            break
    assert len(frames) == N_VIDEO_FRAMES + 3  # went past the end and started over


def test_unreachable_broker_is_bounded(tmp_path: Path) -> None:
    from infra.broker import free_port

    cfg = prod.ProducerConfig(source="x", bootstrap_servers=f"127.0.0.1:{free_port()}", connect_timeout_s=1.5)
    t0 = time.monotonic()
    with pytest.raises(prod.BrokerUnavailable, match="cannot reach Kafka"):
        prod.CameraProducer(cfg)
    assert time.monotonic() - t0 < 20


def _cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    full_env = {k: v for k, v in os.environ.items() if k not in ("RISKMASK_BOOTSTRAP", "RISKMASK_HOME")}
    full_env.update(env or {})
    return subprocess.run([sys.executable, "-m", "riskmask", "produce", *args], capture_output=True, text=True,
                          timeout=120, env=full_env)


def test_cli_finds_the_embedded_broker(tmp_path: Path, video_file: Path) -> None:
    """Without --bootstrap-servers, `produce` uses the broker that `riskmask broker start` recorded."""
    from infra.broker import EmbeddedBroker

    brk = EmbeddedBroker(state_dir=tmp_path / "home")
    info = brk.start(topics=["frames.raw"], die_with_parent=True)
    try:
        res = _cli(str(video_file), "--fps", "0", "--max-frames", "3", "--no-progress",
                   env={"RISKMASK_HOME": str(tmp_path / "home")})
        assert res.returncode == 0, res.stderr
        assert info.bootstrap in res.stdout
        assert len(_consume(info.bootstrap, "frames.raw", 3)) == 3
    finally:
        brk.stop()


def test_cli_produce(kafka_bootstrap: str, topic_factory, video_file: Path) -> None:
    topic = topic_factory()
    res = _cli(str(video_file), "--bootstrap-servers", kafka_bootstrap, "--topic", topic, "--fps", "0",
               "--max-frames", "5", "--camera-id", "cli-cam", "--jpeg-quality", "70", "--resize", "160x120")
    assert res.returncode == 0, res.stderr
    assert "5 frames" in res.stdout and "cli-cam" in res.stdout and "MB" in res.stdout and "fps" in res.stdout
    frames = [CameraFrame.from_bytes(r.value) for r in _consume(kafka_bootstrap, topic, 5)]
    assert sorted(f.seq for f in frames) == list(range(5)) and {(f.width, f.height) for f in frames} == {(160, 120)}


@pytest.mark.parametrize("args, code, needle", [
    (["/no/such/file.mp4"], 2, "source not found"),
    (["{video}", "--resize", "big"], 2, "WIDTHxHEIGHT"),
    (["{video}", "--jpeg-quality", "0"], 2, "jpeg quality"),
    (["{video}", "--fps", "-3"], 2, "fps"),
    (["{video}", "--bootstrap-servers", "127.0.0.1:{port}", "--timeout", "1.5"], 3, "cannot reach Kafka"),
])
def test_cli_errors_are_one_line(video_file: Path, args: list[str], code: int, needle: str) -> None:
    from infra.broker import free_port

    argv = [a.format(video=video_file, port=free_port()) for a in args]
    res = _cli(*argv)
    assert res.returncode == code, res.stderr
    assert "Traceback" not in res.stderr, res.stderr
    lines = [ln for ln in res.stderr.splitlines() if ln.startswith("riskmask: error:")]
    assert len(lines) == 1 and needle in lines[0], res.stderr


def test_cameras_can_share_one_kafka_producer(kafka_bootstrap: str, topic_factory) -> None:
    topic = topic_factory(partitions=2)
    shared = prod.make_kafka_producer(kafka_bootstrap)

    def camera(cam_id: str) -> prod.CameraProducer:
        cfg = prod.ProducerConfig(source="-", camera_id=cam_id, bootstrap_servers=kafka_bootstrap, topic=topic)
        return prod.CameraProducer(cfg, kafka_producer=shared)

    try:
        cams = [camera("a"), camera("b")]
        for i in range(6):
            cams[i % 2].send_encoded(b"\xff\xd8jpeg%d" % i, 8, 8)
        for cam in cams:
            cam.flush()
            cam.close()  # must leave the shared client open ...
        late = camera("c")
        late.send_encoded(b"\xff\xd8late", 8, 8)
        late.flush()  # ... so this still goes through
    finally:
        shared.close()
    frames = [CameraFrame.from_bytes(r.value) for r in _consume(kafka_bootstrap, topic, 7)]
    assert sorted((f.camera_id, f.seq) for f in frames) == [("a", 0), ("a", 1), ("a", 2), ("b", 0), ("b", 1),
                                                              ("b", 2), ("c", 0)]
