"""Helpers for the console tests: the console as a real process, redacted frames made by the real masking code,
and records on the real broker."""

from __future__ import annotations

import hashlib
import os
import re
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Iterable, Optional

import cv2
import numpy as np

from schemas import messages as m

ROOT = Path(__file__).resolve().parents[1]
LEAK = "SUBJECT-REF-MUST-NOT-LEAK"


@dataclass
class ConsoleProc:
    proc: subprocess.Popen
    url: str
    token: str
    first_line: str

    @property
    def login_url(self) -> str:
        return f"{self.url}?token={self.token}"

    @property
    def port(self) -> int:
        return int(self.url.rsplit(":", 1)[1].strip("/"))

    def stop(self) -> tuple[str, str]:
        self.proc.terminate()
        try:
            out, err = self.proc.communicate(timeout=15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            out, err = self.proc.communicate()
        return self.first_line + out, err


def start_console(args: list[str], timeout_s: float = 60.0) -> ConsoleProc:
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    proc = subprocess.Popen([sys.executable, "-P", "-m", "riskmask", "console", "--port", "0", *args], cwd=ROOT,
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + timeout_s
    line = ""
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if line or proc.poll() is not None:
            break
    found = re.search(r"(http://127\.0\.0\.1:\d+/)\?token=(\S+)", line)
    if not found:
        proc.kill()
        out, err = proc.communicate()
        raise AssertionError(f"console did not print its URL: {line!r} {out!r} {err[-2000:]!r}")
    return ConsoleProc(proc, found.group(1), found.group(2), line)


def topics(kafka_bootstrap: str, partitions: int = 1) -> dict[str, str]:
    from infra import broker

    names = {k: f"console-{k}-{uuid.uuid4().hex[:8]}" for k in ("raw", "redacted", "audit", "dlq", "ledger")}
    broker.create_topics(kafka_bootstrap, list(names.values()), partitions=partitions)
    return names


def topic_args(t: dict[str, str]) -> list[str]:
    return ["--raw-topic", t["raw"], "--redacted-topic", t["redacted"], "--audit-topic", t["audit"],
            "--dlq-topic", t["dlq"], "--ledger-topic", t["ledger"]]


def masked_frame(base: np.ndarray, i: int) -> tuple[bytes, int]:
    """A real face frame, moved by ``i``, masked by the real redaction code; (JPEG bytes, faces masked)."""
    from pipelines.masking.policy import Policy
    from pipelines.models.detector import load_detector
    from pipelines.redact import Redactor

    global _REDACTOR
    if _REDACTOR is None:
        _REDACTOR = Redactor(load_detector("yunet"), Policy.load("default"))
    img = np.roll(base, 6 * i, axis=1).copy()
    cv2.putText(img, f"frame {i}", (10, 30), cv2.FONT_HERSHEY_SIMPLEX, 1.0, (255, 255, 255), 2)
    faces, _ = _REDACTOR.redact(img)
    ok, buf = cv2.imencode(".jpg", img, [cv2.IMWRITE_JPEG_QUALITY, 85])
    assert ok
    return buf.tobytes(), faces


_REDACTOR = None


def redacted_frame(camera: str, seq: int, jpeg: bytes, levels: Iterable[str], degraded: bool = False,
                   latency_ms: float = 120.0, source: Optional[tuple[str, int, int]] = None,
                   watchlist_height: int = -1) -> m.RedactedFrame:
    """A RedactedFrame with one mask per level; identity fields (where this schema version still has them) are
    filled with a marker that must never reach the console's page."""
    names = {f.name for f in fields(m.RedactedFrame)}
    boxes = [dict(x=20 + 40 * k, y=20, w=30, h=40) for k, _ in enumerate(levels)]
    if "masks" in names:
        regions = tuple(m.MaskRegion(mode=lv, **b) for lv, b in zip(levels, boxes))
        extra = {"masks": regions}
    else:
        regions = tuple(m.FaceDecision(score=0.9, risk_group=3, mode=lv, strength=5.0, track_id=4242,
                                       identity="matched", suspect=True, subject_ref=LEAK, **b)
                        for lv, b in zip(levels, boxes))
        extra = {"faces": regions}
    now_us = int(time.time() * 1e6)
    src = source or ("", -1, -1)
    return m.RedactedFrame(camera_id=camera, epoch=1, seq=seq, capture_ts_us=now_us - int(latency_ms * 1000),
                           processed_ts_us=now_us, width=0, height=0, image=jpeg,
                           raw_sha256=b"\0" * 32, redacted_sha256=hashlib.sha256(jpeg).digest(),
                           policy_id="default-v1", detector_id="yunet-2023mar", degraded=degraded,
                           source_topic=src[0], source_partition=src[1], source_offset=src[2],
                           watchlist_height=watchlist_height, **extra)


def dead_letter(camera: str, seq: int) -> m.DeadLetter:
    return m.DeadLetter(source_topic="frames.raw", source_partition=0, source_offset=seq, stage="decode",
                        reason="undecodable", payload_sha256=b"\1" * 32, payload_size=10,
                        ts_us=int(time.time() * 1e6), camera_id=camera, epoch=1, seq=seq)


def produce(bootstrap: str, topic: str, values: Iterable[bytes], key: Optional[bytes] = None,
            one_by_one: bool = False) -> None:
    """Send ``values``; ``one_by_one`` flushes after each (one record per batch, as a paced camera sends)."""
    from kafka import KafkaProducer

    prod = KafkaProducer(bootstrap_servers=bootstrap, acks="all", max_request_size=16 << 20)
    try:
        for v in values:
            prod.send(topic, value=v, key=key)
            if one_by_one:
                prod.flush()
        prod.flush()
    finally:
        prod.close()


def http(url: str, token: Optional[str] = None, method: str = "GET", headers: Optional[dict] = None,
         allow_redirects: bool = False, **kw):
    import requests

    h = dict(headers or {})
    if token:
        h["Authorization"] = f"Bearer {token}"
    return requests.request(method, url, headers=h, allow_redirects=allow_redirects, timeout=10, **kw)


def wait_until(cond, timeout_s: float, what: str, poll_s: float = 0.2):
    deadline = time.monotonic() + timeout_s
    while True:
        v = cond()
        if v:
            return v
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s:.0f} s waiting for {what}")
        time.sleep(poll_s)


def redacted_frame_v1(camera: str, seq: int, jpeg: bytes) -> bytes:
    """A RedactedFrame written with the v1 schema (schemas/history), whose faces still carried identity class,
    risk group, suspect flag, track id and subject reference: what an older pipeline could have left on the
    topic. The console must show none of it."""
    from schemas import serde

    [writer] = serde._history()["riskmask.v1.RedactedFrame"].values()
    face = {"x": 10, "y": 10, "w": 40, "h": 50, "score": 0.9, "track_id": 4242, "source": "detected",
            "identity": "matched", "risk_group": 3, "suspect": True, "mode": "none", "shape": "box",
            "strength": 0.0, "mask_scale": 1.0, "subject_ref": LEAK}
    now_us = int(time.time() * 1e6)
    return serde.encode_with_schema(writer, {
        "camera_id": camera, "epoch": 1, "seq": seq, "capture_ts_us": now_us - 50_000, "processed_ts_us": now_us,
        "width": 0, "height": 0, "encoding": "jpeg", "image": jpeg, "raw_sha256": b"\0" * 32,
        "redacted_sha256": hashlib.sha256(jpeg).digest(), "policy_id": "default-v1", "detector_id": "yunet",
        "recognizer_id": "sface", "watchlist_height": 3, "degraded": False, "degraded_reason": None,
        "faces": [face], "source_topic": "", "source_partition": -1, "source_offset": -1})
