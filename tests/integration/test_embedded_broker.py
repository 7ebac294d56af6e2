"""The embedded broker and the topic declarations, over real connections."""

from __future__ import annotations

import os
import socket
import time
from pathlib import Path

import pytest
from aiokafka.partitioner import murmur2
from confluent_kafka import Consumer, KafkaError, Message, Producer
from confluent_kafka.admin import AdminClient, ConfigResource

from privacy_pipeline.embedded_broker.launcher import BrokerStartError, EmbeddedBroker
from privacy_pipeline.streams.settings import ClientTuning
from privacy_pipeline.streams.topic_admin import TopicError, ensure_topics
from privacy_pipeline.streams.topics import (
    INPUT_TOPICS,
    OUTPUT_TOPICS,
    SUBJECT_LOG,
    TopicSpec,
    topic_specs,
)

TUNING = ClientTuning()

# Kafka's UtilsTest.testMurmur2 reference vectors (signed 32-bit results).
JAVA_MURMUR2 = {
    b"21": -973932308,
    b"foobar": -790332482,
    b"a-little-bit-long-string": -985981536,
    b"a-little-bit-longer-string": -1486304829,
    b"lkjh234lh9fiuh90y23oiuhsafujhadof229phr9h19h89h8": -58897971,
    b"abc": 479470107,
}


def java_partition(key: bytes, partitions: int) -> int:
    """Partition the Java client (and aiokafka/faust) give *key*."""
    return (murmur2(key) & 0x7FFFFFFF) % partitions


def produce_keys(bootstrap: str, topic: str, keys: list[bytes], **conf: object) -> dict[bytes, int]:
    """Produce one record per key and return the partition each was delivered to."""
    delivered: dict[bytes, int] = {}
    errors: list[KafkaError] = []

    def on_delivery(err: KafkaError | None, msg: Message) -> None:
        if err is not None:
            errors.append(err)
        else:
            delivered[msg.key()] = msg.partition()

    producer = Producer({"bootstrap.servers": bootstrap, "linger.ms": 5, **conf})
    for key in keys:
        producer.produce(topic, key=key, value=b"v", on_delivery=on_delivery)
    assert producer.flush(15) == 0
    assert not errors
    return delivered


def test_broker_answers(broker: str) -> None:
    metadata = AdminClient({"bootstrap.servers": broker}).list_topics(timeout=10)
    assert metadata.brokers
    advertised = {f"{b.host}:{b.port}" for b in metadata.brokers.values()}
    assert broker in advertised


def test_every_contract_topic_is_declared_once() -> None:
    specs = topic_specs("t123-", partitions=6)
    names = [spec.contract_name for spec in specs]
    assert len(names) == len(set(names))
    assert set(names) == {*INPUT_TOPICS, *OUTPUT_TOPICS, SUBJECT_LOG.name}
    assert all(spec.name == "t123-" + spec.contract_name for spec in specs)
    assert all(spec.partitions == 6 for spec in specs)
    assert [s.contract_name for s in specs if s.internal] == [SUBJECT_LOG.name]


def test_topics_exist_with_explicit_retention(
    broker: str, topics: dict[str, str], topic_prefix: str
) -> None:
    specs = {spec.name: spec for spec in topic_specs(topic_prefix)}
    admin = AdminClient({"bootstrap.servers": broker})
    metadata = admin.list_topics(timeout=10)
    for real in topics.values():
        assert len(metadata.topics[real].partitions) == specs[real].partitions
    futures = admin.describe_configs([ConfigResource("topic", name) for name in topics.values()])
    for resource, future in futures.items():
        config = future.result(timeout=10)
        assert config["retention.ms"].value == str(specs[resource.name].retention_ms)


def test_ensure_topics_is_idempotent_and_checks_partitions(
    broker: str, topics: dict[str, str], topic_prefix: str
) -> None:
    ensure_topics(broker, topic_specs(topic_prefix))  # all exist already: no error
    with pytest.raises(TopicError, match="partition count"):
        ensure_topics(broker, topic_specs(topic_prefix, partitions=3))


def test_produce_consume_round_trip(broker: str, topics: dict[str, str], group_id: str) -> None:
    topic = topics["customers"]
    sent = {f"rego:{i}".encode(): f"value-{i}".encode() for i in range(50)}
    producer = Producer(TUNING.producer(broker))
    for key, value in sent.items():
        producer.produce(topic, key=key, value=value, headers={"h": b"1"})
    assert producer.flush(15) == 0

    consumer = Consumer(TUNING.reader_consumer(broker, group_id))
    received: dict[bytes, bytes] = {}
    try:
        consumer.subscribe([topic])
        deadline = time.monotonic() + 30  # a group join takes ~session.timeout.ms / 2
        while len(received) < len(sent) and time.monotonic() < deadline:
            for msg in consumer.consume(100, timeout=0.5):
                assert msg.error() is None, msg.error()
                assert msg.headers() == [("h", b"1")]
                received[msg.key()] = msg.value()
        consumer.commit(asynchronous=False)
    finally:
        consumer.close()
    assert received == sent


def test_murmur2_reference_vectors() -> None:
    for data, expected in JAVA_MURMUR2.items():
        assert murmur2(data) & 0xFFFFFFFF == expected & 0xFFFFFFFF


@pytest.mark.parametrize("partitions", [4, 7])
def test_murmur2_random_places_keys_like_java(
    broker: str, topic_prefix: str, partitions: int
) -> None:
    spec = TopicSpec(
        name=f"{topic_prefix}murmur", partitions=partitions, retention_ms=60_000, value_schema="-"
    )
    ensure_topics(broker, [spec])
    keys = [f"{c}:{i}".encode() for c in ("rego", "inrego", "iret") for i in range(100)]
    keys += list(JAVA_MURMUR2)

    delivered = produce_keys(broker, spec.name, keys, partitioner="murmur2_random")
    assert delivered == {key: java_partition(key, partitions) for key in keys}

    # confluent-kafka's default partitioner places keys differently.
    default = produce_keys(broker, spec.name, keys)
    assert sum(default[k] != delivered[k] for k in keys) > len(keys) // 2


def test_stop_is_clean(unused_port: int, tmp_path: Path) -> None:
    log_file = tmp_path / "tansu.log"
    broker = EmbeddedBroker(port=unused_port, log_file=log_file)
    with broker:
        assert broker.bootstrap == f"127.0.0.1:{unused_port}"
        pid = broker.pid
        assert pid is not None
        assert AdminClient({"bootstrap.servers": broker.bootstrap}).list_topics(timeout=10)
    assert not broker.is_running()
    assert broker.pid is None
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", unused_port), timeout=2).close()
    broker.stop()  # idempotent
    assert log_file.read_text().strip()  # output went to the log, not the terminal

    # The port is free again: a new broker can take it at once.
    with EmbeddedBroker(port=unused_port) as again:
        assert AdminClient({"bootstrap.servers": again.bootstrap}).list_topics(timeout=10)


def test_free_port_chosen_when_none_given(
    unused_port: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    if os.environ.get("PRIVACY_PIPELINE_TEST_PORTS"):  # stay inside the allowed range
        monkeypatch.setattr(
            "privacy_pipeline.embedded_broker.launcher.free_port", lambda host: unused_port
        )
    with EmbeddedBroker() as broker:
        assert broker.port > 0
        assert broker.startup_seconds is not None
        assert AdminClient({"bootstrap.servers": broker.bootstrap}).list_topics(timeout=10)


def test_start_fails_clearly_on_a_busy_port(unused_port: int, tmp_path: Path) -> None:
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", unused_port))
        squatter.listen()
        broker = EmbeddedBroker(port=unused_port, log_file=tmp_path / "tansu.log")
        with pytest.raises(BrokerStartError, match=str(unused_port)):
            broker.start(timeout=5)
        assert not broker.is_running()


def fake_binary(tmp_path: Path, script: str) -> str:
    """Write an executable shell script standing in for the broker binary."""
    path = tmp_path / "fake-tansu"
    path.write_text(f"#!/bin/sh\n{script}\n")
    path.chmod(0o755)
    return str(path)


def test_start_error_names_port_and_log_when_process_exits(
    unused_port: int, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    fake = fake_binary(tmp_path, "echo boom >&2; exit 3")
    monkeypatch.setattr("privacy_pipeline.embedded_broker.launcher.broker_binary", lambda: fake)
    log_file = tmp_path / "tansu.log"
    broker = EmbeddedBroker(port=unused_port, log_file=log_file)
    with pytest.raises(BrokerStartError, match="exited with code 3") as info:
        broker.start(timeout=10)
    assert str(unused_port) in str(info.value)
    assert str(log_file) in str(info.value)
    assert "boom" in log_file.read_text()
    assert not broker.is_running()


def test_start_error_names_port_and_log_on_timeout(
    unused_port: int, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    fake = fake_binary(tmp_path, "exec sleep 60")
    monkeypatch.setattr("privacy_pipeline.embedded_broker.launcher.broker_binary", lambda: fake)
    log_file = tmp_path / "tansu.log"
    broker = EmbeddedBroker(port=unused_port, log_file=log_file)
    started = time.monotonic()
    with pytest.raises(BrokerStartError, match="did not answer") as info:
        broker.start(timeout=1)
    assert time.monotonic() - started < 10
    assert str(unused_port) in str(info.value)
    assert str(log_file) in str(info.value)
    assert not broker.is_running()
