"""Kafka source and sink against the real embedded broker (Tansu)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
import uuid

import apache_beam as beam
import pytest
from apache_beam.options.pipeline_options import PipelineOptions
from apache_beam.testing.util import assert_that, equal_to

from pipelines.frame import OutboundMessage
from pipelines.kafkaio import ReadFromKafka, WriteToKafka, discover_partitions
from pipelines.kafkaio.errors import SendFailedError, TopicMissingError
from pipelines.kafkaio.sink import _WriteFn
from pipelines.kafkaio.source import SourceConfig
from tests.pipeline_support import TopicReader, send_raw


def _committed(bootstrap: str, group: str, topic: str, partitions: int) -> dict[int, int | None]:
    from kafka import KafkaConsumer
    from kafka.structs import TopicPartition

    c = KafkaConsumer(bootstrap_servers=bootstrap, group_id=group, enable_auto_commit=False)
    try:
        return {p: c.committed(TopicPartition(topic, p)) for p in range(partitions)}
    finally:
        c.close(autocommit=False)




def _collect_bounded(bootstrap: str, topic: str, group: str, expected: list[tuple]) -> None:
    with beam.Pipeline(runner="FnApiRunner", options=PipelineOptions([])) as p:
        recs = p | ReadFromKafka(bootstrap, [topic], group, bounded=True, max_records_per_call=7)
        assert_that(recs | beam.Map(lambda r: (r.key, r.value)), equal_to(expected))


def test_bounded_read_every_record_once_commits_and_resumes(kafka_bootstrap, topic_factory):
    topic = topic_factory(partitions=2)
    group = f"g-{uuid.uuid4().hex[:8]}"
    first = [(f"k{i % 5}".encode(), f"v{i}".encode()) for i in range(40)]
    send_raw(kafka_bootstrap, topic, first)
    _collect_bounded(kafka_bootstrap, topic, group, first)
    committed = _committed(kafka_bootstrap, group, topic, 2)
    assert sum(v or 0 for v in committed.values()) == 40, committed  # offset + 1 of the last record, per partition
    # a restart resumes after the committed offsets: only the new records are read
    second = [(b"k9", f"w{i}".encode()) for i in range(5)]
    send_raw(kafka_bootstrap, topic, second)
    _collect_bounded(kafka_bootstrap, topic, group, second)


def test_bounded_read_gets_the_whole_last_batch(kafka_bootstrap, topic_factory):
    # 300 records sent together land in one or a few record batches; every one must be read
    topic = topic_factory(partitions=1)
    values = [(None, f"r{i}".encode()) for i in range(300)]
    send_raw(kafka_bootstrap, topic, values)
    specs = discover_partitions(SourceConfig(kafka_bootstrap, "g-end"), [topic], bounded=True)
    assert [(s.start, s.stop) for s in specs] == [(0, 300)]
    _collect_bounded(kafka_bootstrap, topic, f"g-{uuid.uuid4().hex[:8]}", values)


def test_missing_topic_is_a_clear_error(kafka_bootstrap):
    with pytest.raises(TopicMissingError, match="does not exist"):
        discover_partitions(SourceConfig(kafka_bootstrap, "g"), [f"nope-{uuid.uuid4().hex[:8]}"], timeout_s=2)


def test_sink_writes_keys_and_headers(kafka_bootstrap, topic_factory):
    topic = topic_factory()
    msgs = [OutboundMessage(f"cam-{i % 2}".encode(), f"m{i}".encode(), (("riskmask-dedupe", f"d{i}".encode()),))
            for i in range(10)]
    with beam.Pipeline(runner="FnApiRunner", options=PipelineOptions([])) as p:
        p | beam.Create(msgs, reshuffle=False) | WriteToKafka(kafka_bootstrap, topic)
    reader = TopicReader(kafka_bootstrap, topic)
    got = reader.poll_until(lambda r: len(r) >= 10, 30)
    reader.close()
    assert sorted((m.key, m.value, dict(m.headers)["riskmask-dedupe"]) for m in got) == sorted(
        (m.key, m.value, m.headers[0][1]) for m in msgs)


def test_sink_refuses_a_record_it_cannot_send(kafka_bootstrap, topic_factory):
    fn = _WriteFn(kafka_bootstrap, topic_factory(), max_request_bytes=1024 * 1024, producer_config=())
    fn.setup()
    try:
        fn.start_bundle()
        fn.process(OutboundMessage(b"k", b"small"))
        with pytest.raises(SendFailedError, match="not written"):
            fn.process(OutboundMessage(b"k", b"x" * (2 * 1024 * 1024)))  # above max_request_size
    finally:
        fn.teardown()


class _FailedFuture:
    is_done = True
    exception = RuntimeError("NotEnoughReplicas")

    def failed(self):
        return True


class _FakeProducer:  # unit test of the sink's bundle logic only: a send the broker did not acknowledge
    def send(self, *args, **kwargs):
        return _FailedFuture()

    def flush(self):
        pass


def test_sink_fails_the_bundle_when_an_ack_fails():
    fn = _WriteFn("127.0.0.1:1", "t", max_request_bytes=1024, producer_config=())
    fn._producer = _FakeProducer()
    fn.start_bundle()
    fn.process(OutboundMessage(b"k", b"v"))
    with pytest.raises(SendFailedError, match="1 of 1 records to 't' not written: NotEnoughReplicas"):
        fn.finish_bundle()


_STREAM_SCRIPT = textwrap.dedent("""
    import sys
    import apache_beam as beam
    from apache_beam.options.pipeline_options import PipelineOptions
    from pipelines.frame import OutboundMessage
    from pipelines.kafkaio import ReadFromKafka, WriteToKafka
    bs, src, dst, group = sys.argv[1:5]
    with beam.Pipeline(runner="FnApiRunner", options=PipelineOptions([])) as p:
        (p | ReadFromKafka(bs, [src], group, max_records_per_call=4, poll_timeout_s=0.2)
           | beam.Map(lambda r: OutboundMessage(r.key, r.value.upper()))
           | WriteToKafka(bs, dst))
""")


def test_unbounded_read_streams_and_commits_after_output(kafka_bootstrap, topic_factory):
    src, dst = topic_factory(partitions=2), topic_factory()
    group = f"g-{uuid.uuid4().hex[:8]}"
    send_raw(kafka_bootstrap, src, [(b"a", b"before-start")])
    proc = subprocess.Popen([sys.executable, "-c", _STREAM_SCRIPT, kafka_bootstrap, src, dst, group],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True)
    reader = TopicReader(kafka_bootstrap, dst)
    try:
        reader.poll_until(lambda r: len(r) >= 1, 90, alive=lambda: proc.poll() is None)
        assert proc.poll() is None, proc.stderr.read().decode()[-2000:]
        for i in range(3):  # records written while the pipeline runs are streamed
            send_raw(kafka_bootstrap, src, [(f"k{j}".encode(), f"live-{i}-{j}".encode()) for j in range(5)])
            time.sleep(0.3)
        got = reader.poll_until(lambda r: len(r) >= 16, 60)
        assert sorted(m.value for m in got) == sorted(
            [b"BEFORE-START"] + [f"LIVE-{i}-{j}".encode() for i in range(3) for j in range(5)])
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:  # commits follow the outputs (bundle finalizer)
            if sum(v or 0 for v in _committed(kafka_bootstrap, group, src, 2).values()) == 16:
                break
            time.sleep(0.3)
        assert sum(v or 0 for v in _committed(kafka_bootstrap, group, src, 2).values()) == 16
    finally:
        reader.close()
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)
