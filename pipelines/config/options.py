"""``RiskmaskOptions``: the single PipelineOptions subclass of the riskmask pipeline, and its validation.

Beam collects the flags of every PipelineOptions subclass into one parser, so names here must not collide
with Beam's own (``--bootstrap_servers`` belongs to the Kafka Streams runner options; ours is
``--kafka_bootstrap_servers``). Portable/Flink flags that Beam defines itself (``--job_endpoint``,
``--environment_type``, ``--environment_config``, ``--parallelism``, ``--max_parallelism``) are validated here
but not redefined; ``--checkpointing_interval`` and ``--savepoint_path`` are added so that they reach the Flink
job server, which reads them from the pipeline options.

The settings themselves are declared once, in :data:`pipelines.config.defaults.OPTIONS` (a Beam-free module, so that
``riskmask --help`` does not load Beam); the ``riskmask run`` command line and the config file are built from
the same table.
"""

from __future__ import annotations

import re
from typing import Any

from apache_beam.options.pipeline_options import PipelineOptions, StandardOptions

from pipelines.config.config_file import CameraRuleError, parse_camera_rules
from pipelines.config.defaults import BY_NAME, OPTIONS
from pipelines.kafkaio.security import KafkaSettingsError, validate as validate_kafka
from pipelines.masking.policy import Policy
from pipelines.models.providers import PROVIDERS, ProviderError, ort_providers
from riskmask.errors import UserError

PORTABLE_RUNNERS = {"PortableRunner", "FlinkRunner"}
DETECTORS = ("yunet", "centerface")
_TOPIC_RE = re.compile(r"^[A-Za-z0-9._-]{1,249}$")
_HOSTPORT_RE = re.compile(r"^[^\s:,]+:\d{1,5}$")


class OptionsError(UserError):
    """A pipeline option is missing, malformed or inconsistent with another one."""


class RiskmaskOptions(PipelineOptions):
    """Everything the riskmask pipeline reads from its command line: the settings of
    :data:`pipelines.config.defaults.OPTIONS` that Beam does not declare itself (their one declaration)."""

    @classmethod
    def _add_argparse_args(cls, parser: Any) -> None:
        # No argparse choices here: a bad value must reach validate() and fail with one readable line,
        # not make Beam's parser exit.
        for o in OPTIONS:
            if not o.beam or o.run_only:
                continue
            if o.type is None:
                parser.add_argument(f"--{o.name}", action="store_true", default=o.default, help=o.help)
            else:
                parser.add_argument(f"--{o.name}", type=o.type, default=o.default, help=o.help)


def validate(options: PipelineOptions) -> RiskmaskOptions:
    """Check every option; raise OptionsError with one readable line on the first problem."""
    opts = options.view_as(RiskmaskOptions)
    servers = [s.strip() for s in (opts.kafka_bootstrap_servers or "").split(",") if s.strip()]
    if not servers:
        raise OptionsError("bootstrap servers are empty; pass host:port[,host:port...]")
    for s in servers:
        if not _HOSTPORT_RE.match(s) or not 0 < int(s.rpartition(":")[2]) <= 65535:
            raise OptionsError(f"bootstrap server {s!r} is not host:port")
    topics = {"raw": opts.raw_topic, "redacted": opts.redacted_topic, "dlq": opts.dlq_topic,
              "audit": opts.audit_topic}
    for role, name in topics.items():
        if not name or not _TOPIC_RE.match(name):
            raise OptionsError(f"{role} topic {name!r} is not a valid Kafka topic name")
    if opts.raw_topic in (opts.redacted_topic, opts.dlq_topic, opts.audit_topic):
        raise OptionsError(f"the input topic {opts.raw_topic!r} must differ from every output topic")
    if not opts.group_id:
        raise OptionsError("group id is empty")
    if opts.detector not in DETECTORS:
        raise OptionsError(f"unknown detector {opts.detector!r}; choose one of {', '.join(DETECTORS)}")
    _check_policy(opts.policy)
    if opts.detector_threshold is not None and not 0.0 < opts.detector_threshold < 1.0:
        raise OptionsError(f"detector threshold must be in (0, 1), got {opts.detector_threshold}")
    # Same shape as the other checks of pipelines/config/options.py:validate: one bound and message per option.
    if not 1 <= opts.detector_threads <= 64:
        raise OptionsError(f"threads must be 1..64, got {opts.detector_threads}")
    if not 1024 <= opts.max_frame_bytes <= 64 * 1024 * 1024:
        raise OptionsError(f"max frame bytes must be 1 KiB..64 MiB, got {opts.max_frame_bytes}")
    if not 1 <= opts.max_records_per_bundle <= 100_000:
        raise OptionsError(f"max records per bundle must be 1..100000, got {opts.max_records_per_bundle}")
    if not 0.01 <= opts.max_bundle_seconds <= 60:
        raise OptionsError(f"max bundle seconds must be 0.01..60, got {opts.max_bundle_seconds}")
    if not 0 <= opts.gate_refresh <= 1000:
        raise OptionsError(f"gate refresh must be 0..1000 frames, got {opts.gate_refresh}")
    if not 1 <= opts.detect_workers <= 16:
        raise OptionsError(f"detect workers must be 1..16, got {opts.detect_workers}")
    if not 0 <= opts.detect_lookahead <= 8:
        raise OptionsError(f"detect look-ahead must be 0..8 frames, got {opts.detect_lookahead}")
    if not 0 <= opts.progress_interval_s <= 86_400:
        raise OptionsError(f"progress interval must be 0..86400 seconds, got {opts.progress_interval_s}")
    if not 0.363 <= opts.match_threshold < 1.0:
        raise OptionsError(f"match threshold must be in [0.363, 1), got {opts.match_threshold}")
    if not 0.0 <= opts.match_margin < 1.0:
        raise OptionsError(f"match margin must be in [0, 1), got {opts.match_margin}")
    if not 0 < opts.watchlist_sync_interval_s < opts.watchlist_max_staleness_s:
        raise OptionsError("need 0 < watchlist sync interval < watchlist max staleness")
    if not 0 <= opts.track_max_gap <= 250 or not 1 <= opts.reverify_every <= 10_000:
        raise OptionsError("track max gap must be 0..250 and reverify every 1..10000 frames")
    if opts.track_state not in BY_NAME["track_state"].choices:
        raise OptionsError(f"track state must be one of {', '.join(BY_NAME['track_state'].choices)}, "
                           f"got {opts.track_state!r}")
    if not 1 <= opts.recognizer_threads <= 64 or opts.min_face_px < 1:
        raise OptionsError("recognizer threads must be 1..64 and min face px >= 1")
    if not 1 <= opts.audit_block_records <= 100_000 or not 0 < opts.audit_block_seconds <= 3600:
        raise OptionsError("audit block records must be 1..100000 and audit block seconds in (0, 3600]")
    if opts.anchor_audit_blocks and not opts.ledger_dir:
        raise OptionsError("--anchor_audit_blocks needs --ledger_dir")
    _validate_operations(opts)
    _validate_runner(options, opts)
    return opts


def _validate_operations(opts: RiskmaskOptions) -> None:
    """Execution provider, Kafka security and per-camera rules (each error one readable line)."""
    provider = (opts.execution_provider or "cpu").lower()
    if provider not in PROVIDERS:
        raise OptionsError(f"unknown execution provider {opts.execution_provider!r}; choose one of "
                           f"{', '.join(PROVIDERS)}")
    try:
        ort_providers(provider)
        validate_kafka(opts)
        for rule in parse_camera_rules(opts.camera_rules):
            if rule.policy:
                _check_policy(rule.policy)
    except (KafkaSettingsError, ProviderError, CameraRuleError) as exc:
        raise OptionsError(str(exc)) from None


def _check_policy(name: str) -> None:
    """Load the policy once here so that a bad name or file fails before the pipeline starts."""
    try:
        Policy.load(name)
    except Exception as exc:  # PolicyError, OSError, JSON errors: all mean "this policy cannot be used"
        raise OptionsError(f"policy {name!r} cannot be loaded: {exc}") from None


def _validate_runner(options: PipelineOptions, opts: RiskmaskOptions) -> None:
    all_opts = options.get_all_options()
    runner = options.view_as(StandardOptions).runner or "FnApiRunner"
    runner_name = runner if isinstance(runner, str) else type(runner).__name__
    parallelism, max_par = all_opts.get("parallelism", -1), all_opts.get("max_parallelism", -1)
    if parallelism not in (-1, None) and parallelism < 1:
        raise OptionsError(f"parallelism must be >= 1, got {parallelism}")
    if max_par not in (-1, None) and (max_par < 1 or (parallelism not in (-1, None) and max_par < parallelism)):
        raise OptionsError(f"max parallelism must be >= 1 and >= parallelism, got {max_par}")
    if runner_name not in PORTABLE_RUNNERS:
        return
    env_type = (all_opts.get("environment_type") or "").upper()
    if runner_name == "PortableRunner" and not all_opts.get("job_endpoint"):
        raise OptionsError("the PortableRunner needs --job_endpoint host:port of a job server")
    if env_type in ("EXTERNAL", "PROCESS") and not all_opts.get("environment_config"):
        raise OptionsError(f"environment type {env_type} needs --environment_config")
    if not opts.bounded and (opts.checkpointing_interval is None or opts.checkpointing_interval <= 0):
        raise OptionsError("a streaming job on Flink needs --checkpointing_interval > 0 (ms): offsets are "
                           "committed only when a checkpoint completes")
