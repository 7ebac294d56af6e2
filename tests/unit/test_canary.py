"""Deletion canaries, the pure half: names, the schedule of plants and erasure requests,
the pending age on an injected clock, the events each controller's pack erases, the
canary signature that ingest requires of reserved subject ids, and the metrics."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pytest

from privacy_pipeline.processors.enforcer import PolicyEnforcer
from privacy_pipeline.processors.events import (
    RESERVED_SUBJECT_PREFIX,
    parse_event,
    reserved_subject_id,
)
from privacy_pipeline.processors.policy import load_packs, packaged_policies
from privacy_pipeline.processors.tracker import Tracking
from privacy_pipeline.streams.canary import (
    CANARY_HEADER,
    Canary,
    CanaryMetrics,
    CanaryPlan,
    File,
    Plant,
    Settled,
    canary_signed,
    canary_verifier_from_env,
    erasure_request,
    parse_duration,
    pending_seconds,
    plant_event,
    refile,
    refuse_reserved,
    settle,
    sign_canary,
    start,
    tick,
)
from privacy_pipeline.streams.metrics import PipelineMetrics, make_registry
from privacy_pipeline.streams.serde import AvroSerde, event_to_avro
from privacy_pipeline.streams.settings import ENV_SECRETS
from privacy_pipeline.streams.signing import CommandSigner, CommandVerifier

PLAN = CanaryPlan(controllers=("inrego", "rego"), every=60.0, erase_after=30.0, run_id="ab12")
AT = datetime(2026, 3, 1, 9, 30, 0, 250_000, tzinfo=UTC)


# -- durations and names ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("60s", 60.0), ("5m", 300.0), ("1.5h", 5400.0), ("500ms", 0.5), ("30", 30.0), (" 2s ", 2.0)],
)
def test_durations_read_as_seconds(text: str, seconds: float) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["", "s", "5x", "-1s", "0s", "0", "1d", "5 minutes"])
def test_a_bad_or_empty_duration_is_refused(text: str) -> None:
    with pytest.raises(ValueError, match="duration"):
        parse_duration(text)


def test_canary_ids_are_in_the_reserved_namespace_and_tell_runs_apart() -> None:
    state, actions = tick(PLAN, start(PLAN, 100.0), 100.0)
    planted = [a.canary for a in actions]
    assert [(c.controller, c.subject_id, c.request_id) for c in planted] == [
        ("inrego", "canary-inrego-ab12-1", "canary-inrego-ab12-1-erasure"),
        ("rego", "canary-rego-ab12-1", "canary-rego-ab12-1-erasure"),
    ]
    assert RESERVED_SUBJECT_PREFIX == "canary-"
    assert all(reserved_subject_id(c.subject_id) for c in planted)
    # The prefix is exact: a person called "canaryman" or "Canary-1" is a person.
    assert not reserved_subject_id("canaryman")
    assert not reserved_subject_id("Canary-1")
    assert not reserved_subject_id("s-canary-1")


def test_a_plan_that_could_not_run_is_refused() -> None:
    with pytest.raises(ValueError, match="controller"):
        CanaryPlan(controllers=(), every=1.0, erase_after=0.5, run_id="a")
    with pytest.raises(ValueError, match="every"):
        CanaryPlan(controllers=("rego",), every=0.0, erase_after=0.0, run_id="a")
    with pytest.raises(ValueError, match="run_id"):
        CanaryPlan(controllers=("rego",), every=1.0, erase_after=0.5, run_id="A-1")
    plan = CanaryPlan.every_interval(["rego", "inrego", "rego"], 60.0, run_id="x1")
    assert (plan.controllers, plan.erase_after) == (("inrego", "rego"), 30.0)


# -- the schedule -------------------------------------------------------------------------


def test_plant_at_once_file_half_an_interval_later_then_the_next_one_interval_after() -> None:
    state = start(PLAN, 1000.0)
    state, actions = tick(PLAN, state, 1000.0)
    assert [type(a).__name__ for a in actions] == ["Plant", "Plant"]
    assert tick(PLAN, state, 1029.9)[1] == []  # nothing due before erase_after
    state, actions = tick(PLAN, state, 1030.0)
    assert [(type(a).__name__, a.canary.controller, a.canary.filed_at) for a in actions] == [
        ("File", "inrego", 1030.0),
        ("File", "rego", 1030.0),
    ]
    state, done = settle(state, "canary-inrego-ab12-1-erasure", "completed", 1042.5)
    assert done == Settled("inrego", "canary-inrego-ab12-1-erasure", "completed", 12.5)
    state, done = settle(state, "canary-rego-ab12-1-erasure", "completed", 1043.0)
    assert done is not None and done.seconds == 13.0
    assert tick(PLAN, state, 1059.9)[1] == []  # the interval runs from the plant
    state, actions = tick(PLAN, state, 1060.0)
    assert [a.canary.subject_id for a in actions if isinstance(a, Plant)] == [
        "canary-inrego-ab12-2",
        "canary-rego-ab12-2",
    ]


def test_a_stuck_canary_is_never_joined_by_another_and_the_next_follows_its_end() -> None:
    state, _ = tick(PLAN, start(PLAN, 0.0), 0.0)
    state, _ = tick(PLAN, state, 30.0)
    # Two intervals later the first canaries are still open: nothing new is planted.
    state, actions = tick(PLAN, state, 150.0)
    assert actions == []
    state, _ = settle(state, "canary-rego-ab12-1-erasure", "completed", 151.0)
    state, actions = tick(PLAN, state, 151.5)  # overdue: rego's next one at once
    assert [(type(a), a.canary.subject_id) for a in actions] == [(Plant, "canary-rego-ab12-2")]
    assert state.in_flight["inrego"].subject_id == "canary-inrego-ab12-1"


def test_statuses_on_the_way_and_other_requests_settle_nothing() -> None:
    state, _ = tick(PLAN, start(PLAN, 0.0), 0.0)
    # Planted, not yet filed: a status naming its request cannot be ours yet.
    assert settle(state, "canary-inrego-ab12-1-erasure", "completed", 1.0) == (state, None)
    state, _ = tick(PLAN, state, 30.0)
    for request, status in [
        ("canary-inrego-ab12-1-erasure", "received"),
        ("canary-inrego-ab12-1-erasure", "in_progress"),
        ("REQ-4711", "completed"),  # a person's request
        ("canary-inrego-zz99-1-erasure", "completed"),  # an earlier run's canary
    ]:
        assert settle(state, request, status, 31.0) == (state, None)
    state, done = settle(state, "canary-inrego-ab12-1-erasure", "partially_completed", 45.0)
    assert done == Settled("inrego", "canary-inrego-ab12-1-erasure", "partially_completed", 15.0)
    assert set(state.in_flight) == {"rego"}


def test_pending_age_is_the_open_erasure_age_and_zero_otherwise() -> None:
    state = start(PLAN, 0.0)
    assert pending_seconds(PLAN, state, 0.0) == {"inrego": 0.0, "rego": 0.0}
    state, _ = tick(PLAN, state, 0.0)
    # Planted, not yet asked to be erased: nothing is pending.
    assert pending_seconds(PLAN, state, 29.0) == {"inrego": 0.0, "rego": 0.0}
    state, _ = tick(PLAN, state, 30.0)
    assert pending_seconds(PLAN, state, 37.25) == {"inrego": 7.25, "rego": 7.25}
    state, _ = settle(state, "canary-rego-ab12-1-erasure", "completed", 38.0)
    assert pending_seconds(PLAN, state, 100.0) == {"inrego": 70.0, "rego": 0.0}
    # A failed request settles the canary too (the tracker gave up; an escalation says so).
    state, done = settle(state, "canary-inrego-ab12-1-erasure", "failed", 101.0)
    assert done is not None and done.outcome == "failed"
    assert pending_seconds(PLAN, state, 102.0) == {"inrego": 0.0, "rego": 0.0}


def test_an_erasure_request_the_broker_did_not_take_is_filed_again() -> None:
    state, _ = tick(PLAN, start(PLAN, 0.0), 0.0)
    assert refile(state, "rego") == state  # not filed yet: nothing to do again
    state, _ = tick(PLAN, state, 30.0)
    state = refile(state, "rego")
    assert pending_seconds(PLAN, state, 31.0) == {"inrego": 1.0, "rego": 0.0}
    state, actions = tick(PLAN, state, 31.5)
    assert [(type(a), a.canary.subject_id, a.canary.filed_at) for a in actions] == [
        (File, "canary-rego-ab12-1", 31.5)
    ]
    state, done = settle(state, "canary-rego-ab12-1-erasure", "completed", 33.0)
    assert done == Settled("rego", "canary-rego-ab12-1-erasure", "completed", 1.5)


# -- the events ----------------------------------------------------------------------------

# What an erasure request of a canary reaches, per pack (evaluate shows the same).
TARGETS = {
    "rego": {"crm", "erp", "address-and-print", "payment"},
    "inrego": {"business-systems", "it-service-providers", "marketing-services"},
    "rejoin": {"customer-systems", "subcontractors", "credit-agency"},
    "iret": {"sales", "production", "finance", "it", "marketing"},
    "unnamed004": {"registers", "subcontractors"},
}


@pytest.mark.parametrize("controller", sorted(TARGETS))
def test_each_pack_erases_the_canarys_contact_data_from_every_target_that_holds_it(
    controller: str,
) -> None:
    canary = Canary(controller, f"canary-{controller}-ab12-1", "r-1", planted_at=0.0)
    plant, request = plant_event(canary, AT), erasure_request(canary, AT.replace(minute=31))
    assert plant["occurred_at"] == "2026-03-01T09:30:00.250Z"
    assert plant["fields"] == {
        "name": f"Canary {controller}",
        "email": f"canary-{controller}-ab12-1@canary.invalid",
    }
    assert (request["right"], request["request_id"]) == ("erasure", "r-1")
    serde = AvroSerde()
    for event in (plant, request):  # the path `produce` takes: canonical JSON to Avro
        name, record = event_to_avro(event)
        assert serde.decode(serde.encode(name, record)) == (name, record)

    enforcer = PolicyEnforcer(load_packs(packaged_policies()), tracking=Tracking())
    state, tags = enforcer.on_event(None, parse_event(plant), AT)
    assert tags[0]["decision"] == "tag" and tags[0]["purposes"]
    _, decisions = enforcer.on_event(state, parse_event(request), AT.replace(minute=31))
    commands = [d for d in decisions if d["decision"] == "erasure"]
    assert {c["target"] for c in commands} == TARGETS[controller]
    assert {(c["action"], tuple(c["categories"])) for c in commands} == {("erase", ("contact",))}
    status = [d for d in decisions if d.get("request_id") == "r-1" and "status" in d]
    assert [s["status"] for s in status] == ["in_progress"]


# -- the canary signature ------------------------------------------------------------------


@pytest.fixture
def signer(tmp_path: Path) -> CommandSigner:
    return CommandSigner.from_secrets(tmp_path / "worker")


def test_only_the_workers_signature_over_these_bytes_on_this_topic_makes_a_canary(
    signer: CommandSigner, tmp_path: Path
) -> None:
    verifier = signer.verifier
    value = b"\x02avro bytes of a canary"
    signature = sign_canary(signer, "customers", value)
    assert canary_signed(verifier, "customers", value, [(CANARY_HEADER, signature)])
    assert canary_signed(verifier, "customers", value, {CANARY_HEADER: signature})
    assert canary_signed(
        verifier, "customers", value, [("other", b"x"), (CANARY_HEADER, signature)]
    )
    refused = {
        "no header": (value, "customers", None),
        "no canary header": (value, "customers", [("other", signature)]),
        "other bytes": (value + b"!", "customers", [(CANARY_HEADER, signature)]),
        "other topic": (value, "privacy-requests", [(CANARY_HEADER, signature)]),
        "two headers": (value, "customers", [(CANARY_HEADER, signature)] * 2),
        "empty header": (value, "customers", [(CANARY_HEADER, None)]),
        "text header": (value, "customers", [(CANARY_HEADER, "sig")]),
    }
    for why, (v, topic, headers) in refused.items():
        assert not canary_signed(verifier, topic, v, headers), why
    assert not canary_signed(None, "customers", value, [(CANARY_HEADER, signature)])
    stranger = CommandSigner.from_secrets(tmp_path / "stranger")
    forged = sign_canary(stranger, "customers", value)
    assert not canary_signed(verifier, "customers", value, [(CANARY_HEADER, forged)])


def test_a_command_signature_is_no_canary_signature_nor_the_reverse(
    signer: CommandSigner,
) -> None:
    command = {"command_id": "c1", "subject_id": "canary-rego-ab12-1", "attempt": 1}
    value = b"\x02record"
    command_signature = signer.sign(command)
    assert not canary_signed(
        signer.verifier, "customers", value, [(CANARY_HEADER, command_signature)]
    )
    canary_signature = sign_canary(signer, "customers", value)
    assert not signer.verifier.verify({**command, "signature": canary_signature})


def test_ingest_refuses_reserved_ids_without_the_signature_and_only_those(
    signer: CommandSigner,
) -> None:
    value = b"\x02record"
    signed = [(CANARY_HEADER, sign_canary(signer, "customers", value))]
    verifier = signer.verifier
    assert refuse_reserved("canary-rego-x-1", verifier, "customers", value, None)
    assert refuse_reserved("canary-rego-x-1", None, "customers", value, signed)
    assert not refuse_reserved("canary-rego-x-1", verifier, "customers", value, signed)
    # A person's id is never refused for want of a signature.
    assert not refuse_reserved("s-1", verifier, "customers", value, None)


def test_ingest_finds_the_key_of_the_secrets_folder_run_exports(
    signer: CommandSigner, tmp_path: Path
) -> None:
    found = canary_verifier_from_env({ENV_SECRETS: str(tmp_path / "worker")})
    assert isinstance(found, CommandVerifier)
    value = b"\x02record"
    assert canary_signed(
        found, "customers", value, [(CANARY_HEADER, sign_canary(signer, "customers", value))]
    )
    assert canary_verifier_from_env({ENV_SECRETS: str(tmp_path / "empty")}) is None


# -- metrics -------------------------------------------------------------------------------


def test_metrics_exist_from_the_start_and_take_completed_seconds_only() -> None:
    registry = make_registry(process=False)
    metrics = CanaryMetrics(PipelineMetrics(registry), ["inrego", "rego"])

    def sample(name: str, **labels: str) -> float | None:
        return registry.get_sample_value("privacy_pipeline_" + name, labels)

    assert sample("canary_pending_seconds", controller="rego") == 0.0
    assert sample("canary_erasure_seconds_count", controller="rego") == 0.0
    assert sample("canaries_total", controller="rego", outcome="completed") == 0.0
    metrics.observe(Settled("rego", "r", "completed", 3.5))
    metrics.observe(Settled("rego", "r2", "failed", 4000.0))
    metrics.set_pending({"inrego": 12.0, "rego": 0.0})
    assert sample("canary_erasure_seconds_count", controller="rego") == 1.0
    assert sample("canary_erasure_seconds_sum", controller="rego") == 3.5
    assert sample("canary_erasure_seconds_bucket", controller="rego", le="5.0") == 1.0
    assert sample("canary_erasure_seconds_bucket", controller="rego", le="+Inf") == 1.0
    assert sample("canary_erasure_seconds_count", controller="inrego") == 0.0
    assert sample("canaries_total", controller="rego", outcome="completed") == 1.0
    assert sample("canaries_total", controller="rego", outcome="failed") == 1.0
    assert sample("canary_pending_seconds", controller="inrego") == 12.0
