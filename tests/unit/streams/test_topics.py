"""The topic declarations: the contract names, and the pairings derived from them."""

from __future__ import annotations

import pytest

from privacy_pipeline.streams.topics import (
    CLICKS,
    EVENT_SCHEMAS,
    INPUT_TOPICS,
    OUTPUT_TOPICS,
    SUBJECT_LOG,
    TAGGED_TOPIC,
    TOPICS,
    input_topic,
    topic_names,
    topic_schema,
    topic_specs,
)


def test_contract_topic_names() -> None:
    # design.md, "Flow": these names are relied on outside the project.
    assert INPUT_TOPICS == ("customers", "orders", "clicks", "consents", "privacy-requests")
    assert set(OUTPUT_TOPICS) == {
        "erasure-commands",
        "erasure-acks",
        "erasure-escalations",
        "privacy-request-status",
        "audit",
        "dead-letters",
        "tagged-customers",
        "tagged-orders",
        "tagged-clicks",
    }
    assert SUBJECT_LOG.internal and SUBJECT_LOG.name not in OUTPUT_TOPICS
    assert len({t.name for t in TOPICS}) == len(TOPICS)


def test_event_types_pair_with_their_topic_schema_and_tagged_topic() -> None:
    assert EVENT_SCHEMAS == {
        "customer": "CustomerEvent",
        "order": "OrderEvent",
        "click": "ClickEvent",
        "consent": "ConsentEvent",
        "privacy_request": "PrivacyRequest",
    }
    assert TAGGED_TOPIC == {
        "customer": "tagged-customers",
        "order": "tagged-orders",
        "click": "tagged-clicks",
    }
    assert input_topic("click") is CLICKS
    assert {input_topic(kind).value_schema for kind in EVENT_SCHEMAS} == set(EVENT_SCHEMAS.values())
    with pytest.raises(KeyError):
        input_topic("pageview")


def test_topic_schema_strips_the_prefix() -> None:
    assert topic_schema("dev.erasure-acks", prefix="dev.") == "ErasureAck"
    assert topic_schema("subject-log") == "SubjectBatch"
    with pytest.raises(KeyError, match="nope"):
        topic_schema("nope")


def test_specs_carry_prefix_partitions_and_explicit_retention() -> None:
    specs = {s.contract_name: s for s in topic_specs("dev.", partitions=3)}
    assert set(specs) == {t.name for t in TOPICS}
    assert specs["clicks"].name == "dev.clicks"
    assert {s.partitions for s in specs.values()} == {3}
    # Inputs hold producers' plaintext: a short retention (design.md, "Downstream contracts").
    assert specs["clicks"].config() == {
        "retention.ms": str(7 * 86_400_000),
        "cleanup.policy": "delete",
    }
    assert topic_names("dev.")["audit"] == "dev.audit"
