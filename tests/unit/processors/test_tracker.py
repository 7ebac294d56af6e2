"""The command tracker: commands followed to their answer, re-issued, escalated.

Scenario: an Inrego customer asks for erasure (GDPR art. 17; answered within one month,
art. 12(3): the pack's rights deadline). The request sends three commands, to
business-systems, it-service-providers and marketing-services.
"""

from __future__ import annotations

import sys
from datetime import datetime, timedelta
from typing import Any

from privacy_pipeline.processors.enforcer import PolicyEnforcer
from privacy_pipeline.processors.events import parse_event
from privacy_pipeline.processors.instants import parse_instant
from privacy_pipeline.processors.state import SubjectState, micros
from privacy_pipeline.processors.tracker import Tracking
from tests.conformance.scenarios import customer, packs, request

TRACKING = Tracking(ack_timeout=timedelta(minutes=10), max_attempts=3)
CREATED = "2026-03-02T09:00:00Z"
ASKED = "2026-03-03T09:00:00Z"
TARGETS = {"business-systems", "it-service-providers", "marketing-services"}


def at(instant: str, plus: timedelta = timedelta()) -> datetime:
    return parse_instant(instant) + plus


def erasure_requested(
    tracking: Tracking | None = TRACKING,
) -> tuple[PolicyEnforcer, SubjectState, list[dict[str, Any]]]:
    enforcer = PolicyEnforcer(packs(), tracking)
    state, _ = enforcer.on_event(None, parse_event(customer("inrego", "s1", CREATED)), at(CREATED))
    event = parse_event(request("inrego", "s1", ASKED, "erasure", request_id="R-1"))
    state, decisions = enforcer.on_event(state, event, at(ASKED))
    commands = [d for d in decisions if d["decision"] == "erasure"]
    assert {c["target"] for c in commands} == TARGETS
    statuses = [d for d in decisions if d["decision"] == "request_status"]
    if tracking is None:
        assert statuses == []
    else:
        [status] = statuses
        assert (status["request_id"], status["right"], status["status"]) == (
            "R-1",
            "erasure",
            "in_progress",
        )
        # GDPR art. 12(3): one month from receipt, on Stockholm's calendar.
        assert (status["received_at"], status["due_at"]) == (ASKED, "2026-04-03T08:00:00Z")
        assert {(t["target"], t["outcome"]) for t in status["targets"]} == {
            (t, "pending") for t in TARGETS
        }
    return enforcer, state, commands


def statuses(decisions: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [d for d in decisions if d["decision"] == "request_status"]


def ack(command: dict[str, Any], status: str, **kw: Any) -> dict[str, Any]:
    return {
        "command_id": command["command_id"],
        "target": command["target"],
        "status": status,
        "attempt": kw.pop("attempt", 1),
        **kw,
    }


def test_answered_commands_close_and_leave_nothing_behind() -> None:
    enforcer, state, commands = erasure_requested()
    assert state.commands is not None and set(state.commands) == {c["command_id"] for c in commands}
    # The first wait ends ten minutes after the request.
    assert state.next_due() == at(ASKED, timedelta(minutes=10))
    answers = ["done", "not_found", "retained"]
    for n, (command, status) in enumerate(zip(commands, answers, strict=True)):
        state, out = enforcer.on_ack(state, ack(command, status), at(ASKED, timedelta(minutes=n)))
        assert out == [] if n < 2 else len(out) == 1
    # The last answer completes the request: not_found counts as done, kept apart.
    [status] = statuses(out)
    assert status["status"] == "completed" and status["updated_at"] == "2026-03-03T09:02:00Z"
    assert {(t["target"], t["outcome"]) for t in status["targets"]} == {
        (c["target"], a) for c, a in zip(commands, answers, strict=True)
    }
    assert state.commands is None and state.requests is None
    assert state.next_due() is None  # no timer left for this subject
    _, out = enforcer.on_time(state, "inrego", "s1", at(ASKED, timedelta(days=40)))
    assert out == []


def test_no_answer_reissues_with_the_same_id_doubling_the_wait_then_escalates() -> None:
    enforcer, state, commands = erasure_requested()
    ids = {c["command_id"] for c in commands}
    # Not a moment early.
    _, out = enforcer.on_time(state, "inrego", "s1", at(ASKED, timedelta(minutes=9)))
    assert out == []
    _, out = enforcer.on_time(state, "inrego", "s1", at(ASKED, timedelta(minutes=10)))
    assert {(d["decision"], d["command_id"], d["attempt"]) for d in out} == {
        ("erasure", i, 2) for i in ids
    }
    # A re-issue is the same command: only the attempt differs.
    first = {c["command_id"]: c for c in commands}
    for d in out:
        assert {k: v for k, v in d.items() if k != "attempt"} == first[d["command_id"]]
        assert d["request_id"] == "R-1"
    # Attempt 2 waits 20 minutes, attempt 3 forty: then the attempts are used up.
    assert state.next_due() == at(ASKED, timedelta(minutes=30))
    _, out = enforcer.on_time(state, "inrego", "s1", at(ASKED, timedelta(minutes=30)))
    assert {d["attempt"] for d in out} == {3}
    _, out = enforcer.on_time(state, "inrego", "s1", at(ASKED, timedelta(minutes=70)))
    escalations = [d for d in out if d["decision"] == "escalation"]
    assert {(d["reason"], d["attempt"]) for d in escalations} == {("attempts_exhausted", 3)}
    assert {d["command_id"] for d in escalations} == ids
    assert {d["escalated_at"] for d in escalations} == {"2026-03-03T10:10:00Z"}
    assert {d["request_id"] for d in escalations} == {"R-1"}
    # No target answered: the request failed, and says which targets were escalated.
    [status] = statuses(out)
    assert status["status"] == "failed"
    assert {t["outcome"] for t in status["targets"]} == {"escalated"}
    # Escalated: no more re-issues, but still open for a late answer.
    assert state.next_due() is None
    assert state.commands is not None and len(state.commands) == 3
    state, _ = enforcer.on_ack(
        state, ack(commands[0], "done", attempt=3), at(ASKED, timedelta(hours=2))
    )
    assert state.commands is not None and len(state.commands) == 2


def test_retryable_failure_waits_then_a_permanent_one_goes_to_a_person() -> None:
    enforcer, state, commands = erasure_requested()
    lost, broken = commands[0], commands[1]
    state, out = enforcer.on_ack(
        state, ack(lost, "failed", retryable=True), at(ASKED, timedelta(minutes=1))
    )
    assert out == []  # asked again after the back-off, not at once
    state, out = enforcer.on_ack(
        state,
        ack(broken, "failed", retryable=False, detail="no restricted column in invoices"),
        at(ASKED, timedelta(minutes=2)),
    )
    assert [(d["decision"], d["reason"], d["detail"]) for d in out] == [
        ("escalation", "failed", "no restricted column in invoices")
    ]  # the request is still in progress: the other two may yet answer
    _, out = enforcer.on_time(state, "inrego", "s1", at(ASKED, timedelta(minutes=10)))
    # the failed-retryable one and the unanswered one are asked again; not the escalated
    assert {d["command_id"] for d in out} == {lost["command_id"], commands[2]["command_id"]}


def test_a_late_failure_of_an_earlier_attempt_is_ignored_but_a_late_done_closes() -> None:
    enforcer, state, commands = erasure_requested()
    enforcer.on_time(state, "inrego", "s1", at(ASKED, timedelta(minutes=10)))  # attempt 2
    state, out = enforcer.on_ack(
        state, ack(commands[0], "failed", attempt=1), at(ASKED, timedelta(minutes=11))
    )
    assert out == []
    assert state.commands is not None and commands[0]["command_id"] in state.commands
    # The target did act on attempt 1 (a sink re-sends the ack it stored then).
    state, _ = enforcer.on_ack(
        state, ack(commands[0], "done", attempt=1), at(ASKED, timedelta(minutes=12))
    )
    assert commands[0]["command_id"] not in state.commands


def test_past_its_deadline_a_command_is_escalated_not_reissued() -> None:
    # Waits of ten days: the third try would fall after the month the request allows.
    slow = Tracking(ack_timeout=timedelta(days=10), max_attempts=10)
    enforcer, state, commands = erasure_requested(slow)
    deadline = at(commands[0]["deadline"])
    # One calendar month on Stockholm's clock: 10:00 CET on 3 March is 10:00 CEST (summer
    # time from 29 March) on 3 April.
    assert deadline == at("2026-04-03T08:00:00Z")
    enforcer.on_time(state, "inrego", "s1", at(ASKED, timedelta(days=10)))  # attempt 2
    _, out = enforcer.on_time(state, "inrego", "s1", at(ASKED, timedelta(days=30)))
    assert {d["attempt"] for d in out} == {3}
    _, out = enforcer.on_time(state, "inrego", "s1", at(ASKED, timedelta(days=70)))
    assert {(d["decision"], d.get("reason")) for d in out} == {
        ("escalation", "deadline_passed"),
        ("request_status", None),
    }


def test_open_commands_survive_pack_and_unpack() -> None:
    _, state, commands = erasure_requested()
    restored = SubjectState.unpack(state.pack())
    assert restored.commands == state.commands
    assert restored.requests == state.requests and state.requests is not None
    assert restored.next_due() == state.next_due()
    assert SubjectState.from_dict(state.to_dict()).commands == state.commands
    assert SubjectState.from_dict(state.to_dict()).requests == state.requests
    # A changelog written before the tracker existed (8 fields) still reads.
    assert SubjectState.unpack(state.pack()[:8]).commands is None
    # The decision comes back exactly as issued, each field, attempt included.
    assert state.commands is not None
    assert sorted((c.decision for c in state.commands.values()), key=str) == sorted(
        ({**c, "attempt": 1} for c in commands), key=str
    )


def test_changelogs_with_unpacked_commands_still_read() -> None:
    # Changelogs written before open commands were packed hold, per command,
    # (decision, attempt, deadline, next_try) with instants in epoch microseconds.
    _, state, commands = erasure_requested()
    packed = state.pack()
    assert state.commands is not None
    old = tuple(
        (c.decision, c.attempt, micros(c.deadline), c.wait_until) for c in state.commands.values()
    )
    restored = SubjectState.unpack((*packed[:8], old, packed[9]))
    assert restored.commands == state.commands
    assert restored.next_due() == at(ASKED, TRACKING.ack_timeout)


def test_an_open_command_is_small() -> None:
    # Issue 9: at most 512 B per open command. Its own objects here (the packed decision,
    # the object, the wait); make bench's figure also counts the dicts that hold it.
    _, state, _ = erasure_requested()
    assert state.commands is not None
    for tracked in state.commands.values():
        own = sys.getsizeof(tracked) + sys.getsizeof(tracked.packed)
        own += sys.getsizeof(tracked.wait_until)
        assert own < 400, own


def test_without_a_tracker_nothing_is_followed() -> None:
    # evaluate: offline there is nobody to answer, so commands are issued once.
    enforcer, state, _ = erasure_requested(tracking=None)
    assert state.commands is None
    _, out = enforcer.on_time(state, "inrego", "s1", at(ASKED, timedelta(days=60)))
    assert out == []


def test_partly_answered_request_is_partially_completed() -> None:
    enforcer, state, commands = erasure_requested()
    state, _ = enforcer.on_ack(state, ack(commands[0], "done"), at(ASKED, timedelta(minutes=1)))
    state, _ = enforcer.on_ack(state, ack(commands[1], "done"), at(ASKED, timedelta(minutes=1)))
    state, out = enforcer.on_ack(
        state, ack(commands[2], "failed", retryable=False), at(ASKED, timedelta(minutes=2))
    )
    [status] = statuses(out)
    assert status["status"] == "partially_completed"


def test_an_access_request_is_completed_at_once_with_its_extract() -> None:
    enforcer = PolicyEnforcer(packs(), TRACKING)
    state, _ = enforcer.on_event(None, parse_event(customer("inrego", "s1", CREATED)), at(CREATED))
    event = parse_event(request("inrego", "s1", ASKED, "access", request_id="R-2"))
    state, out = enforcer.on_event(state, event, at(ASKED))
    [extract] = [d for d in out if d["decision"] == "extract"]
    [status] = statuses(out)
    assert (status["status"], status["targets"]) == ("completed", [])
    assert status["extract"] == extract
    assert state.requests is None
