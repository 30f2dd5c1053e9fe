"""Default topic names and limits of the pipeline (import-light: no Beam, so CLI start-up stays fast)."""

DEFAULT_BOOTSTRAP = "127.0.0.1:9092"
DEFAULT_RAW_TOPIC = "frames.raw"
DEFAULT_REDACTED_TOPIC = "frames.redacted"
DEFAULT_DLQ_TOPIC = "frames.dlq"
DEFAULT_AUDIT_TOPIC = "audit.blocks"
DEFAULT_GROUP_ID = "riskmask-pipeline"
DEFAULT_MAX_FRAME_BYTES = 8 * 1024 * 1024
DEFAULT_MAX_RECORDS_PER_BUNDLE = 32
DEFAULT_MAX_BUNDLE_SECONDS = 0.5
