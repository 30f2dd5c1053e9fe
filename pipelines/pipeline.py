"""The riskmask pipeline graph.

    ReadFromKafka(frames.raw) -> Decode -> DetectFaces -> MaskFaces -> Encode -> WriteToKafka(frames.redacted)
    Decode.dlq -> WriteToKafka(frames.dlq);  Encode.dlq -> WriteToKafka(frames.dlq)

Element-wise stages only: no GroupByKey, CoGroupByKey, Flatten or windowed combine on the live path (after the
unbounded source they never run on the FnApiRunner), so the whole path fuses into one stage with the source
and a bundle's offsets are committed only after its outputs were flushed by the sinks.
"""

from __future__ import annotations

from typing import Any, Callable, Optional

import apache_beam as beam

from pipelines.kafkaio import ReadFromKafka, WriteToKafka
from pipelines.options import RiskmaskOptions
from pipelines.transforms.dead_letter import DLQ_TAG, dead_letter_message
from pipelines.transforms.decode import Decode
from pipelines.transforms.detect_faces import DetectFaces
from pipelines.transforms.encode import Encode
from pipelines.transforms.mask_faces import MaskFaces


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
    read = source or ReadFromKafka(bootstrap, [opts.raw_topic], opts.group_id, bounded=opts.bounded,
                                   max_records_per_call=opts.max_records_per_bundle,
                                   max_call_seconds=opts.max_bundle_seconds)
    records = p | "ReadFrames" >> read
    decoded = records | "Decode" >> Decode(opts.max_frame_bytes)
    faces = decoded["frames"] | "DetectFaces" >> DetectFaces(opts.detector, opts.detector_threads,
                                                              opts.detector_threshold, detector_factory,
                                                              lookahead=opts.detect_lookahead)
    if recognition is not None:
        faces = faces | "Recognition" >> recognition
    masked = faces | "MaskFaces" >> MaskFaces(opts.policy)
    encoded = masked | "Encode" >> Encode(progress_interval_s=opts.progress_interval_s)
    encoded["redacted"] | "WriteRedacted" >> WriteToKafka(bootstrap, opts.redacted_topic,
                                                          max_request_bytes=_request_bytes(opts))
    # One DLQ sink per branch instead of a Flatten: the FnApiRunner does not fuse a Flatten into the source's
    # stage, and an unfused stage after an unbounded source never runs (and its writes would not precede the
    # offset commits).
    dead = {}
    for stage, outputs in (("Decode", decoded), ("Encode", encoded)):
        dead[stage] = outputs[DLQ_TAG] | f"{stage}DeadLetterRecords" >> beam.Map(dead_letter_message)
        dead[stage] | f"Write{stage}DeadLetters" >> WriteToKafka(bootstrap, opts.dlq_topic)
    out = {"records": records, "frames": masked, "redacted": encoded["redacted"],
           "decode_dead_letters": dead["Decode"], "encode_dead_letters": dead["Encode"]}
    if audit is not None:
        out["audit"] = encoded["redacted"] | "Audit" >> audit
        out["audit"] | "WriteAudit" >> WriteToKafka(bootstrap, opts.audit_topic)
    return out


def _request_bytes(opts: RiskmaskOptions) -> int:
    # A redacted JPEG is about the size of its input; leave room for the Avro envelope and face records.
    return max(1024 * 1024, opts.max_frame_bytes * 2)
