"""Shared fixtures: one real embedded Kafka-protocol broker (Tansu) per test session, and unique topics.

``kafka_bootstrap`` yields ``"127.0.0.1:PORT"`` of a Tansu broker started on a free port (the product's
default topics exist). Set ``RISKMASK_TEST_BOOTSTRAP=host:port`` to run the tests against another broker,
e.g. Apache Kafka in CI. ``topic_factory(partitions=1, prefix="t")`` creates a topic with a unique name.
"""

from __future__ import annotations

import os
import uuid
from typing import Callable, Iterator

import pytest

from infra import broker as embedded


@pytest.fixture(scope="session")
def kafka_bootstrap(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    external = os.environ.get("RISKMASK_TEST_BOOTSTRAP")
    if external:
        embedded.wait_ready(external, timeout_s=30.0)
        yield external
        return
    brk = embedded.EmbeddedBroker(state_dir=tmp_path_factory.mktemp("broker"))
    info = brk.start(port=0, timeout_s=30.0, die_with_parent=True)
    try:
        yield info.bootstrap
    finally:
        brk.stop()


@pytest.fixture
def topic_factory(kafka_bootstrap: str) -> Callable[..., str]:
    def make(partitions: int = 1, prefix: str = "t") -> str:
        name = f"{prefix}-{uuid.uuid4().hex[:12]}"
        embedded.create_topics(kafka_bootstrap, [name], partitions=partitions)
        return name

    return make
