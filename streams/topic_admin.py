"""Creating the pipeline's topics on a broker, and checking the ones that exist.

What the topics are is declared in :mod:`privacy_pipeline.streams.topics`.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable, Sequence
from typing import Any

from confluent_kafka import KafkaError, KafkaException
from confluent_kafka.admin import AdminClient, NewTopic  # type: ignore[attr-defined]

from .topics import TopicSpec

__all__ = ["BrokerUnreachable", "TopicError", "check_broker", "ensure_topics"]

log = logging.getLogger(__name__)


class TopicError(RuntimeError):
    """A topic could not be created, or exists with other settings."""


class BrokerUnreachable(RuntimeError):
    """No Kafka broker answered at the bootstrap address in time."""


def check_broker(bootstrap: str, timeout: float = 10.0) -> None:
    """Raise BrokerUnreachable, in one readable sentence, when no broker answers in time.

    The client's own connection logs are silenced for this probe: a broker that is down
    would otherwise print a refused connection every second.
    """
    admin = AdminClient({"bootstrap.servers": bootstrap, "log_level": 0})
    try:
        admin.list_topics(timeout=timeout)
    except KafkaException as exc:
        error = exc.args[0]
        reason = error.str() if isinstance(error, KafkaError) else str(error)
        raise BrokerUnreachable(
            f"no Kafka broker answers at {bootstrap} within {timeout:g} s ({reason}); "
            "is it running, and is --broker (or KAFKA_BOOTSTRAP_SERVERS) right?"
        ) from None


def ensure_topics(bootstrap: str, specs: Iterable[TopicSpec], timeout: float = 30) -> None:
    """Create the missing topics of *specs* and wait until metadata shows them all.

    Existing topics are left alone, but one with another partition count is an
    error (:class:`TopicError`), as is not seeing every topic within *timeout*.
    """
    wanted = list(specs)
    if not wanted:
        return
    deadline = time.monotonic() + timeout
    conf: dict[str, Any] = {"bootstrap.servers": bootstrap, "logger": log}
    admin = AdminClient(conf)
    existing = _partition_counts(admin, deadline)
    _check_partitions(wanted, existing)
    missing = [spec for spec in wanted if spec.name not in existing]
    if missing:
        _create(admin, missing, deadline)
    while True:
        existing = _partition_counts(admin, deadline)
        pending = [spec.name for spec in wanted if existing.get(spec.name, 0) != spec.partitions]
        if not pending:
            return
        if time.monotonic() >= deadline:
            _check_partitions(wanted, existing)
            raise TopicError(f"topics not visible on {bootstrap} after {timeout} s: {pending}")
        time.sleep(0.05)


def _create(admin: AdminClient, specs: Sequence[TopicSpec], deadline: float) -> None:
    """Create *specs*, tolerating topics that another client created meanwhile."""
    new = [
        NewTopic(spec.name, num_partitions=spec.partitions, config=spec.config()) for spec in specs
    ]
    futures = admin.create_topics(
        new, operation_timeout=_remaining(deadline), request_timeout=_remaining(deadline)
    )
    for name, future in futures.items():
        try:
            future.result(timeout=_remaining(deadline))
            log.info("created topic %s", name)
        except KafkaException as exc:
            error = exc.args[0]
            if isinstance(error, KafkaError) and error.code() == KafkaError.TOPIC_ALREADY_EXISTS:
                log.debug("topic %s already exists", name)
                continue
            raise TopicError(f"cannot create topic {name}: {error}") from exc


def _partition_counts(admin: AdminClient, deadline: float) -> dict[str, int]:
    """Return {topic: partition count} as the cluster metadata shows it now."""
    try:
        metadata = admin.list_topics(timeout=_remaining(deadline))
    except KafkaException as exc:
        raise TopicError(f"cannot read cluster metadata: {exc.args[0]}") from exc
    return {
        name: len(topic.partitions)
        for name, topic in metadata.topics.items()
        if topic.error is None
    }


def _check_partitions(specs: Iterable[TopicSpec], existing: dict[str, int]) -> None:
    """Raise if an existing topic has another partition count than declared."""
    wrong = {
        spec.name: (existing[spec.name], spec.partitions)
        for spec in specs
        if spec.name in existing and existing[spec.name] != spec.partitions
    }
    if wrong:
        detail = ", ".join(f"{n} has {has} (want {want})" for n, (has, want) in wrong.items())
        raise TopicError(f"topics exist with another partition count: {detail}")


def _remaining(deadline: float) -> float:
    """Seconds left until *deadline*, at least a small positive amount."""
    return max(deadline - time.monotonic(), 0.1)
