"""Horizontal bar charts for benchmark results, drawn with OpenCV (already a dependency; no plotting stack).

    bar_chart(path, "title", [("label", value), ...], unit="frames/s", marks={"target": 9.2})
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional, Sequence

import cv2
import numpy as np

WIDTH, ROW, LEFT, RIGHT, TOP = 960, 44, 330, 130, 70
FONT = cv2.FONT_HERSHEY_SIMPLEX
COLOURS = [(180, 119, 31), (14, 127, 255), (44, 160, 44), (40, 39, 214), (189, 103, 148), (75, 86, 140)]


def bar_chart(path: Path, title: str, rows: Sequence[tuple[str, float]], unit: str = "",
              marks: Optional[dict[str, float]] = None) -> Path:
    """Write a PNG with one bar per row (value printed at its end) and dashed vertical ``marks``."""
    marks = marks or {}
    height = TOP + ROW * len(rows) + 24 + 20 * len(marks)
    img = np.full((height, WIDTH, 3), 255, np.uint8)
    cv2.putText(img, title, (16, 36), FONT, 0.75, (0, 0, 0), 2, cv2.LINE_AA)
    top = max([v for _, v in rows] + list(marks.values()) + [1e-9])
    scale = (WIDTH - LEFT - RIGHT) / top
    for i, (label, value) in enumerate(rows):
        y = TOP + i * ROW
        cv2.putText(img, label[:40], (16, y + 26), FONT, 0.55, (40, 40, 40), 1, cv2.LINE_AA)
        x1 = LEFT + max(1, int(round(value * scale)))
        cv2.rectangle(img, (LEFT, y + 8), (x1, y + ROW - 8), COLOURS[i % len(COLOURS)], -1)
        cv2.putText(img, f"{value:.2f} {unit}".strip(), (x1 + 8, y + 28), FONT, 0.55, (0, 0, 0), 1, cv2.LINE_AA)
    for j, (name, value) in enumerate(marks.items()):  # one label row per mark, so close marks stay legible
        x = LEFT + int(round(value * scale))
        bottom = TOP + ROW * len(rows) + 8 + 20 * j
        for y in range(TOP, bottom, 10):
            cv2.line(img, (x, y), (x, min(y + 5, bottom)), (0, 0, 200), 2)
        cv2.putText(img, f"{name} ({value:.2f})", (x + 6, bottom + 6), FONT, 0.5, (0, 0, 200), 1, cv2.LINE_AA)
    path.parent.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(path), img)
    return path
