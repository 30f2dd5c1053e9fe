"""Shared by the benchmarks: the host description every result carries, and writing a result as JSON."""

from __future__ import annotations

import datetime as _dt
import json
import os
import platform
from pathlib import Path
from typing import Any


def host_info(**extra: Any) -> dict[str, Any]:
    """Machine, CPU count, Python and the load average now (the machines are shared: say how busy it was)."""
    return {"machine": platform.machine(), "cpus": os.cpu_count(), "python": platform.python_version(),
            "loadavg_at_end": [round(x, 2) for x in os.getloadavg()], **extra}


def now_utc() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


def write_result(path: Path, result: dict[str, Any]) -> None:
    """Write ``result`` as indented JSON to ``path`` (parents created) and say where."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=1) + "\n", encoding="utf-8")
    print(f"wrote {path}")
