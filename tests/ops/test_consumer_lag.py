"""`ConsumerLag`, the worker's lag probe, against the embedded broker: exact figures.

Records are produced one per producer batch: the embedded broker reports a partition's
end as the start of its last batch plus one, which is then exact.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from confluent_kafka import Consumer, Producer, TopicPartition
from prometheus_client import CollectorRegistry

from privacy_pipeline.embedded_broker.launcher import EmbeddedBroker
from privacy_pipeline.streams.metrics import PipelineMetrics
from privacy_pipeline.streams.settings import Settings
from privacy_pipeline.streams.topic_admin import ensure_topics
from privacy_pipeline.streams.topics import topic_specs
from privacy_pipeline.streams.worker import ConsumerLag, WorkerConfig
from tests.ops.promql import free_ports

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    [port] = free_ports(1)
    log = tmp_path_factory.mktemp("broker") / "tansu.log"
    with EmbeddedBroker(port=port, log_file=log) as embedded:
        yield embedded.bootstrap


def _produce(broker: str, topic: str, partition: int, records: int) -> None:
    producer = Producer({"bootstrap.servers": broker, "linger.ms": 0, "log_level": 0})
    for i in range(records):
        producer.produce(topic, f"r{i}".encode(), partition=partition)
        producer.flush(10)  # one record per batch: the reported end is exact


def _commit(broker: str, group: str, offsets: list[TopicPartition]) -> None:
    consumer = Consumer({"bootstrap.servers": broker, "group.id": group, "log_level": 0})
    consumer.commit(offsets=offsets, asynchronous=False)
    consumer.close()


def test_lag_is_what_each_group_has_not_read_per_topic_and_partition(
    broker: str, tmp_path: Path
) -> None:
    prefix = f"t-{uuid.uuid4().hex[:8]}-"
    config = WorkerConfig(
        settings=Settings(bootstrap=broker, prefix=prefix),
        partitions=2,
        secrets=tmp_path / "secrets",
    )
    ensure_topics(broker, topic_specs(prefix, 2))
    clicks, acks, log = (prefix + t for t in ("clicks", "erasure-acks", "subject-log"))
    _produce(broker, clicks, 0, 7)
    _produce(broker, clicks, 1, 3)
    _produce(broker, acks, 1, 2)
    _produce(broker, log, 0, 5)
    # Ingest has read 4 clicks of partition 0 and none of partition 1 (nothing committed:
    # it starts from the earliest); enforce has read the whole subject log.
    ingest = f"{prefix}privacy-pipeline-ingest"
    _commit(broker, ingest, [TopicPartition(clicks, 0, 4), TopicPartition(acks, 1, 2)])
    _commit(broker, f"{prefix}privacy-pipeline", [TopicPartition(log, 0, 5)])

    registry = CollectorRegistry()
    probe = ConsumerLag(config, PipelineMetrics(registry))
    lag = probe.measure()
    assert lag[("clicks", 0)] == 3
    assert lag[("clicks", 1)] == 3
    assert lag[("erasure-acks", 0)] == 0
    assert lag[("erasure-acks", 1)] == 0
    assert lag[("subject-log", 0)] == 0
    assert lag[("subject-log", 1)] == 0
    assert sorted({topic for topic, _ in lag}) == [
        "clicks",
        "consents",
        "customers",
        "erasure-acks",
        "orders",
        "privacy-requests",
        "subject-log",
    ]
    assert {partition for _, partition in lag} == {0, 1}

    probe.metrics.replace_consumer_lag(lag)
    sample = registry.get_sample_value
    name = "privacy_pipeline_consumer_lag_records"
    assert sample(name, {"topic": "clicks", "partition": "0"}) == 3
    assert sample(name, {"topic": "subject-log", "partition": "0"}) == 0

    # Ingest catches up on partition 0: its lag there drops to 0.
    _commit(broker, ingest, [TopicPartition(clicks, 0, 7)])
    assert probe.measure()[("clicks", 0)] == 0
