"""Acceptance: kill -9 the running pipeline mid-stream and start it again: no frame is lost.

Offsets are committed only after a bundle's outputs were flushed, so the restarted pipeline resumes at or
before the first frame without output; frames processed twice carry the same dedupe key.
"""

from __future__ import annotations

import signal
import time
import uuid
from collections import Counter

from pipelines.frame import DEDUPE_HEADER
from tests.pipeline_support import TopicReader, camera_frame, header, scenes, send_raw
from tests.pipelines.test_pipeline_streaming import riskmask_run, stop

N_FRAMES = 40
CAMERA = "cam-restart"


def test_kill_and_restart_loses_no_frame(kafka_bootstrap, tmp_path):
    from infra import broker as embedded

    tag = uuid.uuid4().hex[:8]
    raw, redacted, dlq, group = f"raw-{tag}", f"red-{tag}", f"dlq-{tag}", f"g-{tag}"
    embedded.create_topics(kafka_bootstrap, [raw, redacted, dlq])
    base = scenes(4, faces_per_frame=2, min_width=24, max_width=120, size=(640, 360), seed=3)
    values = [(CAMERA.encode(), camera_frame(base[i % 4].image, seq=i, camera_id=CAMERA, epoch=7).to_bytes())
              for i in range(N_FRAMES)]
    log = tmp_path / "run.log"
    out = TopicReader(kafka_bootstrap, redacted)
    proc = riskmask_run(kafka_bootstrap, raw, redacted, dlq, group, log, "--max-records-per-bundle", "4")
    try:
        send_raw(kafka_bootstrap, raw, values[:10])
        out.poll_until(lambda r: len(r) >= 3, 120, alive=lambda: proc.poll() is None)
        assert proc.poll() is None, log.read_text()[-3000:]
        send_raw(kafka_bootstrap, raw, values[10:20])
        time.sleep(0.5)  # let it get into the middle of this burst
        stop(proc, signal.SIGKILL)
        seen_before_kill = len(out.poll_until(lambda r: False, 1.0))
        assert 3 <= seen_before_kill < N_FRAMES
        send_raw(kafka_bootstrap, raw, values[20:])  # written while no pipeline runs
        proc = riskmask_run(kafka_bootstrap, raw, redacted, dlq, group, log, "--max-records-per-bundle", "4")
        expected = {f"{CAMERA}/7/{i}" for i in range(N_FRAMES)}
        got = out.poll_until(lambda r: {header(m, DEDUPE_HEADER) for m in r} >= expected, 150,
                             alive=lambda: proc.poll() is None)
        keys = Counter(header(m, DEDUPE_HEADER) for m in got)
        assert set(keys) == expected, (sorted(expected - set(keys)), log.read_text()[-2000:])
        # duplicates (re-processed after the kill) are allowed; each carries the same dedupe key
        assert sum(keys.values()) >= N_FRAMES
    finally:
        out.close()
        stop(proc)
