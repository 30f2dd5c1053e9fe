"""The paper's figure 3 is reproducible with one command: a real process writes the PNG and prints cosines."""

from __future__ import annotations

import json
import pathlib
import re
import subprocess
import sys

import cv2

ROOT = pathlib.Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "bench" / "paper_figure3.py"


def test_figure3_png_and_cosines(tmp_path) -> None:
    out = tmp_path / "fig3.png"
    proc = subprocess.run([sys.executable, str(SCRIPT), "--out", str(out)], capture_output=True, text=True,
                          timeout=300, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-2000:]
    cosines = [float(c) for c in re.findall(r"SFace cosine to original (-?\d\.\d+)", proc.stdout)]
    assert len(cosines) == 9  # three rows of original / non-criminal / criminal
    img = cv2.imread(str(out))
    assert img is not None and img.shape[0] > 3 * 256 and img.shape[1] >= 3 * 256
    record = json.loads(out.with_suffix(".json").read_text())
    paper, default_g1, default_g3 = ({p["label"]: p["cosine"] for p in row["panels"]} for row in record["rows"])
    assert paper["original"] == 1.0 and paper["criminal"] > paper["non-criminal"]  # the paper's ordering
    assert default_g1["non-criminal"] < 0.363 and default_g1["criminal"] < 0.363
    assert default_g3["non-criminal"] < 0.363 <= 0.6 <= default_g3["criminal"]
    assert cosines == [round(p["cosine"], 3) for row in record["rows"] for p in row["panels"]]  # printed = saved


def test_figure3_bad_option_one_line(tmp_path) -> None:
    proc = subprocess.run([sys.executable, str(SCRIPT), "--width", "3", "--out", str(tmp_path / "x.png")],
                          capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert proc.returncode == 2 and proc.stderr.strip().count("\n") == 0 and "--width" in proc.stderr
