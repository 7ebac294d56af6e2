"""`privacy-pipeline demo`: the whole pipeline on synthetic traffic, run as a subprocess.

The long test runs the demo once on its own embedded broker (ports from
``PRIVACY_PIPELINE_TEST_PORTS``, else 19700-19799): RATE events/s until MAX_EVENTS have
been sent, then DURATION in all. While it runs, the test scrapes its metrics endpoint and
pauses the web-analytics sink (SIGSTOP) for longer than the worker's ack timeout, then
resumes it. Afterwards it reads the summary and opens the two sinks' SQLite files: the
rows there are the traffic model's values, and the people who asked for erasure have
none. The short ones check the pieces the summary is built from, without a broker.
"""

from __future__ import annotations

import json
import math
import os
import re
import signal
import sqlite3
import subprocess
import sys
import time
import urllib.request
from collections import Counter
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from prometheus_client import CollectorRegistry
from prometheus_client.parser import text_string_to_metric_families
from worker_process import child_env

from privacy_pipeline.cli.live import demo
from privacy_pipeline.demo.loop import LoopCounts
from privacy_pipeline.demo.runner import (
    DemoTraffic,
    SinkView,
    Snapshot,
    bucket_quantile,
    format_summary,
    read_snapshot,
)
from privacy_pipeline.embedded_broker.launcher import free_port
from privacy_pipeline.processors.events import RESERVED_SUBJECT_PREFIX
from privacy_pipeline.processors.instants import parse_instant
from privacy_pipeline.sink.scopes import subject_key
from privacy_pipeline.streams.metrics import PipelineMetrics

SEED = 7
RATE = 500
MAX_EVENTS = 20_000  # 40 s of traffic: the pipeline and the sinks drain before the end
DURATION = 75
PAUSE_AFTER = 5.0  # seconds of traffic before the web-analytics sink is paused
PAUSE_FOR = 30.0  # longer than the demo's ack timeout (20 s)
DEFAULT_PORTS = range(19700, 19800)
WIDTH = 100

REQUIRED_FAMILIES = (
    "privacy_pipeline_events",
    "privacy_pipeline_decisions",
    "privacy_pipeline_suppressions",
    "privacy_pipeline_erasure_commands",
    "privacy_pipeline_dead_letters",
    "privacy_pipeline_processing_seconds",
    "privacy_pipeline_optout_latency_seconds",
    "privacy_pipeline_retention_timers",
)

# Personal data the synthetic traffic carries, which must never reach the terminal.
EMAIL = re.compile(r"[\w.+-]+@[\w-]+(?:\.[\w-]+)+")
IPV4 = re.compile(r"(?<![\d.])(?:\d{1,3}\.){3}\d{1,3}(?![\d.])")
IPV6 = re.compile(r"2001:db8:|[0-9a-f]{1,4}::[0-9a-f]{1,4}", re.IGNORECASE)
PERSONNUMMER = re.compile(r"(?<!\d)(?:\d{2})?\d{6}[-+]\d{4}(?!\d)")
SUBJECT_ID = re.compile(
    r"(?<![\w-])(?:C1\d{6}|inr-\d{6}|RJ\d{6}|iret-\d{6}|visitor-[0-9a-f]{12}|legacy-\S+)"
)
LOCAL_ADDRESSES = {"127.0.0.1", "0.0.0.0"}  # noqa: S104 - a string to allow, not a bind

SUMMARY_LINE = re.compile(r"^\[\s*\d+s\] events ([\d,]+)/s in, ([\d,]+)/s enforced")
SINKS_LINE = re.compile(
    r"sinks: commands ([\d,]+), acked ([\d,]+), overdue ([\d,]+), retried ([\d,]+); "
    r"rows erased ([\d,]+)"
)
SINK_PIDS = re.compile(r"demo: sinks web-analytics \(pid (\d+)\), credit-agency \(pid (\d+)\)")
FOLDER = re.compile(r"demo: the sinks' databases stay in\s+(\S+)")


def _ports(count: int) -> list[int]:
    """`count` distinct free ports from PRIVACY_PIPELINE_TEST_PORTS, else 19700-19799."""
    spec = os.environ.get("PRIVACY_PIPELINE_TEST_PORTS", "").strip()
    candidates = DEFAULT_PORTS
    if spec:
        low, _, high = spec.partition("-")
        candidates = range(int(low), int(high or low) + 1)
    chosen: list[int] = []
    for _ in range(count):
        chosen.append(free_port(candidates=[p for p in candidates if p not in chosen]))
    return chosen


def _int(text: str) -> int:
    return int(text.replace(",", ""))


def _counts(segment: str) -> dict[str, int]:
    """`reason 1,234, other 5, +2 more` -> {reason: 1234, other: 5}."""
    found = re.findall(r"([\w/]+) ([\d,]+)(?:,|$)", segment.strip())
    return {name: _int(n) for name, n in found}


def _scrape(url: str) -> str | None:
    try:
        with urllib.request.urlopen(url, timeout=2) as response:  # noqa: S310 - local http
            return str(response.read().decode())
    except OSError:
        return None


def _events_total(text: str) -> float:
    total = 0.0
    for family in text_string_to_metric_families(text):
        if family.name == "privacy_pipeline_events":
            total += sum(s.value for s in family.samples if s.name.endswith("_total"))
    return total


def _sinks_lines(text: str) -> list[tuple[int, ...]]:
    """(commands, acked, overdue, retried, rows erased) of every sinks line, in order."""
    return [tuple(_int(g) for g in m.groups()) for m in SINKS_LINE.finditer(text)]


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """Run the demo once; pause and resume the web-analytics sink on the way; return its
    exit code, output, a scrape, and what the output said while the sink was paused."""
    broker_port, metrics_port = _ports(2)
    out_dir: Path = tmp_path_factory.mktemp("demo")
    stdout_path, stderr_path = out_dir / "stdout", out_dir / "stderr"
    command = [
        sys.executable,
        "-c",
        "from privacy_pipeline.cli.live import demo; demo()",
        "--broker-port",
        str(broker_port),
        "--metrics-port",
        str(metrics_port),
        "--duration",
        str(DURATION),
        "--seed",
        str(SEED),
        "--rate",
        str(RATE),
        "--max-events",
        str(MAX_EVENTS),
    ]
    # The session's own secrets and temporary folder: the sinks' databases land in it.
    env = child_env(out_dir / "tmp")
    url = f"http://127.0.0.1:{metrics_port}/metrics"
    scrape: str | None = None
    paused: dict[str, Any] = {}
    with stdout_path.open("w") as out, stderr_path.open("w") as err:
        process = subprocess.Popen(command, stdout=out, stderr=err, env=env, start_new_session=True)
        try:
            deadline = time.monotonic() + DURATION + 120
            producing: float | None = None
            while process.poll() is None:
                if time.monotonic() > deadline:
                    pytest.fail("the demo did not stop after --duration")
                text = _scrape(url)
                if text is not None and _events_total(text) > 0:
                    scrape = text  # keep the latest scrape taken while traffic flowed
                    producing = producing or time.monotonic()
                _pause_and_resume(stderr_path, producing, paused)
                time.sleep(1.0)
        finally:
            if "pid" in paused and "resumed" not in paused:
                os.kill(paused["pid"], signal.SIGCONT)
            if process.poll() is None:  # only on failure: stop what we started
                os.killpg(process.pid, signal.SIGKILL)
                process.wait(10)
    stderr = stderr_path.read_text(errors="replace")
    found = FOLDER.search(stderr)
    return {
        "code": process.returncode,
        "stdout": stdout_path.read_text(errors="replace"),
        "stderr": stderr,
        "scrape": scrape,
        "paused": paused,
        "folder": Path(found.group(1)) if found else None,
    }


def _pause_and_resume(stderr: Path, producing: float | None, paused: dict[str, Any]) -> None:
    """SIGSTOP the web-analytics sink PAUSE_AFTER s into the traffic, SIGCONT it PAUSE_FOR
    s later; note where the output stood at each step."""
    if producing is None or "resumed" in paused:
        return
    now = time.monotonic()
    if "pid" not in paused and now - producing >= PAUSE_AFTER:
        pids = SINK_PIDS.search(stderr.read_text(errors="replace"))
        assert pids, "the demo did not print the sinks' pids"
        paused["pid"] = int(pids.group(1))
        os.kill(paused["pid"], signal.SIGSTOP)
        paused["at"] = now
        paused["before"] = len(stderr.read_text(errors="replace"))
    elif "pid" in paused and now - paused["at"] >= PAUSE_FOR:
        os.kill(paused["pid"], signal.SIGCONT)
        paused["resumed"] = len(stderr.read_text(errors="replace"))


@pytest.mark.slow
def test_demo_exits_cleanly(demo_run: dict[str, Any]) -> None:
    stderr = str(demo_run["stderr"])
    assert demo_run["code"] == 0, stderr[-3000:]
    assert "Traceback" not in stderr, stderr[-3000:]
    assert "everything is kept in memory" in stderr.replace("\n  ", " ")
    # The tail command it suggests runs as printed: the script next to this interpreter.
    cli = Path(sys.executable).with_name("privacy-pipeline")
    hint = re.search(
        r"read any topic with: (\S+) tail erasure-commands --broker 127\.0\.0\.1:", stderr
    )
    assert hint, stderr[:3000]
    assert Path(hint.group(1)).resolve() == cli.resolve()
    assert re.search(r"metrics at http://127\.0\.0\.1:\d+/metrics", stderr)
    assert "demo: done (ok)" in stderr
    # Every client let go before the broker stopped (frozen GC objects once kept the
    # worker's connections open, and the broker had to be killed).
    assert "ignored SIGTERM" not in stderr, stderr[-3000:]


@pytest.mark.slow
def test_demo_output_fits_in_100_columns(demo_run: dict[str, Any]) -> None:
    stderr = str(demo_run["stderr"])
    folder = str(demo_run["folder"])
    ours = [
        line
        for line in stderr.splitlines()
        if line.startswith(("demo:", "[", "  ", " " * 9)) and folder not in line
    ]
    assert len(ours) > 30
    too_wide = [line for line in ours if len(line) > WIDTH]
    assert not too_wide, too_wide


@pytest.mark.slow
def test_demo_summary_shows_the_pipeline_at_work(demo_run: dict[str, Any]) -> None:
    stderr = str(demo_run["stderr"])
    lines = [line for line in stderr.splitlines() if SUMMARY_LINE.match(line)]
    assert len(lines) >= 3, stderr[-3000:]
    rates = [SUMMARY_LINE.match(line).groups() for line in lines]  # type: ignore[union-attr]
    assert max(_int(incoming) for incoming, _ in rates) > 0
    assert max(_int(enforced) for _, enforced in rates) > 0

    closing = stderr[stderr.index("demo: done") :]
    produced = re.search(r"produced ([\d,]+) events", closing)
    decisions = re.search(r"\n  decisions (.*)\n", closing)
    erasures = re.search(r"\n  erasure commands (.*)\n", closing)
    dead = re.search(r"\n  dead letters ([\d,]+)", closing)
    assert produced and decisions and erasures and dead, closing
    assert _int(produced.group(1)) == MAX_EVENTS
    assert "left unread" not in closing, closing  # the demo kept up
    assert _counts(decisions.group(1)).get("tag", 0) > 0, closing
    reasons = _counts(erasures.group(1))
    assert reasons.get("retention_expired", 0) + reasons.get("objection", 0) > 0, closing
    assert _int(dead.group(1)) > 0, closing
    # Each periodic block carries the same sections.
    block = stderr[stderr.rindex("\n[") :]
    for section in ("decisions ", "p99 ", "sinks: commands ", "requests ", "web-analytics "):
        assert section in block, block


@pytest.mark.slow
def test_a_paused_sink_shows_its_commands_overdue_then_retried(demo_run: dict[str, Any]) -> None:
    stderr, paused = str(demo_run["stderr"]), demo_run["paused"]
    assert "resumed" in paused, "the test did not get to pause and resume the sink"
    assert f"sink web-analytics (pid {paused['pid']}) is paused" in stderr
    while_paused = _sinks_lines(stderr[paused["before"] : paused["resumed"]])
    assert while_paused, stderr[paused["before"] : paused["resumed"]]
    # Commands kept coming and went unanswered past the ack timeout, and the worker's
    # tracker issued them again.
    assert max(overdue for _, _, overdue, _, _ in while_paused) > 0, while_paused
    assert while_paused[-1][3] > 0, while_paused
    assert f"sink web-analytics (pid {paused['pid']}) runs again" in stderr
    # Once resumed, the sink answered every one of them, the re-issues included.
    final = _sinks_lines(stderr[stderr.index("demo: done") :])
    assert len(final) == 1, stderr[-3000:]
    commands, acked, overdue, retried, _rows = final[0]
    assert (acked, overdue) == (commands, 0), final
    assert retried >= while_paused[-1][3] > 0


# -- the sinks' databases ------------------------------------------------------------------


def _traffic(produced: int) -> list[dict[str, Any]]:
    """The live events the demo sent: the same seed, rate and count give the same people
    and values (only the instants follow the clock)."""
    traffic = DemoTraffic(SEED, RATE, MAX_EVENTS, datetime.now(UTC))
    records = [r for _, r in zip(range(produced), traffic.records(), strict=False)]
    return [r.event for r in records if r.kind == "live"]


def _query(db: Path, sql: str) -> list[tuple[Any, ...]]:
    with sqlite3.connect(db) as conn:
        return conn.execute(sql).fetchall()


def _erasure_requesters(events: list[dict[str, Any]], controllers: set[str]) -> set[str]:
    """Subject keys of the people who asked for everything to be erased."""
    return {
        subject_key(e["controller"], e["subject_id"])
        for e in events
        if e["type"] == "privacy_request"
        and e["right"] == "erasure"
        and not e.get("purposes")
        and e["controller"] in controllers
    }


@pytest.fixture(scope="module")
def sent(demo_run: dict[str, Any]) -> list[dict[str, Any]]:
    produced = re.search(r"produced ([\d,]+) events", str(demo_run["stderr"]))
    assert produced, str(demo_run["stderr"])[-3000:]
    return _traffic(_int(produced.group(1)))


@pytest.mark.slow
def test_page_views_hold_the_clicks_of_people_who_did_not_ask_for_erasure(
    demo_run: dict[str, Any], sent: list[dict[str, Any]]
) -> None:
    db = demo_run["folder"] / "web-analytics.db"
    clicks = {e["event_id"]: e for e in sent if e["type"] == "click"}
    rows = _query(
        db, "SELECT event_id, controller, subject_id, url, ip, user_agent, anonymous_id "
        "FROM page_views",
    )  # fmt: skip
    assert len(rows) > 1000, len(rows)
    for event_id, controller, subject_id, url, ip, user_agent, anonymous_id in rows:
        click = clicks[event_id]
        assert controller in ("rego", "inrego")
        assert (controller, subject_id, url, ip, user_agent, anonymous_id) == (
            click["controller"], click["subject_id"], click["url"], click["ip"],
            click["user_agent"], click.get("anonymous_id"),
        )  # fmt: skip
    # Rego's and Inrego's clicks are there, nobody else's.
    assert {r[1] for r in rows} == {"rego", "inrego"}

    clicked = {subject_key(e["controller"], e["subject_id"]) for e in sent if e["type"] == "click"}
    asked = _erasure_requesters(sent, {"rego", "inrego"}) & clicked
    erased = {key for (key,) in _query(db, "SELECT subject_key FROM command_scopes "
                                           "WHERE action = 'erase'")}  # fmt: skip
    # Every erasure request of someone who had visited reached the sink (and nobody
    # else's: a person without visits has nothing there), and their clicks are gone.
    assert asked <= erased and len(asked) >= 10, (len(asked), len(asked & erased))
    with_rows = {subject_key(c, s) for _, c, s, *_ in rows}
    assert not asked & with_rows


@pytest.mark.slow
def test_credit_subjects_hold_the_register_without_the_erased(
    demo_run: dict[str, Any], sent: list[dict[str, Any]]
) -> None:
    db = demo_run["folder"] / "credit-agency.db"
    people: dict[tuple[str, str], dict[str, set[str]]] = {}
    for e in sent:
        if e["type"] == "customer" and e.get("fields"):
            values = people.setdefault((e["controller"], e["subject_id"]), {})
            for name, value in e["fields"].items():
                values.setdefault(name, set()).add(value)
    rows = _query(
        db, "SELECT controller, subject_id, name, email, phone, address, personnummer "
        "FROM credit_subjects",
    )  # fmt: skip
    # Rejoin's deletion canaries reach the agency like anyone; one planted near the end
    # may still be there (its erasure not yet due). The model's people are checked here,
    # the canaries in test_demo_canaries_are_erased_everywhere.
    rows = [r for r in rows if not r[1].startswith(RESERVED_SUBJECT_PREFIX)]
    assert len(rows) > 100, len(rows)
    for controller, subject_id, *values in rows:
        known = people[(controller, subject_id)]
        for column, value in zip(
            ("name", "email", "phone", "address", "personnummer"), values, strict=True
        ):
            if value is not None:
                assert value in known[column], (column, controller)
    assert {r[0] for r in rows} == {"rego", "rejoin"}
    # Rego sends the credit agency only people with a personnummer (credit checks).
    assert all(r[6] is not None for r in rows if r[0] == "rego")

    asked = _erasure_requesters(sent, {"rego", "rejoin"})
    erased = {key for (key,) in _query(db, "SELECT subject_key FROM command_scopes "
                                           "WHERE action = 'erase'")}  # fmt: skip
    # Whose rows the agency got: RE&GO's customers registered with a personnummer (its
    # credit checks), all of Rejoin's (its contracts).
    registered = {
        subject_key(e["controller"], e["subject_id"])
        for e in sent
        if e["type"] == "customer"
        and e["action"] == "created"
        and (e["controller"] == "rejoin" or "personnummer" in (e.get("fields") or {}))
    }
    # Every erasure request of someone registered reached the sink; their rows are gone.
    assert asked & registered <= erased
    assert len(asked & registered) >= 5
    with_rows = {subject_key(r[0], r[1]) for r in rows}
    assert not asked & erased & with_rows


@pytest.mark.slow
def test_the_summary_counts_the_acks_the_databases_stored(demo_run: dict[str, Any]) -> None:
    closing = str(demo_run["stderr"])[str(demo_run["stderr"]).index("demo: done") :]
    (commands, acked, overdue, _retried, rows_erased) = _sinks_lines(closing)[0]
    answered = 0
    erased = 0
    for name in ("web-analytics.db", "credit-agency.db"):
        db = demo_run["folder"] / name
        actions = dict(_query(db, "SELECT command_id, action FROM command_scopes"))
        for command_id, status, ack in _query(
            db, "SELECT command_id, status, ack FROM applied_commands"
        ):
            if status == "failed":
                continue
            answered += 1
            if actions[command_id] != "restrict":
                erased += sum(json.loads(ack)["rows"].values())
    assert (acked, overdue) == (answered, 0)
    assert acked == commands
    assert rows_erased == erased > 0
    requests = re.search(r"requests ([\d,]+): completed ([\d,]+), in progress ([\d,]+)", closing)
    assert requests, closing
    total, completed, open_ = (_int(g) for g in requests.groups())
    assert total > 20 and completed == total and open_ == 0, closing


@pytest.mark.slow
def test_demo_serves_the_metric_families(demo_run: dict[str, Any]) -> None:
    scrape = demo_run["scrape"]
    assert isinstance(scrape, str), "no scrape of the metrics endpoint saw events flowing"
    families = {f.name: f for f in text_string_to_metric_families(scrape)}
    missing = [name for name in REQUIRED_FAMILIES if name not in families]
    assert not missing, f"missing metric families: {missing}"
    assert _events_total(scrape) > 0
    timers = families["privacy_pipeline_retention_timers"]
    assert any(s.value > 0 for s in timers.samples), "no retention timers pending"
    processing = families["privacy_pipeline_processing_seconds"]
    count = [s.value for s in processing.samples if s.name.endswith("_count")]
    assert count and count[0] > 0


@pytest.mark.slow
def test_demo_canaries_are_erased_everywhere(demo_run: dict[str, Any]) -> None:
    # A canary every 30 s per controller; the demo's targets answer (two sinks and the
    # stand-in), so each canary that got its request completes, and none fails.
    scrape = demo_run["scrape"]
    assert isinstance(scrape, str)
    outcomes: Counter[tuple[str, str]] = Counter()
    for family in text_string_to_metric_families(scrape):
        if family.name == "privacy_pipeline_canaries":
            for sample in family.samples:
                if sample.name.endswith("_total"):
                    outcomes[(sample.labels["controller"], sample.labels["outcome"])] += int(
                        sample.value
                    )
    completed = {c for (c, outcome), n in outcomes.items() if outcome == "completed" and n}
    assert completed == {"rego", "inrego", "rejoin", "iret", "unnamed004"}, outcomes
    assert not [k for k, n in outcomes.items() if k[1] != "completed" and n], outcomes
    assert any(line.strip().startswith("canaries: ") for line in demo_run["stderr"].splitlines())


@pytest.mark.slow
def test_demo_prints_no_personal_data(demo_run: dict[str, Any]) -> None:
    for stream in ("stdout", "stderr"):
        text = str(demo_run[stream])
        assert not EMAIL.search(text), f"{stream}: an e-mail address"
        addresses = set(IPV4.findall(text)) - LOCAL_ADDRESSES
        assert not addresses, f"{stream}: IP addresses {sorted(addresses)}"
        assert not IPV6.search(text), f"{stream}: an IPv6 address"
        assert not PERSONNUMMER.search(text), f"{stream}: a personnummer-shaped string"
        assert not SUBJECT_ID.search(text), f"{stream}: a subject id"


# -- the pieces, without a broker ----------------------------------------------------------


def test_demo_help_lists_the_options() -> None:
    result = CliRunner().invoke(demo, ["--help"])
    assert result.exit_code == 0
    for option in (
        "--broker",
        "--metrics-port",
        "--rate",
        "--max-events",
        "--duration",
        "--seed",
        "--partitions",
    ):
        assert option in result.output


def test_traffic_mixes_live_legacy_and_malformed_records() -> None:
    now = datetime(2026, 3, 1, 12, tzinfo=UTC)
    traffic = DemoTraffic(3, 2000, 20_000, now)
    records = list(traffic.records())
    assert len(records) == 20_000
    kinds = Counter(r.kind for r in records)
    assert 300 <= kinds["old"] <= 500  # 2 %
    assert 40 <= kinds["bad"] <= 200  # ~0.5 %
    assert {r.topic for r in records} == {
        "customers",
        "orders",
        "clicks",
        "consents",
        "privacy-requests",
    }
    assert {r.event["controller"] for r in records if r.kind == "live"} == {
        "rego",
        "inrego",
        "rejoin",
        "iret",
        "unnamed004",
    }
    for r in records:
        if r.kind == "bad":
            continue
        at = parse_instant(r.event["occurred_at"])
        if r.kind == "old":
            assert at < now - timedelta(days=3 * 365 + 31)  # older than 37 months
            assert str(r.event["subject_id"]).startswith("legacy-")
        elif r.kind == "live":
            assert now - timedelta(seconds=1) <= at <= now + timedelta(seconds=20)
            assert r.value[:2] == b"\xc3\x01"  # Avro single-object encoding
    assert DemoTraffic(3, 2000, 20_000, now).records().__next__() == records[0]


def test_bucket_quantile_interpolates_like_prometheus() -> None:
    buckets = [(0.1, 0.0), (0.5, 50.0), (1.0, 100.0), (math.inf, 100.0)]
    assert bucket_quantile(0.5, buckets) == pytest.approx(0.5)
    assert bucket_quantile(0.25, buckets) == pytest.approx(0.3)
    assert bucket_quantile(0.99, buckets) == pytest.approx(0.99)
    assert bucket_quantile(0.99, [(1.0, 0.0), (math.inf, 10.0)]) == 1.0
    assert bucket_quantile(0.5, [(1.0, 0.0), (math.inf, 0.0)]) is None
    assert bucket_quantile(0.5, []) is None


def test_summary_reads_the_registry_and_shows_counts_only() -> None:
    registry = CollectorRegistry()
    metrics = PipelineMetrics(registry)
    before = read_snapshot(registry, now=0.0)
    metrics.observe_event("clicks", "click", "inrego", 4000)
    metrics.observe_dead_letter("clicks", "undecodable", 3)
    metrics.observe_decisions(
        [
            {
                "decision": "tag",
                "controller": "rego",
                "subject_id": "C1000001",
                "suppressed": [{"purpose": "direct_marketing", "reason": "objection"}],
            },
            {
                "decision": "erasure",
                "controller": "inrego",
                "subject_id": "inr-100001",
                "reason": "retention_expired",
                "action": "erase",
                "target": "crm",
            },
        ]
    )
    for seconds in (0.02, 0.03, 0.2):
        metrics.observe_optout_latency(seconds)
        metrics.observe_processing(seconds)
    after = read_snapshot(registry, now=2.0)
    assert isinstance(after, Snapshot)
    assert after.events == 4000
    assert after.enforced == 3
    lines = format_summary(after, before, elapsed=12.0, produced=4100)
    assert lines == [
        "[   12s] events 2,000/s in, 2/s enforced; produced 4,100, accepted 4,000; dead letters 3",
        "         decisions tag 1, erasure 1; opt-outs 3, p50 38ms p99 245ms",
    ]
    slow = Snapshot(optout_buckets=[(5.0, 1.0), (10.0, 1.0), (math.inf, 4.0)])
    assert "opt-outs 4, p50 >10s p99 >10s" in format_summary(slow, None, 1.0)[1]


def test_summary_shows_the_loop_and_the_sinks_in_100_columns() -> None:
    loop = LoopCounts(
        sink_issued=152,
        sink_reissued=3,
        sink_answered=151,
        sink_overdue=1,
        rows_erased=62,
        requests=121,
        requests_completed=119,
        requests_open=1,
        requests_partial=1,
        escalations=0,
    )
    sinks = [
        SinkView("web-analytics", "paused", 16857, 3595, 12),
        SinkView("credit-agency", "running", 16858, 467, 0),
    ]
    lines = format_summary(Snapshot(at=1.0), Snapshot(), 45.0, 16474, loop, sinks)
    assert lines[2:] == [
        "         sinks: commands 152, acked 151, overdue 1, retried 3; rows erased 62",
        "         requests 121: completed 119, in progress 1, partially 1; escalations 0",
        "         web-analytics 3,595 rows (PAUSED, kill -CONT 16857), "
        "credit-agency 467 rows (pid 16858)",
    ]
    huge = LoopCounts(*(1_234_567,) * 15)
    big = Snapshot(at=1.0, events=12_345_678, enforced=12_345_678)
    big.decisions.update({"tag": 12_345_678, "erasure": 1_234_567, "extract": 123_456})
    big.dead_letters.update({"undecodable": 1_234_567})
    views = [SinkView(t, "down", 4_194_304, 12_345_678) for t in ("web-analytics", "credit-agency")]
    for line in format_summary(big, Snapshot(), 12_345.0, 12_345_678, huge, views):
        assert len(line) <= 100, line


def test_the_loop_counts_each_command_once_and_sees_it_overdue() -> None:
    from privacy_pipeline.demo.loop import _Loop

    loop = _Loop(["web-analytics"], ack_timeout=20.0)
    cmd = {"command_id": "c1", "target": "web-analytics", "action": "erase", "attempt": 1}
    other = {"command_id": "c2", "target": "crm", "action": "erase", "attempt": 1}
    assert loop.command(cmd, now=0.0) is False  # a sink answers it
    assert loop.command(other, now=0.0) is True  # the stand-in answers it
    loop.tally(now=19.0)
    assert loop.c[4] == 0  # not overdue yet
    loop.tally(now=21.0)
    assert loop.c[4] == 1
    assert loop.command({**cmd, "attempt": 2}, now=21.0) is False
    ack = {"command_id": "c1", "target": "web-analytics", "status": "done", "rows": {"t": 4}}
    loop.ack(ack)
    loop.ack(ack)  # the stored ack, sent again for the re-issue
    loop.tally(now=22.0)
    # An ack read before its command: its rows are sorted once the command is read.
    restrict = {"command_id": "c3", "target": "web-analytics", "action": "restrict"}
    loop.ack({**ack, "command_id": "c3", "status": "retained", "rows": {"t": 2}})
    loop.command(restrict, now=23.0)
    loop.tally(now=60.0)
    counts = loop.c
    # issued, re-issued, answered, failed, overdue, rows erased, rows restricted, other
    assert counts[:8] == [2, 1, 2, 0, 0, 4, 2, 1]
