"""Kafka IO for the riskmask pipeline: the splittable-DoFn source of record and the idempotent sink."""

from pipelines.kafkaio.errors import KafkaIOError
from pipelines.kafkaio.sink import WriteToKafka
from pipelines.kafkaio.source import PartitionSpec, ReadFromKafka, discover_partitions

__all__ = ["KafkaIOError", "PartitionSpec", "ReadFromKafka", "WriteToKafka", "discover_partitions"]
