"""The progress line of a running pipeline: what an operator watching ``riskmask run`` wants every so often.

Beam's metrics of a streaming run on the local runner are only readable when it ends, so the Encode stage
keeps a small window of what it saw (frames, faces, degraded frames, capture-to-encode latency) and logs one
line per interval. Counts and timings only: no camera image, pseudonym or template ever reaches the line.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Callable

import numpy as np

DEFAULT_INTERVAL_S = 30.0
MAX_LATENCY_SAMPLES = 10_000  # per window; beyond this every other sample is dropped (percentiles hold)


@dataclass
class ProgressWindow:
    """Counts since the last line; ``interval_s <= 0`` disables the line."""

    interval_s: float = DEFAULT_INTERVAL_S
    clock: Callable[[], float] = time.monotonic
    frames: int = 0
    faces: int = 0
    degraded: int = 0
    failed: int = 0
    cameras: set[str] = field(default_factory=set)
    latencies_ms: list[float] = field(default_factory=list)
    started: float = -1.0

    def add(self, camera_id: str, faces: int, degraded: bool, latency_ms: float) -> None:
        """One frame written out: its camera, faces masked or disclosed, degraded flag, capture-to-encode ms."""
        if self.started < 0:
            self.started = self.clock()
        self.frames += 1
        self.faces += faces
        self.degraded += int(degraded)
        self.cameras.add(camera_id)
        self.latencies_ms.append(latency_ms)
        if len(self.latencies_ms) > MAX_LATENCY_SAMPLES:
            del self.latencies_ms[::2]

    def add_failure(self) -> None:
        """One frame that could not be encoded (sent to the dead-letter topic)."""
        if self.started < 0:
            self.started = self.clock()
        self.failed += 1

    def due(self) -> bool:
        return self.interval_s > 0 and self.started >= 0 and self.clock() - self.started >= self.interval_s

    def take_line(self) -> str:
        """The line for the window so far, and a fresh window."""
        seconds = max(1e-9, self.clock() - self.started)
        text = (f"last {seconds:.0f} s: {self.frames} frames ({self.frames / seconds:.1f}/s) from "
                f"{len(self.cameras)} camera(s), {self.faces} faces masked or disclosed, {self.degraded} degraded "
                f"(whole frame masked), {self.failed} failed to encode (dead-lettered)")
        if self.latencies_ms:
            p50, p95 = np.percentile(np.asarray(self.latencies_ms), [50, 95])
            text += f"; capture to encode p50 {p50:.0f} ms, p95 {p95:.0f} ms"
        self.frames = self.faces = self.degraded = self.failed = 0
        self.cameras = set()
        self.latencies_ms = []
        self.started = self.clock()
        return text
