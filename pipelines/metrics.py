"""Prometheus metrics and health of ``riskmask run`` (served by :class:`riskmask.health.HealthServer`).

The stages run in the process of ``riskmask run`` on the local runner (FnApiRunner), so they update the
process-wide metrics below directly; Beam's own counters and distributions are only readable when a run ends.
On Flink the stages run in SDK worker processes: their Beam metrics reach Flink's Prometheus reporter instead
(docs/operations.md), and the driver's ``/metrics`` carries the broker probe and the run state.

Every label is a topic, partition, stage, output or mask level: never a camera image, pseudonym, template,
subject reference or track id.
"""

from __future__ import annotations

import logging
import socket
import threading
import time
from collections import OrderedDict
from typing import Any, Optional

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

logger = logging.getLogger(__name__)

REGISTRY = CollectorRegistry(auto_describe=True)

_LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)

FRAMES_IN = Counter("riskmask_frames_in", "records read from the input topic", ["topic", "partition"],
                    registry=REGISTRY)
FRAMES_OUT = Counter("riskmask_frames_out", "redacted frames encoded for the output topic", registry=REGISTRY)
RECORDS_WRITTEN = Counter("riskmask_records_written", "records acknowledged by the brokers, by output",
                          ["output"], registry=REGISTRY)
DLQ_RECORDS = Counter("riskmask_dlq_records", "dead-letter records acknowledged, by the stage that refused them",
                      ["stage"], registry=REGISTRY)
DEGRADED = Counter("riskmask_frames_degraded", "frames masked whole because a stage failed (fail closed)",
                   registry=REGISTRY)
FACES = Counter("riskmask_faces", "faces masked or disclosed, by mask level (group1 strongest .. group4 "
                "disclosed; whole_frame)", ["level"], registry=REGISTRY)
STAGE_SECONDS = Histogram("riskmask_stage_seconds", "seconds from a frame leaving the previous stage to leaving "
                          "this one", ["stage"], buckets=_LATENCY_BUCKETS, registry=REGISTRY)
CAPTURE_TO_OUTPUT = Histogram("riskmask_capture_to_output_seconds", "seconds from camera capture to encoded "
                              "output", buckets=_LATENCY_BUCKETS, registry=REGISTRY)
CONSUMER_LAG = Gauge("riskmask_consumer_lag", "records between the reader's position and the partition's end",
                     ["topic", "partition"], registry=REGISTRY)
WATCHLIST_HEIGHT = Gauge("riskmask_watchlist_height", "ledger height of the watchlist in use (-1: none)",
                         registry=REGISTRY)
WATCHLIST_AGE = Gauge("riskmask_watchlist_age_seconds", "seconds since the watchlist in use was synced",
                      registry=REGISTRY)
BROKER_UP = Gauge("riskmask_broker_up", "1 when a bootstrap server accepted a connection at the last probe",
                  registry=REGISTRY)
RUNNING = Gauge("riskmask_pipeline_running", "1 while the pipeline runs", registry=REGISTRY)
LAST_FRAME = Gauge("riskmask_last_frame_timestamp_seconds", "wall time of the last encoded frame",
                   registry=REGISTRY)

WATCHLIST_HEIGHT.set(-1)
_watchlist_synced_at = [0.0]
WATCHLIST_AGE.set_function(lambda: time.time() - _watchlist_synced_at[0] if _watchlist_synced_at[0] else -1.0)


def metric_names() -> set[str]:
    """Every sample family name this module exports (``_total`` for counters), for dashboards and docs."""
    names = set()
    for family in REGISTRY.collect():
        names.add(family.name + "_total" if family.type == "counter" else family.name)
    return names


def record_read(topic: str, partition: int, n: int) -> None:
    FRAMES_IN.labels(topic, str(partition)).inc(n)


def set_lag(topic: str, partition: int, lag: int) -> None:
    CONSUMER_LAG.labels(topic, str(partition)).set(max(0, lag))


def record_written(output: str, n: int, dlq_stage: Optional[str] = None) -> None:
    RECORDS_WRITTEN.labels(output).inc(n)
    if dlq_stage:
        DLQ_RECORDS.labels(dlq_stage).inc(n)


def record_faces(faces: Any) -> None:
    """Count one frame's FaceDecision records by mask level."""
    for face in faces:
        level = "whole_frame" if getattr(face, "source", "") == "whole_frame" else f"group{int(face.risk_group)}"
        FACES.labels(level).inc()


def record_masked(degraded: bool) -> None:
    """One frame leaving MaskFaces: count it degraded when it was masked whole."""
    if degraded:
        DEGRADED.inc()


def record_encoded() -> None:
    """One redacted frame encoded for the output topic."""
    FRAMES_OUT.inc()
    LAST_FRAME.set(time.time())


def observe_watchlist(height: int, synced_at: float) -> None:
    WATCHLIST_HEIGHT.set(height)
    _watchlist_synced_at[0] = float(synced_at)


class StageClock:
    """Per-frame stage latency: ``mark(stage, frame_key)`` at each stage boundary observes the seconds since the
    frame's previous mark. Bounded: a frame that never reaches its last mark (dead-lettered) is forgotten
    after ``max_frames`` newer ones. ``capture_ts_us`` given at any mark is kept for the final one, which
    observes capture-to-output latency."""

    def __init__(self, max_frames: int = 10_000) -> None:
        self._last: "OrderedDict[str, tuple[float, int]]" = OrderedDict()
        self._lock = threading.Lock()
        self._max = max_frames

    def mark(self, stage: Optional[str], key: str, final: bool = False, capture_ts_us: int = 0) -> None:
        now = time.perf_counter()
        with self._lock:
            prev = self._last.pop(key, None)
            capture = capture_ts_us or (prev[1] if prev else 0)
            if not final:
                self._last[key] = (now, capture)
                while len(self._last) > self._max:
                    self._last.popitem(last=False)
        if stage is not None and prev is not None:
            STAGE_SECONDS.labels(stage).observe(now - prev[0])
        if final and capture > 0:
            CAPTURE_TO_OUTPUT.observe(max(0.0, time.time() - capture / 1e6))


CLOCK = StageClock()


class BrokerProbe:
    """Tries a TCP connection to each bootstrap server every ``interval_s``; ``up`` is the last result.

    A TCP connect is what every Kafka client does first (also with SASL/SSL); when no bootstrap server accepts
    one, nothing can be read or written and the pipeline is not ready."""

    def __init__(self, bootstrap_servers: str, interval_s: float = 2.0, timeout_s: float = 2.0) -> None:
        self.servers = [s.strip() for s in bootstrap_servers.split(",") if s.strip()]
        self.interval_s, self.timeout_s = interval_s, timeout_s
        self.up = False
        self.checked_at = 0.0
        self._stop = threading.Event()
        self._thread: Optional[threading.Thread] = None

    def probe_once(self) -> bool:
        for server in self.servers:
            host, _, port = server.rpartition(":")
            try:
                with socket.create_connection((host.strip("[]"), int(port)), timeout=self.timeout_s):
                    self._set(True)
                    return True
            except (OSError, ValueError):
                continue
        self._set(False)
        return False

    def _set(self, up: bool) -> None:
        if up != self.up:
            logger.info("broker %s", "reachable" if up else "unreachable")
        self.up, self.checked_at = up, time.monotonic()
        BROKER_UP.set(1 if up else 0)

    # Same shape as pipelines/transforms/enrich_risk.py:_Refresher.start/stop: this one probes first, never joins.
    def start(self) -> None:
        self.probe_once()
        self._thread = threading.Thread(target=self._loop, name="broker-probe", daemon=True)
        self._thread.start()

    def _loop(self) -> None:
        while not self._stop.wait(self.interval_s):
            self.probe_once()

    def stop(self) -> None:
        self._stop.set()


class PipelineHealth:
    """Readiness of ``riskmask run``: the pipeline runs and a broker answers (probed in the background)."""

    def __init__(self, probe: BrokerProbe) -> None:
        self.probe = probe
        self.running = False
        self.finished: Optional[str] = None

    def live(self) -> tuple[bool, str]:
        if self.finished is not None:
            return False, f"pipeline finished: {self.finished}"
        return True, "alive"

    def ready(self) -> tuple[bool, str]:
        if self.finished is not None:
            return False, f"pipeline finished: {self.finished}"
        if not self.running:
            return False, "pipeline starting"
        if not self.probe.up:
            return False, f"no Kafka broker answers at {','.join(self.probe.servers)}"
        return True, "ready"

    def set_running(self, running: bool) -> None:
        self.running = running
        RUNNING.set(1 if running else 0)


__all__ = ["BrokerProbe", "CLOCK", "PipelineHealth", "REGISTRY", "StageClock", "metric_names", "observe_watchlist",
           "record_encoded", "record_faces", "record_masked", "record_read", "record_written", "set_lag"]
