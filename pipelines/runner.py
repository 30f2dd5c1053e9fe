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


# dest -> built-in default of every `riskmask run` setting a config file can also set. The parser's own
# defaults are None so that "not given on the command line" can be told apart: the value is then taken from
# the config file (--config), else from here.
RUN_DEFAULTS: dict[str, Any] = {
    "bootstrap_servers": DEFAULT_BOOTSTRAP, "raw_topic": DEFAULT_RAW_TOPIC, "redacted_topic": DEFAULT_REDACTED_TOPIC,
    "dlq_topic": DEFAULT_DLQ_TOPIC, "audit_topic": DEFAULT_AUDIT_TOPIC, "group_id": DEFAULT_GROUP_ID,
    "detector": "yunet", "detector_threshold": None, "policy": "default", "threads": 1, "detect_lookahead": None,
    "gate_refresh": None, "detect_workers": None,
    "execution_provider": "cpu", "max_frame_bytes": DEFAULT_MAX_FRAME_BYTES,
    "max_records_per_bundle": DEFAULT_MAX_RECORDS_PER_BUNDLE, "max_bundle_seconds": DEFAULT_MAX_BUNDLE_SECONDS,
    "bounded": False, "runner": "FnApiRunner", "job_endpoint": None, "environment_type": None,
    "environment_config": None, "checkpointing_interval": None, "parallelism": None, "ledger_dir": None,
    "keys_dir": None, "match_threshold": None, "match_margin": None, "anchor_audit_blocks": False,
    "progress_interval_s": None, "kafka_security_protocol": None, "kafka_sasl_mechanism": None,
    "kafka_sasl_username": None, "kafka_sasl_password_file": None, "kafka_ssl_cafile": None,
    "kafka_ssl_certfile": None, "kafka_ssl_keyfile": None, "kafka_ssl_check_hostname": True,
    "connect_timeout": 5.0, "metrics_port": None, "metrics_host": "0.0.0.0",
}


def resolve_args(args: argparse.Namespace) -> argparse.Namespace:
    """Fill every setting not given on the command line from ``--config`` (if any), then the defaults.

    Idempotent. ``$RISKMASK_BOOTSTRAP`` counts as given on the command line."""
    if getattr(args, "_resolved", False):
        return args
    from pipelines.config_file import load, rules_to_json

    cfg = load(args.config) if getattr(args, "config", None) else None
    if getattr(args, "bootstrap_servers", None) is None and os.environ.get("RISKMASK_BOOTSTRAP"):
        args.bootstrap_servers = os.environ["RISKMASK_BOOTSTRAP"]
    for dest, default in RUN_DEFAULTS.items():
        if getattr(args, dest, None) is None:
            setattr(args, dest, cfg.values.get(dest, default) if cfg is not None else default)
    args.camera_rules = rules_to_json(cfg.cameras) if cfg is not None and cfg.cameras else None
    if cfg is not None:
        logger.info("settings from %s (command-line flags override it)", cfg.path)
    args._resolved = True
    return args


def pipeline_args(args: argparse.Namespace) -> list[str]:
    """Beam flags from the ``riskmask run`` arguments (after :func:`resolve_args`)."""
    args = resolve_args(args)
    if args.runner not in RUNNERS:
        from pipelines.options import OptionsError

        raise OptionsError(f"unknown runner {args.runner!r}; choose one of {', '.join(RUNNERS)}")
    out = [f"--runner={args.runner}", f"--kafka_bootstrap_servers={args.bootstrap_servers}",
           f"--raw_topic={args.raw_topic}", f"--redacted_topic={args.redacted_topic}",
           f"--dlq_topic={args.dlq_topic}", f"--audit_topic={args.audit_topic}", f"--group_id={args.group_id}",
           f"--detector={args.detector}", f"--policy={args.policy}", f"--detector_threads={args.threads}",
           f"--max_frame_bytes={args.max_frame_bytes}", f"--max_records_per_bundle={args.max_records_per_bundle}",
           f"--max_bundle_seconds={args.max_bundle_seconds}", f"--execution_provider={args.execution_provider}"]
    if args.detector_threshold is not None:
        out.append(f"--detector_threshold={args.detector_threshold}")
    if args.bounded:
        out.append("--bounded")
    for flag in ("job_endpoint", "environment_type", "environment_config", "checkpointing_interval",
                 "parallelism", "max_parallelism", "savepoint_path", "ledger_dir", "keys_dir",
                 "match_threshold", "match_margin", "audit_block_records", "audit_block_seconds",
                 "progress_interval_s", "detect_lookahead", "gate_refresh", "detect_workers", "kafka_security_protocol", "kafka_sasl_mechanism",
                 "kafka_sasl_username", "kafka_sasl_password_file", "kafka_ssl_cafile", "kafka_ssl_certfile",
                 "kafka_ssl_keyfile", "camera_rules"):
        value = getattr(args, flag, None)
        if value is not None:
            out.append(f"--{flag}={value}")
    if args.connect_timeout is not None:
        out.append(f"--connect_timeout_s={args.connect_timeout}")
    if args.kafka_ssl_check_hostname is False:
        out.append("--kafka_ssl_no_check_hostname")
    if getattr(args, "anchor_audit_blocks", False):
        out.append("--anchor_audit_blocks")
    if args.runner in ("PortableRunner", "FlinkRunner") and not args.bounded:
        out.append("--streaming")
    out.extend(args.pipeline_arg or [])
    return out


def run_pipeline(argv: Sequence[str], detector_factory: Optional[Callable[[], Any]] = None,
                 metrics_out: Optional[str] = None, health: Any = None) -> str:
    """Build and run the pipeline for Beam flags ``argv``; returns the final state (blocks until it ends).

    ``metrics_out``: when the run ends, write the stages' counters and timing distributions there as JSON
    (see :func:`metrics_summary`). ``health``: a :class:`pipelines.metrics.PipelineHealth` told when the
    pipeline runs and when it ended."""
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

    recognizer_factory = None
    if (opts.execution_provider or "cpu").lower() != "cpu":
        from pipelines.models.providers import RecognizerFactory

        recognizer_factory = RecognizerFactory(opts.recognizer_threads, opts.execution_provider.lower())
    build(p, opts, detector_factory=detector_factory,
          recognition=recognition_from_options(opts, recognizer_factory=recognizer_factory),
          audit=audit_from_options(opts))
    if health is not None:  # the local runner runs inside p.run(); a portable one returns at once
        health.set_running(True)
    try:
        result = p.run()
        state = result.wait_until_finish()
    finally:
        if health is not None:
            health.set_running(False)
    if health is not None:
        health.finished = str(state)
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
    """Add ``riskmask run``. Settings a config file can hold default to None here (see :data:`RUN_DEFAULTS`)."""
    d = RUN_DEFAULTS
    p = sub.add_parser("run", help="run the de-identification pipeline (Kafka -> Beam -> Kafka)",
                       description="Read CameraFrame records, mask every face, write RedactedFrame records "
                                   "(and DeadLetter records for anything that cannot be processed safely). "
                                   "Settings come from the command line, then --config FILE, then defaults.")
    p.add_argument("--config", default=None, metavar="FILE",
                   help="pipeline config file (TOML; docs/operations.md); command-line flags override it")
    p.add_argument("--bootstrap-servers", default=None,
                   help=f"Kafka bootstrap servers (default: $RISKMASK_BOOTSTRAP or {d['bootstrap_servers']})")
    p.add_argument("--raw-topic", default=None, help=f"input topic (default: {d['raw_topic']})")
    p.add_argument("--redacted-topic", default=None, help=f"output topic (default: {d['redacted_topic']})")
    p.add_argument("--dlq-topic", default=None, help=f"dead-letter topic (default: {d['dlq_topic']})")
    p.add_argument("--audit-topic", default=None, help=f"audit topic (default: {d['audit_topic']})")
    p.add_argument("--group-id", default=None,
                   help=f"consumer group whose committed offsets are resumed (default: {d['group_id']})")
    p.add_argument("--detector", default=None, help="face detector: yunet | centerface (default: yunet)")
    p.add_argument("--detector-threshold", type=float, default=None,
                   help="detector score threshold (default: the model's own, kept low)")
    p.add_argument("--execution-provider", default=None, choices=("cpu", "cuda", "tensorrt"),
                   help="onnxruntime execution provider of the detector and recogniser (default: cpu; cuda and "
                        "tensorrt need onnxruntime-gpu, and fail with a clear error without it)")
    p.add_argument("--policy", default=None,
                   help="policy name (default, paper) or a policy file path (default: default)")
    p.add_argument("--threads", type=int, default=None, help="onnxruntime threads for the detector (default 1)")
    p.add_argument("--detect-lookahead", dest="detect_lookahead", type=int, default=None, metavar="FRAMES",
                   help="frames detected ahead on a second thread while earlier ones are masked and written "
                        "(default 2; 0: all on one thread)")
    p.add_argument("--detect-workers", dest="detect_workers", type=int, default=None, metavar="N",
                   help="detector threads, each camera bound to one so that cameras are detected at once "
                        "(default 2)")
    p.add_argument("--gate-refresh", dest="gate_refresh", type=int, default=None, metavar="FRAMES",
                   help="detect only where pixels changed, with a full-frame detection every FRAMES frames per "
                        "camera (default 25; 0: every frame in full, no change gate)")
    p.add_argument("--max-frame-bytes", type=int, default=None,
                   help=f"records above this go to the DLQ as oversized (default: {d['max_frame_bytes']})")
    p.add_argument("--max-records-per-bundle", type=int, default=None,
                   help=f"records per source checkpoint; bounds bundle latency "
                        f"(default: {d['max_records_per_bundle']})")
    p.add_argument("--max-bundle-seconds", type=float, default=None,
                   help=f"seconds of reading per source checkpoint; bounds output latency "
                        f"(default: {d['max_bundle_seconds']})")
    p.add_argument("--bounded", action="store_const", const=True, default=None,
                   help="process what is in the topic now, then stop (replays, tests)")
    p.add_argument("--runner", default=None, choices=RUNNERS, help="Beam runner (default: FnApiRunner)")
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
    kafka = p.add_argument_group("Kafka connection (docs/operations.md)")
    kafka.add_argument("--connect-timeout", type=float, default=None, metavar="SECONDS",
                       help="give up after this long when no broker answers or a topic is missing (default 5)")
    kafka.add_argument("--kafka-security-protocol", default=None,
                       choices=("PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"),
                       help="how clients talk to the brokers (default: PLAINTEXT)")
    kafka.add_argument("--kafka-sasl-mechanism", default=None, choices=("PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"),
                       help="SASL mechanism (default: PLAIN)")
    kafka.add_argument("--kafka-sasl-username", default=None, help="SASL user name")
    kafka.add_argument("--kafka-sasl-password-file", default=None, metavar="FILE",
                       help="file holding the SASL password (never pass a password on the command line)")
    kafka.add_argument("--kafka-ssl-cafile", default=None, metavar="FILE", help="CA bundle of the brokers")
    kafka.add_argument("--kafka-ssl-certfile", default=None, metavar="FILE", help="client certificate (mutual TLS)")
    kafka.add_argument("--kafka-ssl-keyfile", default=None, metavar="FILE", help="client key (mutual TLS)")
    kafka.add_argument("--kafka-no-check-hostname", dest="kafka_ssl_check_hostname", action="store_const",
                       const=False, default=None, help="do not check the broker certificate's host name")
    rec = p.add_argument_group("recognition, risk lookup and audit (docs/recognition.md)")
    rec.add_argument("--ledger-dir", default=None,
                     help="ledger cluster directory (genesis, pipeline key); without it no one is recognised and "
                          "every face gets the strongest mask")
    rec.add_argument("--keys-dir", default=None, help="privacy keyring directory (key-encryption keys)")
    rec.add_argument("--match-threshold", type=float, default=None, help="SFace cosine for a match (default 0.50)")
    rec.add_argument("--match-margin", type=float, default=None, help="lead over the second subject (default 0.08)")
    rec.add_argument("--audit-block-records", type=int, default=None, help="records per audit block (default 250)")
    rec.add_argument("--audit-block-seconds", type=float, default=None,
                     help="capture seconds per audit block (default 10)")
    rec.add_argument("--anchor-audit-blocks", action="store_const", const=True, default=None,
                     help="anchor each audit block's Merkle root on the ledger (needs --ledger-dir)")
    ops = p.add_argument_group("operations (docs/operations.md)")
    ops.add_argument("--metrics-port", type=int, default=None, metavar="PORT",
                     help="serve /metrics, /healthz and /readyz on this port (default: off; 0: any free port)")
    ops.add_argument("--metrics-host", default=None, metavar="ADDR",
                     help=f"address the metrics server binds (default: {d['metrics_host']})")
    ops.add_argument("--progress-interval", dest="progress_interval_s", type=float, default=None, metavar="SECONDS",
                     help="seconds between progress lines in the log: frames/s, faces, degraded frames, latency "
                          "(default 30; 0: none)")
    ops.add_argument("--metrics-out", default=None, metavar="FILE",
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
    _check_broker_first(argv)
    health, server = _start_health(args)
    try:
        state = run_pipeline(argv, metrics_out=getattr(args, "metrics_out", None), health=health)
    except Exception as exc:
        cause = _user_facing(exc)
        if cause is not None:
            raise cause from None
        raise
    finally:
        if server is not None:
            server.stop()
            health.probe.stop()
    logger.info("pipeline finished: %s", state)
    return 0 if state in ("DONE", "PipelineState.DONE") else 1


def _check_broker_first(argv: Sequence[str]) -> None:
    """Check the options, then fail within the connect timeout, before the pipeline is built, when no broker
    answers."""
    import types

    from apache_beam.options.pipeline_options import PipelineOptions

    from pipelines.kafkaio.security import check_reachable, client_config
    from pipelines.options import validate

    validate(PipelineOptions(list(argv)))

    opts: dict[str, Any] = {}
    for flag in argv:
        name, eq, value = flag.lstrip("-").partition("=")
        opts[name] = value if eq else True
    if "connect_timeout_s" in opts:
        opts["connect_timeout_s"] = float(opts["connect_timeout_s"])
    logger.info("connecting to Kafka at %s (%s, timeout %s s)", opts.get("kafka_bootstrap_servers"),
                opts.get("kafka_security_protocol") or "PLAINTEXT", opts.get("connect_timeout_s"))
    check_reachable(str(opts.get("kafka_bootstrap_servers", "")), client_config(types.SimpleNamespace(**{
        k: opts.get(k) for k in ("kafka_security_protocol", "kafka_sasl_mechanism", "kafka_sasl_username",
                                 "kafka_sasl_password_file", "kafka_ssl_cafile", "kafka_ssl_certfile",
                                 "kafka_ssl_keyfile", "kafka_ssl_no_check_hostname", "connect_timeout_s")})))


def _start_health(args: argparse.Namespace) -> tuple[Any, Any]:
    """The metrics/health server of this run when ``--metrics-port`` (or the config file) asks for one."""
    if args.metrics_port is None:
        return None, None
    from pipelines import metrics
    from riskmask.health import HealthServer

    health = metrics.PipelineHealth(metrics.BrokerProbe(args.bootstrap_servers))
    health.probe.start()
    server = HealthServer(metrics.REGISTRY, ready=health.ready, live=health.live, host=args.metrics_host,
                          port=args.metrics_port)
    try:
        server.start()
    except Exception:
        health.probe.stop()
        raise
    return health, server


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


__all__ = ["RUN_DEFAULTS", "pipeline_args", "register_run", "resolve_args", "run_pipeline"]
