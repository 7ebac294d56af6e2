"""Every topic of the pipeline, declared once: its name, what it carries, its settings.

Topic names are a **contract** (design.md, "Flow"); a deployment may prepend a prefix.
Every subject topic is keyed by ``controller:subject_id`` and all topics get the same
partition count, so they are co-partitioned. Input topics also name the event ``type``
they carry, the Avro schema of that type, and their tagged counterpart: this module is
the only place those pairings are written down. faust's state changelog is declared by
the worker (its name follows faust's app id). Creating topics on a broker is
:mod:`privacy_pipeline.streams.topic_admin`'s job; this module is data only.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Final

__all__ = [
    "AUDIT",
    "CLICKS",
    "CONSENTS",
    "CUSTOMERS",
    "DEAD_LETTERS",
    "DEFAULT_PARTITIONS",
    "ERASURE_ACKS",
    "ERASURE_COMMANDS",
    "ERASURE_ESCALATIONS",
    "EVENT_SCHEMAS",
    "INPUT_TOPICS",
    "ORDERS",
    "OUTPUT_TOPICS",
    "PRIVACY_REQUESTS",
    "PRIVACY_REQUEST_STATUS",
    "SUBJECT_LOG",
    "TAGGED_CLICKS",
    "TAGGED_CUSTOMERS",
    "TAGGED_ORDERS",
    "TAGGED_TOPIC",
    "TOPICS",
    "Topic",
    "TopicSpec",
    "input_topic",
    "topic_names",
    "topic_schema",
    "topic_specs",
]

DEFAULT_PARTITIONS: Final = 4

_DAY_MS: Final = 24 * 60 * 60 * 1000
_LEGAL_TOPIC_NAME = re.compile(r"^[A-Za-z0-9._-]+$")
_MAX_TOPIC_NAME = 249


@dataclass(frozen=True, slots=True)
class Topic:
    """One contract topic: unprefixed name, value schema, retention, and for inputs the
    event type it carries and the topic its tagged records go to."""

    name: str
    value_schema: str
    retention_ms: int
    doc: str
    event_type: str | None = None
    tagged: Topic | None = None
    internal: bool = False  # only the pipeline itself reads it
    compacted: bool = False

    def named(self, prefix: str) -> str:
        """The real topic name under a deployment's *prefix*."""
        return prefix + self.name


# ---------------------------------------------------------------------- the contract

TAGGED_CUSTOMERS: Final = Topic(
    "tagged-customers", "TaggedRecord", 7 * _DAY_MS, "customer records with purposes"
)
TAGGED_ORDERS: Final = Topic(
    "tagged-orders", "TaggedRecord", 7 * _DAY_MS, "order records with purposes"
)
TAGGED_CLICKS: Final = Topic(
    "tagged-clicks", "TaggedRecord", 7 * _DAY_MS, "click records with purposes"
)

# Inputs hold plaintext that producers wrote: a short retention (design.md).
CUSTOMERS: Final = Topic(
    "customers", "CustomerEvent", 7 * _DAY_MS, "person records from producer services",
    event_type="customer", tagged=TAGGED_CUSTOMERS,
)  # fmt: skip
ORDERS: Final = Topic(
    "orders", "OrderEvent", 7 * _DAY_MS, "purchases, invoices, deliveries, returns",
    event_type="order", tagged=TAGGED_ORDERS,
)  # fmt: skip
CLICKS: Final = Topic(
    "clicks", "ClickEvent", 7 * _DAY_MS, "web and app usage",
    event_type="click", tagged=TAGGED_CLICKS,
)  # fmt: skip
CONSENTS: Final = Topic(
    "consents", "ConsentEvent", 7 * _DAY_MS, "consent grants, withdrawals, objections",
    event_type="consent",
)  # fmt: skip
PRIVACY_REQUESTS: Final = Topic(
    "privacy-requests", "PrivacyRequest", 30 * _DAY_MS, "verified data-subject requests",
    event_type="privacy_request",
)  # fmt: skip

SUBJECT_LOG: Final = Topic(
    "subject-log", "SubjectBatch", 7 * _DAY_MS, "micro-batches of events and ticks",
    internal=True,
)  # fmt: skip
ERASURE_COMMANDS: Final = Topic(
    "erasure-commands", "ErasureCommand", 30 * _DAY_MS, "erase/anonymise/restrict"
)
ERASURE_ACKS: Final = Topic(
    "erasure-acks", "ErasureAck", 30 * _DAY_MS, "acknowledgements from targets"
)
ERASURE_ESCALATIONS: Final = Topic(
    "erasure-escalations",
    "ErasureEscalation",
    365 * _DAY_MS,
    "commands a person must follow up (out of attempts, past the deadline, failed)",
)
PRIVACY_REQUEST_STATUS: Final = Topic(
    "privacy-request-status",
    "PrivacyRequestStatus",
    365 * _DAY_MS,
    "where each privacy request stands, per target",
)
AUDIT: Final = Topic("audit", "AuditRecord", 365 * _DAY_MS, "every decision, replayable")
DEAD_LETTERS: Final = Topic(
    "dead-letters", "DeadLetter", 14 * _DAY_MS, "bad input with reason and origin"
)

TOPICS: Final[tuple[Topic, ...]] = (
    CUSTOMERS,
    ORDERS,
    CLICKS,
    CONSENTS,
    PRIVACY_REQUESTS,
    SUBJECT_LOG,
    TAGGED_CUSTOMERS,
    TAGGED_ORDERS,
    TAGGED_CLICKS,
    ERASURE_COMMANDS,
    ERASURE_ACKS,
    ERASURE_ESCALATIONS,
    PRIVACY_REQUEST_STATUS,
    AUDIT,
    DEAD_LETTERS,
)
"""Every topic, in the order they are created."""

_INPUTS: Final = tuple(t for t in TOPICS if t.event_type is not None)
INPUT_TOPICS: Final[tuple[str, ...]] = tuple(t.name for t in _INPUTS)
OUTPUT_TOPICS: Final[tuple[str, ...]] = tuple(
    t.name for t in TOPICS if t.event_type is None and not t.internal
)

EVENT_SCHEMAS: Final[dict[str, str]] = {str(t.event_type): t.value_schema for t in _INPUTS}
"""Input event ``type`` -> Avro record name."""

TAGGED_TOPIC: Final[dict[str, str]] = {
    str(t.event_type): t.tagged.name for t in _INPUTS if t.tagged is not None
}
"""Input event ``type`` -> the contract name of the topic its tagged records go to."""

_BY_NAME: Final = {t.name: t for t in TOPICS}
_BY_EVENT_TYPE: Final = {str(t.event_type): t for t in _INPUTS}


def input_topic(event_type: str) -> Topic:
    """The input topic that carries events of *event_type* (KeyError for an unknown type)."""
    return _BY_EVENT_TYPE[event_type]


def topic_schema(topic: str, prefix: str = "") -> str:
    """The value schema of a contract topic, given its (optionally prefixed) name."""
    name = topic[len(prefix) :] if prefix and topic.startswith(prefix) else topic
    try:
        return _BY_NAME[name].value_schema
    except KeyError:
        raise KeyError(f"no schema for topic {topic!r}") from None


# ------------------------------------------------------------------- as deployed


@dataclass(frozen=True)
class TopicSpec:
    """One topic as deployed: its (possibly prefixed) name, partitions, retention, schema."""

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


def topic_specs(prefix: str = "", partitions: int = DEFAULT_PARTITIONS) -> list[TopicSpec]:
    """Return every pipeline topic, names prefixed with *prefix*, each with *partitions*."""
    return [
        TopicSpec(
            name=t.named(prefix),
            partitions=partitions,
            retention_ms=t.retention_ms,
            value_schema=t.value_schema,
            compacted=t.compacted,
            doc=t.doc,
            contract_name=t.name,
            internal=t.internal,
        )
        for t in TOPICS
    ]


def topic_names(prefix: str = "") -> dict[str, str]:
    """Map each contract name to its real (prefixed) topic name."""
    return {t.name: t.named(prefix) for t in TOPICS}
