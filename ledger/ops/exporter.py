"""Ledger exporter: finalized blocks with commit certificates to `ledger.blocks`, and topic reading.

The exporter reads finalized blocks from any node (auditor key) and writes them as Avro LedgerBlock to
partition 0, in height order, resuming after the last height it finds on the topic. The topic readers below
are shared with the auditor (kafka-python, no consumer group).

Readers ``assign()`` partition 0 of a topic themselves (the ledger topics are written to one partition so
that offset order is block order) and never commit offsets: the exporter finds its resume point by reading the
topic tail, the auditor reads from the beginning every time.
"""

from __future__ import annotations

import argparse
import base64
import logging
import time
from pathlib import Path
from typing import TYPE_CHECKING, Iterator, Optional

from ledger.client.api_client import LedgerClient, Unavailable
from ledger.config import ConfigError, Genesis, KeyFile
from ledger.ops.cluster import default_dir
from ledger.types.block import TX_KIND_NAMES, Block, CommitCertificate
from riskmask import local_broker
from riskmask.errors import ServiceError, UserError
from schemas.messages import CommitSig, LedgerBlock, LedgerTx

if TYPE_CHECKING:
    from schemas.messages import LedgerBlock

logger = logging.getLogger(__name__)

PARTITION = 0


def _consumer(bootstrap: str, timeout_s: float):
    from kafka import KafkaConsumer  # lazy: heavy import

    try:
        return KafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False, group_id=None,
                             request_timeout_ms=max(5000, int(timeout_s * 1000)),
                             consumer_timeout_ms=500, max_partition_fetch_bytes=8 * 1024 * 1024,
                             fetch_max_bytes=16 * 1024 * 1024, reconnect_backoff_max_ms=1000)
    except Exception as exc:  # NoBrokersAvailable and friends
        raise ServiceError(f"cannot reach Kafka at {bootstrap}: {type(exc).__name__}: {exc}") from None


def topic_exists(bootstrap: str, topic: str, timeout_s: float = 10.0) -> bool:
    consumer = _consumer(bootstrap, timeout_s)
    try:
        return topic in consumer.topics()
    finally:
        consumer.close()


def _partition(consumer, topic: str, partition: int = PARTITION):
    from kafka import TopicPartition  # deferred: loads kafka, which only this path needs

    parts = consumer.partitions_for_topic(topic)
    if not parts:
        raise ServiceError(f"topic {topic!r} does not exist")
    if partition not in parts:
        raise ServiceError(f"topic {topic!r} has no partition {partition}")
    return TopicPartition(topic, partition)


def partitions(bootstrap: str, topic: str, timeout_s: float = 10.0) -> list[int]:
    consumer = _consumer(bootstrap, timeout_s)
    try:
        return sorted(consumer.partitions_for_topic(topic) or ())
    finally:
        consumer.close()


def read_all_partitions(bootstrap: str, topic: str, timeout_s: float = 30.0) -> Iterator[tuple[str, bytes]]:
    """Every record of every partition, partition by partition (per-key order is kept: one key, one
    partition); yields ("partition:offset", value)."""
    for p in partitions(bootstrap, topic, timeout_s):
        for off, value in read_range(bootstrap, topic, 0, None, timeout_s, partition=p):
            yield f"{p}:{off}", value


def end_offset(bootstrap: str, topic: str, timeout_s: float = 10.0) -> int:
    """Offset after the last record, from the fetch high watermark.

    Not from ListOffsets: the Tansu broker answers "latest" with the base offset of the last record batch,
    which would hide the tail of a batch-produced topic.
    """
    last = None
    for last in read_range(bootstrap, topic, _tail_start(bootstrap, topic, timeout_s), None, timeout_s):
        pass
    return 0 if last is None else last[0] + 1


def _tail_start(bootstrap: str, topic: str, timeout_s: float) -> int:
    """An offset at or before the start of the last record batch (ListOffsets "latest" minus one)."""
    consumer = _consumer(bootstrap, timeout_s)
    try:
        tp = _partition(consumer, topic)
        return max(0, int(consumer.end_offsets([tp])[tp]) - 1)
    finally:
        consumer.close()


def read_range(bootstrap: str, topic: str, start: int = 0, stop: Optional[int] = None,
               timeout_s: float = 30.0, partition: int = PARTITION) -> Iterator[tuple[int, bytes]]:
    """Yield (offset, value) from ``start`` up to ``stop`` (default: the high watermark when caught up)."""
    consumer = _consumer(bootstrap, timeout_s)
    try:
        tp = _partition(consumer, topic, partition)
        consumer.assign([tp])
        pos = max(start, int(consumer.beginning_offsets([tp])[tp]))
        consumer.seek(tp, pos)
        deadline = time.monotonic() + timeout_s
        while stop is None or pos < stop:
            batch = consumer.poll(timeout_ms=500, max_records=500)
            recs = batch.get(tp, [])
            for rec in recs:
                if stop is not None and rec.offset >= stop:
                    return
                pos = rec.offset + 1
                yield rec.offset, rec.value
            hw = consumer.highwater(tp)
            if stop is None and hw is not None and pos >= hw:
                return
            if recs:
                deadline = time.monotonic() + timeout_s
            elif time.monotonic() > deadline:
                raise ServiceError(f"timed out reading {topic} at offset {pos}")
    finally:
        consumer.close()


def follow(bootstrap: str, topic: str, start: int = 0, poll_s: float = 0.5,
           stop_after_idle_s: Optional[float] = None) -> Iterator[tuple[int, bytes]]:
    """Yield (offset, value) forever from ``start`` (or until idle for ``stop_after_idle_s``)."""
    from kafka import TopicPartition  # deferred: loads kafka, which only this path needs

    consumer = _consumer(bootstrap, 30.0)
    try:
        tp = TopicPartition(topic, PARTITION)
        while not consumer.partitions_for_topic(topic):
            time.sleep(poll_s)
        consumer.assign([tp])
        consumer.seek(tp, max(start, int(consumer.beginning_offsets([tp])[tp])))
        idle_since = time.monotonic()
        while True:
            batch = consumer.poll(timeout_ms=int(poll_s * 1000), max_records=500)
            recs = batch.get(tp, [])
            for rec in recs:
                yield rec.offset, rec.value
            if recs:
                idle_since = time.monotonic()
            elif stop_after_idle_s is not None and time.monotonic() - idle_since > stop_after_idle_s:
                return
    finally:
        consumer.close()


def last_value(bootstrap: str, topic: str, timeout_s: float = 30.0) -> Optional[tuple[int, bytes]]:
    """The last (offset, value) of the topic, or None when it is empty."""
    last = None
    for last in read_range(bootstrap, topic, _tail_start(bootstrap, topic, timeout_s), None, timeout_s):
        pass
    return last


# ------------------------------------------------------------------------------------------------------------
# Exporting finalized blocks


def to_ledger_block(block_bytes: bytes, cert_bytes: bytes) -> "LedgerBlock":
    """A stored block + commit certificate as the Avro LedgerBlock of ``ledger.blocks``."""
    blk = Block.decode(block_bytes)
    cert = CommitCertificate.decode(cert_bytes)
    if cert.block_hash != blk.hash() or cert.height != blk.header.height:
        raise ValueError(f"certificate does not belong to block {blk.header.height}")
    return LedgerBlock(
        chain_id=blk.header.chain_id, height=blk.header.height, block_hash=blk.hash(),
        header=blk.header.encode(),
        txs=tuple(LedgerTx(kind=TX_KIND_NAMES.get(tx.kind, f"kind{tx.kind}"), tx_hash=tx.hash(), body=tx.encode())
                  for tx in blk.txs),
        commit=tuple(CommitSig(validator_index=s.validator, round=s.round, signature=s.signature)
                     for s in cert.sigs),
        evidence=tuple(ev.encode() for ev in blk.evidence))


def last_exported_height(bootstrap: str, topic: str, chain_id: str, timeout_s: float = 30.0) -> int:
    """Height of the last block on the topic (0 when empty); refuses a topic of another chain."""
    tail = last_value(bootstrap, topic, timeout_s)
    if tail is None:
        return 0
    offset, value = tail
    try:
        msg = LedgerBlock.from_bytes(value)
    except Exception as exc:  # noqa: BLE001 - a damaged tail must stop the exporter, not be skipped
        raise ServiceError(f"{topic} offset {offset} is not a LedgerBlock ({exc}); refusing to append") from None
    if msg.chain_id != chain_id:
        raise ServiceError(f"{topic} holds blocks of chain {msg.chain_id!r}, not {chain_id!r}")
    return int(msg.height)


class Exporter:
    """Copies finalized blocks (with certificates) from the ledger to ``ledger.blocks``, in order, no gaps.

    The resume point is the last height on the topic itself (no offset store that could disagree with it).
    Each batch is flushed with acks=all before the next is read, so after a crash at most the unflushed batch
    is re-sent — and since the tail is read again at start, nothing is duplicated or skipped.
    """

    def __init__(self, bootstrap: str, topic: str, clients: list, chain_id: str, batch: int = 100) -> None:
        self.bootstrap = bootstrap
        self.topic = topic
        self.clients = clients
        self.chain_id = chain_id
        self.batch = batch
        self.exported = 0
        self.next_height = 0
        self._producer = None

    def _any(self, fn):
        last = None
        for c in self.clients:
            try:
                return fn(c)
            except Unavailable as exc:
                last = exc
        raise ServiceError(f"no ledger node reachable ({last})")

    def start(self) -> int:
        """Connect and find the resume height; returns the first height to export."""
        from kafka import KafkaProducer  # deferred: loads kafka, which only this path needs

        self.next_height = last_exported_height(self.bootstrap, self.topic, self.chain_id) + 1
        try:
            self._producer = KafkaProducer(bootstrap_servers=self.bootstrap, acks="all", enable_idempotence=True,
                                           max_in_flight_requests_per_connection=1, linger_ms=5,
                                           max_request_size=16 * 1024 * 1024, retries=5)
        except Exception as exc:
            raise ServiceError(f"cannot reach Kafka at {self.bootstrap}: {exc}") from None
        logger.info("exporting %s from height %d", self.topic, self.next_height)
        return self.next_height

    # Same shape as riskmask/health.py:HealthServer.stop: each releases its own resource (producer vs HTTP server).
    def close(self) -> None:
        if self._producer is not None:
            self._producer.flush()
            self._producer.close()
            self._producer = None

    def step(self) -> int:
        """Export the next finalized blocks available now; returns how many were written."""
        if self._producer is None:
            self.start()
        start = self.next_height
        blocks = self._any(lambda c: c.blocks(start, start + self.batch - 1))
        blocks = sorted(blocks, key=lambda b: b["height"])
        futures = []
        expect = start
        for b in blocks:
            if b["height"] != expect:
                break  # never leave a gap: the rest comes in the next step
            msg = to_ledger_block(base64.b64decode(b["block"]), base64.b64decode(b["cert"]))
            futures.append(self._producer.send(self.topic, key=self.chain_id.encode(), value=msg.to_bytes(),
                                               partition=PARTITION))
            expect += 1
        if not futures:
            return 0
        self._producer.flush()
        for f in futures:
            try:
                f.get(timeout=30)
            except Exception as exc:
                raise ServiceError(f"writing {self.topic} failed: {exc}") from None
        n = expect - start
        self.next_height = expect
        self.exported += n
        return n

    def run(self, poll_s: float = 0.5, stop_at: Optional[int] = None, stop_event=None) -> int:
        """Export continuously (until ``stop_at`` height is exported or ``stop_event`` is set)."""
        self.start()
        try:
            while True:
                n = self.step()
                if stop_at is not None and self.next_height > stop_at:
                    return self.exported
                if stop_event is not None and stop_event.is_set():
                    return self.exported
                if n == 0:
                    time.sleep(poll_s)
        finally:
            self.close()


def add_command(ledger_sub) -> None:
    """``riskmask ledger export`` (added to the ``ledger`` command group)."""
    p = ledger_sub.add_parser("export", help="export finalized blocks with commit certificates to Kafka",
                              description="Copy finalized blocks to the ledger.blocks topic, resuming after the "
                                          "last exported height found on the topic.")
    p.add_argument("--bootstrap-servers", "--bootstrap", dest="bootstrap", default=None,
                   help="Kafka bootstrap servers (default: the local broker)")
    p.add_argument("--topic", default="ledger.blocks")
    p.add_argument("--ledger-dir", type=Path, default=None, help="ledger cluster directory (genesis, keys)")
    p.add_argument("--key", type=Path, default=None, help="client key (default: <ledger-dir>/keys/auditor.key)")
    p.add_argument("--once", action="store_true", help="export what is finalized now, then exit")
    p.add_argument("--until", type=int, default=None, help="exit after exporting this height")
    p.add_argument("--connect-timeout", type=float, default=5.0, metavar="SECONDS",
                   help="give up after this long when no Kafka broker answers (default 5)")
    from riskmask.health import add_metrics_options  # deferred: loads prometheus_client, which only this path needs

    add_metrics_options(p, what="the exporter (blocks exported, next height)")
    p.set_defaults(func=_cmd_export)


def resolve_bootstrap(value: Optional[str]) -> str:
    """``--bootstrap``, else ``$RISKMASK_BOOTSTRAP``, else the embedded broker recorded in the state directory."""
    bootstrap = local_broker.resolve_bootstrap(value, fallback=None)
    if bootstrap is None:
        raise UserError("no --bootstrap given and no local broker running (riskmask broker start)")
    return bootstrap


def _cmd_export(args) -> int:
    d = (args.ledger_dir or default_dir()).expanduser()
    try:
        genesis = Genesis.load(d / "genesis.json")
        seed = KeyFile.load(args.key or d / "keys" / "auditor.key").seed
    except ConfigError as exc:
        raise UserError(str(exc)) from None
    bootstrap = resolve_bootstrap(args.bootstrap)
    clients = [LedgerClient(v.api_address, seed) for v in genesis.validators]
    exp = Exporter(bootstrap, args.topic, clients, genesis.chain_id)
    _check_broker(bootstrap, getattr(args, "connect_timeout", None))
    server = None
    if getattr(args, "metrics_port", None) is not None:
        # deferred: loads prometheus_client, which only this path needs
        from ledger.node.metrics import start_exporter_metrics

        server = start_exporter_metrics(exp, args.metrics_host, args.metrics_port)
    try:
        if args.once:
            exp.start()
            while exp.step():
                pass
            exp.close()
        else:
            exp.run(stop_at=args.until)
    except KeyboardInterrupt:
        exp.close()
    finally:
        if server is not None:
            server.stop()
    print(f"exported {exp.exported} block(s) to {args.topic}; next height {exp.next_height}")
    return 0


def _check_broker(bootstrap: str, timeout_s: Optional[float]) -> None:
    """Fail within ``timeout_s`` with one line when no bootstrap server accepts a Kafka connection."""
    if not timeout_s:
        return
    from kafka import KafkaConsumer  # deferred: loads kafka, which only this path needs
    from kafka.errors import KafkaError  # deferred: loads kafka, which only this path needs

    try:
        KafkaConsumer(bootstrap_servers=bootstrap, bootstrap_timeout_ms=int(timeout_s * 1000)).close()
    except KafkaError:
        raise ServiceError(f"no Kafka broker answers at {bootstrap} within {timeout_s:g} s") from None
