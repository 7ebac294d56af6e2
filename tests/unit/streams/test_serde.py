"""Avro serde and schemas: wire format, round trips, evolution, errors, annotations."""

from __future__ import annotations

import copy
import io
import json
import random
import re
import shutil
from pathlib import Path
from typing import Any

import fastavro
import pytest
from fastavro.schema import fingerprint, load_schema_ordered, to_parsing_canonical_form

from privacy_pipeline.streams.serde import (
    DEFAULT_SCHEMA_DIR,
    AvroSerde,
    RecordError,
    avro_to_event,
    event_to_avro,
)
from privacy_pipeline.streams.topics import EVENT_SCHEMAS, TOPICS

SCHEMA_DIR = Path(__file__).resolve().parents[3] / "schemas"
PERSONAL = "Anna Andersson 19790101-1234"  # must never show in an error message

EVENTS: dict[str, dict[str, Any]] = {
    "customer": {
        "event_id": "c-1",
        "type": "customer",
        "controller": "inrego",
        "subject_id": "cust-42",
        "occurred_at": "2024-05-01T10:00:00+02:00",
        "action": "created",
        "role": "contact_person",
        "fields": {
            "name": "Anna Andersson",
            "email": "anna@example.se",
            "phone": "+46701234567",
            "address": "Storgatan 1, 111 22 Stockholm",
            "personnummer": "19790101-1234",
            "customer_type": "business",
        },
    },
    "customer_minimal": {
        "event_id": "c-2",
        "type": "customer",
        "controller": "rego",
        "subject_id": "cust-43",
        "occurred_at": "2024-05-01T08:00:00Z",
        "action": "closed",
    },
    "order": {
        "event_id": "o-1",
        "type": "order",
        "controller": "rejoin",
        "subject_id": "cust-42",
        "occurred_at": "2024-05-02T12:30:00.250+02:00",
        "action": "invoiced",
        "order_id": "ord-9001",
        "amount": 1299.5,
        "currency": "SEK",
    },
    "order_minimal": {
        "event_id": "o-2",
        "type": "order",
        "controller": "unnamed004",
        "subject_id": "sup-7",
        "occurred_at": "2024-05-02T12:30:00+00:00",
        "action": "placed",
        "order_id": "ord-9002",
    },
    "click": {
        "event_id": "k-1",
        "type": "click",
        "controller": "inrego",
        "subject_id": "cust-42",
        "occurred_at": "2024-05-03T09:15:00+02:00",
        "url": "https://www.example.se/laptops?utm_source=newsletter",
        "ip": "203.0.113.54",
        "user_agent": "Mozilla/5.0 (X11; Linux x86_64) Firefox/125.0",
        "anonymous_id": "anon-7f3c",
    },
    "click_minimal": {
        "event_id": "k-2",
        "type": "click",
        "controller": "inrego",
        "subject_id": "cust-44",
        "occurred_at": "2024-05-03T09:15:00+02:00",
        "url": "https://www.example.se/",
        "ip": "2001:db8::1",
        "user_agent": "curl/8.0",
    },
    "consent": {
        "event_id": "s-1",
        "type": "consent",
        "controller": "rego",
        "subject_id": "cust-42",
        "occurred_at": "2024-05-04T00:00:00+02:00",
        "purpose": "direct_marketing",
        "action": "withdraw",
        "channel": "email",
    },
    "privacy_request": {
        "event_id": "r-1",
        "type": "privacy_request",
        "controller": "iret",
        "subject_id": "cust-42",
        "occurred_at": "2024-05-05T10:00:00+02:00",
        "request_id": "dsr-1",
        "right": "erasure",
        "purposes": ["direct_marketing", "analytics"],
    },
    "privacy_request_minimal": {
        "event_id": "r-2",
        "type": "privacy_request",
        "controller": "iret",
        "subject_id": "cust-42",
        "occurred_at": "2024-05-05T10:00:00+02:00",
        "request_id": "dsr-2",
        "right": "access",
    },
}

TICK = {"partition": 3, "at": "2024-05-05T10:00:01Z", "ticker_id": "ticker-1"}


@pytest.fixture(scope="module")
def serde() -> AvroSerde:
    return AvroSerde()


def canonical(obj: Any) -> str:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def item(event: Any, offset: int = 0) -> dict[str, Any]:
    """A subject-log item around `event` (a record, fastavro tuple notation, or None)."""
    record = event[1] if isinstance(event, tuple) else event
    is_event = record is not None and "ticker_id" not in record
    return {
        "key": f"{record['controller']}:{record['subject_id']}" if is_event else "",
        "source_topic": "clicks",
        "source_partition": 1,
        "source_offset": offset,
        "produced_at_ms": 1_714_550_400_000 + offset,
        "event": event,
    }


def crc64_avro(data: bytes) -> int:
    """CRC-64-AVRO as the Avro specification gives it, independent of fastavro."""
    empty = 0xC15D213AA4D7A795
    table = []
    for i in range(256):
        fp = i
        for _ in range(8):
            fp = (fp >> 1) ^ (empty & -(fp & 1))
        table.append(fp)
    fp = empty
    for byte in data:
        fp = (fp >> 8) ^ table[(fp ^ byte) & 0xFF]
    return fp


# ----------------------------------------------------------------------- schema files


def test_default_schema_dir_ships_the_repo_schemas() -> None:
    shipped = {p.name: p.read_bytes() for p in DEFAULT_SCHEMA_DIR.glob("*.avsc")}
    assert shipped == {p.name: p.read_bytes() for p in SCHEMA_DIR.glob("*.avsc")}


def test_one_record_per_file_named_in_snake_case() -> None:
    files = sorted(SCHEMA_DIR.glob("*.avsc"))
    assert files
    for path in files:
        schema = json.loads(path.read_text(encoding="utf-8"))
        assert schema["type"] == "record"
        assert schema["namespace"] == "privacy_pipeline"
        snake = re.sub(r"(?<!^)(?=[A-Z])", "_", schema["name"]).lower()
        assert path.name == f"{snake}.avsc"
        assert schema.get("doc"), path.name
        for field in schema["fields"]:
            assert field.get("doc"), f"{path.name}: {field['name']}"


def test_every_topic_schema_is_shipped(serde: AvroSerde) -> None:
    assert {t.value_schema for t in TOPICS} <= set(serde.names)
    assert set(EVENT_SCHEMAS.values()) <= set(serde.names)


@pytest.mark.parametrize("name", sorted(EVENT_SCHEMAS.values()))
def test_event_schemas_carry_the_contract_fields(serde: AvroSerde, name: str) -> None:
    fields = [f["name"] for f in serde.schema(name)["fields"]]
    assert fields[:5] == ["event_id", "type", "controller", "subject_id", "occurred_at"]


def test_optional_fields_default_to_null(serde: AvroSerde) -> None:
    optional = {
        "CustomerEvent": {"role", "fields"},
        "OrderEvent": {"amount", "currency"},
        "ClickEvent": {"anonymous_id"},
        "ConsentEvent": set(),
        "PrivacyRequest": {"purposes"},
        "ErasureCommand": {
            "recorded_before",
            "decision",
            "due_at",
            "request_id",
            "attempt",
            "signature",
        },
        "ErasureAck": {"detail", "attempt", "retryable", "rows"},
        "DeadLetter": {"key"},
    }
    for name, expected in optional.items():
        with_default = {f["name"] for f in serde.schema(name)["fields"] if "default" in f}
        assert with_default == expected, name


# ----------------------------------------------------------------------- round trips


@pytest.mark.parametrize("label", sorted(EVENTS))
def test_event_round_trip_is_exact(serde: AvroSerde, label: str) -> None:
    event = EVENTS[label]
    name, record = event_to_avro(event)
    assert name == EVENT_SCHEMAS[event["type"]]
    data = serde.encode(name, record)
    decoded_name, decoded = serde.decode(data)
    assert decoded_name == name
    assert decoded == record
    back = avro_to_event(decoded)
    assert back == event
    assert canonical(back) == canonical(event)


def test_event_to_avro_fills_missing_optionals_with_none() -> None:
    name, record = event_to_avro(EVENTS["click_minimal"])
    assert name == "ClickEvent"
    assert record["anonymous_id"] is None
    assert event_to_avro(EVENTS["customer_minimal"])[1]["fields"] is None


def test_event_to_avro_does_not_share_the_input() -> None:
    event = copy.deepcopy(EVENTS["customer"])
    _, record = event_to_avro(event)
    record["action"] = "updated"
    assert event["action"] == "created"


@pytest.mark.parametrize(
    ("event", "field"),
    [
        ({**EVENTS["click"], "type": "pageview"}, "type"),
        ({k: v for k, v in EVENTS["click"].items() if k != "type"}, "type"),
        ({k: v for k, v in EVENTS["click"].items() if k != "ip"}, "ip"),
        ({**EVENTS["click"], "email": PERSONAL}, "email"),
    ],
)
def test_event_to_avro_rejects_bad_shapes(event: dict[str, Any], field: str) -> None:
    with pytest.raises(RecordError) as info:
        event_to_avro(event)
    assert info.value.reason == "invalid_record"
    assert info.value.field == field
    assert field in str(info.value)
    assert PERSONAL not in str(info.value)


def test_event_to_avro_rejects_non_objects() -> None:
    with pytest.raises(RecordError) as info:
        event_to_avro(["not", "an", "object"])  # type: ignore[arg-type]
    assert info.value.reason == "invalid_record"


def test_subject_batch_keeps_every_event_kind(serde: AvroSerde) -> None:
    """Records in a union are written as the branch their `type` names: an order, which
    would also fit CustomerEvent's required fields, must stay an order."""
    events = [event_to_avro(e)[1] for e in EVENTS.values()]
    batch: dict[str, Any] = {
        "batch_id": "subject-log-1-000042",
        "produced_at_ms": 1_714_550_400_123,
        "items": [item(e, i) for i, e in enumerate([*events, TICK, None])],
    }
    name, decoded = serde.decode(serde.encode("SubjectBatch", batch))
    assert name == "SubjectBatch"
    assert decoded == batch
    assert [avro_to_event(i["event"]) for i in decoded["items"][: len(EVENTS)]] == list(
        EVENTS.values()
    )
    assert batch["items"][0]["event"] is events[0]  # the caller's records are not altered


def test_subject_batch_accepts_tuple_notation(serde: AvroSerde) -> None:
    batch = {
        "batch_id": "b",
        "produced_at_ms": 1,
        "items": [item(("Tick", TICK)), item(("privacy_pipeline.Tick", TICK))],
    }
    _, decoded = serde.decode(serde.encode("SubjectBatch", batch))
    assert [i["event"] for i in decoded["items"]] == [TICK, TICK]


@pytest.mark.parametrize("label", ["customer", "order", "click"])
def test_tagged_record_round_trip(serde: AvroSerde, label: str) -> None:
    event = EVENTS[label]
    tagged = {
        "decision": "tag",
        "event_id": event["event_id"],
        "controller": event["controller"],
        "subject_id": event["subject_id"],
        "type": event["type"],
        "purposes": [
            {
                "purpose": "contract",
                "legal_basis": "contract",
                "expires_at": "2029-05-01T10:00:00Z",
                "rule": "inrego.contract",
            },
            {
                "purpose": "direct_marketing",
                "legal_basis": "legitimate_interest",
                "expires_at": None,
                "rule": "inrego.marketing",
            },
        ],
        "suppressed": [{"purpose": "analytics", "reason": "objection"}],
        "policy_version": "inrego@2024-05-01",
        "record": event_to_avro(event)[1],
    }
    name, decoded = serde.decode(serde.encode("TaggedRecord", tagged))
    assert name == "TaggedRecord"
    assert decoded == tagged
    assert avro_to_event(decoded["record"]) == event


def test_downstream_records_round_trip(serde: AvroSerde) -> None:
    command = {
        "command_id": "cmd-3f2a",
        "controller": "inrego",
        "subject_id": "cust-42",
        "target": "crm",
        "action": "anonymize",
        "purposes": ["account"],
        "categories": ["identity", "contact"],
        "reason": "retention_expired",
        "rule": "inrego.account",
        "issued_at": "2029-05-01T10:00:00Z",
        "deadline": "2029-06-01T10:00:00Z",
        "policy_version": "inrego@2024-05-01",
    }
    _, decoded = serde.decode(serde.encode("ErasureCommand", command))
    # A writer that knows only the original contract fields: the extensions get defaults.
    assert decoded == {
        **command,
        "decision": "erasure",
        "recorded_before": None,
        "due_at": None,
        "request_id": None,
        "attempt": 1,
        "signature": None,
    }

    ack = {
        "command_id": "cmd-3f2a",
        "target": "crm",
        "status": "done",
        "completed_at": "2029-05-01T10:00:02Z",
    }
    assert serde.decode(serde.encode("ErasureAck", ack)) == (
        "ErasureAck",
        {**ack, "detail": None, "attempt": 1, "retryable": False, "rows": {}},
    )

    audit = {
        "decision": "erasure",
        "controller": "inrego",
        "subject_ref": "h:9f86d081",
        "event_id": None,
        "at": "2029-05-01T10:00:00Z",
        "payload_json": canonical(command),
    }
    assert serde.decode(serde.encode("AuditRecord", audit)) == ("AuditRecord", audit)

    dead = {
        "original": b"\x00\xffnot avro",
        "reason": "undecodable",
        "error": "undecodable: not Avro single-object encoding",
        "source_topic": "clicks",
        "source_partition": 2,
        "source_offset": 1234567890123,
        "at": "2024-05-01T10:00:00Z",
        "key": b"inrego:cust-42",
    }
    assert serde.decode(serde.encode("DeadLetter", dead)) == ("DeadLetter", dead)
    assert serde.decode(serde.encode("Tick", TICK)) == ("Tick", TICK)


# ----------------------------------------------------------------------- wire format


@pytest.mark.parametrize(
    ("name", "file"),
    [("ClickEvent", "click_event.avsc"), ("ErasureCommand", "erasure_command.avsc")],
)
def test_single_object_header(serde: AvroSerde, name: str, file: str) -> None:
    record = (
        event_to_avro(EVENTS["click"])[1]
        if name == "ClickEvent"
        else {
            "command_id": "c",
            "controller": "rego",
            "subject_id": "s",
            "target": "t",
            "action": "erase",
            "purposes": [],
            "categories": [],
            "reason": "erasure_request",
            "rule": "r",
            "issued_at": "2024-01-01T00:00:00Z",
            "deadline": "2024-02-01T00:00:00Z",
            "policy_version": "v",
        }
    )
    data = serde.encode(name, record)
    assert data[:2] == b"\xc3\x01"
    # fastavro's own fingerprint of the canonical form of the file as shipped
    outside = fastavro.parse_schema(json.loads((SCHEMA_DIR / file).read_text(encoding="utf-8")))
    pcf = to_parsing_canonical_form(outside)
    assert data[2:10] == bytes.fromhex(fingerprint(pcf, "CRC-64-AVRO"))
    # and the spec's algorithm, written as a little-endian 64-bit value
    assert data[2:10] == crc64_avro(pcf.encode()).to_bytes(8, "little")
    assert serde.fingerprint(name) == data[2:10]
    assert serde.canonical_form(name) == pcf


def test_crc64_avro_matches_the_spec_test_vector() -> None:
    # Avro's schema-tests: the fingerprint of "null" is 7195948357588979594 (Java long).
    assert crc64_avro(b'"null"') == 7195948357588979594
    assert bytes.fromhex(fingerprint('"null"', "CRC-64-AVRO")) == (7195948357588979594).to_bytes(
        8, "little"
    )


def test_outside_consumer_decodes_with_only_the_avsc(serde: AvroSerde) -> None:
    """A consumer without our code: strip the 10-byte header, read with the .avsc."""
    event = EVENTS["click"]
    data = serde.encode(*event_to_avro(event))
    schema = fastavro.parse_schema(
        json.loads((SCHEMA_DIR / "click_event.avsc").read_text(encoding="utf-8"))
    )
    record: Any = fastavro.schemaless_reader(io.BytesIO(data[10:]), schema)
    assert {k: v for k, v in record.items() if v is not None} == event


def test_outside_consumer_decodes_a_batch_with_the_avsc_files(serde: AvroSerde) -> None:
    """Schemas that refer to others load with fastavro's load_schema_ordered, and give the
    same canonical form and fingerprint as ours."""
    files = [
        "customer_event.avsc",
        "order_event.avsc",
        "click_event.avsc",
        "consent_event.avsc",
        "privacy_request.avsc",
        "tick.avsc",
        "erasure_ack.avsc",
        "subject_item.avsc",
        "subject_batch.avsc",
    ]
    schema = load_schema_ordered([str(SCHEMA_DIR / f) for f in files])
    pcf = to_parsing_canonical_form(schema)
    assert pcf == serde.canonical_form("SubjectBatch")
    batch = {
        "batch_id": "b",
        "produced_at_ms": 5,
        "items": [item(event_to_avro(EVENTS["order"])[1]), item(TICK, 1)],
    }
    data = serde.encode("SubjectBatch", batch)
    assert data[2:10] == bytes.fromhex(fingerprint(pcf, "CRC-64-AVRO"))
    assert fastavro.schemaless_reader(io.BytesIO(data[10:]), schema) == batch


def test_standalone_schema_is_self_contained(serde: AvroSerde) -> None:
    standalone = serde.schema("TaggedRecord")
    text = json.dumps(standalone)
    assert '"privacy.category"' in text  # annotations kept
    parsed: Any = fastavro.parse_schema(standalone)  # no other file needed
    tagged_fields = [f["name"] for f in parsed["fields"]]
    assert tagged_fields[-1] == "record"


# ------------------------------------------------------------------ schema evolution


@pytest.fixture()
def evolved_dir(tmp_path: Path) -> Path:
    """A copy of the schemas where ClickEvent gained an optional `referrer`."""
    target = tmp_path / "schemas"
    shutil.copytree(SCHEMA_DIR, target)
    path = target / "click_event.avsc"
    schema = json.loads(path.read_text(encoding="utf-8"))
    schema["fields"].append(
        {
            "name": "referrer",
            "type": ["null", "string"],
            "default": None,
            "doc": "The referring page.",
            "confluent:tags": ["PII"],
            "privacy.category": "technical",
        }
    )
    path.write_text(json.dumps(schema), encoding="utf-8")
    return target


def test_new_writer_old_reader(serde: AvroSerde, evolved_dir: Path) -> None:
    new = AvroSerde(evolved_dir)
    assert new.fingerprint("ClickEvent") != serde.fingerprint("ClickEvent")
    record = {**event_to_avro(EVENTS["click"])[1], "referrer": "https://search.example/"}
    data = new.encode("ClickEvent", record)

    old = AvroSerde()
    with pytest.raises(RecordError) as info:
        old.decode(data)  # readers must be given the new schema before producers use it
    assert info.value.reason == "unknown_schema"

    assert old.add_writer_schema(new.schema("ClickEvent")) == "ClickEvent"
    name, decoded = old.decode(data, reader_schema="ClickEvent")
    assert name == "ClickEvent"
    assert decoded == event_to_avro(EVENTS["click"])[1]  # the new field is skipped


def test_old_writer_new_reader(serde: AvroSerde, evolved_dir: Path) -> None:
    data = serde.encode(*event_to_avro(EVENTS["click"]))
    new = AvroSerde(evolved_dir)
    new.add_writer_schema(json.dumps(serde.schema("ClickEvent")))
    name, decoded = new.decode(data, reader_schema="ClickEvent")
    assert name == "ClickEvent"
    assert decoded == {**event_to_avro(EVENTS["click"])[1], "referrer": None}
    # without a reader schema, the record comes back as written
    assert new.decode(data)[1] == event_to_avro(EVENTS["click"])[1]


def test_old_batches_read_with_new_nested_schema(serde: AvroSerde, evolved_dir: Path) -> None:
    click = event_to_avro(EVENTS["click"])[1]
    data = serde.encode(
        "SubjectBatch", {"batch_id": "b", "produced_at_ms": 1, "items": [item(click)]}
    )
    new = AvroSerde(evolved_dir)
    new.add_writer_schema(serde.schema("SubjectBatch"))
    _, decoded = new.decode(data, reader_schema="SubjectBatch")
    assert decoded["items"][0]["event"] == {**click, "referrer": None}


def test_incompatible_reader_schema(serde: AvroSerde) -> None:
    data = serde.encode(*event_to_avro(EVENTS["click"]))
    with pytest.raises(RecordError) as info:
        serde.decode(data, reader_schema="OrderEvent")
    assert info.value.reason == "incompatible_schema"


# ------------------------------------------------------------------------------ errors


def _valid_click(serde: AvroSerde) -> bytes:
    return serde.encode(*event_to_avro(EVENTS["click"]))


@pytest.mark.parametrize(
    "make",
    [
        lambda good: b"",
        lambda good: b"\xc3",
        lambda good: b"\x00\x00\x00\x00\x01garbage",  # Confluent framing is not ours
        lambda good: b'{"type": "click"}',
        lambda good: good[:10],  # header only
        lambda good: good[:-5],  # truncated body
        lambda good: good + b"\x00",  # trailing bytes
        lambda good: good[:10] + b"\xff" * 40,
    ],
)
def test_garbage_is_undecodable(serde: AvroSerde, make: Any) -> None:
    with pytest.raises(RecordError) as info:
        serde.decode(make(_valid_click(serde)))
    assert info.value.reason == "undecodable"
    assert info.value.__cause__ is None


def test_random_bodies_never_escape_as_other_errors(serde: AvroSerde) -> None:
    rng = random.Random(7)
    header = _valid_click(serde)[:10]
    for _ in range(2000):
        body = bytes(rng.randrange(256) for _ in range(rng.randrange(0, 80)))
        try:
            serde.decode(header + body)
        except RecordError as exc:
            assert exc.reason == "undecodable"


def test_unknown_fingerprint(serde: AvroSerde) -> None:
    data = _valid_click(serde)
    with pytest.raises(RecordError) as info:
        serde.decode(data[:2] + b"\x01\x02\x03\x04\x05\x06\x07\x08" + data[10:])
    assert info.value.reason == "unknown_schema"


def test_decode_accepts_memoryview(serde: AvroSerde) -> None:
    data = _valid_click(serde)
    assert serde.decode(memoryview(data)) == serde.decode(bytearray(data))


@pytest.mark.parametrize(
    ("schema", "record", "field"),
    [
        ("ClickEvent", {**event_to_avro(EVENTS["click"])[1], "ip": 2130706433}, "ip"),
        ("ClickEvent", {**event_to_avro(EVENTS["click"])[1], "email": PERSONAL}, "email"),
        ("ClickEvent", {**event_to_avro(EVENTS["click"])[1], "anonymous_id": 1}, "anonymous_id"),
        (
            "CustomerEvent",
            {
                **event_to_avro(EVENTS["customer"])[1],
                "fields": {"name": PERSONAL, "address": {"street": PERSONAL}},
            },
            "fields.address",
        ),
        (
            "SubjectBatch",
            {
                "batch_id": "b",
                "produced_at_ms": 1,
                "items": [
                    item(TICK),
                    item({**event_to_avro(EVENTS["order"])[1], "order_id": None}),
                ],
            },
            "items[1].event.order_id",
        ),
    ],
)
def test_invalid_records_name_the_field_not_the_value(
    serde: AvroSerde, schema: str, record: dict[str, Any], field: str
) -> None:
    with pytest.raises(RecordError) as info:
        serde.encode(schema, record)
    assert info.value.reason == "invalid_record"
    assert info.value.field == field
    assert field in str(info.value)
    assert PERSONAL not in str(info.value)
    assert "2130706433" not in str(info.value)
    assert info.value.__cause__ is None and info.value.__suppress_context__


def test_missing_required_field_is_named(serde: AvroSerde) -> None:
    record = {k: v for k, v in event_to_avro(EVENTS["click"])[1].items() if k != "subject_id"}
    with pytest.raises(RecordError) as info:
        serde.encode("ClickEvent", record)
    assert (info.value.reason, info.value.field) == ("invalid_record", "subject_id")


def test_unknown_schema_name(serde: AvroSerde) -> None:
    with pytest.raises(RecordError) as info:
        serde.encode("NoSuchRecord", {})
    assert info.value.reason == "unknown_schema"


def test_full_names_are_accepted(serde: AvroSerde) -> None:
    data = serde.encode("privacy_pipeline.Tick", TICK)
    assert serde.decode(data, reader_schema="privacy_pipeline.Tick") == ("Tick", TICK)


# ----------------------------------------------------------------- data categories


@pytest.mark.parametrize(
    ("schema", "field", "category"),
    [
        ("ClickEvent", "ip", "technical"),
        ("ClickEvent", "url", "technical"),
        ("ClickEvent", "user_agent", "technical"),
        ("ClickEvent", "anonymous_id", "technical"),
        ("OrderEvent", "order_id", "order"),
        ("OrderEvent", "amount", "order"),
        ("OrderEvent", "currency", "order"),
        ("CustomerEvent", "fields", "mixed"),
        *[(name, "subject_id", "identity") for name in sorted(EVENT_SCHEMAS.values())],
        ("TaggedRecord", "subject_id", "identity"),
        ("ErasureCommand", "subject_id", "identity"),
        ("SubjectItem", "key", "identity"),
    ],
)
def test_personal_data_is_annotated(schema: str, field: str, category: str) -> None:
    snake = re.sub(r"(?<!^)(?=[A-Z])", "_", schema).lower()
    raw = json.loads((SCHEMA_DIR / f"{snake}.avsc").read_text(encoding="utf-8"))
    (spec,) = [f for f in raw["fields"] if f["name"] == field]
    assert spec["confluent:tags"] == ["PII"]
    assert spec["privacy.category"] == category


def test_fields_map_documents_its_keys() -> None:
    raw = json.loads((SCHEMA_DIR / "customer_event.avsc").read_text(encoding="utf-8"))
    (spec,) = [f for f in raw["fields"] if f["name"] == "fields"]
    doc = spec["doc"]
    for key in ("name", "email", "phone", "address", "personnummer", "customer_type"):
        assert key in doc
    assert "contact" in doc and "identity" in doc and "account" in doc


def test_non_personal_fields_are_not_tagged() -> None:
    raw = json.loads((SCHEMA_DIR / "click_event.avsc").read_text(encoding="utf-8"))
    tagged = {f["name"] for f in raw["fields"] if "confluent:tags" in f}
    assert tagged == {"subject_id", "url", "ip", "user_agent", "anonymous_id"}
