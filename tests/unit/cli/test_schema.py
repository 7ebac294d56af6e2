"""`privacy-pipeline schema`: the input events can be found from the command line.

The examples make one story for Inrego (seed 001): a customer, an order, a visit, a
withdrawal of e-mail marketing and an erasure request. Run through `evaluate`, each gets
what the policy says: the visit's technical data kept 24 months from the visit (§2.4),
the withdrawal ends direct marketing at once (rights: objection), the request erases.
"""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from privacy_pipeline.cli.main import main
from privacy_pipeline.processors.events import EXAMPLE_EVENTS, parse_event
from privacy_pipeline.streams.serde import AvroSerde, avro_to_event, event_to_avro

TYPES = ["customer", "order", "click", "consent", "privacy_request"]


def run(*args: str) -> str:
    result = CliRunner().invoke(main, list(args))
    assert result.exit_code == 0, result.output
    return result.output


def test_every_type_has_a_topic_a_schema_file_and_an_example() -> None:
    out = run("schema")
    for kind, topic, schema in [
        ("customer", "customers", "customer_event.avsc"),
        ("order", "orders", "order_event.avsc"),
        ("click", "clicks", "click_event.avsc"),
        ("consent", "consents", "consent_event.avsc"),
        ("privacy_request", "privacy-requests", "privacy_request.avsc"),
    ]:
        line = next(ln for ln in out.splitlines() if ln.split()[:1] == [kind])
        assert line.split()[1:] == ["topic", topic, "schema", f"schemas/{schema}"]
    assert sorted(EXAMPLE_EVENTS) == sorted(TYPES)


@pytest.mark.parametrize("kind", TYPES)
def test_each_example_is_valid_and_survives_avro(kind: str) -> None:
    [line] = run("schema", kind, "--example").splitlines()
    event = json.loads(line)
    assert parse_event(event).type == kind
    serde = AvroSerde()
    name, record = event_to_avro(event)
    assert avro_to_event(serde.decode(serde.encode(name, record))[1]) == event


def test_a_type_lists_its_fields_and_marks_personal_data() -> None:
    out = run("schema", "click")
    assert out.splitlines()[0] == "click: topic clicks, Avro schema schemas/click_event.avsc"
    for field, mark in [
        ("url", " [personal data: technical]"),
        ("ip", " [personal data: technical]"),
        ("subject_id", " [personal data: identity]"),
        ("event_id", ""),
    ]:
        assert f"  {field}{mark}" in out.splitlines()
    assert out.splitlines()[-1] == json.dumps(EXAMPLE_EVENTS["click"], ensure_ascii=False)


def test_the_examples_evaluate_as_inrego_s_policy_says() -> None:
    events = run("schema", "--example")
    result = CliRunner().invoke(main, ["evaluate", "--events", "-", "--no-summary"], input=events)
    assert result.exit_code == 0, result.output
    decisions = [json.loads(line) for line in result.output.splitlines()]
    click_tag = next(d for d in decisions if d.get("event_id") == "k-3001")
    # §2.4: at most 24 months from the visit (14:25 Stockholm time = 13:25Z).
    assert [(p["purpose"], p["expires_at"]) for p in click_tag["purposes"]] == [
        ("analytics", "2028-03-05T13:25:00Z")
    ]
    objection = {d["target"] for d in decisions if d.get("reason") == "objection"}
    assert objection == {"business-systems", "it-service-providers", "marketing-services"}
    erased = {d["target"] for d in decisions if d.get("request_id") == "REQ-42"}
    assert {"business-systems", "web-analytics", "it-service-providers", "logistics"} <= erased
