"""Kafka source of record: one splittable DoFn restriction per topic-partition.

* Partitions are discovered from topic metadata when the pipeline is built: one element per partition,
  carrying the offset to start from (the group's committed offset, else the earliest one) and, in bounded
  mode, the end offset seen at that moment.
* Each element's restriction is an ``OffsetRange(start, 2**63 - 1)`` (or ``(start, end)`` when bounded)
  tracked by an ``OffsetRestrictionTracker``. ``process()`` emits at most ``max_records_per_call`` records
  (or reads for at most ``max_call_seconds``), then self-checkpoints with ``tracker.defer_remainder()`` so the
  bundle finishes; with nothing to read it waits ``poll_timeout_s`` on the broker and checkpoints too.
* Offsets are committed (last offset + 1) only from a bundle-finalizer callback, i.e. after the runner has
  durably committed the bundle's outputs (FnApiRunner: after the fused downstream stages, sinks included,
  finished; Flink: after the checkpoint completed). Auto-commit is off and nothing commits inside process().
  Delivery is therefore at-least-once: a crash replays from the last committed offset.
* Readers use ``assign()``, never ``subscribe()``: the source owns its partitions, and consumer-group joins
  would stall (Tansu holds JoinGroup ~23 s). Commits go through a separate consumer of the group, on an
  explicit ``{partition: offset}`` map, guarded by a lock because finalizers may run on another thread.
* The watermark (``ManualWatermarkEstimator``) follows record timestamps and, when a partition is idle,
  moves to ``now - idle_skew_s`` so downstream event-time logic is not held back by a quiet camera.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass
from typing import Any, Iterator, Optional, Sequence

import apache_beam as beam
from apache_beam.io.restriction_trackers import OffsetRange, OffsetRestrictionTracker
from apache_beam.io.watermark_estimators import ManualWatermarkEstimator
from apache_beam.transforms.core import RestrictionProvider
from apache_beam.transforms.window import TimestampedValue
from apache_beam.utils.timestamp import Duration, Timestamp

from pipelines.frame import KafkaRecord
from pipelines.kafkaio.errors import KafkaUnavailableError, TopicMissingError
from pipelines.kafkaio.security import connect_timeout_s, resolve

logger = logging.getLogger(__name__)

UNBOUNDED_STOP = 2**63 - 1


@dataclass(frozen=True)
class PartitionSpec:
    """One topic-partition to read, from ``start`` up to (excluding) ``stop``."""

    topic: str
    partition: int
    start: int
    stop: int = UNBOUNDED_STOP

    @property
    def bounded(self) -> bool:
        return self.stop != UNBOUNDED_STOP


@dataclass(frozen=True)
class SourceConfig:
    """How readers connect and pace themselves (picklable: it travels to the workers)."""

    bootstrap_servers: str
    group_id: str
    max_records_per_call: int = 32
    max_call_seconds: float = 0.5
    poll_timeout_s: float = 0.2
    idle_skew_s: float = 5.0
    max_fetch_bytes: int = 64 * 1024 * 1024
    consumer_config: tuple[tuple[str, Any], ...] = ()


FETCH_MAX_WAIT_MS = 50


def _consumer(config: SourceConfig, group_id: Optional[str]):
    from kafka import KafkaConsumer  # deferred: loads kafka, which only this path needs

    kwargs: dict[str, Any] = dict(
        bootstrap_servers=[s.strip() for s in config.bootstrap_servers.split(",") if s.strip()],
        group_id=group_id, enable_auto_commit=False, auto_offset_reset="earliest",
        fetch_max_bytes=config.max_fetch_bytes, max_partition_fetch_bytes=config.max_fetch_bytes,
        request_timeout_ms=30_000, reconnect_backoff_max_ms=1000, client_id="riskmask-source",
        # A fetch that finds nothing waits this long on the broker before it returns (kafka-python's default,
        # 500 ms, added up to half a second to a live camera's latency: p50 464 -> 265 ms at 2 x 3 frames/s).
        fetch_max_wait_ms=FETCH_MAX_WAIT_MS)
    kwargs.update(resolve(dict(config.consumer_config)))
    return KafkaConsumer(**kwargs)


def discover_partitions(config: SourceConfig, topics: Sequence[str], bounded: bool = False,
                        timeout_s: Optional[float] = None) -> list[PartitionSpec]:
    """One spec per partition of ``topics``, starting at the group's committed offset (else the earliest).

    Bounded: each spec stops at the partition's end offset now, so a replay reads exactly what is there.
    ``timeout_s`` (default: the connect timeout in the consumer settings, else 30 s) bounds the wait for a
    broker and for topic metadata.
    """
    from kafka.errors import KafkaError  # deferred: loads kafka, which only this path needs
    from kafka.structs import TopicPartition  # deferred: loads kafka, which only this path needs

    if timeout_s is None:
        timeout_s = connect_timeout_s(dict(config.consumer_config))

    try:
        consumer = _consumer(config, config.group_id)
    except KafkaError:
        raise KafkaUnavailableError(f"no Kafka broker answers at {config.bootstrap_servers}") from None
    try:
        tps: list[TopicPartition] = []
        for topic in topics:
            parts = _partitions(consumer, topic, timeout_s)
            if not parts:
                raise TopicMissingError(f"topic {topic!r} does not exist at {config.bootstrap_servers} (or no "
                                        f"broker answered within {timeout_s:g} s)")
            tps.extend(TopicPartition(topic, p) for p in sorted(parts))
        begin = consumer.beginning_offsets(tps)
        end = _end_offsets(config, tps, begin, timeout_s) if bounded else {}
        specs = []
        for tp in tps:
            committed = consumer.committed(tp)
            start = max(int(committed), begin[tp]) if committed is not None else begin[tp]
            stop = max(start, end[tp]) if bounded else UNBOUNDED_STOP
            specs.append(PartitionSpec(tp.topic, tp.partition, start, stop))
        logger.info("source partitions: %s", ", ".join(f"{s.topic}/{s.partition}@{s.start}" for s in specs))
        return specs
    except KafkaError as exc:
        raise KafkaUnavailableError(f"cannot read partition metadata at {config.bootstrap_servers}: "
                                    f"{type(exc).__name__}") from None
    finally:
        consumer.close(autocommit=False)


def _end_offsets(config: SourceConfig, tps: list[Any], begin: dict[Any, int], timeout_s: float) -> dict[Any, int]:
    """End offsets now, checked by a fetch from the last reported record.

    Some Kafka-protocol brokers (Tansu 0.6) report the end of a partition as the last *batch*'s base offset
    + 1, which would cut a replay short by all but one record of that batch. Reading from there to the last
    record of one fetch gives the real end on those, and costs one small fetch on Apache Kafka.
    """
    reader = _consumer(config, None)
    try:
        reported = reader.end_offsets(tps)
        out: dict[Any, int] = {}
        for tp in tps:
            end = reported[tp]
            if end > begin[tp]:
                reader.assign([tp])
                reader.seek(tp, end - 1)
                deadline = time.monotonic() + timeout_s
                while time.monotonic() < deadline:
                    recs = reader.poll(timeout_ms=500).get(tp, [])
                    if recs:
                        end = max(end, recs[-1].offset + 1)
                        break
            out[tp] = end
        return out
    finally:
        reader.close(autocommit=False)


def _partitions(consumer: Any, topic: str, timeout_s: float) -> set[int]:
    deadline = time.monotonic() + timeout_s
    while True:
        parts = consumer.partitions_for_topic(topic)
        if parts or time.monotonic() >= deadline:
            return set(parts or ())
        time.sleep(0.2)


class _PartitionRestrictionProvider(RestrictionProvider):
    """Restriction = the offset range of one partition; never split up front (a partition is one reader)."""

    def initial_restriction(self, element: PartitionSpec) -> OffsetRange:
        return OffsetRange(element.start, element.stop)

    def create_tracker(self, restriction: OffsetRange) -> OffsetRestrictionTracker:
        return OffsetRestrictionTracker(restriction)

    def split(self, element: PartitionSpec, restriction: OffsetRange) -> Iterator[OffsetRange]:
        yield restriction

    def restriction_size(self, element: PartitionSpec, restriction: OffsetRange) -> int:
        return 1 if restriction.stop == UNBOUNDED_STOP else max(0, restriction.size())

    def truncate(self, element: PartitionSpec, restriction: OffsetRange) -> Optional[OffsetRange]:
        # On drain an unbounded partition stops where it is; a bounded replay finishes its range.
        return None if restriction.stop == UNBOUNDED_STOP else restriction


_PROVIDER = _PartitionRestrictionProvider()


class _ReadPartitionsBase(beam.DoFn):
    """Reads one partition per element; see the module docstring for the checkpoint/commit protocol."""

    def __init__(self, config: SourceConfig) -> None:
        self._config = config
        self._readers: dict[tuple[str, int], Any] = {}
        self._next: dict[tuple[str, int], int] = {}
        self._committer: Any = None
        self._committed: dict[tuple[str, int], int] = {}
        self._commit_lock = threading.Lock()

    def setup(self) -> None:
        self._readers, self._next, self._committed = {}, {}, {}
        self._commit_lock = threading.Lock()
        self._committer = _consumer(self._config, self._config.group_id)

    def teardown(self) -> None:
        for reader in self._readers.values():
            try:
                reader.close(autocommit=False)
            except Exception:  # closing is best effort; nothing to recover
                logger.debug("reader close failed", exc_info=True)
        self._readers = {}
        if self._committer is not None:
            with self._commit_lock:
                self._committer.close(autocommit=False)
            self._committer = None

    def _reader(self, spec: PartitionSpec):
        from kafka.structs import TopicPartition  # deferred: loads kafka, which only this path needs

        key = (spec.topic, spec.partition)
        reader = self._readers.get(key)
        if reader is None:  # one assigned consumer per partition: keeps its prefetch across calls
            reader = _consumer(self._config, None)
            reader.assign([TopicPartition(spec.topic, spec.partition)])
            self._readers[key] = reader
        return reader

    def _commit(self, topic: str, partition: int, next_offset: int) -> None:
        """Bundle-finalizer callback: the bundle's outputs are durable, record progress in the group."""
        from kafka.structs import OffsetAndMetadata, TopicPartition  # deferred: loads kafka, which only this path needs

        key = (topic, partition)
        with self._commit_lock:
            if self._committer is None or self._committed.get(key, -1) >= next_offset:
                return
            try:
                self._committer.commit({TopicPartition(topic, partition): OffsetAndMetadata(next_offset, "", -1)})
                self._committed[key] = next_offset
                logger.debug("committed %s/%s@%s", topic, partition, next_offset)
            except Exception as exc:  # a failed commit only means replay (duplicates) after a restart
                logger.warning("offset commit %s/%s@%s failed: %s", topic, partition, next_offset, exc)

    def _read(self, spec: PartitionSpec, finalizer: Any, tracker: Any, estimator: Any) -> Iterator[Any]:
        from kafka.structs import TopicPartition  # deferred: loads kafka, which only this path needs

        cfg = self._config
        rng: OffsetRange = tracker.current_restriction()
        tp = TopicPartition(spec.topic, spec.partition)
        key = (spec.topic, spec.partition)
        reader = self._reader(spec)
        if self._next.get(key) != rng.start:
            reader.seek(tp, rng.start)
            self._next[key] = rng.start
        last: Optional[int] = None
        emitted = 0
        deadline = time.monotonic() + cfg.max_call_seconds
        try:
            while True:
                if rng.stop != UNBOUNDED_STOP and self._next[key] >= rng.stop:
                    tracker.try_claim(rng.stop)  # past the end: marks the restriction done
                    _advance(estimator, Timestamp.of(time.time()))
                    return
                batch = reader.poll(timeout_ms=int(cfg.poll_timeout_s * 1000),
                                    max_records=cfg.max_records_per_call - emitted)
                records = batch.get(tp, [])
                _report_lag(reader, tp, records)
                if not records:
                    if rng.stop != UNBOUNDED_STOP:
                        self._next[key] = max(self._next[key], reader.position(tp))
                        if self._next[key] >= rng.stop:
                            continue
                    _advance(estimator, Timestamp.of(time.time() - cfg.idle_skew_s))
                    tracker.defer_remainder(Duration(seconds=cfg.poll_timeout_s))
                    return
                for rec in records:
                    if not tracker.try_claim(rec.offset):
                        return
                    ts = Timestamp(micros=max(0, rec.timestamp) * 1000)
                    yield TimestampedValue(_to_record(rec), ts)
                    _advance(estimator, ts)
                    last = rec.offset
                    self._next[key] = rec.offset + 1
                    emitted += 1
                if emitted >= cfg.max_records_per_call or time.monotonic() >= deadline:
                    tracker.defer_remainder()
                    return
        finally:
            if last is not None:
                finalizer.register(_CommitCallback(self, spec.topic, spec.partition, last + 1))


@dataclass(frozen=True)
class _CommitCallback:
    fn: _ReadPartitionsBase
    topic: str
    partition: int
    next_offset: int

    def __call__(self) -> None:
        self.fn._commit(self.topic, self.partition, self.next_offset)


def _report_lag(reader: Any, tp: Any, records: list[Any]) -> None:
    """Consumer lag of ``tp`` for /metrics: the partition's high watermark minus the next offset to read."""
    try:
        high = reader.highwater(tp)
        if high is None:
            return
        nxt = records[-1].offset + 1 if records else reader.position(tp)
        from pipelines import metrics  # deferred: loads prometheus_client, which only this path needs

        metrics.set_lag(tp.topic, tp.partition, int(high) - int(nxt))
    except Exception:  # metrics never stop the reader
        logger.debug("lag report failed", exc_info=True)


def _advance(estimator: Any, ts: Timestamp) -> None:
    current = estimator.current_watermark()
    if current is None or ts > current:
        estimator.set_watermark(ts)


def _to_record(rec: Any) -> KafkaRecord:
    headers = tuple((str(k), bytes(v) if v is not None else b"") for k, v in (rec.headers or ()))
    return KafkaRecord(topic=rec.topic, partition=rec.partition, offset=rec.offset, key=rec.key,
                       value=rec.value if rec.value is not None else b"", timestamp_ms=int(rec.timestamp),
                       headers=headers)


class _ReadBoundedFn(_ReadPartitionsBase):
    # BundleFinalizerParam must precede the restriction and watermark parameters.
    def process(self, spec: PartitionSpec, finalizer=beam.DoFn.BundleFinalizerParam,
                tracker=beam.DoFn.RestrictionParam(_PROVIDER),
                estimator=beam.DoFn.WatermarkEstimatorParam(ManualWatermarkEstimator.default_provider())):
        yield from self._read(spec, finalizer, tracker, estimator)


class _ReadUnboundedFn(_ReadPartitionsBase):
    @beam.DoFn.unbounded_per_element()
    def process(self, spec: PartitionSpec, finalizer=beam.DoFn.BundleFinalizerParam,
                tracker=beam.DoFn.RestrictionParam(_PROVIDER),
                estimator=beam.DoFn.WatermarkEstimatorParam(ManualWatermarkEstimator.default_provider())):
        yield from self._read(spec, finalizer, tracker, estimator)


class ReadFromKafka(beam.PTransform):
    """Read ``topics`` as a PCollection of :class:`KafkaRecord`, at-least-once, resuming from the group.

    ``bounded=True`` stops at the end offsets seen when the pipeline is built. ``specs`` overrides discovery
    (tests, replays of a chosen range).
    """

    def __init__(self, bootstrap_servers: str, topics: Sequence[str], group_id: str, bounded: bool = False,
                 max_records_per_call: int = 32, max_call_seconds: float = 0.5, poll_timeout_s: float = 0.2,
                 idle_skew_s: float = 5.0,
                 specs: Optional[Sequence[PartitionSpec]] = None,
                 consumer_config: Optional[dict[str, Any]] = None) -> None:
        super().__init__()
        if not topics:
            raise ValueError("at least one topic is required")
        if max_records_per_call < 1:
            raise ValueError("max_records_per_call must be >= 1")
        self._config = SourceConfig(bootstrap_servers=bootstrap_servers, group_id=group_id,
                                    max_records_per_call=max_records_per_call, max_call_seconds=max_call_seconds,
                                    poll_timeout_s=poll_timeout_s,
                                    idle_skew_s=idle_skew_s,
                                    consumer_config=tuple(sorted((consumer_config or {}).items())))
        self._topics = tuple(topics)
        self._bounded = bounded
        self._specs = tuple(specs) if specs is not None else None

    def expand(self, pbegin: beam.pvalue.PBegin) -> beam.PCollection:
        specs = self._specs if self._specs is not None else tuple(
            discover_partitions(self._config, self._topics, bounded=self._bounded))
        if self._bounded and not all(s.bounded for s in specs):
            raise ValueError("a bounded read needs a stop offset on every partition spec")
        fn = _ReadBoundedFn(self._config) if self._bounded else _ReadUnboundedFn(self._config)
        # reshuffle=False: no GroupByKey anywhere on the read path (see docs/pipeline.md, runner notes).
        return (pbegin
                | "Partitions" >> beam.Create(list(specs), reshuffle=False)
                | "ReadPartitions" >> beam.ParDo(fn))
