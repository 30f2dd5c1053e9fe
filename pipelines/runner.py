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
import types
from typing import Any, Callable, Optional, Sequence

from pipelines.config.config_file import load, rules_to_json
from pipelines.config.defaults import OPERATIONS, OPTIONS, RUNNERS
from pipelines.models.providers import RecognizerFactory
from riskmask.errors import ServiceError, UserError

logger = logging.getLogger(__name__)

# `riskmask run` attribute -> built-in default of every setting the command line or a config file can set. The
# parser's own defaults are None so that "not given on the command line" can be told apart: the value is then
# taken from the config file (--config), else from here. Built from the one declaration (pipelines.config.defaults).
RUN_DEFAULTS: dict[str, Any] = {o.run_dest: o.run_default for o in OPTIONS if o.flags or o.config}


def resolve_args(args: argparse.Namespace) -> argparse.Namespace:
    """Fill every setting not given on the command line from ``--config`` (if any), then the defaults.

    Idempotent. ``$RISKMASK_BOOTSTRAP`` counts as given on the command line."""
    if getattr(args, "_resolved", False):
        return args

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
    """Beam flags from the ``riskmask run`` arguments (after :func:`resolve_args`): ``--name=value`` of every
    setting that has a value, in the order of :data:`pipelines.config.defaults.OPTIONS`."""
    args = resolve_args(args)
    if args.runner not in RUNNERS:
        # deferred: pipelines.config.options loads Beam (CLI start-up)
        from pipelines.config.options import OptionsError

        raise OptionsError(f"unknown runner {args.runner!r}; choose one of {', '.join(RUNNERS)}")
    out = []
    for o in OPTIONS:
        value = getattr(args, o.run_dest, None)
        if o.run_only or value is None:
            continue
        if o.type is None:
            if (not value) if o.invert else bool(value):
                out.append(f"--{o.name}")
        else:
            out.append(f"--{o.name}={value}")
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
    import apache_beam as beam  # deferred: loads apache_beam, which only this path needs
    # deferred: loads apache_beam, which only this path needs
    from apache_beam.options.pipeline_options import PipelineOptions

    from pipelines.config.options import validate  # deferred: loads apache_beam, requests, which only this path needs
    from pipelines.pipeline import build  # deferred: loads apache_beam, cv2, requests, which only this path needs
    # deferred: loads apache_beam, requests, which only this path needs
    from pipelines.transforms.audit import audit_from_options
    # deferred: loads apache_beam, requests, which only this path needs
    from pipelines.transforms.enrich_risk import recognition_from_options

    options = PipelineOptions(list(argv))
    opts = validate(options)
    logger.info("pipeline: %s -> %s (dlq %s), group %s, runner %s, %s", opts.raw_topic, opts.redacted_topic,
                opts.dlq_topic, opts.group_id, options.get_all_options().get("runner"),
                "bounded" if opts.bounded else "streaming")
    p = beam.Pipeline(options=options)

    recognizer_factory = None
    if (opts.execution_provider or "cpu").lower() != "cpu":
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
    """Add ``riskmask run``, one flag per setting of :data:`pipelines.config.defaults.OPTIONS` that has ``flags``.
    Their defaults are None here (see :data:`RUN_DEFAULTS`) so that a config file can fill what is not given."""
    p = sub.add_parser("run", help="run the de-identification pipeline (Kafka -> Beam -> Kafka)",
                       description="Read CameraFrame records, mask every face, write RedactedFrame records "
                                   "(and DeadLetter records for anything that cannot be processed safely). "
                                   "Settings come from the command line, then --config FILE, then defaults.")
    p.add_argument("--config", default=None, metavar="FILE",
                   help="pipeline config file (TOML; docs/operations.md); command-line flags override it")
    groups: dict[str, Any] = {"": p}
    for o in OPTIONS:
        if not o.flags:
            continue
        if o.group not in groups:
            groups[o.group] = p.add_argument_group(o.group)
        where = groups[o.group]
        shown = o.run_default
        helptext = o.help if shown is None or o.type is None else f"{o.help} (default: {shown})"
        if o.type is None:
            where.add_argument(*o.flags, dest=o.run_dest, action="store_const", const=not o.invert, default=None,
                               help=helptext)
        else:
            where.add_argument(*o.flags, dest=o.run_dest, type=o.type, default=None, choices=o.choices,
                               metavar=o.metavar, help=helptext)
    groups.setdefault(OPERATIONS, p.add_argument_group(OPERATIONS)).add_argument(
        "--metrics-out", default=None, metavar="FILE",
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
    # deferred: loads apache_beam, which only this path needs
    from apache_beam.options.pipeline_options import PipelineOptions

    from pipelines.config.options import validate  # deferred: loads apache_beam, requests, which only this path needs
    # deferred: loads apache_beam, requests, which only this path needs
    from pipelines.kafkaio.security import check_reachable, client_config

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
    from pipelines import metrics  # deferred: loads prometheus_client, which only this path needs
    from riskmask.health import HealthServer  # deferred: loads prometheus_client, which only this path needs

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
    seen = set()
    cur: Optional[BaseException] = exc
    while cur is not None and id(cur) not in seen:
        if isinstance(cur, (UserError, ServiceError)):
            return cur
        seen.add(id(cur))
        cur = cur.__cause__ or cur.__context__
    return None


__all__ = ["RUN_DEFAULTS", "pipeline_args", "register_run", "resolve_args", "run_pipeline"]
