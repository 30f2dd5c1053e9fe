"""Typed errors of the Kafka IO package."""

from __future__ import annotations

from riskmask.errors import ServiceError, UserError


class KafkaIOError(Exception):
    """Base class of every Kafka source/sink failure."""


class KafkaUnavailableError(KafkaIOError, ServiceError):
    """The brokers did not answer, or refused a request."""


class TopicMissingError(KafkaIOError, UserError):
    """A topic the pipeline must read does not exist."""


class SendFailedError(KafkaIOError):
    """At least one record of a bundle was not acknowledged by the brokers; the bundle must be retried."""
