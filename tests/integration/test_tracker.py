"""The worker follows each command to its answer: a target that is down gets its command
again, then a person gets it; the request's status says so (GDPR art. 12(3): one month).

Inrego (seed 001): an erasure request sends commands to business-systems,
it-service-providers and marketing-services. Here the first two run their sinks; the
third is down for the whole test.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import sqlalchemy as sa
from worker_process import (
    BROKER_ENV,
    MakeTopics,
    Readers,
    StartSink,
    StartWorker,
    cli,
    customer,
    pick_port,
    produce_file,
    request,
    write_events,
)

from privacy_pipeline.embedded_broker.launcher import EmbeddedBroker
from privacy_pipeline.processors.instants import parse_instant

CONTROLLER = "inrego"
PEOPLE = ["t1", "t2", "t3"]
ASKING = ["t1", "t2"]
UP = ("business-systems", "it-service-providers")
DOWN = "marketing-services"
MAPPING = """\
target: {target}
controllers: [inrego]
tables:
  customers:
    subject_column: subject_id
    columns:
      name: contact
      email: contact
      phone: contact
"""


@pytest.fixture(scope="module")
def broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A broker of this module's own. In full suite runs on the session's embedded broker
    (after the sink tests have killed clients mid-request), these tests twice saw the
    worker issue the commands and then neither re-issue nor escalate them for 90 s; alone
    they pass. Kept apart until that is understood (see the issue 9 note)."""
    if os.environ.get(BROKER_ENV, "").strip():
        yield os.environ[BROKER_ENV].strip()
        return
    log_file = tmp_path_factory.mktemp("tracker-broker") / "tansu.log"
    with EmbeddedBroker(port=pick_port(), log_file=log_file) as embedded:
        yield embedded.bootstrap


def downstream(tmp_path: Path, target: str) -> tuple[str, Path]:
    """A target's database holding the people, and its sink mapping."""
    url = f"sqlite:///{tmp_path / f'{target}.db'}"
    engine = sa.create_engine(url)
    with engine.begin() as conn:
        conn.execute(
            sa.text(
                "CREATE TABLE customers (subject_id TEXT PRIMARY KEY, name TEXT, email TEXT,"
                " phone TEXT)"
            )
        )
        for p in PEOPLE:
            conn.execute(
                sa.text("INSERT INTO customers VALUES (:p, 'Person', :e, '+4670')"),
                {"p": p, "e": f"{p}@example.se"},
            )
    engine.dispose()
    mapping = tmp_path / f"{target}.yaml"
    mapping.write_text(MAPPING.format(target=target))
    return url, mapping


def test_a_target_that_is_down_gets_its_command_again_then_a_person_does(
    broker: str,
    topic_prefix: str,
    tmp_path: Path,
    make_topics: MakeTopics,
    start_worker: StartWorker,
    run_sink: StartSink,
    readers: Readers,
) -> None:
    make_topics(2)
    start_worker(partitions=2, extra_args=["--ack-timeout", "2", "--max-attempts", "3"])
    for target in UP:
        run_sink(target, *downstream(tmp_path, target))

    now = datetime.now(UTC).replace(microsecond=0)
    events = [customer(CONTROLLER, p, now - timedelta(days=3)) for p in PEOPLE]
    events += [request(CONTROLLER, p, now - timedelta(minutes=1), "erasure") for p in ASKING]
    produce_file(broker, topic_prefix, write_events(tmp_path / "events.jsonl", events))

    # Waits of 2, 4 and 8 s: three attempts, then the escalation, about 14 s after the issue.
    readers.wait(
        ["erasure-escalations", "privacy-request-status"],
        lambda: (
            len(readers["erasure-escalations"].records) >= len(ASKING)
            and sum(
                v["status"] == "partially_completed"
                for v in readers["privacy-request-status"].values()
            )
            >= len(ASKING)
        ),
        timeout=90,
        what="the escalations and the requests' final status",
        settle=1.0,
    )
    readers.wait(["erasure-commands", "erasure-acks"], lambda: True, timeout=5, what="", settle=1.0)

    commands = readers["erasure-commands"].values()
    down = [c for c in commands if c["target"] == DOWN]
    # The same command each time: only the attempt (and so the signature) changes.
    assert sorted((c["subject_id"], c["attempt"]) for c in down) == [
        (p, a) for p in ASKING for a in (1, 2, 3)
    ]
    for p in ASKING:
        ids = {c["command_id"] for c in down if c["subject_id"] == p}
        assert len(ids) == 1
    up = [c for c in commands if c["target"] in UP]
    assert {c["attempt"] for c in up} == {1}  # answered: never issued again
    assert {(a["status"], a["attempt"]) for a in readers["erasure-acks"].values()} == {("done", 1)}

    escalations = readers["erasure-escalations"].values()
    assert sorted(
        (e["subject_id"], e["target"], e["reason"], e["attempt"]) for e in escalations
    ) == [(p, DOWN, "attempts_exhausted", 3) for p in ASKING]

    final = {
        v["request_id"]: v
        for v in readers["privacy-request-status"].values()
        if v["status"] != "in_progress"
    }
    assert set(final) == {f"REQ-{CONTROLLER}-{p}-erasure" for p in ASKING}
    for status in final.values():
        assert status["status"] == "partially_completed"
        outcomes = {t["target"]: t["outcome"] for t in status["targets"]}
        assert outcomes == {**dict.fromkeys(UP, "done"), DOWN: "escalated"}
        received = parse_instant(status["received_at"])
        # one calendar month on Stockholm's clock
        assert parse_instant(status["due_at"]) - received in {
            timedelta(days=d) for d in (28, 29, 30, 31)
        }

    shown = cli("requests", "--broker", broker, "--prefix", topic_prefix)
    assert shown.returncode == 0, shown.stderr
    lines = shown.stdout.splitlines()
    assert len(lines) == len(ASKING)
    assert all("partially_completed" in line and "targets 3/3 answered" in line for line in lines)


def test_the_tracker_s_state_survives_a_kill_9_exactly(
    broker: str,
    topic_prefix: str,
    tmp_path: Path,
    make_topics: MakeTopics,
    start_worker: StartWorker,
    run_sink: StartSink,
    readers: Readers,
) -> None:
    """Killed -9 after the answers of the targets that are up, the worker's successor
    knows them: it never asks those targets again, asks only the target that is down,
    with the same command and the next attempts, and ends each request as partially
    completed with the first worker's answers in it."""
    make_topics(2)
    first = start_worker(
        partitions=2, name="first", extra_args=["--ack-timeout", "25", "--max-attempts", "3"]
    )
    for target in UP:
        run_sink(target, *downstream(tmp_path, target))

    now = datetime.now(UTC).replace(microsecond=0)
    events = [customer(CONTROLLER, p, now - timedelta(days=3)) for p in PEOPLE]
    events += [request(CONTROLLER, p, now - timedelta(minutes=1), "erasure") for p in ASKING]
    produce_file(broker, topic_prefix, write_events(tmp_path / "events.jsonl", events))

    answered = len(ASKING) * len(UP)
    readers.wait(
        ["erasure-acks"],
        lambda: len(readers["erasure-acks"].records) >= answered,
        timeout=90,
        what="the answers of the targets that are up",
    )
    # Time for the worker to read the acks and write their effect to its changelog (it
    # writes a group's changelog once the group's outputs are acknowledged: well under 1 s).
    time.sleep(4)
    first.kill()  # SIGKILL, the worker and its ingest process: no goodbye, no last commit
    readers.poll(["erasure-commands"], seconds=1.0)
    assert {c["attempt"] for c in readers["erasure-commands"].values()} == {1}

    start_worker(
        partitions=2, name="second", extra_args=["--ack-timeout", "2", "--max-attempts", "3"]
    )
    # The first wait (25 s from the issue) was kept; then 4 s; then the escalation.
    readers.wait(
        ["erasure-escalations", "privacy-request-status"],
        lambda: (
            sum(
                v["status"] == "partially_completed"
                for v in readers["privacy-request-status"].values()
            )
            >= len(ASKING)
        ),
        timeout=120,
        what="the requests' final status from the second worker",
        settle=1.0,
    )
    readers.wait(["erasure-commands"], lambda: True, timeout=5, what="", settle=2.0)
    commands = readers["erasure-commands"].values()
    # The targets that answered before the kill are never asked again.
    assert sorted((c["subject_id"], c["target"]) for c in commands if c["target"] in UP) == sorted(
        (p, t) for p in ASKING for t in UP
    )
    down = [c for c in commands if c["target"] == DOWN]
    assert sorted((c["subject_id"], c["attempt"]) for c in down) == [
        (p, a) for p in ASKING for a in (1, 2, 3)
    ]
    assert all(len({c["command_id"] for c in down if c["subject_id"] == p}) == 1 for p in ASKING)
    escalations = readers["erasure-escalations"].values()
    assert sorted((e["subject_id"], e["target"], e["attempt"]) for e in escalations) == [
        (p, DOWN, 3) for p in ASKING
    ]
    final = [v for v in readers["privacy-request-status"].values() if v["status"] != "in_progress"]
    assert len(final) == len(ASKING)
    for status in final:
        outcomes = {t["target"]: t["outcome"] for t in status["targets"]}
        assert outcomes == {**dict.fromkeys(UP, "done"), DOWN: "escalated"}
