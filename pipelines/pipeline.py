"""The riskmask pipeline graph.

    ReadFromKafka(frames.raw) -> Decode -> DetectFaces -> MaskFaces -> Encode -> WriteToKafka(frames.redacted)
    Decode.dlq -> WriteToKafka(frames.dlq);  Encode.dlq -> WriteToKafka(frames.dlq)

Element-wise stages only: no GroupByKey, CoGroupByKey, Flatten or windowed combine on the live path (after the
unbounded source they never run on the FnApiRunner), so the whole path fuses into one stage with the source
and a bundle's offsets are committed only after its outputs were flushed by the sinks.
"""

from __future__ import annotations

import logging
from typing import Any, Callable, Iterator, Optional

import apache_beam as beam

from pipelines.config.options import RiskmaskOptions
from pipelines.frame import SOURCE_HEADER, FrameContext, KafkaRecord, source_ref
from pipelines.kafkaio import ReadFromKafka, WriteToKafka
from pipelines.tracking.change_gate import GateConfig
from pipelines.transforms.dead_letter import DLQ_TAG, dead_letter_message
from pipelines.transforms.decode import Decode
from pipelines.transforms.detect_faces import DetectFaces
from pipelines.transforms.encode import Encode
from pipelines.transforms.mask_faces import MaskFaces

logger = logging.getLogger(__name__)


def build(p: beam.Pipeline, opts: RiskmaskOptions, detector_factory: Optional[Callable[[], Any]] = None,
          source: Optional[beam.PTransform] = None, recognition: Optional[beam.PTransform] = None,
          audit: Optional[beam.PTransform] = None) -> dict[str, beam.PCollection]:
    """Add the pipeline to ``p``; returns its main PCollections by name (for tests and extensions).

    ``recognition`` (FrameContext -> FrameContext, e.g. EmbedFaces then EnrichRisk) runs between DetectFaces
    and MaskFaces; without it every face is unknown and gets the strongest mask. ``audit`` (redacted
    OutboundMessage -> OutboundMessage of AuditBlock) taps Encode's output and writes to the audit topic.
    Both must be element-wise or stateful DoFns (no GroupByKey/Flatten), like the rest of the live path.
    """
    bootstrap = opts.kafka_bootstrap_servers
    kafka = kafka_client_config(opts)
    read = source or ReadFromKafka(bootstrap, [opts.raw_topic], opts.group_id, bounded=opts.bounded,
                                   max_records_per_call=opts.max_records_per_bundle,
                                   max_call_seconds=opts.max_bundle_seconds, consumer_config=kafka)
    records = p | "ReadFrames" >> read | "MarkRead" >> _Mark(None)
    decoded = records | "Decode" >> Decode(opts.max_frame_bytes, keys_dir=getattr(opts, "keys_dir", None))
    frames = decoded["frames"] | "MarkDecode" >> _Mark("decode")
    if detector_factory is None and (getattr(opts, "execution_provider", None) or "cpu").lower() != "cpu":
        # deferred: onnxruntime provider checks only for a non-CPU provider
        from pipelines.models.providers import DetectorFactory

        detector_factory = DetectorFactory(opts.detector, opts.detector_threads, opts.detector_threshold,
                                           opts.execution_provider.lower())
    faces = frames | "DetectFaces" >> DetectFaces(opts.detector, opts.detector_threads, opts.detector_threshold,
                                                  detector_factory, lookahead=opts.detect_lookahead,
                                                  change_gate=_gate_config(opts),
                                                  workers=getattr(opts, "detect_workers", 1))
    faces = faces | "MarkDetect" >> _Mark("detect_faces")
    if recognition is not None:
        faces = faces | "Recognition" >> recognition | "MarkRecognition" >> _Mark("recognition")
    masked = (faces | "MaskFaces" >> MaskFaces(opts.policy, **_mask_kwargs(opts))
              | "MarkMask" >> _Mark("mask_faces"))
    encoded = masked | "Encode" >> Encode(progress_interval_s=opts.progress_interval_s)
    redacted = encoded["redacted"] | "MarkEncode" >> _Mark("encode")
    redacted | "WriteRedacted" >> WriteToKafka(bootstrap, opts.redacted_topic, max_request_bytes=_request_bytes(opts),
                                               producer_config=kafka, output="redacted")
    # One DLQ sink per branch instead of a Flatten: the FnApiRunner does not fuse a Flatten into the source's
    # stage, and an unfused stage after an unbounded source never runs (and its writes would not precede the
    # offset commits).
    dead = {}
    for stage, outputs in (("Decode", decoded), ("Encode", encoded)):
        dead[stage] = outputs[DLQ_TAG] | f"{stage}DeadLetterRecords" >> beam.Map(dead_letter_message)
        dead[stage] | f"Write{stage}DeadLetters" >> WriteToKafka(bootstrap, opts.dlq_topic, producer_config=kafka,
                                                                 output="dlq", dlq_stage=stage.lower())
    out = {"records": records, "frames": masked, "redacted": redacted,
           "decode_dead_letters": dead["Decode"], "encode_dead_letters": dead["Encode"]}
    if audit is not None:
        out["audit"] = encoded["redacted"] | "Audit" >> audit
        out["audit"] | "WriteAudit" >> WriteToKafka(bootstrap, opts.audit_topic, producer_config=kafka,
                                                    output="audit")
    return out


class _MarkFn(beam.DoFn):
    """Stage boundary for :data:`pipelines.metrics.CLOCK` (per-stage latency) and the frame/face counters."""

    def __init__(self, stage: Optional[str]) -> None:
        self._stage = stage

    def process(self, element: Any) -> Iterator[Any]:
        from pipelines import metrics  # deferred: prometheus-client loads only with --metrics-port

        try:
            if isinstance(element, KafkaRecord):
                metrics.record_read(element.topic, element.partition, 1)
                metrics.CLOCK.mark(None, source_ref(element.topic, element.partition, element.offset))
            elif isinstance(element, FrameContext):
                if self._stage == "mask_faces":
                    metrics.record_faces(element.faces)
                    metrics.record_masked(element.degraded)
                metrics.CLOCK.mark(self._stage, element.source_ref, capture_ts_us=element.capture_ts_us)
            else:  # the encoded OutboundMessage: its source reference is in a header
                ref = dict(element.headers).get(SOURCE_HEADER, b"").decode("utf-8", "replace")
                metrics.record_encoded()
                metrics.CLOCK.mark(self._stage, ref, final=True)
        except Exception:  # metrics never stop a frame
            logger.debug("metrics mark failed", exc_info=True)
        yield element


def _Mark(stage: Optional[str]) -> beam.PTransform:  # noqa: N802 (reads like a transform)
    return beam.ParDo(_MarkFn(stage))


def kafka_client_config(opts: Any) -> dict[str, Any]:
    """kafka-python settings shared by the source and the sinks: security (SASL/SSL) and connect timeout."""
    # deferred: Kafka security settings load only when a pipeline is built
    from pipelines.kafkaio.security import client_config

    return client_config(opts)


def _mask_kwargs(opts: Any) -> dict[str, Any]:
    # deferred: cycle, config_file reads this module's option table
    from pipelines.config.config_file import camera_rules_from_options

    rules = camera_rules_from_options(opts)
    return {"camera_rules": rules} if rules else {}


def _gate_config(opts: RiskmaskOptions) -> Optional[GateConfig]:
    """The change gate of DetectFaces (None when ``--gate_refresh 0`` turns it off)."""
    refresh = getattr(opts, "gate_refresh", GateConfig().refresh_every)
    # A full reset every 5 sweeps at least (the default 250 frames: 20 s at 12.5 frames/s).
    if not refresh:
        return None
    return GateConfig(refresh_every=refresh, reset_every=max(GateConfig().reset_every, 5 * refresh))


def _request_bytes(opts: RiskmaskOptions) -> int:
    # A redacted JPEG is about the size of its input; leave room for the Avro envelope and face records.
    return max(1024 * 1024, opts.max_frame_bytes * 2)
