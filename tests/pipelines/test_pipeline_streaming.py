"""Acceptance: `riskmask run` streaming on the FnApiRunner against the embedded broker.

Frames composed from real faces with ground truth go in; every frame comes out exactly once (by dedupe key),
every ground-truth face of 20 px or more is de-identified (SFace cosine between the original face and the
same region of the output below the match threshold), and bad records go to the DLQ with a reason while the
pipeline keeps going.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import uuid
from pathlib import Path

import cv2
import numpy as np
import pytest

from pipelines.frame import DEDUPE_HEADER
from schemas.messages import DeadLetter, RedactedFrame
from tests.pipeline_support import TopicReader, camera_frame, face_similarity, header, scenes, send_raw

N_FRAMES = 8
MAX_FRAME_BYTES = 1024 * 1024
CAMERA = "cam-stream"
EPOCH = 42


def riskmask_run(bootstrap: str, raw: str, redacted: str, dlq: str, group: str, log: Path,
                 *extra: str) -> subprocess.Popen:
    """`riskmask run` as its own process group (so a test can kill -9 all of it)."""
    exe = Path(sys.executable).with_name("riskmask")
    cmd = [str(exe), "run", "--bootstrap-servers", bootstrap, "--raw-topic", raw, "--redacted-topic", redacted,
           "--dlq-topic", dlq, "--group-id", group, "--max-frame-bytes", str(MAX_FRAME_BYTES), *extra]
    fh = open(log, "ab")
    try:
        return subprocess.Popen(cmd, stdout=fh, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                start_new_session=True)
    finally:
        fh.close()


def stop(proc: subprocess.Popen, sig: int = signal.SIGTERM) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, sig)
    try:
        proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)


@pytest.fixture(scope="module")
def stream_run(kafka_bootstrap, tmp_path_factory):
    from infra import broker as embedded

    tag = uuid.uuid4().hex[:8]
    raw, redacted, dlq = f"raw-{tag}", f"red-{tag}", f"dlq-{tag}"
    embedded.create_topics(kafka_bootstrap, [raw, redacted, dlq])
    log = tmp_path_factory.mktemp("run") / "run.log"
    frames = scenes(N_FRAMES, faces_per_frame=3, min_width=20, max_width=300, seed=100)
    proc = riskmask_run(kafka_bootstrap, raw, redacted, dlq, f"g-{tag}", log)
    out, dead = TopicReader(kafka_bootstrap, redacted), TopicReader(kafka_bootstrap, dlq)
    try:
        good = [camera_frame(s.image, seq=i, camera_id=CAMERA, epoch=EPOCH) for i, s in enumerate(frames)]
        send_raw(kafka_bootstrap, raw, [(CAMERA.encode(), f.to_bytes()) for f in good[:4]])
        corrupt = camera_frame(frames[0].image, seq=100, camera_id=CAMERA, epoch=EPOCH,
                               data=good[0].image[:600] + b"\x00" * 64)
        bad = [
            corrupt.to_bytes(),  # JPEG cut short and zero-filled
            DeadLetter("x", 0, 0, "decode", "x", b"\x00" * 32, 1, 1).to_bytes(),  # another schema
            camera_frame(frames[0].image, seq=101, camera_id=CAMERA, epoch=EPOCH,
                         data=os.urandom(MAX_FRAME_BYTES + 1)).to_bytes(),  # oversized
        ]
        send_raw(kafka_bootstrap, raw, [(CAMERA.encode(), b) for b in bad])
        send_raw(kafka_bootstrap, raw, [(CAMERA.encode(), f.to_bytes()) for f in good[4:]])
        alive = lambda: proc.poll() is None  # noqa: E731
        outputs = out.poll_until(lambda r: len(r) >= N_FRAMES, 150, alive)
        letters = dead.poll_until(lambda r: len(r) >= 3, 30, alive)
        assert proc.poll() is None, log.read_text()[-3000:]
        yield frames, outputs, letters
    finally:
        out.close()
        dead.close()
        stop(proc)


def test_every_frame_exactly_once(stream_run):
    frames, outputs, _ = stream_run
    keys = [header(m, DEDUPE_HEADER) for m in outputs]
    assert sorted(keys) == sorted(f"{CAMERA}/{EPOCH}/{i}" for i in range(N_FRAMES))
    for m in outputs:
        rf = RedactedFrame.from_bytes(m.value)
        assert m.key == CAMERA.encode() and not rf.degraded
        assert (rf.width, rf.height) == (1280, 720) and rf.policy_id and rf.detector_id


def test_every_ground_truth_face_is_deidentified(stream_run):
    from pipelines.models.detector import load_detector
    from pipelines.models.recognizer import MATCH_THRESHOLD, load_recognizer

    frames, outputs, _ = stream_run
    detector, recognizer = load_detector("yunet"), load_recognizer()
    checked = 0
    worst = []
    for m in outputs:
        rf = RedactedFrame.from_bytes(m.value)
        scene = frames[rf.seq]
        image = cv2.imdecode(np.frombuffer(rf.image, np.uint8), cv2.IMREAD_COLOR)
        for box in scene.boxes:
            if box[2] < 20:
                continue
            sim = face_similarity(recognizer, detector, scene.image, image, box)
            worst.append((round(sim, 3), rf.seq, box))
            checked += 1
    assert checked >= 2 * N_FRAMES
    assert all(s < MATCH_THRESHOLD for s, _, _ in worst), sorted(worst, reverse=True)[:5]


def test_bad_records_go_to_dlq_and_pipeline_continues(stream_run):
    _, outputs, letters = stream_run
    reasons = sorted(DeadLetter.from_bytes(m.value).reason for m in letters)
    assert reasons == ["corrupt_image", "foreign_schema", "oversized"]
    for m in letters:
        dl = DeadLetter.from_bytes(m.value)
        assert len(m.value) < 2048 and dl.stage == "decode" and dl.payload_size > 0
    # frames sent after the bad records were processed too
    assert {RedactedFrame.from_bytes(m.value).seq for m in outputs} >= set(range(4, N_FRAMES))
