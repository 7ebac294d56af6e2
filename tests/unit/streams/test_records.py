"""Wire records built from decisions, and the subject-log placement every producer shares."""

from __future__ import annotations

import copy
import json
import re
from pathlib import Path

import pytest
from aiokafka.partitioner import murmur2

from privacy_pipeline.streams.records import (
    audit_record,
    erasure_command,
    subject_partition,
    subject_ref,
    tagged_record,
)
from privacy_pipeline.streams.serde import AvroSerde, event_to_avro
from privacy_pipeline.streams.signing import CommandSigner, CommandVerifier

SERDE = AvroSerde()

KEYS = [
    "inrego:s1",
    "inrego:s2",
    "rego:cust-42",
    "rejoin:19790101-1234",
    "iret:anna@example.se",
    "unnamed004:Åsa Öberg",
    "x:",
    *(f"inrego:visitor-{n}" for n in range(200)),
]

ERASURE: dict = {
    "decision": "erasure",
    "command_id": "17477d80-ec2a-5503-abca-bbe483673929",
    "controller": "inrego",
    "subject_id": "s1",
    "target": "business-systems",
    "action": "erase",
    "purposes": ["direct_marketing"],
    "categories": ["contact"],
    "reason": "objection",
    "rule": "inrego.rights.objection",
    "issued_at": "2024-02-01T09:00:00Z",
    "deadline": "2024-02-02T09:00:00Z",
}


# -- subject_partition ----------------------------------------------------------------------


@pytest.mark.parametrize("partitions", [1, 2, 3, 8, 12, 64])
def test_subject_partition_is_the_murmur2_placement(partitions: int) -> None:
    for key in KEYS:
        expected = (murmur2(key.encode()) & 0x7FFFFFFF) % partitions
        assert subject_partition(key, partitions) == expected
        assert 0 <= expected < partitions


def test_subject_partition_matches_the_java_client() -> None:
    # Kafka's UtilsTest.testMurmur2 vectors (signed 32-bit), placed as Java's
    # DefaultPartitioner does: toPositive(murmur2(key)) % partitions.
    vectors = {
        "21": -973932308,
        "foobar": -790332482,
        "a-little-bit-long-string": -985981536,
        "a-little-bit-longer-string": -1486304829,
        "lkjh234lh9fiuh90y23oiuhsafujhadof229phr9h19h89h8": -58897971,
        "abc": 479470107,
    }
    for key, java in vectors.items():
        for partitions in (1, 3, 7, 12, 100):
            assert subject_partition(key, partitions) == (java & 0x7FFFFFFF) % partitions
    assert subject_partition("21", 100) == 40
    assert subject_partition("foobar", 12) == 6


def test_subject_partition_is_stable() -> None:
    first = {key: subject_partition(key, 12) for key in KEYS}
    subject_partition.cache_clear()
    assert {key: subject_partition(key, 12) for key in KEYS} == first
    assert {key: subject_partition(key, 12) for key in KEYS} == first
    # Spread: 207 keys do not all land on one partition.
    assert len(set(first.values())) > 6


# -- subject_ref ----------------------------------------------------------------------------


def test_subject_ref_hides_the_subject_id() -> None:
    # Ids with a character outside [0-9a-f], so they cannot turn up in a hex digest by chance.
    for subject in ["s1", "19790101-1234", "anna@example.se", "Åsa Öberg", "cust-0042"]:
        ref = subject_ref("inrego", subject)
        assert ref is not None
        assert re.fullmatch(r"inrego:[0-9a-f]{16}", ref)
        assert subject not in ref.split(":", 1)[1]
        assert subject not in ref.removeprefix("inrego:")


def test_subject_ref_is_deterministic_and_distinguishes_subjects_and_controllers() -> None:
    assert subject_ref("inrego", "s1") == subject_ref("inrego", "s1")
    assert subject_ref("inrego", "s1") == "inrego:b404074964e90ea1"
    refs = {subject_ref("inrego", f"s{n}") for n in range(500)}
    assert len(refs) == 500
    assert subject_ref("inrego", "s1") != subject_ref("rego", "s1")
    assert subject_ref("rego", "s1") is not None
    assert subject_ref("rego", "s1").startswith("rego:")  # type: ignore[union-attr]


def test_subject_ref_of_a_missing_part_is_none() -> None:
    assert subject_ref(None, "s1") is None
    assert subject_ref("inrego", None) is None
    assert subject_ref(None, None) is None


# -- tagged_record --------------------------------------------------------------------------


def test_tagged_record_carries_the_tag_and_the_record() -> None:
    event = {
        "event_id": "c-1",
        "type": "click",
        "controller": "inrego",
        "subject_id": "s1",
        "occurred_at": "2024-01-10T10:00:00+01:00",
        "url": "https://example.se/",
        "ip": "192.0.2.10",
        "user_agent": "Mozilla/5.0",
    }
    record = event_to_avro(event)[1]
    decision = {
        "decision": "tag",
        "event_id": "c-1",
        "controller": "inrego",
        "subject_id": "s1",
        "purposes": [
            {
                "purpose": "analytics",
                "legal_basis": "legitimate_interest",
                "expires_at": "2026-01-10T09:00:00Z",
                "rule": "inrego.analytics.web-visits",
            }
        ],
        "suppressed": [{"purpose": "direct_marketing", "reason": "objection"}],
    }
    tagged = tagged_record(decision, "click", record, "inrego@2023-10")
    assert tagged == {
        **decision,
        "type": "click",
        "policy_version": "inrego@2023-10",
        "record": record,
    }
    name, decoded = SERDE.decode(SERDE.encode("TaggedRecord", tagged))
    assert name == "TaggedRecord"
    assert decoded == tagged


# -- erasure_command ------------------------------------------------------------------------


def test_erasure_command_adds_policy_version_and_the_optional_fields() -> None:
    original = copy.deepcopy(ERASURE)
    command = erasure_command(ERASURE, "inrego@2023-10")
    assert command == {
        **ERASURE,
        "policy_version": "inrego@2023-10",
        "recorded_before": None,
        "due_at": None,
        "request_id": None,
        "attempt": 1,
        "signature": None,
    }
    assert ERASURE == original  # the decision itself is left alone
    name, decoded = SERDE.decode(SERDE.encode("ErasureCommand", command))
    assert name == "ErasureCommand"
    assert decoded == command


def test_erasure_command_keeps_a_recorded_before() -> None:
    decision = {**ERASURE, "reason": "retention_expired", "recorded_before": "2024-01-10T09:00:00Z"}
    command = erasure_command(decision, "inrego@2023-10")
    assert command["recorded_before"] == "2024-01-10T09:00:00Z"
    assert command["policy_version"] == "inrego@2023-10"
    assert SERDE.decode(SERDE.encode("ErasureCommand", command))[1] == command


def test_a_signed_command_verifies_and_a_changed_one_does_not(tmp_path: Path) -> None:
    signer = CommandSigner.from_secrets(tmp_path)
    command = erasure_command(ERASURE, "inrego@2023-10", signer)
    assert isinstance(command["signature"], bytes) and len(command["signature"]) == 64
    decoded = SERDE.decode(SERDE.encode("ErasureCommand", command))[1]
    verifier = CommandVerifier.from_secrets(tmp_path)  # the .pub the worker wrote
    assert verifier.verify(decoded)
    assert not verifier.verify({**decoded, "subject_id": "s2"})
    assert not verifier.verify({**decoded, "attempt": 2})
    assert not verifier.verify({**decoded, "signature": None})
    other = CommandSigner.from_secrets(tmp_path / "other")
    assert not verifier.verify(erasure_command(ERASURE, "inrego@2023-10", other))


# -- audit_record ---------------------------------------------------------------------------


def test_audit_record_payload_round_trips_the_decision() -> None:
    audit = audit_record(ERASURE, "2024-05-29T16:26:40Z")
    assert audit == {
        "decision": "erasure",
        "controller": "inrego",
        "subject_ref": subject_ref("inrego", "s1"),
        "event_id": None,
        "at": "2024-05-29T16:26:40Z",
        "payload_json": audit["payload_json"],
    }
    assert json.loads(audit["payload_json"]) == ERASURE
    assert list(json.loads(audit["payload_json"])) == list(ERASURE)  # key order kept
    assert " " not in audit["payload_json"].replace("direct_marketing", "")  # compact
    name, decoded = SERDE.decode(SERDE.encode("AuditRecord", audit))
    assert name == "AuditRecord"
    assert decoded == audit


def test_audit_record_of_a_tag_and_of_non_ascii() -> None:
    tag = {
        "decision": "tag",
        "event_id": "e-1",
        "controller": "unnamed004",
        "subject_id": "Åsa",
        "purposes": [],
        "suppressed": [],
    }
    audit = audit_record(tag, "2024-05-29T16:26:40Z")
    assert audit["event_id"] == "e-1"
    assert audit["subject_ref"] == subject_ref("unnamed004", "Åsa")
    assert "Åsa" in audit["payload_json"]  # UTF-8 text, not \\u escapes
    assert json.loads(audit["payload_json"]) == tag
    assert SERDE.decode(SERDE.encode("AuditRecord", audit))[1] == audit


def test_audit_record_of_a_reject_has_no_subject() -> None:
    reject = {"decision": "reject", "line": 3, "event_id": None, "error": "not valid JSON"}
    audit = audit_record(reject, "2024-05-29T16:26:40Z")
    assert audit["controller"] is None
    assert audit["subject_ref"] is None
    assert audit["event_id"] is None
    assert json.loads(audit["payload_json"]) == reject
