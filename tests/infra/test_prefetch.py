"""``python -m infra.prefetch``: every model and sample data set ready and verified, or one readable line."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def prefetch(env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "infra.prefetch"], cwd=ROOT, env={**os.environ, **env},
                          capture_output=True, text=True, timeout=600)


def test_prefetch_reports_everything_ready() -> None:
    res = prefetch({})
    assert res.returncode == 0, res.stderr[-2000:]
    assert "items ready" in res.stderr and "Traceback" not in res.stderr


def test_an_unusable_model_cache_is_one_line_and_a_nonzero_exit(tmp_path: Path) -> None:
    blocker = tmp_path / "not-a-directory"
    blocker.write_text("x")
    res = prefetch({"RISKMASK_MODEL_DIR": str(blocker / "models")})
    assert res.returncode == 3
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("prefetch: error:"), res.stderr
