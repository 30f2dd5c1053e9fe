"""The operator's progress line (pipelines.progress) and the end-of-run summary line (pipelines.runner)."""

from __future__ import annotations

import pytest

from pipelines.progress import MAX_LATENCY_SAMPLES, ProgressWindow
from pipelines.runner import summary_line


class Clock:
    def __init__(self) -> None:
        self.t = 100.0

    def __call__(self) -> float:
        return self.t


def test_window_counts_rates_and_latency_then_resets() -> None:
    clock = Clock()
    w = ProgressWindow(interval_s=10, clock=clock)
    assert not w.due()  # nothing seen yet
    for i in range(20):
        w.add("cam-a" if i % 2 else "cam-b", faces=3, degraded=(i == 5), latency_ms=100 + i)
    w.add_failure()
    clock.t += 9.9
    assert not w.due()
    clock.t += 0.1
    assert w.due()
    line = w.take_line()
    assert "20 frames (2.0/s) from 2 camera(s)" in line
    assert "60 faces" in line and "1 degraded" in line and "1 failed to encode" in line
    assert "p50 110 ms" in line and "p95 118 ms" in line
    assert not w.due() and w.frames == 0 and w.latencies_ms == []
    clock.t += 10
    assert "0 frames (0.0/s)" in w.take_line()


def test_window_disabled_and_bounded_memory() -> None:
    w = ProgressWindow(interval_s=0, clock=Clock())
    for _ in range(MAX_LATENCY_SAMPLES + 5):
        w.add("c", 0, False, 1.0)
    assert not w.due()
    assert len(w.latencies_ms) <= MAX_LATENCY_SAMPLES


def test_summary_line_reads_the_metrics() -> None:
    summary = {"counters": {"enrich_risk/faces_unknown": 7, "enrich_risk/faces_matched": 2,
                            "enrich_risk/faces_stale": 0, "detect_faces/frames_degraded": 1},
               "distributions": {"encode/frame_us": {"count": 4, "sum": 20_000},
                                 "detect_faces/frame_us": {"count": 4, "sum": 240_000}}}
    line = summary_line(summary)
    assert line.startswith("run summary: 4 frames encoded")
    assert "faces matched 2, unknown 7" in line and "stale" not in line
    assert "1 degraded" in line
    assert "detect_faces 60.0, encode 5.0" in line


@pytest.mark.parametrize("value", ["-1", "100000"])
def test_progress_interval_is_validated(value: str) -> None:
    from apache_beam.options.pipeline_options import PipelineOptions

    from pipelines.config.options import OptionsError, validate

    with pytest.raises(OptionsError, match="progress interval"):
        validate(PipelineOptions(["--runner=FnApiRunner", f"--progress_interval_s={value}"]))
