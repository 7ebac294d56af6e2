"""Micro-batches built by concatenation are byte for byte what the Avro encoder writes."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from privacy_pipeline.streams.serde import AvroSerde, event_to_avro
from privacy_pipeline.streams.subject_batch import SubjectBatchWriter, SubjectEntry
from tests.conformance.scenarios import click, consent, customer, order, request

SERDE = AvroSerde()
WRITER = SubjectBatchWriter(SERDE)

EVENTS = [
    customer("rego", "s1", "2024-01-10T10:00:00+01:00"),
    order("rego", "s1", "2024-01-11T10:00:00+01:00"),
    click("inrego", "visitor-ö", "2024-01-10T10:00:00+01:00"),
    consent("rego", "s1", "2024-01-12T10:00:00+01:00", "direct_marketing", "withdraw"),
    request("iret", "s2", "2024-01-13T10:00:00+01:00", "erasure"),
]


def item(event: dict[str, Any], offset: int) -> tuple[dict[str, Any], SubjectEntry]:
    name, record = event_to_avro(event)
    value = SERDE.encode(name, record)
    key = f"{event['controller']}:{event['subject_id']}"
    as_dict = {
        "key": key,
        "source_topic": "clicks",
        "source_partition": 3,
        "source_offset": offset,
        "produced_at_ms": 1_700_000_000_000 + offset,
        "event": record,
    }
    entry = SubjectEntry(
        key, "clicks", 3, offset, 1_700_000_000_000 + offset, name, WRITER.body(value, name, record)
    )
    return as_dict, entry


@pytest.mark.parametrize("count", [0, 1, 5])
def test_bytes_equal_the_avro_encoder(count: int) -> None:
    pairs = [item(EVENTS[i % len(EVENTS)], 10_000 * i) for i in range(count)]
    expected = SERDE.encode(
        "SubjectBatch",
        {
            "batch_id": "ingest-1-0",
            "produced_at_ms": 1_700_000_000_123,
            "items": [d for d, _ in pairs],
        },
    )
    got = WRITER.encode("ingest-1-0", 1_700_000_000_123, [e for _, e in pairs])
    assert got == expected
    assert SERDE.decode(got)[1]["items"] == [d for d, _ in pairs]


def test_a_tick_is_encoded_from_its_record() -> None:
    tick = {"partition": 2, "at": "2026-01-10T09:00:05Z", "ticker_id": "t-1"}
    entry = SubjectEntry("", "ticker", 2, -1, 5, "Tick", WRITER.encode_body("Tick", tick))
    got = WRITER.encode("b", 5, [entry])
    (decoded,) = SERDE.decode(got)[1]["items"]
    assert decoded["event"] == tick and decoded["source_offset"] == -1


def test_a_record_of_an_older_writer_schema_is_encoded_anew() -> None:
    # Its bytes are in another layout: the body must be written again in the current one.
    name, record = event_to_avro(EVENTS[2])
    stale = SERDE.encode(name, record)[:2] + b"\x00" * 8 + SERDE.encode(name, record)[10:]
    assert WRITER.body(stale, name, record) == SERDE.encode(name, record)[10:]


@settings(max_examples=200, deadline=None)
@given(
    offset=st.integers(min_value=-(2**63), max_value=2**63 - 1),
    produced=st.integers(min_value=-(2**63), max_value=2**63 - 1),
    partition=st.integers(min_value=-(2**31), max_value=2**31 - 1),
    key=st.text(max_size=40),
)
def test_any_numbers_and_keys_encode_as_avro_does(
    offset: int, produced: int, partition: int, key: str
) -> None:
    name, record = event_to_avro(EVENTS[0])
    body = SERDE.encode(name, record)[10:]
    entry = SubjectEntry(key, "customers", partition, offset, produced, name, body)
    as_dict = {
        "key": key,
        "source_topic": "customers",
        "source_partition": partition,
        "source_offset": offset,
        "produced_at_ms": produced,
        "event": record,
    }
    expected = SERDE.encode(
        "SubjectBatch", {"batch_id": key, "produced_at_ms": produced, "items": [as_dict]}
    )
    assert WRITER.encode(key, produced, [entry]) == expected
