"""Every setting of the pipeline, declared once: :data:`OPTIONS` (import-light: no Beam, so CLI start-up stays fast).

Three things are built from this table, and nothing else declares a setting:

* :class:`pipelines.config.options.RiskmaskOptions`, the Beam ``PipelineOptions`` of the pipeline (``--name``);
* the ``riskmask run`` command line (:func:`pipelines.runner.register_run`), with every spelling it has ever
  accepted (``flags``; some keep Beam's underscore spelling as an alias, because Flink's entry point appends
  ``--job_endpoint=...`` to the driver command it runs);
* the config file's key table (:data:`pipelines.config.config_file.SETTINGS`, ``config=(section, key)``).

A ``riskmask run`` flag may keep an older destination name (``dest``: ``--threads`` is ``detector_threads``
in Beam). Settings Beam declares itself (``beam=False``: runner, job endpoint, environment, parallelism) are
passed on, not redeclared; settings of the ``riskmask run`` process (``run_only``: the metrics server) are not
passed to Beam at all.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional

DEFAULT_BOOTSTRAP = "127.0.0.1:9092"
DEFAULT_RAW_TOPIC = "frames.raw"
DEFAULT_REDACTED_TOPIC = "frames.redacted"
DEFAULT_DLQ_TOPIC = "frames.dlq"
DEFAULT_AUDIT_TOPIC = "audit.blocks"
DEFAULT_GROUP_ID = "riskmask-pipeline"
DEFAULT_MAX_FRAME_BYTES = 8 * 1024 * 1024
DEFAULT_MAX_RECORDS_PER_BUNDLE = 32
DEFAULT_MAX_BUNDLE_SECONDS = 0.5

RUNNERS = ("FnApiRunner", "DirectRunner", "PortableRunner", "FlinkRunner", "PrismRunner")

KAFKA = "Kafka connection (docs/operations.md)"
RECOGNITION = "recognition, risk lookup and audit (docs/recognition.md)"
OPERATIONS = "operations (docs/operations.md)"


@dataclass(frozen=True)
class Option:
    """One pipeline setting. ``type`` None is an on/off switch (``invert``: the ``riskmask run`` flag and the
    config key say the opposite of the Beam switch, e.g. ``--kafka-no-check-hostname`` / ``ssl_check_hostname``
    for ``--kafka_ssl_no_check_hostname``)."""

    name: str                              # RiskmaskOptions attribute and Beam flag --name
    default: Any
    help: str
    type: Optional[type] = str
    flags: tuple[str, ...] = ()            # `riskmask run` spellings; (): a Beam flag only
    dest: str = ""                         # `riskmask run` attribute when it differs from ``name``
    config: Optional[tuple[str, str]] = None
    choices: Optional[tuple[str, ...]] = None
    metavar: Optional[str] = None
    group: str = ""                        # help section of `riskmask run`
    invert: bool = False
    beam: bool = True                      # False: Beam declares the flag itself; it is passed on
    run_only: bool = False                 # True: a setting of the `riskmask run` process, not of Beam

    @property
    def run_dest(self) -> str:
        return self.dest or self.name

    @property
    def run_default(self) -> Any:
        """The value ``riskmask run`` uses when neither a flag nor the config file sets it."""
        return (not self.default) if self.invert else self.default


OPTIONS: tuple[Option, ...] = (
    Option("kafka_bootstrap_servers", DEFAULT_BOOTSTRAP, "comma-separated host:port of the Kafka brokers "
           "(riskmask run: $RISKMASK_BOOTSTRAP counts as given)", flags=("--bootstrap-servers",),
           dest="bootstrap_servers", config=("kafka", "bootstrap_servers")),
    Option("raw_topic", DEFAULT_RAW_TOPIC, "input topic of CameraFrame records", flags=("--raw-topic",),
           config=("topics", "raw")),
    Option("redacted_topic", DEFAULT_REDACTED_TOPIC, "output topic of RedactedFrame records",
           flags=("--redacted-topic",), config=("topics", "redacted")),
    Option("dlq_topic", DEFAULT_DLQ_TOPIC, "dead-letter topic", flags=("--dlq-topic",), config=("topics", "dlq")),
    Option("audit_topic", DEFAULT_AUDIT_TOPIC, "audit topic (AuditBlock records)", flags=("--audit-topic",),
           config=("topics", "audit")),
    Option("group_id", DEFAULT_GROUP_ID, "consumer group whose committed offsets are resumed",
           flags=("--group-id",), config=("kafka", "group_id")),
    Option("detector", "yunet", "face detector: yunet | centerface", flags=("--detector",),
           config=("detector", "name")),
    Option("detector_threshold", None, "detector score threshold (default: the model's own, kept low)", float,
           flags=("--detector-threshold",), config=("detector", "threshold")),
    Option("execution_provider", "cpu", "onnxruntime execution provider of the detector and recogniser (cuda and "
           "tensorrt need onnxruntime-gpu, and fail with a clear error without it)", flags=("--execution-provider",),
           choices=("cpu", "cuda", "tensorrt"), config=("detector", "execution_provider")),
    Option("policy", "default", "policy name (default, paper) or a policy file path", flags=("--policy",),
           config=("policy", "default")),
    Option("detector_threads", 1, "onnxruntime threads for the detector", int, flags=("--threads",),
           dest="threads", config=("detector", "threads")),
    Option("detect_lookahead", 2, "frames detected ahead on a second thread while earlier ones are masked and "
           "written (0: all on one thread)", int, flags=("--detect-lookahead",), metavar="FRAMES",
           config=("detector", "lookahead")),
    Option("detect_workers", 2, "detector threads, each camera bound to one so that cameras are detected at "
           "once", int, flags=("--detect-workers",), metavar="N", config=("detector", "workers")),
    # 50: pipelines.tracking.change_gate.GateConfig.refresh_every (4 s at 12.5 frames/s)
    Option("gate_refresh", 50, "detect only where pixels changed, sweeping the still parts once every FRAMES "
           "frames per camera (0: every frame in full, no change gate)", int, flags=("--gate-refresh",),
           metavar="FRAMES", config=("detector", "gate_refresh")),
    Option("max_frame_bytes", DEFAULT_MAX_FRAME_BYTES, "records above this go to the DLQ as oversized", int,
           flags=("--max-frame-bytes",), config=("kafka", "max_frame_bytes")),
    Option("max_records_per_bundle", DEFAULT_MAX_RECORDS_PER_BUNDLE, "records per source checkpoint; bounds "
           "bundle latency", int, flags=("--max-records-per-bundle",)),
    Option("max_bundle_seconds", DEFAULT_MAX_BUNDLE_SECONDS, "seconds of reading per source checkpoint; bounds "
           "output latency", float, flags=("--max-bundle-seconds",)),
    Option("bounded", False, "process what is in the topic now, then stop (replays, tests)", None,
           flags=("--bounded",), config=("runner", "bounded")),
    Option("runner", "FnApiRunner", "Beam runner", flags=("--runner",), choices=RUNNERS, config=("runner", "name"),
           beam=False),
    Option("job_endpoint", None, "Beam job server host:port", flags=("--job-endpoint", "--job_endpoint"),
           config=("runner", "job_endpoint"), beam=False),
    Option("environment_type", None, "SDK worker environment for portable runners (EXTERNAL, PROCESS, DOCKER, "
           "LOOPBACK)", flags=("--environment-type", "--environment_type"), config=("runner", "environment_type"),
           beam=False),
    Option("environment_config", None, "e.g. localhost:50000 of a worker pool for EXTERNAL",
           flags=("--environment-config", "--environment_config"), config=("runner", "environment_config"),
           beam=False),
    Option("checkpointing_interval", -1, "Flink checkpoint interval in ms (required for streaming on Flink: "
           "offsets commit on checkpoints)", int, flags=("--checkpointing-interval", "--checkpointing_interval"),
           config=("runner", "checkpointing_interval")),
    Option("parallelism", None, "Flink parallelism", int, flags=("--parallelism",),
           config=("runner", "parallelism"), beam=False),
    Option("max_parallelism", None, "Flink max parallelism", int, flags=("--max-parallelism", "--max_parallelism"),
           beam=False),
    Option("savepoint_path", None, "Flink savepoint to restore", flags=("--savepoint-path", "--savepoint_path")),
    Option("progress_interval_s", 30.0, "seconds between progress lines in the log: frames/s, faces, degraded "
           "frames, latency (0: none)", float, flags=("--progress-interval",), metavar="SECONDS",
           group=OPERATIONS, config=("runner", "progress_interval_s")),
    # Kafka connection and security
    Option("connect_timeout_s", 5.0, "give up after this long when no broker answers or a topic is missing",
           float, flags=("--connect-timeout",), dest="connect_timeout", metavar="SECONDS", group=KAFKA,
           config=("kafka", "connect_timeout_s")),
    Option("kafka_security_protocol", "PLAINTEXT", "how clients talk to the brokers",
           flags=("--kafka-security-protocol",), choices=("PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"),
           group=KAFKA, config=("kafka", "security_protocol")),
    Option("kafka_sasl_mechanism", "PLAIN", "SASL mechanism", flags=("--kafka-sasl-mechanism",),
           choices=("PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"), group=KAFKA, config=("kafka", "sasl_mechanism")),
    Option("kafka_sasl_username", None, "SASL user name", flags=("--kafka-sasl-username",), group=KAFKA,
           config=("kafka", "sasl_username")),
    Option("kafka_sasl_password_file", None, "file holding the SASL password (never pass a password on the "
           "command line)", flags=("--kafka-sasl-password-file",), metavar="FILE", group=KAFKA,
           config=("kafka", "sasl_password_file")),
    Option("kafka_ssl_cafile", None, "CA bundle of the brokers", flags=("--kafka-ssl-cafile",), metavar="FILE",
           group=KAFKA, config=("kafka", "ssl_cafile")),
    Option("kafka_ssl_certfile", None, "client certificate (mutual TLS)", flags=("--kafka-ssl-certfile",),
           metavar="FILE", group=KAFKA, config=("kafka", "ssl_certfile")),
    Option("kafka_ssl_keyfile", None, "client key (mutual TLS)", flags=("--kafka-ssl-keyfile",), metavar="FILE",
           group=KAFKA, config=("kafka", "ssl_keyfile")),
    Option("kafka_ssl_no_check_hostname", False, "do not check the broker certificate's host name", None,
           flags=("--kafka-no-check-hostname",), dest="kafka_ssl_check_hostname", invert=True, group=KAFKA,
           config=("kafka", "ssl_check_hostname")),
    # Recognition, risk lookup and audit
    Option("ledger_dir", None, "ledger cluster directory (genesis, pipeline key); without it no one is "
           "recognised and every face gets the strongest mask", flags=("--ledger-dir",), group=RECOGNITION,
           config=("ledger", "dir")),
    Option("keys_dir", None, "privacy keyring directory (key-encryption keys)", flags=("--keys-dir",),
           group=RECOGNITION, config=("ledger", "keys_dir")),
    Option("match_threshold", 0.50, "SFace cosine for a match", float, flags=("--match-threshold",),
           group=RECOGNITION, config=("ledger", "match_threshold")),
    Option("match_margin", 0.08, "lead over the second subject", float, flags=("--match-margin",),
           group=RECOGNITION, config=("ledger", "match_margin")),
    Option("audit_block_records", 250, "records per audit block", int, flags=("--audit-block-records",),
           group=RECOGNITION),
    Option("audit_block_seconds", 10.0, "capture seconds per audit block", float,
           flags=("--audit-block-seconds",), group=RECOGNITION),
    Option("anchor_audit_blocks", False, "anchor each audit block's Merkle root on the ledger (needs the ledger "
           "directory)", None, flags=("--anchor-audit-blocks",), group=RECOGNITION,
           config=("ledger", "anchor_audit_blocks")),
    Option("recognizer_threads", 1, "onnxruntime threads of SFace", int),
    Option("min_face_px", 24, "narrower faces are not recognised", int),
    Option("track_state", "instance", "where per-camera face tracks live (instance keeps the frame path fused)",
           choices=("instance", "beam")),
    Option("track_max_gap", 5, "frames a missed face stays masked", int),
    Option("reverify_every", 25, "re-embed a track every N frames", int),
    Option("watchlist_max_staleness_s", 30.0, "older watchlist: every face gets the strongest mask", float),
    Option("watchlist_sync_interval_s", 5.0, "seconds between watchlist syncs", float),
    Option("subject_ref_key_file", None, "key for the short references of disclosed subjects; none: no "
           "references"),
    Option("camera_rules", None, "JSON list of per-camera rules (policy, privacy zones); from the config file's "
           "[[camera]] tables (pipelines.config.config_file)"),
    # The riskmask run process
    Option("metrics_port", None, "serve /metrics, /healthz and /readyz on this port (default: off; 0: any free "
           "port)", int, flags=("--metrics-port",), metavar="PORT", group=OPERATIONS, config=("metrics", "port"),
           run_only=True),
    Option("metrics_host", "0.0.0.0", "address the metrics server binds", flags=("--metrics-host",),
           metavar="ADDR", group=OPERATIONS, config=("metrics", "host"), run_only=True),
)

BY_NAME: dict[str, Option] = {o.name: o for o in OPTIONS}


def default(name: str) -> Any:
    """The declared default of setting ``name`` (a RiskmaskOptions attribute)."""
    return BY_NAME[name].default


def value(opts: Any, name: str) -> Any:
    """Setting ``name`` of ``opts`` (RiskmaskOptions or any object with some of its attributes), else its
    declared default."""
    got = getattr(opts, name, None)
    return default(name) if got is None else got
