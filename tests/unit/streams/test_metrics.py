"""Unit tests of privacy_pipeline.streams.metrics."""

from __future__ import annotations

import json
import re
import socket
import subprocess
import urllib.request
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import CollectorRegistry, generate_latest

from privacy_pipeline.sink.metrics import SinkMetrics
from privacy_pipeline.streams.canary import CanaryMetrics
from privacy_pipeline.streams.metrics import (
    OTHER,
    PipelineMetrics,
    make_registry,
    safe_label_value,
    serve_metrics,
)

P = "privacy_pipeline_"


def _value(registry: CollectorRegistry, name: str, **labels: str) -> float | None:
    return registry.get_sample_value(P + name, labels)


def _tag(controller: str, *suppressed: tuple[str, str]) -> dict[str, Any]:
    return {
        "decision": "tag",
        "event_id": "e1",
        "controller": controller,
        "subject_id": "s-1",
        "purposes": [],
        "suppressed": [{"purpose": p, "reason": r} for p, r in suppressed],
    }


def _erasure(controller: str, target: str, reason: str, action: str) -> dict[str, Any]:
    return {
        "decision": "erasure",
        "command_id": "c-1",
        "controller": controller,
        "subject_id": "s-1",
        "target": target,
        "action": action,
        "purposes": ["direct_marketing"],
        "categories": ["email"],
        "reason": reason,
        "rule": "r",
        "issued_at": "2024-01-01T00:00:00Z",
        "deadline": "2024-02-01T00:00:00Z",
    }


def _escalation(controller: str, target: str, reason: str) -> dict[str, Any]:
    return {
        "decision": "escalation",
        "command_id": "c-1",
        "controller": controller,
        "subject_id": "s-1",
        "target": target,
        "action": "erase",
        "reason": reason,
        "attempt": 5,
        "deadline": "2024-02-01T00:00:00Z",
        "escalated_at": "2024-02-01T00:00:00Z",
        "request_id": None,
        "detail": None,
    }


def _status(controller: str, right: str, status: str) -> dict[str, Any]:
    return {
        "decision": "request_status",
        "request_id": "R-1",
        "controller": controller,
        "subject_id": "s-1",
        "right": right,
        "status": status,
    }


def test_observe_decisions_counts_exactly() -> None:
    reg = CollectorRegistry()
    m = PipelineMetrics(reg)
    decisions = [
        _tag("rego"),
        _tag("rego", ("direct_marketing", "consent_withdrawn")),
        _tag("inrego", ("direct_marketing", "objection"), ("analytics", "objection")),
        _erasure("rego", "crm", "erasure_request", "erase"),
        _erasure("rego", "crm", "erasure_request", "erase"),
        _erasure("rego", "ledger", "erasure_request", "restrict"),
        {"decision": "extract", "request_id": "r1", "controller": "iret", "subject_id": "x"},
        {"decision": "reject", "line": 7, "event_id": None, "error": "bad JSON"},
    ]
    m.observe_decisions(decisions)
    m.observe_decisions(iter(decisions[:2]))  # any iterable, counted again

    assert _value(reg, "decisions_total", decision="tag", controller="rego") == 4
    assert _value(reg, "decisions_total", decision="tag", controller="inrego") == 1
    assert _value(reg, "decisions_total", decision="erasure", controller="rego") == 3
    assert _value(reg, "decisions_total", decision="extract", controller="iret") == 1
    assert _value(reg, "decisions_total", decision="reject", controller="none") == 1

    assert (
        _value(
            reg,
            "suppressions_total",
            purpose="direct_marketing",
            reason="consent_withdrawn",
            controller="rego",
        )
        == 2
    )
    assert (
        _value(
            reg,
            "suppressions_total",
            purpose="direct_marketing",
            reason="objection",
            controller="inrego",
        )
        == 1
    )
    assert (
        _value(
            reg, "suppressions_total", purpose="analytics", reason="objection", controller="inrego"
        )
        == 1
    )

    assert (
        _value(
            reg,
            "erasure_commands_total",
            reason="erasure_request",
            action="erase",
            target="crm",
            controller="rego",
        )
        == 2
    )
    assert (
        _value(
            reg,
            "erasure_commands_total",
            reason="erasure_request",
            action="restrict",
            target="ledger",
            controller="rego",
        )
        == 1
    )


def test_other_counters_gauges_and_histograms() -> None:
    reg = CollectorRegistry()
    m = PipelineMetrics(reg)
    m.observe_event("clicks", "click", "inrego")
    m.observe_event("clicks", "click", "inrego", count=4)
    m.observe_events(
        "customers",
        [
            {"type": "customer", "controller": "rego"},
            {"type": "customer", "controller": "rego"},
            {"type": "consent", "controller": "rejoin"},
        ],
    )
    m.observe_dead_letter("orders", "bad_avro")
    m.observe_dead_letter("orders", "bad_avro", count=2)
    m.observe_ack("crm", "done", "rego")
    m.observe_decision(_erasure("rego", "crm", "retention_expired", "anonymize"))
    m.observe_processing(0.0003)
    m.observe_processing(0.2)
    m.observe_optout_latency(0.004)
    m.observe_batch_size(250)
    m.set_retention_timers("rego", 10)
    m.add_retention_timers("rego", -3)
    m.replace_consumer_lag({("subject-log", 0): 42, ("subject-log", 1): 0})

    assert _value(reg, "events_total", topic="clicks", type="click", controller="inrego") == 5
    assert _value(reg, "events_total", topic="customers", type="customer", controller="rego") == 2
    assert _value(reg, "events_total", topic="customers", type="consent", controller="rejoin") == 1
    assert _value(reg, "dead_letters_total", topic="orders", reason="bad_avro") == 3
    assert _value(reg, "erasure_acks_total", target="crm", status="done", controller="rego") == 1
    assert (
        _value(
            reg,
            "erasure_commands_total",
            reason="retention_expired",
            action="anonymize",
            target="crm",
            controller="rego",
        )
        == 1
    )
    assert _value(reg, "processing_seconds_count") == 2
    assert _value(reg, "processing_seconds_bucket", le="0.0005") == 1
    assert _value(reg, "processing_seconds_bucket", le="0.25") == 2
    assert _value(reg, "optout_latency_seconds_bucket", le="0.005") == 1
    assert _value(reg, "optout_latency_seconds_bucket", le="0.001") == 0
    assert _value(reg, "batch_size_events_sum") == 250
    assert _value(reg, "retention_timers", controller="rego") == 7
    assert _value(reg, "consumer_lag_records", topic="subject-log", partition="0") == 42
    assert _value(reg, "consumer_lag_records", topic="subject-log", partition="1") == 0


def test_two_instances_on_two_registries_do_not_clash() -> None:
    reg_a, reg_b = CollectorRegistry(), CollectorRegistry()
    a, b = PipelineMetrics(reg_a), PipelineMetrics(reg_b)
    a.observe_decisions([_tag("rego")])
    b.observe_decisions([_tag("rego"), _tag("rego")])
    assert _value(reg_a, "decisions_total", decision="tag", controller="rego") == 1
    assert _value(reg_b, "decisions_total", decision="tag", controller="rego") == 2


def test_same_registry_twice_is_refused() -> None:
    reg = CollectorRegistry()
    PipelineMetrics(reg)
    with pytest.raises(ValueError, match="Duplicated"):
        PipelineMetrics(reg)


@pytest.mark.parametrize(
    "value",
    [
        "alice@example.com",
        "192.168.1.10",
        "ip-10.0.0.1",
        "2001:db8::1",
        "19121212-1212",
        "121212-1212",
        "121212+1212",
        "191212121212",
        "0701234567",
        "rego:12345",
        "6f1c1d2e-8a7b-4c3d-9e0f-112233445566",
        "a3f5c2e19b7d4e60",
        "x" * 65,
        "has space",
        "path/segment",
    ],
)
def test_personal_looking_label_values_become_other(value: str) -> None:
    assert safe_label_value(value) == OTHER


@pytest.mark.parametrize(
    "value",
    [
        "rego",
        "inrego",
        "unnamed004",
        "direct_marketing",
        "consent_withdrawn",
        "erase",
        "tagged-customers",
        "prod.erasure-commands",
        "crm",
        "x" * 64,
        "tag",
    ],
)
def test_vocabulary_label_values_are_kept(value: str) -> None:
    assert safe_label_value(value) == value


def test_missing_label_value_is_none() -> None:
    assert safe_label_value(None) == "none"
    assert safe_label_value("") == "none"


def test_unsafe_values_are_counted_under_other() -> None:
    reg = CollectorRegistry()
    m = PipelineMetrics(reg)
    m.observe_decisions([_erasure("rego", "bob@example.com", "erasure_request", "erase")])
    m.observe_event("clicks", "click", "10.1.2.3")
    m.observe_dead_letter("clicks", "invalid email alice@example.com")
    assert (
        _value(
            reg,
            "erasure_commands_total",
            reason="erasure_request",
            action="erase",
            target=OTHER,
            controller="rego",
        )
        == 1
    )
    assert _value(reg, "events_total", topic="clicks", type="click", controller=OTHER) == 1
    assert _value(reg, "dead_letters_total", topic="clicks", reason=OTHER) == 1
    exposition = b"".join(
        f"{s.labels}".encode() for metric in reg.collect() for s in metric.samples
    )
    for leaked in (b"@", b"10.1.2.3"):
        assert leaked not in exposition


def test_unknown_controllers_become_other_when_a_closed_set_is_given() -> None:
    reg = CollectorRegistry()
    m = PipelineMetrics(reg, controllers=["rego", "inrego"])
    m.observe_decisions([_tag("rego"), _tag("acme"), _tag("evil")])
    m.observe_event("clicks", "click", "acme")
    assert _value(reg, "decisions_total", decision="tag", controller="rego") == 1
    assert _value(reg, "decisions_total", decision="tag", controller=OTHER) == 2
    assert _value(reg, "events_total", topic="clicks", type="click", controller=OTHER) == 1


def test_series_cap_sends_new_label_sets_to_other() -> None:
    reg = CollectorRegistry()
    m = PipelineMetrics(reg, max_series=3)
    for i in range(10):
        m.observe_dead_letter("clicks", f"reason_{i}")
    assert _value(reg, "dead_letters_total", topic="clicks", reason="reason_2") == 1
    assert _value(reg, "dead_letters_total", topic="clicks", reason="reason_3") is None
    assert _value(reg, "dead_letters_total", topic=OTHER, reason=OTHER) == 7


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.mark.parametrize("explicit_port", [True, False], ids=["free-port", "port-0"])
def test_serve_metrics_answers_http_get_and_stops(explicit_port: bool) -> None:
    reg = make_registry()
    m = PipelineMetrics(reg)
    m.observe_decisions([_tag("rego")])
    port = _free_port() if explicit_port else 0
    stop = serve_metrics(port, reg)
    try:
        assert stop.port == port if explicit_port else stop.port > 0
        with urllib.request.urlopen(stop.url, timeout=5) as resp:  # noqa: S310
            assert resp.status == 200
            body = resp.read().decode()
    finally:
        stop()
    assert 'privacy_pipeline_decisions_total{controller="rego",decision="tag"} 1.0' in body
    assert "process_cpu_seconds_total" in body or "python_info" in body
    stop()  # idempotent
    with pytest.raises(OSError):
        urllib.request.urlopen(stop.url, timeout=2)  # noqa: S310


# -- ops/ files -------------------------------------------------------------

OPS = Path(__file__).resolve().parents[3] / "ops"
_METRIC_NAME = re.compile(r"\bprivacy_pipeline_[a-z0-9_]+")


def _exported_sample_names() -> set[str]:
    reg = CollectorRegistry()
    m = PipelineMetrics(reg)
    m.observe_decisions(
        [
            _tag("rego", ("direct_marketing", "objection")),
            _erasure("rego", "crm", "erasure_request", "erase"),
        ]
    )
    m.observe_event("clicks", "click", "rego")
    m.observe_dead_letter("clicks", "bad_avro")
    m.observe_ack("crm", "done", "rego")
    m.observe_ack_latency("crm", 12.0)
    m.observe_decisions(
        [
            {**_erasure("rego", "crm", "erasure_request", "erase"), "attempt": 2},
            _escalation("rego", "crm", "attempts_exhausted"),
            _status("rego", "erasure", "completed"),
        ]
    )
    m.observe_processing(0.1)
    m.observe_optout_latency(0.1)
    m.observe_subject_log_delay(0.1)
    m.observe_batch_size(3)
    m.observe_refetched(1)
    m.replace_retention_timers({"rego": 1})
    m.replace_open_commands({("crm", "waiting", "rego"): 1}, {("crm", "rego"): 1})
    m.replace_consumer_lag({("clicks", 0): 0})
    m.declare_canaries(["rego"])
    m.observe_canary_erasure("rego", 30.0)
    return {s.name for metric in reg.collect() for s in metric.samples}


def test_ops_files_parse_and_use_only_exported_metrics() -> None:
    yaml = pytest.importorskip("yaml")
    texts: dict[str, str] = {}
    for rel in (
        "prometheus.yml",
        "alerts.yml",
        "alerts_test.yml",
        "../docker-compose.yml",
        "grafana/provisioning/datasources/prometheus.yml",
        "grafana/provisioning/dashboards/privacy-pipeline.yml",
    ):
        texts[rel] = (OPS / rel).read_text()
        assert isinstance(yaml.safe_load(texts[rel]), dict), rel
    texts["dashboard"] = (OPS / "grafana/privacy-pipeline.json").read_text()
    dashboard = json.loads(texts["dashboard"])
    assert dashboard["uid"] == "privacy-pipeline"
    assert all("gridPos" in p for p in dashboard["panels"])

    scrape = yaml.safe_load(texts["prometheus.yml"])["scrape_configs"]
    targets = [t for job in scrape for sc in job["static_configs"] for t in sc["targets"]]
    assert "localhost:9108" in targets

    exported = _exported_sample_names()
    for rel in ("alerts.yml", "alerts_test.yml", "dashboard"):
        used = set(_METRIC_NAME.findall(texts[rel]))
        assert used, rel
        assert used <= exported, (rel, sorted(used - exported))


def test_alert_rules_pass_promtool(promtool: str) -> None:
    for args in (["check", "config", "prometheus.yml"], ["test", "rules", "alerts_test.yml"]):
        done = subprocess.run(
            [promtool, *args], cwd=OPS, capture_output=True, text=True, timeout=60
        )
        assert done.returncode == 0, done.stdout + done.stderr


# -- the erasure loop ----------------------------------------------------------------


def test_reissues_escalations_and_request_statuses_count_apart_from_first_issues() -> None:
    reg = CollectorRegistry()
    m = PipelineMetrics(reg)
    first = _erasure("rego", "crm", "erasure_request", "erase")
    m.observe_decisions(
        [
            first,
            {**first, "attempt": 1},
            {**first, "attempt": 2},
            {**first, "attempt": 3},
            {**_erasure("rego", "ledger", "erasure_request", "restrict"), "attempt": 2},
            _escalation("rego", "crm", "attempts_exhausted"),
            _escalation("rego", "crm", "attempts_exhausted"),
            _escalation("rego", "ledger", "failed"),
            _status("rego", "erasure", "in_progress"),
            _status("rego", "erasure", "partially_completed"),
            _status("rego", "access", "completed"),
        ]
    )
    erased = {"reason": "erasure_request", "action": "erase", "target": "crm"}
    assert _value(reg, "erasure_commands_total", **erased, controller="rego") == 2
    restricted = {"reason": "erasure_request", "action": "restrict", "target": "ledger"}
    assert _value(reg, "erasure_commands_total", **restricted, controller="rego") is None
    assert _value(reg, "erasure_retries_total", target="crm", controller="rego") == 2
    assert _value(reg, "erasure_retries_total", target="ledger", controller="rego") == 1
    escalated = {"target": "crm", "reason": "attempts_exhausted", "controller": "rego"}
    assert _value(reg, "erasure_escalations_total", **escalated) == 2
    failed = {"target": "ledger", "reason": "failed", "controller": "rego"}
    assert _value(reg, "erasure_escalations_total", **failed) == 1
    for right, status in (
        ("erasure", "in_progress"),
        ("erasure", "partially_completed"),
        ("access", "completed"),
    ):
        labels = {"right": right, "status": status, "controller": "rego"}
        assert _value(reg, "request_statuses_total", **labels) == 1
    assert _value(reg, "decisions_total", decision="erasure", controller="rego") == 5
    assert _value(reg, "decisions_total", decision="escalation", controller="rego") == 3
    assert _value(reg, "decisions_total", decision="request_status", controller="rego") == 3


def test_an_ack_status_outside_the_contract_counts_as_other() -> None:
    reg = CollectorRegistry()
    m = PipelineMetrics(reg)
    m.observe_ack("crm", "done", "rego")
    m.observe_ack("crm", "exploded", "rego")
    m.observe_ack("crm", "alice@example.com", "rego")
    assert _value(reg, "erasure_acks_total", target="crm", status="done", controller="rego") == 1
    assert _value(reg, "erasure_acks_total", target="crm", status=OTHER, controller="rego") == 2
    assert (
        _value(reg, "erasure_acks_total", target="crm", status="exploded", controller="rego")
        is None
    )


def test_gauge_snapshots_add_up_merged_label_sets_and_zero_the_ones_gone() -> None:
    reg = CollectorRegistry()
    m = PipelineMetrics(reg)
    # Two targets that look like e-mail addresses both export as "other": 2 + 5.
    m.replace_open_commands(
        {
            ("crm", "waiting", "rego"): 3,
            ("crm", "escalated", "rego"): 1,
            ("bob@example.com", "waiting", "rego"): 2,
            ("carol@example.com", "waiting", "rego"): 5,
        },
        {("crm", "rego"): 1},
    )
    assert (
        _value(reg, "erasure_commands_open", target="crm", state="waiting", controller="rego") == 3
    )
    crm_escalated = {"target": "crm", "state": "escalated", "controller": "rego"}
    assert _value(reg, "erasure_commands_open", **crm_escalated) == 1
    assert (
        _value(reg, "erasure_commands_open", target=OTHER, state="waiting", controller="rego") == 7
    )
    assert _value(reg, "erasure_commands_overdue", target="crm", controller="rego") == 1

    m.replace_open_commands({("crm", "waiting", "rego"): 1}, {})
    assert (
        _value(reg, "erasure_commands_open", target="crm", state="waiting", controller="rego") == 1
    )
    assert _value(reg, "erasure_commands_open", **crm_escalated) == 0
    assert (
        _value(reg, "erasure_commands_open", target=OTHER, state="waiting", controller="rego") == 0
    )
    assert _value(reg, "erasure_commands_overdue", target="crm", controller="rego") == 0

    m.replace_retention_timers({"rego": 4, "inrego": 2})
    m.replace_retention_timers({"inrego": 3})
    assert _value(reg, "retention_timers", controller="rego") == 0
    assert _value(reg, "retention_timers", controller="inrego") == 3


def test_canaries_declared_before_their_first_erasure_export_zero() -> None:
    reg = CollectorRegistry()
    m = PipelineMetrics(reg, controllers=["rego", "inrego"])
    m.declare_canaries(["rego", "inrego"])
    assert _value(reg, "canary_erasure_seconds_count", controller="rego") == 0
    assert _value(reg, "canary_erasure_seconds_bucket", controller="rego", le="600.0") == 0
    assert _value(reg, "canary_pending_seconds", controller="inrego") == 0
    m.set_canary_pending("inrego", 125.0)
    m.observe_canary_erasure("rego", 540.0)
    m.observe_canary_erasure("rego", 660.0)
    assert _value(reg, "canary_pending_seconds", controller="inrego") == 125
    assert _value(reg, "canary_erasure_seconds_bucket", controller="rego", le="600.0") == 1
    assert _value(reg, "canary_erasure_seconds_count", controller="rego") == 2


def test_the_worker_registry_exports_no_created_series() -> None:
    def exposition(reg: CollectorRegistry) -> str:
        m = PipelineMetrics(reg)
        m.observe_decisions([_tag("rego"), _erasure("rego", "crm", "erasure_request", "erase")])
        m.observe_processing(0.01)
        m.replace_retention_timers({"rego": 2})
        return generate_latest(reg).decode()

    plain = exposition(CollectorRegistry())
    assert 'privacy_pipeline_decisions_created{controller="rego",decision="tag"}' in plain
    ours = exposition(make_registry(process=False))
    assert "_created" not in ours
    assert 'privacy_pipeline_decisions_total{controller="rego",decision="tag"} 1.0' in ours
    assert "privacy_pipeline_processing_seconds_count 1.0" in ours
    assert 'privacy_pipeline_retention_timers{controller="rego"} 2.0' in ours


# -- the README's table ----------------------------------------------------------------

README = Path(__file__).resolve().parents[3] / "README.md"


def _family_rows(section: str) -> dict[str, tuple[str, str]]:
    """`family -> (type, labels)` of every table row under a README section."""
    text = README.read_text("utf-8")
    start = text.index(f"\n## {section}\n")
    end = text.find("\n## ", start + 1)
    rows: dict[str, tuple[str, str]] = {}
    for line in text[start:end].splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) == 4 and cells[0].startswith("`"):
            rows[cells[0].strip("`")] = (cells[1], cells[2])
    return rows


def _exported_families(registry: CollectorRegistry) -> dict[str, tuple[str, str]]:
    """`family as the README names it -> (type, labels)`, from the registry itself."""
    families: dict[str, tuple[str, str]] = {}
    for metric in registry.collect():
        name = metric.name.removeprefix(P)
        if metric.type == "counter":
            name += "_total"
        labels = {k for s in metric.samples for k in s.labels if k != "le"}
        families[name] = (metric.type, ", ".join(sorted(labels)))
    return families


def test_the_readme_metric_table_lists_exactly_what_is_exported() -> None:
    registry = CollectorRegistry()
    m = PipelineMetrics(registry)
    sink = SinkMetrics(registry)
    # One sample of each labelled family, so that its label names show.
    m.observe_decisions(
        [
            _tag("rego", ("direct_marketing", "objection")),
            _erasure("rego", "crm", "erasure_request", "erase"),
            {**_erasure("rego", "crm", "erasure_request", "erase"), "attempt": 2},
            _escalation("rego", "crm", "failed"),
            _status("rego", "erasure", "completed"),
        ]
    )
    m.observe_event("clicks", "click", "rego")
    m.observe_dead_letter("clicks", "bad_avro")
    m.observe_ack("crm", "done", "rego")
    m.observe_ack_latency("crm", 1.0)
    m.replace_open_commands({("crm", "waiting", "rego"): 1}, {("crm", "rego"): 1})
    m.replace_retention_timers({"rego": 1})
    m.replace_consumer_lag({("clicks", 0): 1})
    CanaryMetrics(m, ["rego"])  # the canaries' own family, on the worker's registry
    sink.observe_command("crm", "erase", "done", 0.01)
    sink.observe_dead_letter("crm", "invalid_signature")
    exported = _exported_families(registry)
    table = _family_rows("Metrics")
    assert sorted(table) == sorted(exported)
    for name, (kind, labels) in exported.items():
        listed_kind, listed_labels = table[name]
        assert listed_kind == kind, name
        assert sorted(listed_labels.replace(" ", "").split(",")) == sorted(
            labels.replace(" ", "").split(",")
        ), name
