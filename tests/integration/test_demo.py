"""`privacy-pipeline demo`: the whole pipeline on synthetic traffic, run as a subprocess.

The long test runs the demo for 25 s on its own embedded broker (ports from
``PRIVACY_PIPELINE_TEST_PORTS``, else 19700-19799), scrapes its metrics endpoint while it
runs, and reads its live summary. The short ones check the pieces the summary is built
from, without a broker.
"""

from __future__ import annotations

import math
import os
import re
import signal
import subprocess
import sys
import time
import urllib.request
from collections import Counter
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from click.testing import CliRunner
from prometheus_client import CollectorRegistry
from prometheus_client.parser import text_string_to_metric_families

from privacy_pipeline.cli.live import demo
from privacy_pipeline.demo.runner import (
    DemoTraffic,
    Snapshot,
    bucket_quantile,
    format_summary,
    read_snapshot,
)
from privacy_pipeline.embedded_broker.launcher import free_port
from privacy_pipeline.processors.instants import parse_instant
from privacy_pipeline.streams.metrics import PipelineMetrics

DURATION = 25
DEFAULT_PORTS = range(19700, 19800)

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


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory: pytest.TempPathFactory) -> dict[str, object]:
    """Run the demo once for DURATION seconds; return its exit code, output and a scrape."""
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
        "7",
    ]
    env = {k: v for k, v in os.environ.items() if k != "KAFKA_BOOTSTRAP_SERVERS"}
    url = f"http://127.0.0.1:{metrics_port}/metrics"
    scrape: str | None = None
    with stdout_path.open("w") as out, stderr_path.open("w") as err:
        process = subprocess.Popen(command, stdout=out, stderr=err, env=env, start_new_session=True)
        try:
            deadline = time.monotonic() + DURATION + 120
            while process.poll() is None:
                if time.monotonic() > deadline:
                    pytest.fail("the demo did not stop after --duration")
                text = _scrape(url)
                if text is not None and _events_total(text) > 0:
                    scrape = text  # keep the latest scrape taken while traffic flowed
                time.sleep(1.0)
        finally:
            if process.poll() is None:  # only on failure: stop what we started
                os.killpg(process.pid, signal.SIGKILL)
                process.wait(10)
    return {
        "code": process.returncode,
        "stdout": stdout_path.read_text(errors="replace"),
        "stderr": stderr_path.read_text(errors="replace"),
        "scrape": scrape,
    }


@pytest.mark.slow
def test_demo_exits_cleanly(demo_run: dict[str, object]) -> None:
    stderr = str(demo_run["stderr"])
    assert demo_run["code"] == 0, stderr[-3000:]
    assert "Traceback" not in stderr, stderr[-3000:]
    assert "everything is kept in memory" in stderr
    assert "privacy-pipeline tail erasure-commands --broker 127.0.0.1:" in stderr
    assert re.search(r"metrics at http://127\.0\.0\.1:\d+/metrics", stderr)
    assert "demo: done (ok)" in stderr
    # Every client let go before the broker stopped (frozen GC objects once kept the
    # worker's connections open, and the broker had to be killed).
    assert "ignored SIGTERM" not in stderr, stderr[-3000:]


@pytest.mark.slow
def test_demo_summary_shows_the_pipeline_at_work(demo_run: dict[str, object]) -> None:
    stderr = str(demo_run["stderr"])
    lines = [line for line in stderr.splitlines() if SUMMARY_LINE.match(line)]
    assert len(lines) >= 3, stderr[-3000:]
    rates = [SUMMARY_LINE.match(line).groups() for line in lines]  # type: ignore[union-attr]
    assert max(_int(incoming) for incoming, _ in rates) > 0
    assert max(_int(enforced) for _, enforced in rates) > 0

    final = next(line for line in stderr.splitlines() if line.startswith("demo: done"))
    decisions = re.search(r"; decisions (.*?);", final)
    erasures = re.search(r"; erasure commands (.*?);", final)
    dead = re.search(r"; dead letters ([\d,]+)", final)
    assert decisions and erasures and dead, final
    assert _counts(decisions.group(1)).get("tag", 0) > 0, final
    reasons = _counts(erasures.group(1))
    assert reasons.get("retention_expired", 0) > 0, final
    assert reasons.get("objection", 0) + reasons.get("consent_withdrawn", 0) > 0, final
    assert _int(dead.group(1)) > 0, final
    # The periodic lines carry the same sections.
    last = lines[-1]
    for section in ("decisions ", "suppressed ", "erasure commands ", "dead letters ", "p99 "):
        assert section in last, last


@pytest.mark.slow
def test_demo_serves_the_metric_families(demo_run: dict[str, object]) -> None:
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
def test_demo_prints_no_personal_data(demo_run: dict[str, object]) -> None:
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
    line = format_summary(after, before, elapsed=12.0, produced=4100)
    assert "events 2,000/s in" in line
    assert "decisions tag 1, erasure 1" in line
    assert "suppressed direct_marketing/objection 1" in line
    assert "erasure commands retention_expired 1" in line
    assert "dead letters 3" in line
    assert "opt-outs 3" in line
    assert "C1000001" not in line and "inr-100001" not in line
    assert re.search(r"latency p50 \d+ms p99 \d+ms", line), line
    slow = Snapshot(optout_buckets=[(5.0, 1.0), (10.0, 1.0), (math.inf, 4.0)])
    assert "opt-outs 4, latency p50 >10s p99 >10s" in format_summary(slow, None, 1.0)
