"""Kafka sink: an idempotent producer per DoFn instance; a bundle succeeds only when every send is acked.

The producer (``acks='all'``, ``enable_idempotence=True``) is made in ``setup()``. ``process()`` only sends;
``finish_bundle()`` flushes and checks every future, raising ``SendFailedError`` if one failed, so the runner
retries the bundle and the source never commits offsets past an unwritten output (the commit runs in the
bundle finalizer, after this). Duplicates after a retry or a restart carry the same dedupe header.
"""

from __future__ import annotations

import logging
import time
from typing import Any, Optional

import apache_beam as beam
from apache_beam.metrics import Metrics

from pipelines.frame import OutboundMessage
from pipelines.kafkaio.errors import SendFailedError
from pipelines.kafkaio.security import resolve

logger = logging.getLogger(__name__)


class _WriteFn(beam.DoFn):
    def __init__(self, bootstrap_servers: str, topic: str, max_request_bytes: int,
                 producer_config: tuple[tuple[str, Any], ...], output: str = "", dlq_stage: str = "") -> None:
        self._output, self._dlq_stage = output or topic, dlq_stage
        self._bootstrap = bootstrap_servers
        self._topic = topic
        self._max_request_bytes = max_request_bytes
        self._producer_config = producer_config
        self._producer: Any = None
        self._futures: list[Any] = []
        self._flush = Metrics.distribution("kafka_sink", "flush_us")

    def setup(self) -> None:
        from kafka import KafkaProducer  # deferred: loads kafka, which only this path needs

        kwargs: dict[str, Any] = dict(
            bootstrap_servers=[s.strip() for s in self._bootstrap.split(",") if s.strip()],
            acks="all", enable_idempotence=True, max_request_size=self._max_request_bytes,
            linger_ms=2, request_timeout_ms=30_000, retries=2**31 - 1, delivery_timeout_ms=120_000,
            client_id="riskmask-sink")
        kwargs.update(resolve(dict(self._producer_config)))
        self._producer = KafkaProducer(**kwargs)

    def start_bundle(self) -> None:
        self._futures = []

    def process(self, msg: OutboundMessage) -> None:
        try:
            future = self._producer.send(self._topic, key=msg.key, value=msg.value, headers=list(msg.headers))
        except Exception as exc:  # refused before sending (too large, closed producer): fail the bundle
            raise SendFailedError(f"record to {self._topic!r} not written: {type(exc).__name__}: {exc}") from None
        self._futures.append(future)

    def finish_bundle(self) -> None:
        if not self._futures:
            return
        start = time.perf_counter()
        self._producer.flush()
        self._flush.update(int((time.perf_counter() - start) * 1e6))
        failed = [f for f in self._futures if f.failed()]
        pending = [f for f in self._futures if not f.is_done]
        n = len(self._futures)
        self._futures = []
        if failed or pending:
            first = failed[0].exception if failed else "not acknowledged"
            raise SendFailedError(f"{len(failed) + len(pending)} of {n} records to {self._topic!r} not written: "
                                  f"{first}")
        logger.debug("flushed %d records to %s", n, self._topic)
        from pipelines import metrics  # deferred: loads prometheus_client, which only this path needs

        metrics.record_written(self._output, n, self._dlq_stage or None)

    def teardown(self) -> None:
        if self._producer is not None:
            try:
                self._producer.close(timeout=10)
            except Exception:  # best effort at shutdown
                logger.debug("producer close failed", exc_info=True)
            self._producer = None


class WriteToKafka(beam.PTransform):
    """Write a PCollection of :class:`OutboundMessage` to ``topic``; at-least-once, idempotent producer."""

    def __init__(self, bootstrap_servers: str, topic: str, max_request_bytes: int = 16 * 1024 * 1024,
                 producer_config: Optional[dict[str, Any]] = None, output: str = "",
                 dlq_stage: str = "") -> None:
        """``output`` names this sink in /metrics (default: the topic); ``dlq_stage`` marks a dead-letter sink
        and the stage whose refusals it writes."""
        super().__init__()
        self._fn = _WriteFn(bootstrap_servers, topic, max_request_bytes,
                            tuple(sorted((producer_config or {}).items())), output, dlq_stage)

    def expand(self, pcoll: beam.PCollection) -> beam.PCollection:
        return pcoll | "Write" >> beam.ParDo(self._fn)
