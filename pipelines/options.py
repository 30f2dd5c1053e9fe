"""``RiskmaskOptions``: the single PipelineOptions subclass of the riskmask pipeline, and its validation.

Beam collects the flags of every PipelineOptions subclass into one parser, so names here must not collide
with Beam's own (``--bootstrap_servers`` belongs to the Kafka Streams runner options; ours is
``--kafka_bootstrap_servers``). Portable/Flink flags that Beam defines itself (``--job_endpoint``,
``--environment_type``, ``--environment_config``, ``--parallelism``, ``--max_parallelism``) are validated here
but not redefined; ``--checkpointing_interval`` and ``--savepoint_path`` are added so that they reach the Flink
job server, which reads them from the pipeline options.
"""

from __future__ import annotations

import re
from typing import Any

from apache_beam.options.pipeline_options import PipelineOptions, StandardOptions

from pipelines.change_gate import GateConfig
from pipelines.defaults import (DEFAULT_AUDIT_TOPIC, DEFAULT_BOOTSTRAP, DEFAULT_DLQ_TOPIC, DEFAULT_GROUP_ID,
                                DEFAULT_MAX_BUNDLE_SECONDS, DEFAULT_MAX_FRAME_BYTES, DEFAULT_MAX_RECORDS_PER_BUNDLE,
                                DEFAULT_RAW_TOPIC, DEFAULT_REDACTED_TOPIC)
from pipelines.progress import DEFAULT_INTERVAL_S
from riskmask.errors import UserError

PORTABLE_RUNNERS = {"PortableRunner", "FlinkRunner"}
DETECTORS = ("yunet", "centerface")
_TOPIC_RE = re.compile(r"^[A-Za-z0-9._-]{1,249}$")
_HOSTPORT_RE = re.compile(r"^[^\s:,]+:\d{1,5}$")


class OptionsError(UserError):
    """A pipeline option is missing, malformed or inconsistent with another one."""


class RiskmaskOptions(PipelineOptions):
    """Everything the riskmask pipeline reads from its command line."""

    @classmethod
    def _add_argparse_args(cls, parser: Any) -> None:
        parser.add_argument("--kafka_bootstrap_servers", default=DEFAULT_BOOTSTRAP,
                            help="comma-separated host:port of the Kafka brokers")
        parser.add_argument("--raw_topic", default=DEFAULT_RAW_TOPIC, help="input topic of CameraFrame records")
        parser.add_argument("--redacted_topic", default=DEFAULT_REDACTED_TOPIC, help="output of RedactedFrame")
        parser.add_argument("--dlq_topic", default=DEFAULT_DLQ_TOPIC, help="output of DeadLetter records")
        parser.add_argument("--audit_topic", default=DEFAULT_AUDIT_TOPIC, help="output of AuditBlock records")
        parser.add_argument("--group_id", default=DEFAULT_GROUP_ID,
                            help="Kafka consumer group whose committed offsets the source resumes from")
        parser.add_argument("--detector", default="yunet", help="face detector model name")
        parser.add_argument("--detector_threshold", type=float, default=None,
                            help="detector score threshold (default: the model's own, kept low)")
        parser.add_argument("--policy", default="default", help="masking policy name or path to a policy file")
        parser.add_argument("--detector_threads", type=int, default=1, help="onnxruntime threads per detector")
        parser.add_argument("--detect_lookahead", type=int, default=2,
                            help="frames detected ahead on worker threads while the chain finishes earlier "
                                 "ones (0: detect on the runner's thread)")
        parser.add_argument("--detect_workers", type=int, default=2,
                            help="detector threads; each camera is bound to one, so cameras are detected at once")
        parser.add_argument("--gate_refresh", type=int, default=GateConfig().refresh_every,
                            help="change-gated detection: a full-frame detection every N frames per camera "
                                 "(0: no gate, every frame detected in full)")
        parser.add_argument("--max_frame_bytes", type=int, default=DEFAULT_MAX_FRAME_BYTES,
                            help="larger records go to the DLQ as oversized")
        parser.add_argument("--bounded", action="store_true", default=False,
                            help="read up to the end offsets seen at start, then finish (replays, tests)")
        parser.add_argument("--max_records_per_bundle", type=int, default=DEFAULT_MAX_RECORDS_PER_BUNDLE,
                            help="records one source call emits before it checkpoints (bounds bundles)")
        parser.add_argument("--max_bundle_seconds", type=float, default=DEFAULT_MAX_BUNDLE_SECONDS,
                            help="seconds one source call reads before it checkpoints (bounds output latency)")
        parser.add_argument("--progress_interval_s", type=float, default=DEFAULT_INTERVAL_S,
                            help="seconds between progress lines in the log (0: none)")
        parser.add_argument("--checkpointing_interval", type=int, default=-1,
                            help="Flink checkpoint interval in ms (required on Flink: offsets commit on checkpoints)")
        parser.add_argument("--savepoint_path", default=None, help="Flink savepoint to restore the job from")

        # Recognition, risk lookup and audit (docs/recognition.md)
        parser.add_argument("--recognizer_threads", type=int, default=1, help="onnxruntime threads of SFace")
        parser.add_argument("--min_face_px", type=int, default=24, help="narrower faces are not recognised")
        parser.add_argument("--track_state", choices=("instance", "beam"), default="instance",
                            help="where per-camera face tracks live (instance keeps the frame path fused)")
        parser.add_argument("--track_max_gap", type=int, default=5, help="frames a missed face stays masked")
        parser.add_argument("--reverify_every", type=int, default=25, help="re-embed a track every N frames")
        parser.add_argument("--match_threshold", type=float, default=0.50, help="SFace cosine for a match")
        parser.add_argument("--match_margin", type=float, default=0.08, help="lead over the second subject")
        parser.add_argument("--watchlist_max_staleness_s", type=float, default=30.0,
                            help="older watchlist: every face gets the strongest mask")
        parser.add_argument("--watchlist_sync_interval_s", type=float, default=5.0)
        parser.add_argument("--ledger_dir", default=None,
                            help="ledger cluster directory (genesis, keys/pipeline.key); none: empty watchlist")
        parser.add_argument("--keys_dir", default=None, help="privacy keyring directory (KEKs)")
        parser.add_argument("--subject_ref_key_file", default=None,
                            help="key for the short references of disclosed subjects; none: no references")
        parser.add_argument("--audit_block_records", type=int, default=250)
        parser.add_argument("--audit_block_seconds", type=float, default=10.0)
        parser.add_argument("--anchor_audit_blocks", action="store_true", default=False,
                            help="anchor each audit block's Merkle root on the ledger (needs --ledger_dir)")

        # Operations (docs/operations.md): execution provider, Kafka security and timeouts, per-camera rules.
        parser.add_argument("--execution_provider", default="cpu",
                            help="onnxruntime execution provider of the detector and recogniser: cpu, cuda, tensorrt")
        parser.add_argument("--kafka_security_protocol", default="PLAINTEXT",
                            help="PLAINTEXT, SSL, SASL_PLAINTEXT or SASL_SSL")
        parser.add_argument("--kafka_sasl_mechanism", default="PLAIN", help="PLAIN, SCRAM-SHA-256 or SCRAM-SHA-512")
        parser.add_argument("--kafka_sasl_username", default=None, help="SASL user name")
        parser.add_argument("--kafka_sasl_password_file", default=None,
                            help="file holding the SASL password (read by each Kafka client when it starts)")
        parser.add_argument("--kafka_ssl_cafile", default=None, help="CA bundle that signs the brokers' certificates")
        parser.add_argument("--kafka_ssl_certfile", default=None, help="client certificate (mutual TLS)")
        parser.add_argument("--kafka_ssl_keyfile", default=None, help="client private key (mutual TLS)")
        parser.add_argument("--kafka_ssl_no_check_hostname", action="store_true", default=False,
                            help="do not check the broker certificate's host name")
        parser.add_argument("--connect_timeout_s", type=float, default=None,
                            help="seconds to wait for a broker and topic metadata at start (default 30)")
        parser.add_argument("--camera_rules", default=None,
                            help="JSON list of per-camera rules (policy, privacy zones); see pipelines.config_file")

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
    from pipelines.config_file import CameraRuleError, parse_camera_rules
    from pipelines.kafkaio.security import KafkaSettingsError, validate as validate_kafka
    from pipelines.models.providers import PROVIDERS, ProviderError, ort_providers

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
    from pipelines.policy import Policy

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
