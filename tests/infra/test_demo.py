"""`riskmask demo` end to end on the real stack: outputs, a consistent summary, re-runs, Ctrl-C, no orphans.

Each run is a real subprocess (broker, 4 ledger nodes, pipeline) with a short clip. While it runs, every pid it
records (pid files) and every descendant process (/proc) is collected; afterwards none may be alive.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import cv2
import pytest

pytestmark = pytest.mark.timeout(900)

FRAMES = 12


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:
        return Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0] != "Z"
    except OSError:
        return False


def _descendants(root_pid: int) -> set[int]:
    parents: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                parents[int(entry.name)] = int((entry / "stat").read_text().rpartition(")")[2].split()[1])
            except (OSError, ValueError, IndexError):
                continue
    found, frontier = set(), {root_pid}
    while frontier:
        kids = {p for p, pp in parents.items() if pp in frontier} - found
        found |= kids
        frontier = kids
    return found


def _recorded_pids(home: Path) -> set[int]:
    out = set()
    for f in [home / "broker" / "broker.pid", *(home / "ledger" / "run").glob("*.pid")]:
        try:
            out.add(int(f.read_text().strip()))
        except (OSError, ValueError):
            pass
    return out


class DemoRun:
    """One `riskmask demo` subprocess, watched: its output and every process it started."""

    def __init__(self, home: Path, out: Path, log: Path, *extra: str) -> None:
        self.home, self.out, self.log = home, out, log
        self.pids: set[int] = set()
        cmd = [sys.executable, "-m", "riskmask", "demo", "--home", str(home), "--out", str(out),
               "--frames", str(FRAMES), "--size", "640x360", "--fps", "0", *extra]
        self._fh = open(log, "wb")
        self.proc = subprocess.Popen(cmd, stdout=self._fh, stderr=subprocess.STDOUT, start_new_session=True)

    def text(self) -> str:
        return self.log.read_text(errors="replace")

    def watch(self, until: str | None = None, timeout_s: float = 800.0) -> None:
        """Collect pids until the run ends (or ``until`` appears in its output)."""
        deadline = time.monotonic() + timeout_s
        while self.proc.poll() is None and time.monotonic() < deadline:
            self.pids |= _descendants(self.proc.pid) | _recorded_pids(self.home)
            if until is not None and until in self.text():
                return
            time.sleep(0.3)
        if self.proc.poll() is None:
            self.proc.kill()
            raise AssertionError(f"demo did not finish in {timeout_s:.0f} s:\n{self.text()[-3000:]}")

    def finish(self, timeout_s: float = 800.0) -> int:
        self.watch(timeout_s=timeout_s)
        rc = self.proc.wait(timeout=60)
        self._fh.close()
        return rc

    def assert_nothing_left(self) -> None:
        assert self.pids, "no process was seen while the demo ran"
        deadline = time.monotonic() + 20
        while any(_alive(p) for p in self.pids) and time.monotonic() < deadline:
            time.sleep(0.2)
        left = sorted(p for p in self.pids if _alive(p))
        assert left == [], f"processes left behind: {left}"
        assert _recorded_pids(self.home) == set()


def _check_outputs(out: Path) -> dict:
    summary = json.loads((out / "summary.json").read_text())
    assert summary["frames"]["produced"] == FRAMES
    assert summary["frames"]["redacted"] + summary["frames"]["dead_letters"] == FRAMES
    assert summary["frames"]["redacted"] >= FRAMES - 1
    assert summary["faces"]["total"] == sum(summary["faces"]["by_decision"].values())
    gt = summary["faces"]["ground_truth"]
    assert gt["total"] >= 3 * (FRAMES - 1) and gt["covered"] == gt["total"]  # every real face was masked/decided
    assert summary["audit"]["verdict"] == "PASS"
    assert summary["ledger"]["height"] >= 1
    assert summary["performance"]["latency_p50_ms"] > 0
    assert summary["performance"]["latency_p99_ms"] >= summary["performance"]["latency_p50_ms"]
    names = {s["name"]: s["status"] for s in summary["steps"]}
    for step in ("prepare", "stack", "register", "clip", "pipeline", "audit"):
        assert names[step] == "ok", summary["steps"]
    for s in summary["steps"]:
        assert s["status"] in ("ok", "unavailable") and (s["status"] == "ok" or s["detail"])
    assert set(summary["unavailable"]) == {s["name"] for s in summary["steps"] if s["status"] != "ok"}
    sheet = cv2.imread(summary["outputs"]["contact_sheet"])
    assert sheet is not None and sheet.shape[1] == 1280 and sheet.shape[0] > 360
    cap = cv2.VideoCapture(summary["outputs"]["video"])
    n = int(cap.get(cv2.CAP_PROP_FRAME_COUNT))
    cap.release()
    assert n == summary["frames"]["redacted"]
    text = json.dumps(summary)
    for forbidden in ("Demo Subject", "obama", "biden", "2000-01-0"):
        assert forbidden not in text  # no identity in the outputs
    return summary


def test_demo_runs_end_to_end_twice_and_leaves_nothing(tmp_path: Path) -> None:
    home = tmp_path / "state"
    first = DemoRun(home, tmp_path / "out1", tmp_path / "demo1.log")
    rc = first.finish()
    assert rc == 0, first.text()[-3000:]
    first.assert_nothing_left()
    s1 = _check_outputs(tmp_path / "out1")
    assert [s["status"] for s in s1["subjects"]] == ["registered", "registered"]
    assert "audit verdict" in first.text() and "ledger height" in first.text()

    second = DemoRun(home, tmp_path / "out2", tmp_path / "demo2.log")
    rc = second.finish()
    assert rc == 0, second.text()[-3000:]
    second.assert_nothing_left()
    s2 = _check_outputs(tmp_path / "out2")
    assert [s["status"] for s in s2["subjects"]] == ["already registered", "already registered"]
    assert s2["ledger"]["height"] > s1["ledger"]["height"]  # the same chain, continued


def test_ctrl_c_stops_everything_and_the_next_run_works(tmp_path: Path) -> None:
    home = tmp_path / "state"
    run = DemoRun(home, tmp_path / "out", tmp_path / "demo.log")
    run.watch(until="[5/7]")
    assert run.proc.poll() is None, run.text()
    time.sleep(1.0)
    run.pids |= _descendants(run.proc.pid) | _recorded_pids(home)
    os.killpg(run.proc.pid, signal.SIGINT)  # what a terminal's Ctrl-C does: the whole foreground group
    rc = run.finish(timeout_s=120)
    assert rc == 130, run.text()[-3000:]
    assert "interrupted" in run.text() and "Traceback" not in run.text()
    run.assert_nothing_left()

    again = DemoRun(home, tmp_path / "out2", tmp_path / "demo2.log", "--bounded")  # and the replay mode works
    assert again.finish() == 0, again.text()[-3000:]
    again.assert_nothing_left()
    summary = _check_outputs(tmp_path / "out2")
    assert summary["config"]["mode"] == "bounded replay" and summary["performance"]["camera_fps"] is None
