"""``riskmask run``: build the pipeline from command-line options and run it.

Runner choice: the default is Beam's ``FnApiRunner`` named explicitly. ``DirectRunner`` in Beam 2.77 first
tries the Prism runner, which downloads a binary from GitHub; offline that attempt fails and it falls back to
the FnApiRunner anyway, after a delay. ``PortableRunner`` (with ``--job-endpoint``) submits to a Beam job
server such as the Flink one; streaming on Flink needs ``--checkpointing-interval`` because offsets are
committed only when a checkpoint completes. Any other Beam flag can be passed with ``--pipeline-arg``.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import threading
from typing import Any, Callable, Optional, Sequence

from pipelines.defaults import (DEFAULT_AUDIT_TOPIC, DEFAULT_BOOTSTRAP, DEFAULT_DLQ_TOPIC, DEFAULT_GROUP_ID,
                                DEFAULT_MAX_BUNDLE_SECONDS, DEFAULT_MAX_FRAME_BYTES, DEFAULT_MAX_RECORDS_PER_BUNDLE,
                                DEFAULT_RAW_TOPIC, DEFAULT_REDACTED_TOPIC)

logger = logging.getLogger(__name__)

RUNNERS = ("FnApiRunner", "DirectRunner", "PortableRunner", "FlinkRunner", "PrismRunner")


def pipeline_args(args: argparse.Namespace) -> list[str]:
    """Beam flags from the ``riskmask run`` arguments."""
    out = [f"--runner={args.runner}", f"--kafka_bootstrap_servers={args.bootstrap_servers}",
           f"--raw_topic={args.raw_topic}", f"--redacted_topic={args.redacted_topic}",
           f"--dlq_topic={args.dlq_topic}", f"--audit_topic={args.audit_topic}", f"--group_id={args.group_id}",
           f"--detector={args.detector}", f"--policy={args.policy}", f"--detector_threads={args.threads}",
           f"--max_frame_bytes={args.max_frame_bytes}", f"--max_records_per_bundle={args.max_records_per_bundle}",
           f"--max_bundle_seconds={args.max_bundle_seconds}"]
    if args.detector_threshold is not None:
        out.append(f"--detector_threshold={args.detector_threshold}")
    if args.bounded:
        out.append("--bounded")
    for flag in ("job_endpoint", "environment_type", "environment_config", "checkpointing_interval",
                 "parallelism", "max_parallelism", "savepoint_path", "ledger_dir", "keys_dir",
                 "match_threshold", "match_margin", "audit_block_records", "audit_block_seconds",
                 "progress_interval_s", "detect_lookahead"):
        value = getattr(args, flag, None)
        if value is not None:
            out.append(f"--{flag}={value}")
    if getattr(args, "anchor_audit_blocks", False):
        out.append("--anchor_audit_blocks")
    if args.runner in ("PortableRunner", "FlinkRunner") and not args.bounded:
        out.append("--streaming")
    out.extend(args.pipeline_arg or [])
    return out


def run_pipeline(argv: Sequence[str], detector_factory: Optional[Callable[[], Any]] = None,
                 metrics_out: Optional[str] = None) -> str:
    """Build and run the pipeline for Beam flags ``argv``; returns the final state (blocks until it ends).

    ``metrics_out``: when the run ends, write the stages' counters and timing distributions there as JSON
    (see :func:`metrics_summary`)."""
    import apache_beam as beam
    from apache_beam.options.pipeline_options import PipelineOptions

    from pipelines.options import validate
    from pipelines.pipeline import build
    from pipelines.transforms.audit import audit_from_options
    from pipelines.transforms.enrich_risk import recognition_from_options

    options = PipelineOptions(list(argv))
    opts = validate(options)
    logger.info("pipeline: %s -> %s (dlq %s), group %s, runner %s, %s", opts.raw_topic, opts.redacted_topic,
                opts.dlq_topic, opts.group_id, options.get_all_options().get("runner"),
                "bounded" if opts.bounded else "streaming")
    p = beam.Pipeline(options=options)

    build(p, opts, detector_factory=detector_factory, recognition=recognition_from_options(opts),
          audit=audit_from_options(opts))
    result = p.run()
    state = result.wait_until_finish()
    try:
        summary = {"state": str(state), **metrics_summary(result)}
    except Exception as exc:  # a runner without metrics support: the run itself succeeded
        logger.info("no stage metrics from this runner (%s)", type(exc).__name__)
        return str(state)
    logger.info("%s", summary_line(summary))
    if metrics_out:
        with open(metrics_out, "w", encoding="utf-8") as fh:
            json.dump(summary, fh, indent=1, sort_keys=True)
        logger.info("stage metrics written to %s", metrics_out)
    return str(state)


STAGE_ORDER = ("decode", "detect_faces", "embed_faces", "enrich_risk", "mask_faces", "encode")


def summary_line(summary: dict[str, Any]) -> str:
    """One readable line from :func:`metrics_summary`: frames, faces by identity class, time per stage."""
    dists, counters = summary.get("distributions", {}), summary.get("counters", {})
    frames = int(dists.get("encode/frame_us", {}).get("count", 0))
    parts = [f"run summary: {frames} frames encoded"]
    ids = {k.split("/faces_", 1)[1]: v for k, v in counters.items() if k.startswith("enrich_risk/faces_") and v}
    if ids:
        parts.append("faces " + ", ".join(f"{k} {v}" for k, v in sorted(ids.items())))
    if counters.get("detect_faces/frames_degraded"):
        parts.append(f"{counters['detect_faces/frames_degraded']} degraded (whole frame masked)")
    stages = [(s, dists[f"{s}/frame_us"]) for s in STAGE_ORDER if f"{s}/frame_us" in dists]
    if stages:
        parts.append("ms per frame: " + ", ".join(f"{s} {d['sum'] / max(1, d['count']) / 1000:.1f}"
                                                  for s, d in stages))
    return "; ".join(parts)


def metrics_summary(result: Any) -> dict[str, Any]:
    """Committed Beam metrics of a finished run: ``{"counters": {"stage/name": n}, "distributions":
    {"stage/name": {count, sum, min, max, mean}}}``. Every stage records ``frame_us``, its processing time per
    frame, so the distributions' sums give the share of time per stage."""
    counters: dict[str, int] = {}
    dists: dict[str, dict[str, float]] = {}
    query = result.metrics().query()
    for item in query.get("counters", []):
        key = f"{item.key.metric.namespace}/{item.key.metric.name}"
        counters[key] = counters.get(key, 0) + int(item.committed or 0)
    for item in query.get("distributions", []):
        key = f"{item.key.metric.namespace}/{item.key.metric.name}"
        d = item.committed
        if d is None or not d.count:
            continue
        prev = dists.get(key, {"count": 0, "sum": 0, "min": d.min, "max": d.max})
        merged = {"count": prev["count"] + d.count, "sum": prev["sum"] + d.sum,
                  "min": min(prev["min"], d.min), "max": max(prev["max"], d.max)}
        merged["mean"] = round(merged["sum"] / merged["count"], 1)
        dists[key] = merged
    return {"counters": dict(sorted(counters.items())), "distributions": dict(sorted(dists.items()))}


def register_run(sub: "argparse._SubParsersAction[argparse.ArgumentParser]") -> None:
    """Add ``riskmask run``."""
    p = sub.add_parser("run", help="run the de-identification pipeline (Kafka -> Beam -> Kafka)",
                       description="Read CameraFrame records, mask every face, write RedactedFrame records "
                                   "(and DeadLetter records for anything that cannot be processed safely).")
    p.add_argument("--bootstrap-servers", default=os.environ.get("RISKMASK_BOOTSTRAP", DEFAULT_BOOTSTRAP),
                   help="Kafka bootstrap servers (default: $RISKMASK_BOOTSTRAP or %(default)s)")
    p.add_argument("--raw-topic", default=DEFAULT_RAW_TOPIC, help="input topic (default: %(default)s)")
    p.add_argument("--redacted-topic", default=DEFAULT_REDACTED_TOPIC, help="output topic (default: %(default)s)")
    p.add_argument("--dlq-topic", default=DEFAULT_DLQ_TOPIC, help="dead-letter topic (default: %(default)s)")
    p.add_argument("--audit-topic", default=DEFAULT_AUDIT_TOPIC, help="audit topic (default: %(default)s)")
    p.add_argument("--group-id", default=DEFAULT_GROUP_ID,
                   help="consumer group whose committed offsets are resumed (default: %(default)s)")
    p.add_argument("--detector", default="yunet", help="face detector: yunet | centerface (default: %(default)s)")
    p.add_argument("--detector-threshold", type=float, default=None, help="detector score threshold")
    p.add_argument("--policy", default="default", help="policy name (default, paper) or a policy file path")
    p.add_argument("--threads", type=int, default=1, help="onnxruntime threads for the detector (default 1)")
    p.add_argument("--detect-lookahead", dest="detect_lookahead", type=int, default=None, metavar="FRAMES",
                   help="frames detected ahead on a second thread while earlier ones are masked and written "
                        "(default 1; 0: all on one thread)")
    p.add_argument("--max-frame-bytes", type=int, default=DEFAULT_MAX_FRAME_BYTES,
                   help="records above this go to the DLQ as oversized (default: %(default)s)")
    p.add_argument("--max-records-per-bundle", type=int, default=DEFAULT_MAX_RECORDS_PER_BUNDLE,
                   help="records per source checkpoint; bounds bundle latency (default: %(default)s)")
    p.add_argument("--max-bundle-seconds", type=float, default=DEFAULT_MAX_BUNDLE_SECONDS,
                   help="seconds of reading per source checkpoint; bounds output latency (default: %(default)s)")
    p.add_argument("--bounded", action="store_true",
                   help="process what is in the topic now, then stop (replays, tests)")
    p.add_argument("--runner", default="FnApiRunner", choices=RUNNERS, help="Beam runner (default: %(default)s)")
    # The underscore spellings below are Beam's; Flink's FlinkPortableClientEntryPoint appends
    # --job_endpoint=... to the driver command it runs.
    p.add_argument("--job-endpoint", "--job_endpoint", dest="job_endpoint", default=None,
                   help="Beam job server host:port")
    p.add_argument("--environment-type", "--environment_type", dest="environment_type", default=None,
                   help="SDK worker environment for portable runners (EXTERNAL, PROCESS, DOCKER, LOOPBACK)")
    p.add_argument("--environment-config", "--environment_config", dest="environment_config", default=None,
                   help="e.g. localhost:50000 of a worker pool for EXTERNAL")
    p.add_argument("--checkpointing-interval", "--checkpointing_interval", dest="checkpointing_interval", type=int,
                   default=None, help="Flink checkpoint interval in ms (required for streaming on Flink)")
    p.add_argument("--parallelism", type=int, default=None, help="Flink parallelism")
    p.add_argument("--max-parallelism", "--max_parallelism", dest="max_parallelism", type=int, default=None,
                   help="Flink max parallelism")
    p.add_argument("--savepoint-path", "--savepoint_path", dest="savepoint_path", default=None,
                   help="Flink savepoint to restore")
    rec = p.add_argument_group("recognition, risk lookup and audit (docs/recognition.md)")
    rec.add_argument("--ledger-dir", default=None,
                     help="ledger cluster directory (genesis, pipeline key); without it no one is recognised and "
                          "every face gets the strongest mask")
    rec.add_argument("--keys-dir", default=None, help="privacy keyring directory (key-encryption keys)")
    rec.add_argument("--match-threshold", type=float, default=None, help="SFace cosine for a match (default 0.50)")
    rec.add_argument("--match-margin", type=float, default=None, help="lead over the second subject (default 0.08)")
    rec.add_argument("--audit-block-records", type=int, default=None, help="records per audit block (default 250)")
    rec.add_argument("--audit-block-seconds", type=float, default=None, help="capture seconds per audit block")
    rec.add_argument("--anchor-audit-blocks", action="store_true",
                     help="anchor each audit block's Merkle root on the ledger (needs --ledger-dir)")
    p.add_argument("--progress-interval", dest="progress_interval_s", type=float, default=None, metavar="SECONDS",
                   help="seconds between progress lines in the log: frames/s, faces, degraded frames, latency "
                        "(default 30; 0: none)")
    p.add_argument("--metrics-out", default=None, metavar="FILE",
                   help="when the run ends (e.g. --bounded), write per-stage counters and timings as JSON here")
    p.add_argument("--pipeline-arg", action="append", default=[], metavar="FLAG",
                   help="extra Beam pipeline flag, e.g. --pipeline-arg=--direct_num_workers=2 (repeatable)")
    p.set_defaults(func=_run_main)


class _DropImportNoise(logging.Filter):
    """Beam warns at import about optional Google Cloud clients this pipeline never uses."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "apitools not found" not in record.getMessage()


def _terminate(signum: int, frame: Any) -> None:
    # SIGTERM (docker stop, Kubernetes) ends the run like Ctrl-C: the bundle in flight is abandoned, its
    # offsets are not committed, and a restart reprocesses it (at-least-once).
    raise KeyboardInterrupt


def _run_main(args: argparse.Namespace) -> int:
    for handler in logging.getLogger().handlers:
        handler.addFilter(_DropImportNoise())
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, _terminate)
    if not getattr(args, "debug", False):
        logging.getLogger("kafka").setLevel(logging.CRITICAL)  # failures reach the user as one line
        logging.getLogger("apache_beam").setLevel(logging.WARNING)
    argv = pipeline_args(args)
    try:
        state = run_pipeline(argv, metrics_out=getattr(args, "metrics_out", None))
    except Exception as exc:
        cause = _user_facing(exc)
        if cause is not None:
            raise cause from None
        raise
    logger.info("pipeline finished: %s", state)
    return 0 if state in ("DONE", "PipelineState.DONE") else 1


def _user_facing(exc: BaseException) -> Optional[BaseException]:
    """The UserError/ServiceError behind a Beam wrapper exception, if any (one readable line for the CLI)."""
    from riskmask.errors import ServiceError, UserError

    seen = set()
    cur: Optional[BaseException] = exc
    while cur is not None and id(cur) not in seen:
        if isinstance(cur, (UserError, ServiceError)):
            return cur
        seen.add(id(cur))
        cur = cur.__cause__ or cur.__context__
    return None


__all__ = ["pipeline_args", "register_run", "run_pipeline"]
