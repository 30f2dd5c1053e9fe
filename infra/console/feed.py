"""What the console shows, gathered in background threads: output topics, the ledger's status, the auditor.

``TopicFeed`` reads frames.redacted, audit.blocks and frames.dlq (never frames.raw: of that topic only the end
offsets are asked, to compute the consumer lag) and keeps per camera: the latest redacted JPEG, frames/s, lag,
latency p50/p99, degraded frames, DLQ count and masks by level. Only boxes and mask levels are read from a
RedactedFrame; no identity, risk, suspect flag or track id is kept or served. ``LedgerPoller`` asks every node
for its status. ``Auditor`` exports new ledger blocks and runs the offline verifier on demand.
"""

from __future__ import annotations

import collections
import logging
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Deque, Optional

import numpy as np

from ledger.client.api_client import LedgerClient
from ledger.config import Genesis, KeyFile
from schemas.messages import AuditBlock, DeadLetter, RedactedFrame

logger = logging.getLogger(__name__)

FPS_WINDOW_S = 5.0
LATENCY_WINDOW = 1000
LAG_EVERY_S = 1.0


@dataclass
class TopicNames:
    redacted: str = "frames.redacted"
    audit: str = "audit.blocks"
    dlq: str = "frames.dlq"
    raw: str = "frames.raw"  # end offsets only, for the lag
    ledger: str = "ledger.blocks"


# Same shape as ledger/audit/verifier.py:AuditReport: the console's live per-camera counters, not an audit result.
@dataclass
class CameraStats:
    camera_id: str
    frames: int = 0
    degraded: int = 0
    dlq: int = 0
    audit_blocks: int = 0
    masks_by_level: dict[str, int] = field(default_factory=dict)
    arrivals: Deque[float] = field(default_factory=collections.deque)
    latencies_ms: Deque[float] = field(default_factory=lambda: collections.deque(maxlen=LATENCY_WINDOW))
    jpeg: Optional[bytes] = None
    frame_version: int = 0
    last_seq: Optional[int] = None
    source: Optional[tuple[str, int]] = None  # raw topic and partition the camera's frames come from
    next_offset: Optional[int] = None
    lag: Optional[int] = None
    watchlist_height: Optional[int] = None

    def view(self, now: float) -> dict[str, Any]:
        while self.arrivals and now - self.arrivals[0] > FPS_WINDOW_S:
            self.arrivals.popleft()
        lat = np.asarray(self.latencies_ms, np.float64)
        return {"camera_id": self.camera_id, "frames": self.frames, "fps": round(len(self.arrivals) / FPS_WINDOW_S, 2),
                "lag": self.lag, "latency_p50_ms": round(float(np.percentile(lat, 50)), 1) if lat.size else None,
                "latency_p99_ms": round(float(np.percentile(lat, 99)), 1) if lat.size else None,
                "degraded": self.degraded, "dlq": self.dlq, "masks_by_level": dict(sorted(self.masks_by_level.items())),
                "frame_version": self.frame_version, "last_seq": self.last_seq, "audit_blocks": self.audit_blocks,
                "watchlist_height": self.watchlist_height}


def mask_levels(frame: Any) -> list[str]:
    """The mask level of each masked area: its mode (gaussian, pixelate, solid; none = disclosed). Reads only the
    boxes/levels, whichever field the schema version calls them."""
    regions = getattr(frame, "masks", None)
    if regions is None:
        regions = getattr(frame, "faces", ())
    return [str(getattr(r, "mode", "unknown")) for r in regions]


class ConsoleState:
    """Thread-safe counters and the latest frames; ``snapshot()`` is what the page receives."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.cameras: dict[str, CameraStats] = {}
        self.dlq_total = 0
        self.undecodable: dict[str, int] = collections.Counter()
        self.ledger: dict[str, Any] = {"height": None, "nodes_up": 0, "nodes_total": 0, "last_block_time_ms": None}
        self.audit: dict[str, Any] = {"state": "idle"}
        self.feed_error: Optional[str] = None
        self.feed_ready: dict[str, bool] = {}  # topic -> assigned and positioned
        self.started = time.time()

    def camera(self, camera_id: str) -> CameraStats:
        cam = self.cameras.get(camera_id)
        if cam is None:
            cam = self.cameras[camera_id] = CameraStats(camera_id)
        return cam

    def on_redacted(self, value: bytes, raw_topic: str) -> None:
        try:
            fr = RedactedFrame.from_bytes(value)
        except Exception:  # noqa: BLE001 - a bad record is counted, never fatal
            with self.lock:
                self.undecodable["redacted"] += 1
            return
        now = time.monotonic()
        with self.lock:
            cam = self.camera(fr.camera_id)
            cam.frames += 1
            cam.arrivals.append(now)
            if fr.processed_ts_us and fr.capture_ts_us:
                cam.latencies_ms.append(max(0.0, (fr.processed_ts_us - fr.capture_ts_us) / 1000.0))
            cam.degraded += int(bool(fr.degraded))
            for level in mask_levels(fr):
                cam.masks_by_level[level] = cam.masks_by_level.get(level, 0) + 1
            if fr.encoding == "jpeg" and fr.image:
                cam.jpeg = bytes(fr.image)
                cam.frame_version += 1
            cam.last_seq = fr.seq
            if fr.source_partition >= 0 and fr.source_offset >= 0:
                cam.source = (fr.source_topic or raw_topic, fr.source_partition)
                cam.next_offset = max(cam.next_offset or 0, fr.source_offset + 1)
            if getattr(fr, "watchlist_height", -1) >= 0:
                cam.watchlist_height = fr.watchlist_height

    # Same shape as infra/console/feed.py:ConsoleState.on_audit_block: another topic, message type and counter.
    def on_dlq(self, value: bytes) -> None:
        try:
            dl = DeadLetter.from_bytes(value)
        except Exception:  # noqa: BLE001
            with self.lock:
                self.undecodable["dlq"] += 1
                self.dlq_total += 1
            return
        with self.lock:
            self.dlq_total += 1
            self.camera(dl.camera_id or "(unknown camera)").dlq += 1

    def on_audit_block(self, value: bytes) -> None:
        try:
            blk = AuditBlock.from_bytes(value)
        except Exception:  # noqa: BLE001
            with self.lock:
                self.undecodable["audit"] += 1
            return
        with self.lock:
            self.camera(blk.camera_id).audit_blocks += 1

    def jpeg(self, camera_id: str) -> Optional[bytes]:
        with self.lock:
            cam = self.cameras.get(camera_id)
            return None if cam is None else cam.jpeg

    def snapshot(self) -> dict[str, Any]:
        now_m, now = time.monotonic(), time.time()
        with self.lock:
            cams = [c.view(now_m) for _, c in sorted(self.cameras.items())]
            ledger = dict(self.ledger)
            audit = dict(self.audit)
            totals = {"frames": sum(c["frames"] for c in cams), "dlq": self.dlq_total,
                      "degraded": sum(c["degraded"] for c in cams), "undecodable": dict(self.undecodable)}
            feed_error = self.feed_error
            feed_ready = dict(self.feed_ready)
        last = ledger.get("last_block_time_ms")
        ledger["last_block_age_s"] = round(now - last / 1000.0, 1) if last else None
        wl = [c["watchlist_height"] for c in cams if c["watchlist_height"] is not None]
        watchlist: dict[str, Any] = {"height": max(wl) if wl else None, "blocks_behind": None, "age_s": None}
        if wl and ledger.get("height") is not None:
            watchlist["blocks_behind"] = max(0, int(ledger["height"]) - max(wl))
            wtime = ledger.get("watchlist_block_time_ms")
            watchlist["age_s"] = round(now - wtime / 1000.0, 1) if wtime else None
        return {"now": now, "uptime_s": round(now - self.started, 1), "cameras": cams, "totals": totals,
                "ledger": ledger, "watchlist": watchlist, "audit": audit, "feed_error": feed_error,
                "topics_ready": feed_ready}


class TopicFeed(threading.Thread):
    """Consume the output topics from their end (or beginning) into a ConsoleState."""

    def __init__(self, state: ConsoleState, bootstrap: str, topics: TopicNames, from_beginning: bool = False
                 ) -> None:
        super().__init__(name="console-feed", daemon=True)
        self.state, self.bootstrap, self.topics, self.from_beginning = state, bootstrap, topics, from_beginning
        self.stop_event = threading.Event()
        with state.lock:
            state.feed_ready = {t: False for t in (topics.redacted, topics.audit, topics.dlq) if t}

    def stop(self) -> None:
        self.stop_event.set()

    def run(self) -> None:
        from kafka import KafkaConsumer  # deferred: loads kafka, which only this path needs

        consumer = None
        while not self.stop_event.is_set():
            try:
                # earliest: a fetch answered "out of range" (a broker racing a first write, or retention) goes
                # back rather than jumping past records
                consumer = KafkaConsumer(bootstrap_servers=self.bootstrap, group_id=None, enable_auto_commit=False,
                                         client_id="riskmask-console", auto_offset_reset="earliest", fetch_max_bytes=64 << 20,
                                         max_partition_fetch_bytes=16 << 20, request_timeout_ms=15000)
                self._loop(consumer)
            except Exception as exc:  # noqa: BLE001 - keep serving the page; say what is wrong, retry
                logger.warning("console feed: %s; retrying in 2 s", exc)
                with self.state.lock:
                    self.state.feed_error = f"{type(exc).__name__}: {exc}"
                self.stop_event.wait(2.0)
            finally:
                if consumer is not None:
                    consumer.close()
                    consumer = None

    def _loop(self, consumer: Any) -> None:
        from kafka import TopicPartition  # deferred: loads kafka, which only this path needs

        wanted = tuple(t for t in (self.topics.redacted, self.topics.audit, self.topics.dlq) if t)
        assigned: set[TopicPartition] = set()
        known_at_start = set(consumer.topics()) if not self.from_beginning else set()
        next_assign = next_lag = 0.0
        while not self.stop_event.is_set():
            now = time.monotonic()
            if now >= next_assign:
                next_assign = now + 2.0
                new = set()
                for t in wanted:
                    for p in consumer.partitions_for_topic(t) or ():
                        new.add(TopicPartition(t, p))
                if new - assigned:
                    added = new - assigned
                    assigned |= new
                    consumer.assign(sorted(assigned))
                    # Topics that existed when the console started: live from their end now; new topics: all.
                    # Explicit offsets, not seek_to_end(): a lazy seek resolved at the first fetch would skip
                    # what arrives in between.
                    live = [tp for tp in added if tp.topic in known_at_start]
                    ends = consumer.end_offsets(live) if live else {}
                    for tp in added:
                        consumer.seek(tp, int(ends.get(tp, 0)))
                        logger.info("console feed: %s[%d] from offset %d", tp.topic, tp.partition,
                                    int(ends.get(tp, 0)))
                with self.state.lock:
                    self.state.feed_ready = {t: any(tp.topic == t for tp in assigned) for t in wanted}
            with self.state.lock:
                self.state.feed_error = None
            if not assigned:
                self.stop_event.wait(0.5)
                continue
            batches = consumer.poll(timeout_ms=300, max_records=500)
            for tp, records in batches.items():
                for r in records:
                    if r.value is None:
                        continue
                    if tp.topic == self.topics.redacted:
                        self.state.on_redacted(r.value, self.topics.raw)
                    elif tp.topic == self.topics.dlq:
                        self.state.on_dlq(r.value)
                    elif tp.topic == self.topics.audit:
                        self.state.on_audit_block(r.value)
            if time.monotonic() >= next_lag:
                next_lag = time.monotonic() + LAG_EVERY_S
                self._update_lag(consumer)

    def _update_lag(self, consumer: Any) -> None:
        from kafka import TopicPartition  # deferred: loads kafka, which only this path needs

        with self.state.lock:
            sources = {c.camera_id: (c.source, c.next_offset) for c in self.state.cameras.values() if c.source}
        if not sources:
            return
        tps = {TopicPartition(t, p) for (t, p), _ in sources.values()}
        ends = consumer.end_offsets(list(tps))  # offsets only: raw frames are never fetched
        with self.state.lock:
            for cam_id, ((t, p), nxt) in sources.items():
                end = ends.get(TopicPartition(t, p))
                if end is not None and nxt is not None:
                    self.state.cameras[cam_id].lag = max(0, int(end) - int(nxt))


@dataclass
class LedgerSource:
    """Where the ledger is: its folder (genesis, keys) and the node API addresses."""

    ledger_dir: Path
    api_addresses: list[str]
    seed: bytes

    @classmethod
    def from_dir(cls, ledger_dir: Path, role: str = "auditor") -> "LedgerSource":
        genesis = Genesis.load(ledger_dir / "genesis.json")
        seed = KeyFile.load(ledger_dir / "keys" / f"{role}.key").seed
        return cls(ledger_dir, [v.api_address for v in genesis.validators], seed)


class LedgerPoller(threading.Thread):
    """Every ``every_s``: each node's status (height, last block time); nodes up; the watchlist block's time."""

    def __init__(self, state: ConsoleState, source: LedgerSource, every_s: float = 1.0) -> None:
        super().__init__(name="console-ledger", daemon=True)
        self.state, self.source, self.every_s = state, source, every_s
        self.stop_event = threading.Event()

    def stop(self) -> None:
        self.stop_event.set()

    def run(self) -> None:
        clients = [LedgerClient(a, self.source.seed, timeout_s=2.0) for a in self.source.api_addresses]
        wl_times: dict[int, int] = {}
        try:
            while not self.stop_event.is_set():
                up, heights, times = 0, [], []
                best = None
                for c in clients:
                    try:
                        st = c.status()
                    except Exception:  # noqa: BLE001 - a node down is what we report
                        continue
                    up += 1
                    heights.append(int(st.get("height", 0)))
                    times.append(int(st.get("last_block_time_ms") or 0))
                    if best is None or heights[-1] > best[0]:
                        best = (heights[-1], c)
                with self.state.lock:
                    wl = [cam.watchlist_height for cam in self.state.cameras.values()
                          if cam.watchlist_height is not None]
                wl_time = None
                if wl and best is not None:
                    h = max(wl)
                    if h not in wl_times and 0 < h <= best[0]:
                        try:
                            wl_times[h] = int(best[1].block(h).get("time_ms") or 0)
                        except Exception:  # noqa: BLE001
                            logger.debug("block %s not readable", h, exc_info=True)
                    wl_time = wl_times.get(h)
                with self.state.lock:
                    self.state.ledger = {"height": max(heights) if heights else None, "nodes_up": up,
                                         "nodes_total": len(clients),
                                         "last_block_time_ms": max(times) if times and max(times) else None,
                                         "watchlist_block_time_ms": wl_time}
                self.stop_event.wait(self.every_s)
        finally:
            for c in clients:
                c.close()
