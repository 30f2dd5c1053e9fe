"""Camera ingest that survives: a live HTTP MJPEG camera that drops mid-stream and comes back is resumed by the
real ``riskmask produce`` process without losing or reusing a sequence number; outages are counted; many
cameras run from one TOML file; raw-frame encryption leaves no decodable picture on frames.raw.

The camera is a real HTTP server on a loopback socket (multipart/x-mixed-replace, what IP cameras serve), read
by OpenCV's FFmpeg backend exactly as in production. Each served frame carries its index as its brightness, so
the test can tell which picture every Kafka record holds.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import cv2
import numpy as np
import pytest

from schemas.messages import CameraFrame

pytestmark = pytest.mark.timeout(300)

STEP = 10  # brightness per frame index


def picture(i: int) -> bytes:
    img = np.full((96, 128, 3), (i * STEP) % 250, np.uint8)
    return cv2.imencode(".jpg", img, [cv2.IMWRITE_JPEG_QUALITY, 95])[1].tobytes()


def index_of(jpeg: bytes) -> int:
    img = cv2.imdecode(np.frombuffer(jpeg, np.uint8), cv2.IMREAD_GRAYSCALE)
    return int(round(float(img.mean()) / STEP))


class DroppingCamera:
    """An MJPEG-over-HTTP camera on a fixed port: serves ``sessions`` bursts of frames; after each burst it
    closes the client socket mid-stream and stops listening for ``down_s`` seconds (the camera is gone), then
    listens again. After the last burst it stays down."""

    def __init__(self, sessions: list[range], down_s: float = 1.5, interval_s: float = 0.03) -> None:
        self.sessions, self.down_s, self.interval_s = sessions, down_s, interval_s
        probe = socket.socket()
        probe.bind(("127.0.0.1", 0))
        self.port = probe.getsockname()[1]
        probe.close()
        self.served: list[int] = []
        self.refused_while_down = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/video.mjpg"

    def _listen(self) -> socket.socket:
        srv = socket.socket()
        srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        srv.bind(("127.0.0.1", self.port))
        srv.listen(4)
        srv.settimeout(0.2)
        return srv

    def _run(self) -> None:
        for n, frames in enumerate(self.sessions):
            srv = self._listen()
            try:
                conn = None
                while conn is None and not self._stop.is_set():
                    try:
                        conn, _ = srv.accept()
                    except socket.timeout:
                        continue
                if conn is None:
                    return
                conn.recv(4096)
                conn.sendall(b"HTTP/1.0 200 OK\r\nContent-Type: multipart/x-mixed-replace; boundary=frame\r\n\r\n")
                for i in frames:
                    data = picture(i)
                    conn.sendall(b"--frame\r\nContent-Type: image/jpeg\r\nContent-Length: %d\r\n\r\n" % len(data)
                                 + data + b"\r\n")
                    self.served.append(i)
                    time.sleep(self.interval_s)
                conn.shutdown(socket.SHUT_RDWR)  # the stream drops mid-stream, without a closing boundary
                conn.close()
            finally:
                srv.close()
            if n < len(self.sessions) - 1:
                self._stop.wait(self.down_s)  # nothing listens: connection refused

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=10)


def read_topic(bootstrap: str, topic: str) -> list[tuple[bytes, bytes]]:
    from kafka import KafkaConsumer, TopicPartition

    consumer = KafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False, consumer_timeout_ms=3000,
                             max_partition_fetch_bytes=16 * 1024 * 1024)
    try:
        tps = [TopicPartition(topic, p) for p in sorted(consumer.partitions_for_topic(topic) or {0})]
        consumer.assign(tps)
        consumer.seek_to_beginning(*tps)
        return [(r.key, r.value) for r in consumer]
    finally:
        consumer.close()


def produce(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    return subprocess.run([sys.executable, "-m", "riskmask", "produce", *args, "--no-progress"],
                          capture_output=True, text=True, timeout=timeout, env=env)


def test_stream_that_drops_and_returns_is_resumed_without_losing_the_sequence(kafka_bootstrap, topic_factory):
    topic = topic_factory()
    camera = DroppingCamera([range(0, 12), range(12, 25)], down_s=1.5)
    try:
        res = produce(camera.url, "--camera-id", "door-1", "--bootstrap-servers", kafka_bootstrap, "--topic", topic,
                      "--fps", "0", "--give-up-after", "3")
    finally:
        camera.close()
    assert res.returncode == 0, res.stdout + res.stderr
    frames = [CameraFrame.from_bytes(v) for _, v in read_topic(kafka_bootstrap, topic)]
    assert camera.served == list(range(25))
    # every served picture arrived once, in order, and the sequence is 0..n-1 across the drop (one epoch)
    assert [index_of(f.image) for f in frames] == list(range(25))
    assert [f.seq for f in frames] == list(range(25))
    assert len({f.epoch for f in frames}) == 1 and {f.camera_id for f in frames} == {"door-1"}
    # the outage shows in capture time, and it is counted: 2 drops (the second one final), 1 reconnect
    gaps = np.diff([f.capture_ts_us for f in frames]) / 1e6
    assert gaps[11] >= 1.0 and np.delete(gaps, 11).max() < 1.0
    summary = res.stdout.strip().splitlines()[-1]
    assert "25 frames" in summary and "2 gap(s)" in summary and "1 reconnect(s)" in summary, summary


def test_a_stream_that_never_answers_fails_with_one_line(kafka_bootstrap, topic_factory):
    probe = socket.socket()
    probe.bind(("127.0.0.1", 0))
    port = probe.getsockname()[1]
    probe.close()  # nothing listens there
    t0 = time.monotonic()
    res = produce(f"http://user:secret@127.0.0.1:{port}/video.mjpg", "--bootstrap-servers", kafka_bootstrap,
                  "--topic", topic_factory(), "--timeout", "2")
    assert res.returncode != 0 and time.monotonic() - t0 < 60
    lines = [ln for ln in res.stderr.strip().splitlines() if ln.strip()]
    assert len(lines) == 1 and "cannot open video source" in lines[0] and "Traceback" not in res.stderr
    assert "secret" not in res.stderr + res.stdout  # credentials never reach the output


def test_many_cameras_from_one_file(kafka_bootstrap, topic_factory, tmp_path: Path):
    topic = topic_factory()
    images = tmp_path / "images"
    images.mkdir()
    for i in range(3):
        (images / f"{i}.jpg").write_bytes(picture(20 + i))
    camera = DroppingCamera([range(0, 6), range(6, 10)], down_s=1.0)
    cameras = tmp_path / "cameras.toml"
    cameras.write_text(f'''
[[camera]]
id = "door-1"
source = "{camera.url}"

[[camera]]
id = "hall-2"
source = "{images}"
loop = true
max_frames = 7
encrypt = true
''')
    try:
        res = produce("--cameras", str(cameras), "--bootstrap-servers", kafka_bootstrap, "--topic", topic,
                      "--fps", "0", "--give-up-after", "3", "--keys-dir", str(tmp_path / "keys"))
    finally:
        camera.close()
    assert res.returncode == 0, res.stdout + res.stderr
    by_cam: dict[str, list[CameraFrame]] = {}
    for key, value in read_topic(kafka_bootstrap, topic):
        f = CameraFrame.from_bytes(value)
        assert key == f.camera_id.encode()
        by_cam.setdefault(f.camera_id, []).append(f)
    door, hall = by_cam["door-1"], by_cam["hall-2"]
    assert [f.seq for f in door] == list(range(10)) and [index_of(f.image) for f in door] == list(range(10))
    assert [f.seq for f in hall] == list(range(7))
    assert all(f.image_key_id is not None and not f.image.startswith(b"\xff\xd8") for f in hall)  # encrypted
    assert all(cv2.imdecode(np.frombuffer(f.image, np.uint8), cv2.IMREAD_COLOR) is None for f in hall)
    assert all(f.image_key_id is None for f in door)
    assert "door-1" in res.stdout and "hall-2" in res.stdout and "1 reconnect(s)" in res.stdout


@pytest.mark.parametrize("content, message", [
    ("[[camera]]\nid = 'a'\n", "missing 'source'"),
    ("[[camera]]\nid = 'a'\nsource = 'x'\nspeed = 3\n", "unknown key 'speed'"),
    ("[[camera]]\nid = 'a'\nsource = 'x'\n[[camera]]\nid = 'a'\nsource = 'y'\n", "appears twice"),
    ("camera = 3\n", "[[camera]] tables"),
    ("[[camera]\n", "invalid TOML"),
    ("[[camera]]\nid = 'a'\nsource = 'x'\nfps = 'fast'\n", "wrong type"),
])
def test_bad_cameras_file_is_one_readable_line(tmp_path: Path, content: str, message: str):
    path = tmp_path / "cameras.toml"
    path.write_text(content)
    res = produce("--cameras", str(path), "--bootstrap-servers", "127.0.0.1:1", timeout=60)
    assert res.returncode != 0 and "Traceback" not in res.stderr
    lines = [ln for ln in res.stderr.strip().splitlines() if ln.strip()]
    assert len(lines) == 1 and message in lines[0], res.stderr
