"""The pipeline on Beam's portable path (pipeline proto -> job service -> separate SDK worker process), the
way Flink runs it, in bounded mode: every frame out, the bad record in the DLQ, offsets committed."""

from __future__ import annotations

import subprocess
import sys
import uuid
from pathlib import Path

from pipeline_support import TopicReader, camera_frame, header, scenes, send_raw
from pipelines.frame import DEDUPE_HEADER


def test_bounded_run_on_portable_runner(kafka_bootstrap, tmp_path):
    from kafka import KafkaConsumer
    from kafka.structs import TopicPartition

    from infra import broker as embedded
    from infra.portable import PortableServices

    tag = uuid.uuid4().hex[:8]
    raw, redacted, dlq, group = f"raw-{tag}", f"red-{tag}", f"dlq-{tag}", f"g-{tag}"
    embedded.create_topics(kafka_bootstrap, [raw, redacted, dlq])
    frames = scenes(3, faces_per_frame=2, size=(640, 360), max_width=100, seed=11)
    send_raw(kafka_bootstrap, raw, [(b"cam-p", camera_frame(s.image, seq=i, camera_id="cam-p").to_bytes())
                                    for i, s in enumerate(frames)] + [(b"cam-p", b"not a frame")])
    services = PortableServices(tmp_path / "portable")
    info = services.start(timeout_s=120)
    try:
        cmd = [str(Path(sys.executable).with_name("riskmask")), "run", "--bootstrap-servers", kafka_bootstrap,
               "--raw-topic", raw, "--redacted-topic", redacted, "--dlq-topic", dlq, "--group-id", group,
               "--bounded", *info.riskmask_args()]
        run = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
        assert run.returncode == 0, run.stderr[-3000:]
    finally:
        services.stop()
    out, dead = TopicReader(kafka_bootstrap, redacted), TopicReader(kafka_bootstrap, dlq)
    keys = sorted(header(m, DEDUPE_HEADER) for m in out.poll_until(lambda r: len(r) >= 3, 30))
    letters = dead.poll_until(lambda r: len(r) >= 1, 30)
    out.close()
    dead.close()
    assert keys == [f"cam-p/1/{i}" for i in range(3)]
    assert len(letters) == 1
    consumer = KafkaConsumer(bootstrap_servers=kafka_bootstrap, group_id=group, enable_auto_commit=False)
    try:  # the bundle finalizer ran in the SDK worker process and committed past the last record
        assert consumer.committed(TopicPartition(raw, 0)) == 4
    finally:
        consumer.close(autocommit=False)
