"""A camera stream for the console tests, as its own process: every frame goes onto the raw topic (one record per
batch, as a paced camera sends it) and, masked by the real redaction code, onto the redacted topic, with a dead
letter every 10th frame.

Usage: python -m tests.infra.console_stream BOOTSTRAP RAW REDACTED DLQ CAMERA SECONDS FPS
"""

from __future__ import annotations

import sys
import time

from kafka import KafkaProducer

from infra.sample_data import astronaut
from tests.console_util import dead_letter, masked_frame, redacted_frame


def main(argv: list[str]) -> int:
    bootstrap, raw, redacted, dlq, camera = argv[:5]
    seconds, fps = float(argv[5]), float(argv[6])
    base = astronaut()
    prod = KafkaProducer(bootstrap_servers=bootstrap, acks="all", max_request_size=16 << 20)
    t0 = time.monotonic()
    i = 0
    try:
        while time.monotonic() - t0 < seconds:
            jpeg, faces = masked_frame(base, i)
            meta = prod.send(raw, value=b"raw frame %d" % i, key=camera.encode()).get(timeout=10)
            fr = redacted_frame(camera, i, jpeg, ["gaussian"] * faces + (["none"] if i % 3 == 0 else []),
                                degraded=(i % 7 == 6), latency_ms=80 + (i % 5) * 10,
                                source=(raw, meta.partition, meta.offset), watchlist_height=1)
            prod.send(redacted, value=fr.to_bytes(), key=camera.encode())
            if i % 10 == 9:
                prod.send(dlq, value=dead_letter(camera, i).to_bytes(), key=camera.encode())
            prod.flush()
            i += 1
            delay = t0 + i / fps - time.monotonic()
            if delay > 0:
                time.sleep(delay)
    finally:
        prod.close()
    print(f"streamed {i} frames", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
