"""The pipeline on Beam's portable path (pipeline proto -> job service -> separate SDK worker process, EXTERNAL
environment), the way Flink runs it: bounded (every frame out, the bad record in the DLQ, offsets committed by
the bundle finalizer in the worker process) and streaming (frames written while it runs come out)."""

from __future__ import annotations

import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from pipelines.frame import DEDUPE_HEADER
from tests.pipeline_support import TopicReader, camera_frame, header, scenes, send_raw
from tests.pipelines.test_pipeline_streaming import stop


@pytest.fixture(scope="module")
def portable(tmp_path_factory):
    from infra.portable import PortableServices

    services = PortableServices(tmp_path_factory.mktemp("portable"))
    info = services.start(timeout_s=120)
    try:
        yield info
    finally:
        services.stop()


@pytest.fixture(scope="module")
def frames():
    return scenes(3, faces_per_frame=2, size=(640, 360), max_width=100, seed=11)


def _topics(bootstrap: str) -> tuple[str, str, str, str]:
    from infra import broker as embedded

    tag = uuid.uuid4().hex[:8]
    names = (f"raw-{tag}", f"red-{tag}", f"dlq-{tag}")
    embedded.create_topics(bootstrap, names)
    return (*names, f"g-{tag}")


def _cmd(bootstrap: str, raw: str, redacted: str, dlq: str, group: str, *extra: str) -> list[str]:
    return [str(Path(sys.executable).with_name("riskmask")), "run", "--bootstrap-servers", bootstrap,
            "--raw-topic", raw, "--redacted-topic", redacted, "--dlq-topic", dlq, "--group-id", group, *extra]


def _committed(bootstrap: str, group: str, topic: str):
    from kafka import KafkaConsumer
    from kafka.structs import TopicPartition

    consumer = KafkaConsumer(bootstrap_servers=bootstrap, group_id=group, enable_auto_commit=False)
    try:
        return consumer.committed(TopicPartition(topic, 0))
    finally:
        consumer.close(autocommit=False)


def test_bounded_run_on_portable_runner(kafka_bootstrap, portable, frames):
    raw, redacted, dlq, group = _topics(kafka_bootstrap)
    send_raw(kafka_bootstrap, raw, [(b"cam-p", camera_frame(s.image, seq=i, camera_id="cam-p").to_bytes())
                                    for i, s in enumerate(frames)] + [(b"cam-p", b"not a frame")])
    run = subprocess.run(_cmd(kafka_bootstrap, raw, redacted, dlq, group, "--bounded", *portable.riskmask_args()),
                         capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    out, dead = TopicReader(kafka_bootstrap, redacted), TopicReader(kafka_bootstrap, dlq)
    keys = sorted(header(m, DEDUPE_HEADER) for m in out.poll_until(lambda r: len(r) >= 3, 30))
    letters = dead.poll_until(lambda r: len(r) >= 1, 30)
    out.close()
    dead.close()
    assert keys == [f"cam-p/1/{i}" for i in range(3)]
    assert len(letters) == 1
    assert _committed(kafka_bootstrap, group, raw) == 4  # past the last record: the finalizer ran


def test_streaming_run_on_portable_runner(kafka_bootstrap, portable, frames, tmp_path):
    raw, redacted, dlq, group = _topics(kafka_bootstrap)
    with open(tmp_path / "run.log", "wb") as log:
        proc = subprocess.Popen(_cmd(kafka_bootstrap, raw, redacted, dlq, group, *portable.riskmask_args(),
                                     "--checkpointing-interval", "1000"),
                                stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    out = TopicReader(kafka_bootstrap, redacted)
    try:
        alive = lambda: proc.poll() is None  # noqa: E731
        send_raw(kafka_bootstrap, raw, [(b"c", camera_frame(s.image, seq=i).to_bytes()) for i, s in enumerate(frames)])
        assert len(out.poll_until(lambda r: len(r) >= 3, 120, alive)) == 3, (tmp_path / "run.log").read_text()[-3000:]
        send_raw(kafka_bootstrap, raw, [(b"c", camera_frame(frames[0].image, seq=10 + i).to_bytes()) for i in range(2)])
        got = out.poll_until(lambda r: len(r) >= 5, 60, alive)
        assert sorted(header(m, DEDUPE_HEADER) for m in got) == sorted(
            [f"cam-t/1/{i}" for i in (0, 1, 2, 10, 11)])
        assert alive()
    finally:
        out.close()
        stop(proc)
