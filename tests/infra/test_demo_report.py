"""Demo outputs (infra.demo_report): decision labels, contact sheet, video and table from RedactedFrames."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

from infra import demo_report
from schemas.messages import FaceDecision, RedactedFrame


def _jpeg(color: int, size: tuple[int, int] = (1280, 720)) -> bytes:
    img = np.full((size[1], size[0], 3), color, np.uint8)
    ok, buf = cv2.imencode(".jpg", img)
    assert ok
    return buf.tobytes()


def _frame(seq: int, faces: tuple[FaceDecision, ...]):
    """A published frame seen with its decisions as the auditor key opens them (frames.redacted itself carries
    only the masked regions since schema v2)."""
    from infra.demo import AuditorView
    from pipelines.transforms.encode import mask_regions

    return AuditorView(RedactedFrame(camera_id="cam", epoch=1, seq=seq, capture_ts_us=1_000_000 + seq * 100_000,
                                     processed_ts_us=1_500_000 + seq * 100_000, width=1280, height=720,
                                     image=_jpeg(90), raw_sha256=b"\0" * 32, redacted_sha256=b"\0" * 32,
                                     policy_id="p", detector_id="d", masks=mask_regions(faces, 1280, 720)), faces)


SUSPECT = FaceDecision(x=100, y=10, w=120, h=160, score=0.9, risk_group=3, mode="none", strength=0.0,
                       identity="matched", suspect=True, subject_ref="ref-123")
UNKNOWN = FaceDecision(x=600, y=300, w=100, h=130, score=0.8, risk_group=1, mode="gaussian", strength=11.3)


def test_labels_name_the_decision_never_the_subject() -> None:
    assert demo_report.decision_label(SUSPECT) == "G3 none suspect matched"
    assert demo_report.decision_label(UNKNOWN) == "G1 gaussian unknown"
    assert "ref-123" not in demo_report.decision_label(SUSPECT)
    assert demo_report.decision_key(SUSPECT) == "group 3 / none / matched / suspect"


def test_contact_sheet_and_video_show_before_and_after(tmp_path: Path) -> None:
    frames = [_frame(i, (SUSPECT, UNKNOWN)) for i in range(6)]
    pairs = [(_jpeg(200), f) for f in frames]
    picked = demo_report.pick_frames(frames, 4)
    assert [f.seq for f in picked] == [0, 2, 3, 5]
    sheet_path = demo_report.contact_sheet([(_jpeg(200), f) for f in picked], tmp_path / "s.png", ["a note"])
    sheet = cv2.imread(str(sheet_path))
    assert sheet.shape[1] == 2 * demo_report.PANEL[0]
    assert sheet.shape[0] > 4 * demo_report.PANEL[1]
    row = sheet[-demo_report.PANEL[1]:]
    left, right = row[:, :demo_report.PANEL[0]], row[:, demo_report.PANEL[0]:]
    assert abs(int(left[200, 400, 0]) - 200) < 10 and abs(int(right[200, 400, 0]) - 90) < 10  # before | after
    # the disclosed face is outlined in red on both sides (BGR), the masked one in green
    x, y = int(SUSPECT.x * 0.5), int((SUSPECT.y + SUSPECT.h) * 0.5)
    assert tuple(int(v) for v in right[y, x + 20]) == (40, 40, 230)
    video = demo_report.video(pairs, tmp_path / "v.mp4", 10.0)
    cap = cv2.VideoCapture(str(video))
    assert int(cap.get(cv2.CAP_PROP_FRAME_COUNT)) == 6
    cap.release()
    from pipelines.video_io import probe

    info = probe(video)  # H.264 yuv420p in MP4: what browsers play (mp4v is refused)
    assert info["video"][0]["codec"] == "h264" and info["video"][0]["pix_fmt"] == "yuv420p"
    assert info["frames"] == 6 and info["video"][0]["width"] == 2 * demo_report.PANEL[0]


def test_table_lists_numbers_and_missing_steps() -> None:
    summary = {"frames": {"produced": 6, "redacted": 6, "dead_letters": 0, "degraded": 0},
               "faces": {"total": 12, "by_decision": {"group 1 / gaussian / unknown": 6,
                                                      "group 3 / none / matched / suspect": 6},
                         "ground_truth": {"covered": 12, "total": 12}},
               "performance": {"fps": 9.5, "camera_fps": 10.0, "latency_p50_ms": 500.0, "latency_p99_ms": 900.0},
               "ledger": {"height": 40}, "audit": {"verdict": "PASS"}, "seconds": 30.0,
               "steps": [{"name": "pipeline", "status": "ok", "detail": ""},
                         {"name": "recognition", "status": "unavailable", "detail": "not wired"}]}
    text = demo_report.table(summary)
    for needle in ("6 / 6 / 0", "group 3 / none / matched / suspect", "12 / 12", "9.5 fps", "500.0 ms / 900.0 ms",
                   "40", "PASS", "recognition: unavailable - not wired"):
        assert needle in text
    assert demo_report.percentile([], 50) is None


def test_pipeline_gets_only_the_ledger_flags_it_has() -> None:
    from infra.demo_pipeline import pipeline_ledger_args
    from infra.stack import StackInfo

    info = StackInfo(root="/s", bootstrap="127.0.0.1:1", ledger_dir="/s/ledger", keys_dir="/s/keys",
                     api_addresses=["127.0.0.1:2", "127.0.0.1:3"])
    args, status = pipeline_ledger_args(info, {"--bootstrap-servers", "--policy"})
    assert args == [] and "not in the pipeline yet" in status
    args, status = pipeline_ledger_args(info, {"--ledger-dir", "--keys-dir", "--policy"})
    assert args == ["--ledger-dir", "/s/ledger", "--keys-dir", "/s/keys"] and status == "requested"
