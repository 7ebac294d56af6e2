"""The live pipeline (`privacy-pipeline run`) end to end on the embedded broker.

Each test starts its own worker subprocess under its own topic prefix, publishes events
the way a producer service does, and reads the output topics as a downstream system does.
"""

from __future__ import annotations

import base64
import json
import re
import signal
import subprocess
import time
from datetime import UTC, datetime, timedelta
from io import BytesIO
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from dateutil.relativedelta import relativedelta
from fastavro import parse_schema, schemaless_writer
from fastavro.schema import fingerprint, to_parsing_canonical_form
from worker_process import (
    INPUT_TOPIC_OF,
    SERDE,
    TAGGED_TOPIC_OF,
    TAGGED_TOPICS,
    MakeTopics,
    Readers,
    StartWorker,
    alive,
    child_env,
    children_of,
    cli,
    cli_path,
    click,
    consent,
    customer,
    evaluate,
    expected_command,
    order,
    policy_versions,
    produce_file,
    request,
    send_raw,
    strip_signature,
    write_events,
)

from privacy_pipeline.processors.enforcer import PolicyEnforcer
from privacy_pipeline.processors.policy import load_packs, packaged_policies
from privacy_pipeline.processors.replay import Replay
from privacy_pipeline.streams.serde import MAGIC, event_to_avro


def decisions_of(lines: list[str]) -> list[dict[str, Any]]:
    return [json.loads(line) for line in lines]


def expected_tagged(
    decision: dict[str, Any], event: dict[str, Any], versions: dict[str, str]
) -> dict[str, Any]:
    """The TaggedRecord a downstream system must read for an evaluate tag decision."""
    return {
        **decision,
        "type": event["type"],
        "policy_version": versions[event["controller"]],
        "record": event_to_avro(event)[1],
    }


# -- 1. live equals offline -----------------------------------------------------------


def mixed_scenario(now: datetime) -> list[dict[str, Any]]:
    """Three subjects of three controllers over the last three hours, sorted by time."""

    def ago(minutes: int) -> datetime:
        return now - timedelta(minutes=minutes)

    events = [
        # inrego: account, visits, an invoiced order, an objection to direct marketing,
        # later records (marketing suppressed), an access request
        customer("inrego", "alice", ago(170)),
        click("inrego", "alice", ago(165)),
        order("inrego", "alice", ago(160), order_id="A-1"),
        order("inrego", "alice", ago(158), "invoiced", order_id="A-1"),
        consent("inrego", "alice", ago(120), "object"),
        click("inrego", "alice", ago(110), url="/kampanj"),
        customer("inrego", "alice", ago(100), "updated"),
        request("inrego", "alice", ago(90), "access"),
        order("inrego", "alice", ago(80), order_id="A-2"),
        # rego: consent granted then withdrawn, an invoice, then an erasure request
        customer("rego", "bob", ago(175)),
        consent("rego", "bob", ago(174), "grant"),
        click("rego", "bob", ago(150)),
        order("rego", "bob", ago(140), order_id="B-1"),
        order("rego", "bob", ago(139), "invoiced", order_id="B-1"),
        consent("rego", "bob", ago(100), "withdraw"),
        click("rego", "bob", ago(95)),
        order("rego", "bob", ago(60), order_id="B-2"),
        request("rego", "bob", ago(30), "erasure"),
        # rejoin: purchase, customer-service contact, objection, erasure request
        customer("rejoin", "carl", ago(172)),
        order("rejoin", "carl", ago(150), order_id="C-1"),
        order("rejoin", "carl", ago(149), "invoiced", order_id="C-1"),
        click("rejoin", "carl", ago(130)),
        customer("rejoin", "carl", ago(70), "contacted"),
        consent("rejoin", "carl", ago(50), "object"),
        click("rejoin", "carl", ago(45)),
        request("rejoin", "carl", ago(20), "erasure"),
    ]
    return sorted(events, key=lambda e: e["occurred_at"])


def test_live_decisions_equal_evaluate(
    broker: str,
    topic_prefix: str,
    tmp_path: Path,
    make_topics: MakeTopics,
    start_worker: StartWorker,
    readers: Readers,
) -> None:
    now = datetime.now(UTC).replace(microsecond=0)
    events = mixed_scenario(now)
    path = write_events(tmp_path / "scenario.jsonl", events)
    offline_lines = evaluate(path)
    offline = decisions_of(offline_lines)
    by_id = {e["event_id"]: e for e in events}
    versions = policy_versions()

    want_tags = {d["event_id"]: d for d in offline if d["decision"] == "tag"}
    want_commands = {d["command_id"]: d for d in offline if d["decision"] == "erasure"}
    assert len(want_tags) == sum(d["decision"] == "tag" for d in offline)
    assert len(want_commands) == sum(d["decision"] == "erasure" for d in offline)
    # the scenario exercises what it claims to
    assert {d["reason"] for d in want_commands.values()} >= {"objection", "erasure_request"}
    assert any(d["decision"] == "extract" for d in offline)
    assert any(
        s["purpose"] == "direct_marketing" for d in want_tags.values() for s in d["suppressed"]
    )
    assert not [d for d in offline if d["decision"] == "reject"]

    make_topics(1)
    # Everything is in the input topics before the worker starts, so ingest reads it
    # in one micro-batch, in occurred_at order, as evaluate does.
    produced = produce_file(broker, topic_prefix, path)
    assert f"delivered {len(events)} of {len(events)} events" in produced.stderr
    # evaluate has no tracker: nobody answers offline, and the scenario's event times jump
    # years, so the tracker's waits would run out on them without ticks.
    start_worker(partitions=1, tick_interval=0, extra_args=["--ack-timeout", "0"])

    def complete() -> bool:
        tagged = sum(len(readers[t].records) for t in TAGGED_TOPICS)
        return (
            tagged >= len(want_tags)
            and len(readers["erasure-commands"].records) >= len(want_commands)
            and len(readers["audit"].records) >= len(offline) - len(want_tags)
        )

    readers.wait(
        [*TAGGED_TOPICS, "erasure-commands", "audit", "dead-letters"],
        complete,
        timeout=60,
        what="the scenario's decisions",
        settle=1.5,
    )

    # the precondition of live == offline: enforce saw the events in time order
    readers.wait(["subject-log"], lambda: True, timeout=1, what="", settle=1.0)
    logged = [
        item["event"]
        for batch in readers["subject-log"].values()
        for item in batch["items"]
        if item["event"] is not None and "ticker_id" not in item["event"]
    ]
    assert sorted(e["event_id"] for e in logged) == sorted(by_id)
    times = [e["occurred_at"] for e in logged]
    assert times == sorted(times), "ingest put the events out of time order"

    # tagged records: exactly one per tagged event, on the topic of its type
    seen: dict[str, dict[str, Any]] = {}
    for topic in TAGGED_TOPICS:
        for rec in readers[topic].records:
            tag = rec.value
            assert tag is not None, f"undecodable record on {topic}"
            assert tag["event_id"] not in seen, f"tagged twice: {tag['event_id']}"
            seen[tag["event_id"]] = tag
            event = by_id[tag["event_id"]]
            assert topic == TAGGED_TOPIC_OF[event["type"]]
            assert rec.key_text == f"{event['controller']}:{event['subject_id']}"
    assert set(seen) == set(want_tags)
    for event_id, decision in want_tags.items():
        assert seen[event_id] == expected_tagged(decision, by_id[event_id], versions)

    # erasure commands: exactly evaluate's erasure decisions, plus policy_version
    commands: dict[str, dict[str, Any]] = {}
    for rec in readers["erasure-commands"].records:
        cmd = rec.value
        assert cmd is not None
        assert cmd["command_id"] not in commands, f"issued twice: {cmd['command_id']}"
        commands[cmd["command_id"]] = cmd
        assert rec.key_text == f"{cmd['controller']}:{cmd['subject_id']}"
    assert set(commands) == set(want_commands)
    for command_id, decision in want_commands.items():
        assert strip_signature(commands[command_id]) == expected_command(decision, versions)

    # audit: every decision that is not a tag, as evaluate's exact line
    audited = sorted(a["payload_json"] for a in readers["audit"].values())
    assert audited == sorted(
        line for line in offline_lines if json.loads(line)["decision"] != "tag"
    )
    assert readers["dead-letters"].records == []


# -- 2. bad input goes to dead letters, the stream goes on ------------------------------


def _encode_with(schema: dict[str, Any], record: dict[str, Any], header: bytes | None) -> bytes:
    """Avro single-object encoding with a hand-made writer schema (its own fingerprint
    unless `header` is given)."""
    parsed = parse_schema(schema)
    if header is None:
        fp = fingerprint(to_parsing_canonical_form(schema), "CRC-64-AVRO")
        header = MAGIC + bytes.fromhex(fp)
    out = BytesIO()
    out.write(header)
    schemaless_writer(out, parsed, record)
    return out.getvalue()


def _click_schema(drop: set[str]) -> dict[str, Any]:
    schema = SERDE.schema("ClickEvent")
    schema["fields"] = [f for f in schema["fields"] if f["name"] not in drop]
    return schema


def test_bad_input_goes_to_dead_letters_and_the_stream_goes_on(
    broker: str,
    topic_prefix: str,
    make_topics: MakeTopics,
    start_worker: StartWorker,
    readers: Readers,
) -> None:
    now = datetime.now(UTC).replace(microsecond=0)
    clicks_topic = topic_prefix + "clicks"

    def valid(n: int, minutes_ago: int) -> tuple[bytes, bytes]:
        e = click("inrego", f"visitor-{n}", now - timedelta(minutes=minutes_ago))
        return f"inrego:visitor-{n}".encode(), SERDE.encode("ClickEvent", event_to_avro(e)[1])

    private = "hemlig-person-4711"  # must never appear in an error message
    base = event_to_avro(click("inrego", private, now - timedelta(minutes=30)))[1]
    order_record = event_to_avro(order("inrego", private, now - timedelta(minutes=30)))[1]
    missing_fields = {k: base[k] for k in ("event_id", "type", "controller", "subject_id")}
    missing_fields["occurred_at"] = base["occurred_at"]

    # (key, value, expected reason); None reason = valid
    cases: list[tuple[bytes | None, bytes | None, str | None]] = [
        (*valid(1, 50), None),
        (
            b"inrego:" + private.encode(),
            b"\x00\x01not avro at all \xff" + private.encode(),
            "undecodable",
        ),
        (b"inrego:" + private.encode(), SERDE.encode("OrderEvent", order_record), "wrong_schema"),
        (
            b"acme:" + private.encode(),
            SERDE.encode("ClickEvent", {**base, "controller": "acme-unknown"}),
            "unknown_controller",
        ),
        (*valid(2, 45), None),
        # hand-made: the ClickEvent header, but url, ip and user_agent missing from the body
        (
            b"inrego:" + private.encode(),
            _encode_with(
                _click_schema({"url", "ip", "user_agent", "anonymous_id"}),
                missing_fields,
                header=MAGIC + SERDE.fingerprint("ClickEvent"),
            ),
            "undecodable",
        ),
        # a valid Avro record of a ClickEvent schema without `url`: a writer schema the
        # pipeline does not know (a required field cannot be left out of a known schema)
        (
            b"inrego:" + private.encode(),
            _encode_with(
                _click_schema({"url"}), {k: v for k, v in base.items() if k != "url"}, None
            ),
            "unknown_schema",
        ),
        # required fields present in Avro but empty or malformed as events
        (
            b"inrego:" + private.encode(),
            SERDE.encode("ClickEvent", {**base, "url": ""}),
            "invalid_event",
        ),
        (
            b"inrego:" + private.encode(),
            SERDE.encode("ClickEvent", {**base, "occurred_at": "yesterday " + private}),
            "invalid_event",
        ),
        (
            b"inrego:" + private.encode(),
            SERDE.encode("ClickEvent", {**base, "type": "tap"}),
            "invalid_event",
        ),
        (b"inrego:tombstone", None, "undecodable"),
        (*valid(3, 40), None),
    ]
    bad = [c for c in cases if c[2] is not None]
    good = [c for c in cases if c[2] is None]

    make_topics(4)
    worker = start_worker(partitions=4, tick_interval=1)
    where = send_raw(broker, clicks_topic, [(k, v) for k, v, _ in cases])

    readers.wait(
        ["tagged-clicks", "dead-letters"],
        lambda: (
            len(readers["dead-letters"].records) >= len(bad)
            and len(readers["tagged-clicks"].records) >= len(good)
        ),
        timeout=60,
        what="dead letters and tagged clicks",
        settle=1.0,
    )
    letters = readers["dead-letters"].values()
    assert len(letters) == len(readers["dead-letters"].records) == len(bad)
    by_origin = {(d["source_partition"], d["source_offset"]): d for d in letters}
    assert len(by_origin) == len(bad)
    for (key, value, reason), (partition, offset) in zip(cases, where, strict=True):
        if reason is None:
            continue
        letter = by_origin.get((partition, offset))
        assert letter is not None, f"no dead letter for the {reason} case at {offset}"
        assert letter["reason"] == reason, letter["error"]
        assert letter["source_topic"] == "clicks"
        assert letter["original"] == (value if value is not None else b"")
        assert letter["key"] == key
        assert letter["error"] and private not in letter["error"]
        assert letter["error"] and "acme-unknown" not in letter["error"]

    # records in == records out + dead letters, for the clicks topic
    tagged = readers["tagged-clicks"].values()
    assert len(tagged) + len(letters) == len(cases)
    assert {t["subject_id"] for t in tagged} == {"visitor-1", "visitor-2", "visitor-3"}

    # the worker keeps going: later valid events are still tagged
    later = [valid(n, 10) for n in (4, 5)]
    send_raw(broker, clicks_topic, later)
    readers.wait(
        ["tagged-clicks"],
        lambda: len(readers["tagged-clicks"].records) >= len(good) + len(later),
        timeout=30,
        what="tags of the later valid clicks",
    )
    assert worker.running()
    assert {t["subject_id"] for t in readers["tagged-clicks"].values()} >= {
        "visitor-4",
        "visitor-5",
    }

    # and stops cleanly on SIGTERM
    started = time.monotonic()
    assert worker.stop() == 0, worker.log_tail()
    assert time.monotonic() - started < 15


# -- 3. ticks fire retention timers on the wall clock --------------------------------


def _months_before(instant: datetime, months: int, zone: str = "Europe/Stockholm") -> datetime:
    local = instant.astimezone(ZoneInfo(zone))
    return (local - relativedelta(months=months)).astimezone(UTC)


def test_ticks_fire_a_retention_timer_live(
    broker: str,
    topic_prefix: str,
    make_topics: MakeTopics,
    start_worker: StartWorker,
    readers: Readers,
) -> None:
    analytics_targets = {"web-analytics", "it-service-providers"}
    make_topics(4)
    start_worker(partitions=4, tick_interval=1)

    # A visit 24 months (the Inrego analytics retention) minus a few seconds ago.
    lapse = datetime.now(UTC).replace(microsecond=0) + timedelta(seconds=6)
    visit = click("inrego", "visitor-tick", _months_before(lapse, 24))
    replay = Replay(PolicyEnforcer(load_packs(packaged_policies())))
    [tag] = replay.process_line(1, json.dumps(visit))
    expires = datetime.fromisoformat(tag["purposes"][0]["expires_at"].replace("Z", "+00:00"))
    assert timedelta(0) < expires - datetime.now(UTC) < timedelta(seconds=30)

    send_raw(
        broker,
        topic_prefix + INPUT_TOPIC_OF["click"],
        [(b"inrego:visitor-tick", SERDE.encode("ClickEvent", event_to_avro(visit)[1]))],
    )
    arrivals: list[datetime] = []

    def both_arrived() -> bool:
        if not arrivals and len(readers["erasure-commands"].records) >= 2:
            arrivals.append(datetime.now(UTC))
        return bool(arrivals)

    readers.wait(
        ["erasure-commands", "tagged-clicks"],
        both_arrived,
        timeout=(expires - datetime.now(UTC)).total_seconds() + 10,
        what="retention erasure commands within 10 s of the lapse",
        settle=1.5,
    )
    [arrived] = arrivals
    [live_tag] = readers["tagged-clicks"].values()
    assert live_tag["purposes"] == tag["purposes"]

    commands = readers["erasure-commands"].values()
    assert {c["target"] for c in commands} == analytics_targets
    assert len(commands) == 2
    for c in commands:
        assert (c["controller"], c["subject_id"]) == ("inrego", "visitor-tick")
        assert c["reason"] == "retention_expired"
        assert c["action"] == "erase"
        assert c["purposes"] == ["analytics"]
        assert c["rule"] == "inrego.analytics.web-visits"
        assert c["recorded_before"] == visit["occurred_at"]
        issued = datetime.fromisoformat(c["issued_at"].replace("Z", "+00:00"))
        # fired by a tick: not before the lapse, and within seconds of it
        assert expires <= issued <= expires + timedelta(seconds=5)
        assert issued <= arrived
    assert arrived - expires < timedelta(seconds=10)


# -- 5. tail and produce, as a person uses them -----------------------------------------


def test_tail_prints_erasure_commands_as_json(
    broker: str, topic_prefix: str, make_topics: MakeTopics
) -> None:
    commands = [
        {
            "decision": "erasure",
            "command_id": f"cmd-{i}",
            "controller": "inrego",
            "subject_id": subject,
            "target": "web-analytics",
            "action": "erase",
            "purposes": ["analytics"],
            "categories": ["technical"],
            "reason": "retention_expired",
            "rule": "inrego.analytics.web-visits",
            "issued_at": "2026-01-10T09:00:00Z",
            "deadline": "2026-01-11T09:00:00Z",
            "policy_version": "inrego@2023-10",
            "recorded_before": recorded,
            "due_at": None,
            "request_id": None,
            "attempt": 1,
            "signature": None,
        }
        for i, (subject, recorded) in enumerate(
            [("åsa-1", "2024-01-10T09:00:00Z"), ("bo-2", None), ("cia-3", None)]
        )
    ]
    make_topics(1)
    send_raw(
        broker,
        topic_prefix + "erasure-commands",
        [
            (f"inrego:{c['subject_id']}".encode(), SERDE.encode("ErasureCommand", c))
            for c in commands
        ]
        + [(b"inrego:x", b"not avro")],
    )
    base = ("tail", "--broker", broker, "--prefix", topic_prefix, "erasure-commands")
    result = cli(*base, "--from-beginning", "--timeout", "3")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert [json.loads(line) for line in lines[:3]] == commands
    assert "åsa-1" in lines[0]  # readable text, not escapes
    # Bytes as base64 with their length: exact, and no mojibake on a terminal.
    assert json.loads(lines[3]) == {
        "undecodable": "undecodable",
        "bytes": {"base64": "bm90IGF2cm8=", "length": 8},
    }
    assert len(lines) == 4

    first_two = cli(*base, "--from-beginning", "--max", "2", "--timeout", "10")
    assert first_two.returncode == 0, first_two.stderr
    assert [json.loads(line) for line in first_two.stdout.splitlines()] == commands[:2]

    missing = cli(
        "tail", "--broker", broker, "--prefix", topic_prefix, "no-such-topic", "--timeout", "2"
    )
    assert missing.returncode != 0
    assert "not found" in missing.stderr


def test_tail_reads_the_subject_log_without_ticks_the_changelog_and_dead_letters_bytes(
    broker: str,
    topic_prefix: str,
    make_topics: MakeTopics,
    start_worker: StartWorker,
    readers: Readers,
) -> None:
    make_topics(1)
    start_worker(partitions=1)
    now = datetime.now(UTC).replace(microsecond=0)
    event = click("inrego", "tl-1", now - timedelta(minutes=1))
    junk = b"\xc3\x01 not avro \xff"
    send_raw(
        broker, topic_prefix + "clicks", [(b"inrego:tl-1", SERDE.encode(*event_to_avro(event)))]
    )
    send_raw(broker, topic_prefix + "clicks", [(b"inrego:tl-2", junk)])
    readers.wait(
        ["tagged-clicks", "dead-letters"],
        lambda: bool(readers["tagged-clicks"].records and readers["dead-letters"].records),
        timeout=60,
        what="the click tagged and the junk dead-lettered",
    )
    base = ("tail", "--broker", broker, "--prefix", topic_prefix, "--from-beginning")

    # Ticks arrive every second; they are hidden and do not keep --timeout alive.
    started = time.monotonic()
    log = cli(*base, "subject-log", "--timeout", "3", timeout=60)
    assert log.returncode == 0, log.stderr
    assert time.monotonic() - started < 30
    batches = [json.loads(line) for line in log.stdout.splitlines()]
    items = [i for b in batches for i in b["items"]]
    assert [i["source_topic"] for i in items] == ["clicks"]  # the contract name
    assert items[0]["event"]["event_id"] == event["event_id"]
    with_ticks = cli(*base, "subject-log", "--ticks", "--max", "3", "--timeout", "10")
    assert any(
        i["source_topic"] == "ticker"
        for line in with_ticks.stdout.splitlines()
        for i in json.loads(line)["items"]
    )

    dead = cli(*base, "dead-letters", "--timeout", "3")
    [letter] = [json.loads(line) for line in dead.stdout.splitlines()]
    assert letter["original"] == {"base64": base64.b64encode(junk).decode(), "length": len(junk)}
    assert letter["key"] == "inrego:tl-2"

    changelog = cli(*base, "privacy-pipeline-subject-state-changelog", "--timeout", "3")
    assert changelog.returncode == 0, changelog.stderr
    records = [json.loads(line) for line in changelog.stdout.splitlines()]
    assert any(r.get("fence") for r in records)
    states = [r["changes"]["inrego:tl-1"] for r in records if "inrego:tl-1" in r.get("changes", {})]
    assert states and states[-1]["role"] == "customer"
    assert "undecodable" not in changelog.stdout


def test_produce_reports_bad_lines_and_sends_only_good_ones(
    broker: str, topic_prefix: str, tmp_path: Path, make_topics: MakeTopics, readers: Readers
) -> None:
    now = datetime.now(UTC).replace(microsecond=0)
    private = "hemlig@example.se"
    good = [
        click("inrego", "v1", now - timedelta(minutes=3)),
        customer("rego", "k1", now - timedelta(minutes=2)),
        order("rego", "k1", now - timedelta(minutes=1)),
    ]
    no_ip = click("inrego", "v2", now)
    del no_ip["ip"]
    lines = [
        json.dumps(good[0]),  # 1
        '{"event_id": "x", "type": "click", ' + private,  # 2: not JSON
        json.dumps({**good[0], "type": "tap", "event_id": private}),  # 3: unknown type
        "",  # 4: blank, skipped
        json.dumps(no_ip),  # 5: missing required field
        json.dumps(good[1]),  # 6
        json.dumps({**good[0], "email": private}),  # 7: field not in the schema
        json.dumps([private]),  # 8: not an object
        json.dumps({**good[0], "url": 42, "ip": 7}),  # 9: wrong type
        json.dumps(good[2]),  # 10
    ]
    path = tmp_path / "mixed.jsonl"
    path.write_text("\n".join(lines) + "\n", "utf-8")
    make_topics(1)
    result = cli("produce", "--broker", broker, "--prefix", topic_prefix, str(path))
    assert result.returncode == 1
    reported = [line for line in result.stderr.splitlines() if line.startswith("line ")]
    assert [line.split(":")[0] for line in reported] == [
        "line 2",
        "line 3",
        "line 5",
        "line 7",
        "line 8",
        "line 9",
    ]
    assert all("not sent" in line for line in reported)
    assert f"delivered 3 of 9 events to {broker}; 6 bad lines not sent, 0 not delivered" in (
        result.stderr
    )
    assert private not in result.stderr and private not in result.stdout
    assert "'ip'" in reported[2]  # names the missing field

    topics = [INPUT_TOPIC_OF[t] for t in ("click", "customer", "order")]
    readers.wait(
        topics,
        lambda: sum(len(readers[t].records) for t in topics) >= 3,
        timeout=20,
        what="the good lines",
        settle=1.0,
    )
    sent = [v for t in topics for v in readers[t].values()]
    assert sorted(sent, key=lambda r: r["event_id"]) == sorted(
        (event_to_avro(e)[1] for e in good), key=lambda r: r["event_id"]
    )
    for topic, event in zip(topics, good, strict=True):
        [rec] = readers[topic].records
        assert rec.key_text == f"{event['controller']}:{event['subject_id']}"


def test_produce_checks_lines_as_ingest_would_and_reports_what_was_not_delivered(
    broker: str, topic_prefix: str, tmp_path: Path, make_topics: MakeTopics, readers: Readers
) -> None:
    now = datetime.now(UTC).replace(microsecond=0)
    good = click("inrego", "w1", now - timedelta(minutes=1))
    huge = {**click("inrego", "w2", now), "user_agent": "x" * 9_000_000}
    lines = [
        json.dumps({**good, "controller": "acme"}),  # 1: no policy pack for it
        json.dumps({**good, "occurred_at": "2024-01-10T10:00:00"}),  # 2: instant without zone
        json.dumps(huge),  # 3: over the 8 MB record limit
        json.dumps({**good, "subject_id": "canary-w1"}),  # 4: reserved for canaries
        json.dumps(good),  # 5: goes through, after the failures
    ]
    path = tmp_path / "checked.jsonl"
    path.write_text("\n".join(lines) + "\n", "utf-8")
    make_topics(1)
    result = cli("produce", "--broker", broker, "--prefix", topic_prefix, str(path))
    assert "Traceback" not in result.stderr, result.stderr
    assert result.returncode == 1
    # Bad lines are reported as read, lines not delivered once the broker has answered.
    reported = sorted(
        (x for x in result.stderr.splitlines() if x.startswith("line ")),
        key=lambda x: int(x.split(":")[0].split()[1]),
    )
    assert [x.split(":")[0] for x in reported] == ["line 1", "line 2", "line 3", "line 4"]
    assert "not sent" in reported[0] and "controller" in reported[0]
    assert "not sent" in reported[1] and "occurred_at" in reported[1]
    assert "not delivered: too large" in reported[2]
    assert reported[3] == (
        "line 4: not sent: subject_id: the prefix 'canary-' is reserved for the pipeline's "
        "deletion canaries"
    )
    assert "delivered 1 of 5 events" in result.stderr
    assert "3 bad lines not sent, 1 not delivered" in result.stderr
    readers.wait(["clicks"], lambda: len(readers["clicks"].records) >= 1, 20, "the good line")
    assert [r["event_id"] for r in readers["clicks"].values()] == [good["event_id"]]


def test_commands_say_in_one_line_that_the_broker_is_down(unused_port: int) -> None:
    dead = f"127.0.0.1:{unused_port}"
    for args in (["produce", "--broker", dead, "-"], ["tail", "audit", "--broker", dead]):
        result = cli(*args, stdin="", timeout=60)
        assert result.returncode == 1, args
        assert result.stderr.strip().splitlines() == [
            f"Error: no Kafka broker answers at {dead} within 10 s (Failed to get metadata: "
            "Local: Broker transport failure); is it running, and is --broker "
            "(or KAFKA_BOOTSTRAP_SERVERS) right?"
        ], args


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_run_says_when_it_is_ready_and_stops_quickly_with_its_broker(
    tmp_path: Path, unused_port: int, sig: signal.Signals
) -> None:
    # No --broker: run starts the embedded one and must stop it too.
    log = tmp_path / "run.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [cli_path(), "run", "--metrics-port", str(unused_port), "--partitions", "2"],
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=child_env(tmp_path / "tmp"),
        )
    try:
        deadline = time.monotonic() + 90
        while "ready:" not in log.read_text("utf-8", "replace"):
            assert proc.poll() is None, log.read_text("utf-8", "replace")
            assert time.monotonic() < deadline, log.read_text("utf-8", "replace")
            time.sleep(0.2)
        children = children_of(proc.pid)
        assert children, "the embedded broker and ingest run as children"
        started = time.monotonic()
        proc.send_signal(sig)
        code = proc.wait(30)
        took = time.monotonic() - started
    finally:
        if proc.poll() is None:
            proc.kill()
    lines = log.read_text("utf-8", "replace").splitlines()
    # At the default level (warn): the broker it started, then one line when ready; no
    # INFO lines, no client noise when the broker goes away.
    assert len(lines) == 2, lines
    assert lines[0].startswith("started the embedded broker (Tansu)")
    assert re.fullmatch(
        r"ready: embedded broker 127\.0\.0\.1:\d+, topics prefix '', 2 partitions, "
        rf"tracker on; metrics http://127\.0\.0\.1:{unused_port}/metrics",
        lines[1],
    ), lines[1]
    assert code == 0
    # Issue 8's bar is 3 s (2.0-2.6 s measured on 2 busy cores); the bound here only
    # catches the 8-12 s it took before, on a shared machine.
    assert took < 6, f"stopped in {took:.1f} s"
    # multiprocessing's resource tracker leaves once it sees its parent's pipe close:
    # a moment after the parent, not with it.
    gone_by = time.monotonic() + 5
    while [pid for pid in children if alive(pid)] and time.monotonic() < gone_by:
        time.sleep(0.1)
    assert [pid for pid in children if alive(pid)] == []


def test_produce_reports_a_line_that_is_not_utf8(
    broker: str, topic_prefix: str, tmp_path: Path, make_topics: MakeTopics, readers: Readers
) -> None:
    now = datetime.now(UTC).replace(microsecond=0)
    first = click("inrego", "u1", now - timedelta(minutes=2))
    last = click("inrego", "u2", now - timedelta(minutes=1))
    path = tmp_path / "latin1.jsonl"
    path.write_bytes(
        json.dumps(first).encode()
        + b"\n"
        + b'{"event_id": "caf\xe9", "type": "click"}\n'
        + json.dumps(last).encode()
        + b"\n"
    )
    make_topics(1)
    result = cli("produce", "--broker", broker, "--prefix", topic_prefix, str(path))
    assert "Traceback" not in result.stderr, result.stderr
    assert result.returncode == 1
    assert [x for x in result.stderr.splitlines() if x.startswith("line ")][0].startswith(
        "line 2: not sent"
    )
    assert "delivered 2 of 3 events" in result.stderr
    assert "1 bad lines not sent, 0 not delivered" in result.stderr
    readers.wait(
        ["clicks"],
        lambda: len(readers["clicks"].records) >= 2,
        timeout=20,
        what="the two good lines",
        settle=0.5,
    )
    assert [r["event_id"] for r in readers["clicks"].values()] == [
        first["event_id"],
        last["event_id"],
    ]
