"""`riskmask` subcommands owned by the pipelines package."""

from __future__ import annotations

import argparse


def register(sub: "argparse._SubParsersAction[argparse.ArgumentParser]") -> None:
    """Add this package's subcommands to the top-level parser."""
    from pipelines.ingest.producer import register_produce  # deferred: loads cv2, which only this path needs

    register_produce(sub)
    from pipelines.runner import register_run; register_run(sub)  # noqa: E702
    from pipelines.redact import register_redact; register_redact(sub)  # noqa: E702
