"""Acceptance: the riskmask pipeline survives Beam's portable submission path, the one Flink uses.

``riskmask run --bounded --runner PortableRunner`` submits the pipeline proto to Beam's Python job service,
which runs it with the SDK harness in a separate worker process started by a worker pool (an EXTERNAL
environment, as the Flink task manager's ``--worker_pool`` sidecar). Real-face frames go through the embedded
broker; every frame comes out once, every face is de-identified, the bad record goes to the DLQ, the source's
offsets are committed by bundle finalization, the detector ran in the worker process and not in the job
service, and stopping the services leaves no process behind.
"""

from __future__ import annotations

import logging
import os
import socket
import subprocess
import sys
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np
import pytest

from infra.portable import PortableInfo, PortableServices, PortableUsageError, child_env, group_members
from pipelines.frame import DEDUPE_HEADER
from schemas.messages import DeadLetter, RedactedFrame
from tests.pipeline_support import TopicReader, camera_frame, face_similarity, header, scenes, send_raw

logger = logging.getLogger(__name__)

N_FRAMES = 6
CAMERA = "cam-portable"
EPOCH = 77
MAX_FRAME_BYTES = 1024 * 1024
RUN_TIMEOUT_S = 420


@dataclass
class PortableRun:
    info: PortableInfo
    frames: list
    outputs: list
    letters: list
    returncode: int
    log: str
    submit_to_done_s: float
    submitter_pid: int
    committed: int | None
    end_offset: int
    worker_pids: list[int]
    worker_parents: dict[int, int] = field(default_factory=dict)
    onnx_in_worker: set[int] = field(default_factory=set)
    onnx_in_job_service: bool = False


def _maps_have_onnxruntime(pid: int) -> bool:
    try:
        return "onnxruntime" in Path(f"/proc/{pid}/maps").read_text()
    except OSError:
        return False


def _ppid(pid: int) -> int | None:
    try:
        return int(Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[1])
    except OSError:
        return None


def _committed(bootstrap: str, topic: str, group: str) -> int | None:
    from kafka import KafkaConsumer
    from kafka.structs import TopicPartition

    consumer = KafkaConsumer(bootstrap_servers=bootstrap, group_id=group, enable_auto_commit=False)
    try:
        return consumer.committed(TopicPartition(topic, 0))
    finally:
        consumer.close(autocommit=False)


@pytest.fixture(scope="module")
def services(tmp_path_factory):
    svc = PortableServices(tmp_path_factory.mktemp("portable"))
    t0 = time.monotonic()
    info = svc.start(timeout_s=120, die_with_parent=True)
    logger.info("portable services ready in %.1f s", time.monotonic() - t0)
    try:
        yield svc, info
    finally:
        svc.stop()


@pytest.fixture(scope="module")
def portable_run(kafka_bootstrap, services, tmp_path_factory):
    from infra import broker as embedded

    logging.getLogger("kafka").setLevel(logging.WARNING)
    svc, info = services
    tag = uuid.uuid4().hex[:8]
    raw, redacted, dlq, group = f"raw-{tag}", f"red-{tag}", f"dlq-{tag}", f"g-{tag}"
    embedded.create_topics(kafka_bootstrap, [raw, redacted, dlq])
    frames = scenes(N_FRAMES, faces_per_frame=3, min_width=24, max_width=260, seed=300)
    good = [camera_frame(s.image, seq=i, camera_id=CAMERA, epoch=EPOCH) for i, s in enumerate(frames)]
    corrupt = camera_frame(frames[0].image, seq=100, camera_id=CAMERA, epoch=EPOCH,
                           data=good[0].image[:600] + b"\x00" * 64)
    values = [(CAMERA.encode(), f.to_bytes()) for f in good[:3]] + [(CAMERA.encode(), corrupt.to_bytes())] + \
             [(CAMERA.encode(), f.to_bytes()) for f in good[3:]]
    send_raw(kafka_bootstrap, raw, values)

    log = tmp_path_factory.mktemp("submit") / "run.log"
    cmd = [str(Path(sys.executable).with_name("riskmask")), "run", "--bounded", *info.riskmask_args(),
           "--bootstrap-servers", kafka_bootstrap, "--raw-topic", raw, "--redacted-topic", redacted,
           "--dlq-topic", dlq, "--group-id", group, "--max-frame-bytes", str(MAX_FRAME_BYTES),
           "--max-records-per-bundle", "2"]
    seen_workers: set[int] = set()
    parents: dict[int, int] = {}
    onnx_workers: set[int] = set()
    onnx_job = False
    t0 = time.monotonic()
    with open(log, "wb") as fh:
        proc = subprocess.Popen(cmd, stdout=fh, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                start_new_session=True)
    try:
        # Sample the processes while the job runs: which one loads the detector's onnxruntime?
        while proc.poll() is None and time.monotonic() - t0 < RUN_TIMEOUT_S:
            for pid in svc.worker_pids(info):
                seen_workers.add(pid)
                ppid = _ppid(pid)
                if ppid is not None:
                    parents.setdefault(pid, ppid)
                if pid not in onnx_workers and _maps_have_onnxruntime(pid):
                    onnx_workers.add(pid)
            onnx_job = onnx_job or _maps_have_onnxruntime(info.job.pid)
            time.sleep(0.1)
        submit_to_done = time.monotonic() - t0
        if proc.poll() is None:
            os.killpg(proc.pid, 9)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, 9)
            proc.wait(timeout=30)
    onnx_job = onnx_job or _maps_have_onnxruntime(info.job.pid)
    out, dead = TopicReader(kafka_bootstrap, redacted), TopicReader(kafka_bootstrap, dlq)
    try:
        outputs = list(out.poll_until(lambda r: len(r) >= N_FRAMES, 30))
        out.poll_until(lambda r: False, 1.0)  # anything beyond N would be a duplicate: give it a chance
        outputs = list(out.records)
        letters = list(dead.poll_until(lambda r: len(r) >= 1, 30))
    finally:
        out.close()
        dead.close()
    logger.info("portable run: %d outputs, %d dead letters, submit-to-done %.1f s, workers %s",
                len(outputs), len(letters), submit_to_done, sorted(seen_workers | set(svc.worker_pids(info))))
    return PortableRun(info=info, frames=frames, outputs=outputs, letters=letters, returncode=proc.returncode,
                       log=log.read_text(errors="replace"), submit_to_done_s=submit_to_done,
                       submitter_pid=proc.pid, committed=_committed(kafka_bootstrap, raw, group),
                       end_offset=len(values), worker_pids=svc.worker_pids(info), worker_parents=parents,
                       onnx_in_worker=onnx_workers, onnx_in_job_service=onnx_job)


def test_job_finishes_done(portable_run):
    assert portable_run.returncode == 0, portable_run.log[-4000:]
    job_log = Path(portable_run.info.job.log_file).read_text(errors="replace")
    assert "Completed job in" in job_log and "DONE" in job_log, job_log[-3000:]


def test_every_frame_exactly_once(portable_run):
    keys = Counter(header(m, DEDUPE_HEADER) for m in portable_run.outputs)
    assert keys == Counter({f"{CAMERA}/{EPOCH}/{i}": 1 for i in range(N_FRAMES)}), portable_run.log[-3000:]
    for m in portable_run.outputs:
        rf = RedactedFrame.from_bytes(m.value)
        assert m.key == CAMERA.encode() and not rf.degraded
        assert (rf.width, rf.height) == (1280, 720) and rf.policy_id and rf.detector_id


def test_bad_record_goes_to_dlq(portable_run):
    assert [DeadLetter.from_bytes(m.value).reason for m in portable_run.letters] == ["corrupt_image"]


def test_every_face_is_masked(portable_run):
    from pipelines.models.detector import load_detector
    from pipelines.models.recognizer import MATCH_THRESHOLD, load_recognizer

    detector, recognizer = load_detector("yunet"), load_recognizer()
    sims, contrasts = [], []
    for m in portable_run.outputs:
        rf = RedactedFrame.from_bytes(m.value)
        scene = portable_run.frames[rf.seq]
        image = cv2.imdecode(np.frombuffer(rf.image, np.uint8), cv2.IMREAD_COLOR)
        diff = cv2.absdiff(cv2.cvtColor(scene.image, cv2.COLOR_BGR2GRAY),
                           cv2.cvtColor(image, cv2.COLOR_BGR2GRAY)).astype(np.float32)
        untouched = np.ones(diff.shape, bool)
        for x, y, w, h in scene.boxes:  # masks reach past the box (mask_scale): keep a wide margin
            untouched[max(0, y - 2 * h):y + 3 * h, max(0, x - 2 * w):x + 3 * w] = False
        for f in rf.masks:  # gap-filled masks of faces from earlier frames are masks too, not background
            untouched[max(0, f.y - f.h):f.y + 2 * f.h, max(0, f.x - f.w):f.x + 2 * f.w] = False
        background = float(diff[untouched].mean()) if untouched.any() else 0.0
        for box in scene.boxes:
            x, y, w, h = box
            if w < 20:
                continue
            contrasts.append((float(diff[y:y + h, x:x + w].mean()), background, rf.seq, box))
            sims.append((round(face_similarity(recognizer, detector, scene.image, image, box), 3), rf.seq, box))
    assert len(sims) >= 2 * N_FRAMES
    logger.info("faces checked %d: highest SFace cosine %.3f; lowest face-region change %.1f (background %.1f)",
                len(sims), max(s for s, _, _ in sims), *min(contrasts)[:2])
    # the face region changed far more than the rest of the frame (which only went through JPEG again)
    assert all(inside > max(8.0, 4 * bg) for inside, bg, _, _ in contrasts), sorted(contrasts)[:5]
    assert all(s < MATCH_THRESHOLD for s, _, _ in sims), sorted(sims, reverse=True)[:5]


def test_work_ran_in_a_separate_worker_process(portable_run):
    run = portable_run
    assert run.worker_pids, Path(run.info.pool.log_file).read_text(errors="replace")[-3000:]
    others = {os.getpid(), run.submitter_pid, run.info.job.pid, run.info.pool.pid}
    assert not set(run.worker_pids) & others
    assert all(run.worker_parents.get(pid) == run.info.pool.pid for pid in run.worker_pids), run.worker_parents
    # the detector (onnxruntime) was loaded by a pool worker, never by the job service that ran the graph
    assert run.onnx_in_worker and run.onnx_in_worker <= set(run.worker_pids)
    assert not run.onnx_in_job_service


def test_offsets_committed_by_bundle_finalization(portable_run):
    assert portable_run.committed == portable_run.end_offset


def _listen_addresses(port: int) -> set[str]:
    """Local addresses (hex, as /proc/net/tcp* writes them) of sockets listening on ``port``."""
    out = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            local, state = line.split()[1], line.split()[3]
            addr, _, hex_port = local.partition(":")
            if state == "0A" and int(hex_port, 16) == port:
                out.add(addr)
    return out


def test_services_listen_on_loopback_only(services):
    _, info = services
    # 127.0.0.1, ::1 and ::ffff:127.0.0.1 (gRPC listens on IPv4 addresses through dual-stack sockets)
    loopback = {"0100007F", "00000000000000000000000001000000", "0000000000000000FFFF00000100007F"}
    for port in (info.job.port, info.pool.port):
        addrs = _listen_addresses(port)
        assert addrs and addrs <= loopback, (port, addrs)


def test_second_start_is_refused_and_interpreter_is_checked(services, tmp_path):
    svc, info = services
    with pytest.raises(PortableUsageError, match="already run"):
        PortableServices(svc.state_dir).start(timeout_s=5)
    assert PortableServices(svc.state_dir).info() == info  # another process finds the running pair
    with pytest.raises(PortableUsageError, match="virtual environment"):
        child_env(str(tmp_path / "bin" / "python3"))


def test_stop_leaves_no_process(services, portable_run):
    svc, info = services
    stopped = svc.stop()
    assert stopped is not None and stopped.job.pid == info.job.pid
    assert group_members(info.job.pid) == [] and group_members(info.pool.pid) == []
    for pid in portable_run.worker_pids:
        assert not Path(f"/proc/{pid}").exists() or Path(f"/proc/{pid}/stat").read_text().split()[2] == "Z"
    for port in (info.job.port, info.pool.port):
        with pytest.raises(OSError):
            socket.create_connection(("127.0.0.1", port), timeout=2).close()
    assert svc.info() is None and not svc.state_file.exists()


def test_streaming_job_reads_continuously_and_commits(kafka_bootstrap, tmp_path):
    """Unbounded mode through the same path: the source self-checkpoints, the job keeps running, later
    frames come out too, and offsets are committed while it runs (the local job service finalizes bundles
    as they finish; Flink would after each checkpoint)."""
    from infra import broker as embedded

    svc = PortableServices(tmp_path / "portable")
    info = svc.start(timeout_s=120, die_with_parent=True)
    tag = uuid.uuid4().hex[:8]
    raw, redacted, dlq, group = f"raw-{tag}", f"red-{tag}", f"dlq-{tag}", f"g-{tag}"
    embedded.create_topics(kafka_bootstrap, [raw, redacted, dlq])
    base = scenes(4, faces_per_frame=2, min_width=24, max_width=160, size=(640, 360), seed=11)
    values = [(CAMERA.encode(), camera_frame(base[i % 4].image, seq=i, camera_id=CAMERA, epoch=EPOCH).to_bytes())
              for i in range(16)]
    log = tmp_path / "run.log"
    cmd = [str(Path(sys.executable).with_name("riskmask")), "run", *info.riskmask_args(),
           "--checkpointing-interval", "10000", "--bootstrap-servers", kafka_bootstrap, "--raw-topic", raw,
           "--redacted-topic", redacted, "--dlq-topic", dlq, "--group-id", group, "--max-records-per-bundle", "4"]
    out = TopicReader(kafka_bootstrap, redacted)
    with open(log, "wb") as fh:
        proc = subprocess.Popen(cmd, stdout=fh, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                start_new_session=True)
    alive = lambda: proc.poll() is None  # noqa: E731
    try:
        t0 = time.monotonic()
        send_raw(kafka_bootstrap, raw, values[:8])
        out.poll_until(lambda r: len(r) >= 8, 150, alive)
        first = time.monotonic() - t0
        assert alive() and len(out.records) >= 8, log.read_text(errors="replace")[-3000:]
        t1 = time.monotonic()
        send_raw(kafka_bootstrap, raw, values[8:])
        got = out.poll_until(lambda r: len(r) >= 16, 120, alive)
        second = time.monotonic() - t1
        assert alive(), log.read_text(errors="replace")[-3000:]
        keys = Counter(header(m, DEDUPE_HEADER) for m in got)
        assert keys == Counter({f"{CAMERA}/{EPOCH}/{i}": 1 for i in range(16)})
        committed = None
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and committed != len(values):
            committed = _committed(kafka_bootstrap, raw, group)
            time.sleep(0.5)
        assert committed == len(values)
        workers = svc.worker_pids(info)
        assert workers and not set(workers) & {os.getpid(), proc.pid, info.job.pid, info.pool.pid}
        logger.info("portable streaming: first 8 frames %.1f s after submit, next 8 in %.1f s", first, second)
    finally:
        out.close()
        if proc.poll() is None:
            os.killpg(proc.pid, 15)
        proc.wait(timeout=30)
        svc.stop()  # the job outlives its submitter (as on Flink); stopping the services ends it
    assert group_members(info.job.pid) == [] and group_members(info.pool.pid) == []
