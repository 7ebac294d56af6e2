"""Every topic of the pipeline and its settings, declared once.

Topic names are a **contract** (see the design's "Flow"); a deployment may
prepend a prefix. Every subject topic is keyed by ``controller:subject_id`` and
all topics have the same partition count, so they are co-partitioned. faust
creates its own table changelogs; they are not declared here.
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from confluent_kafka import KafkaError, KafkaException
from confluent_kafka.admin import AdminClient, NewTopic  # type: ignore[attr-defined]

__all__ = [
    "AUDIT",
    "CLICKS",
    "CONSENTS",
    "CUSTOMERS",
    "DEAD_LETTERS",
    "DEFAULT_PARTITIONS",
    "ERASURE_ACKS",
    "ERASURE_COMMANDS",
    "INPUT_TOPICS",
    "ORDERS",
    "OUTPUT_TOPICS",
    "PRIVACY_REQUESTS",
    "SUBJECT_LOG",
    "TAGGED_CLICKS",
    "TAGGED_CUSTOMERS",
    "TAGGED_ORDERS",
    "TopicError",
    "TopicSpec",
    "ensure_topics",
    "topic_names",
    "topic_specs",
]

log = logging.getLogger(__name__)

DEFAULT_PARTITIONS = 4

# Contract names (without prefix).
CUSTOMERS = "customers"
ORDERS = "orders"
CLICKS = "clicks"
CONSENTS = "consents"
PRIVACY_REQUESTS = "privacy-requests"
ERASURE_COMMANDS = "erasure-commands"
ERASURE_ACKS = "erasure-acks"
AUDIT = "audit"
DEAD_LETTERS = "dead-letters"
TAGGED_CUSTOMERS = "tagged-customers"
TAGGED_ORDERS = "tagged-orders"
TAGGED_CLICKS = "tagged-clicks"
SUBJECT_LOG = "subject-log"  # internal: ingest -> enforce micro-batches

INPUT_TOPICS = (CUSTOMERS, ORDERS, CLICKS, CONSENTS, PRIVACY_REQUESTS)
OUTPUT_TOPICS = (
    ERASURE_COMMANDS,
    ERASURE_ACKS,
    AUDIT,
    DEAD_LETTERS,
    TAGGED_CUSTOMERS,
    TAGGED_ORDERS,
    TAGGED_CLICKS,
)

_DAY_MS = 24 * 60 * 60 * 1000
_LEGAL_TOPIC_NAME = re.compile(r"^[A-Za-z0-9._-]+$")
_MAX_TOPIC_NAME = 249


class TopicError(RuntimeError):
    """A topic could not be created, or exists with other settings."""


@dataclass(frozen=True)
class TopicSpec:
    """One topic: its (possibly prefixed) name, partitions, retention and schemas."""

    name: str
    partitions: int
    retention_ms: int
    value_schema: str
    key_schema: str = "string"
    compacted: bool = False
    doc: str = ""
    contract_name: str = ""  # the unprefixed name; defaults to ``name``
    internal: bool = False  # True for topics only the pipeline itself reads

    def __post_init__(self) -> None:
        """Validate the name and settings; default ``contract_name`` to ``name``."""
        if not self.contract_name:
            object.__setattr__(self, "contract_name", self.name)
        if not _LEGAL_TOPIC_NAME.match(self.name) or len(self.name) > _MAX_TOPIC_NAME:
            raise ValueError(f"illegal Kafka topic name: {self.name!r}")
        if self.partitions < 1:
            raise ValueError(f"{self.name}: partitions must be >= 1, not {self.partitions}")
        if self.retention_ms < -1 or self.retention_ms == 0:
            raise ValueError(f"{self.name}: retention_ms must be > 0 or -1 (forever)")

    def config(self) -> dict[str, str]:
        """Return the topic configs to create it with (always set explicitly)."""
        return {
            "retention.ms": str(self.retention_ms),
            "cleanup.policy": "compact" if self.compacted else "delete",
        }


# Each topic's settings, declared once. Partition counts come from
# ``topic_specs(partitions=...)`` so that all topics stay co-partitioned.
_TOPICS: tuple[tuple[str, int, str, str, bool], ...] = (
    # name, retention (ms), value schema, doc, internal
    (CUSTOMERS, 7 * _DAY_MS, "CustomerEvent", "person records from producer services", False),
    (ORDERS, 7 * _DAY_MS, "OrderEvent", "purchases, invoices, deliveries, returns", False),
    (CLICKS, 7 * _DAY_MS, "ClickEvent", "web and app usage", False),
    (CONSENTS, 7 * _DAY_MS, "ConsentEvent", "consent grants, withdrawals, objections", False),
    (PRIVACY_REQUESTS, 30 * _DAY_MS, "PrivacyRequest", "verified data-subject requests", False),
    (SUBJECT_LOG, 7 * _DAY_MS, "SubjectBatch", "micro-batches of events and ticks", True),
    (TAGGED_CUSTOMERS, 7 * _DAY_MS, "TaggedRecord", "customer records with purposes", False),
    (TAGGED_ORDERS, 7 * _DAY_MS, "TaggedRecord", "order records with purposes", False),
    (TAGGED_CLICKS, 7 * _DAY_MS, "TaggedRecord", "click records with purposes", False),
    (ERASURE_COMMANDS, 30 * _DAY_MS, "ErasureCommand", "erase/anonymise/restrict", False),
    (ERASURE_ACKS, 30 * _DAY_MS, "ErasureAck", "acknowledgements from targets", False),
    (AUDIT, 365 * _DAY_MS, "AuditRecord", "every decision, replayable", False),
    (DEAD_LETTERS, 14 * _DAY_MS, "DeadLetter", "bad input with reason and origin", False),
)


def topic_specs(prefix: str = "", partitions: int = DEFAULT_PARTITIONS) -> list[TopicSpec]:
    """Return every pipeline topic, names prefixed with *prefix*, each with *partitions*."""
    return [
        TopicSpec(
            name=f"{prefix}{name}",
            partitions=partitions,
            retention_ms=retention_ms,
            value_schema=value_schema,
            doc=doc,
            contract_name=name,
            internal=internal,
        )
        for name, retention_ms, value_schema, doc, internal in _TOPICS
    ]


def topic_names(prefix: str = "") -> dict[str, str]:
    """Map each contract name to its real (prefixed) topic name."""
    return {spec.contract_name: spec.name for spec in topic_specs(prefix)}


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
