"""A real Prometheus server scrapes a live worker: the ops files checked against what runs.

`privacy-pipeline run` works on the embedded broker with a short ack timeout, so that
within seconds its commands are answered, re-issued and escalated; the Prometheus server
runs with a copy of ops/prometheus.yml (pointed at the worker, scraping every second) and
ops/alerts.yml (rule groups evaluated every second). Through Prometheus's HTTP API:

- the worker is up, and every family of the README's table that a worker serves has
  series, none of them `*_created`;
- every expression of the Grafana dashboards and of the rules evaluates without error,
  and the core panels have data;
- the escalation alert fires, and no other alert does.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
import urllib.parse
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import yaml
from confluent_kafka import OFFSET_BEGINNING, Consumer, Producer, TopicPartition

from privacy_pipeline.embedded_broker.launcher import EmbeddedBroker, die_with_parent
from privacy_pipeline.streams.serde import AvroSerde
from privacy_pipeline.streams.topics import CLICKS, ERASURE_ACKS, ERASURE_COMMANDS
from tests.ops.promql import OPS, dashboard_expressions, free_ports, rule_expressions

pytestmark = [pytest.mark.integration, pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[2]
SERDE = AvroSerde()
# Served only with --canary-every (the canary has its own tests) or by a sink.
NOT_FROM_THIS_WORKER = ("canary_", "canaries_", "sink_")
# Panels that must show data once the worker has had traffic, by title.
CORE_PANELS = (
    "Workers up",
    "Events/s",
    "Decisions/s",
    "Open erasure commands",
    "Events/s by topic",
    "Decisions/s by kind",
    "Dead letters/s by topic and reason",
    "Erasure commands/s by reason",
    "Erasure commands and acks/s by target",
    "Open erasure commands by target and state",
    "Processing latency (event in to decisions out)",
    "Retention timers pending by controller",
    "Consumer lag by topic",
    "Subject-log micro-batch size (events)",
    "Overdue erasure commands",
    "Overdue erasure commands by target",
    "Re-issued and escalated commands by target",
    "Privacy request statuses by right",
)


def _cli() -> str:
    return str(Path(sys.executable).with_name("privacy-pipeline"))


def _instant(at: datetime) -> str:
    return at.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass
class Live:
    broker: str
    prefix: str
    metrics_port: int
    api: str
    worker_log: Path

    def query(self, expr: str) -> dict[str, Any]:
        """Prometheus's answer to an instant query (its JSON), errors included."""
        url = f"{self.api}/api/v1/query?" + urllib.parse.urlencode({"query": expr})
        try:
            with urllib.request.urlopen(url, timeout=10) as resp:  # noqa: S310 - local
                answer: dict[str, Any] = json.load(resp)
        except urllib.error.HTTPError as exc:  # 400/422: a bad query, its JSON says why
            answer = json.load(exc)
        return answer

    def series(self, expr: str) -> list[dict[str, Any]]:
        answer = self.query(expr)
        assert answer["status"] == "success", (expr, answer)
        result: list[dict[str, Any]] = answer["data"]["result"]
        return result

    def get(self, path: str) -> Any:
        with urllib.request.urlopen(self.api + path, timeout=10) as resp:  # noqa: S310
            return json.load(resp)


def _wait(what: str, check: Callable[[], bool], timeout: float, log: Path | None = None) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            tail = "" if log is None else "\n" + "\n".join(log.read_text().splitlines()[-30:])
            raise AssertionError(f"{what}: not within {timeout} s{tail}")
        time.sleep(0.5)


def _prometheus_files(tmp: Path, metrics_port: int) -> Path:
    """ops/prometheus.yml and ops/alerts.yml, copied: the worker's port, 1 s intervals."""
    config = yaml.safe_load((OPS / "prometheus.yml").read_text("utf-8"))
    config["global"] = {"scrape_interval": "1s", "evaluation_interval": "1s"}
    jobs = [job for job in config["scrape_configs"] if job["job_name"] == "privacy-pipeline"]
    assert len(jobs) == 1
    jobs[0]["scrape_interval"] = "1s"
    jobs[0]["static_configs"][0]["targets"] = [f"127.0.0.1:{metrics_port}"]
    config["scrape_configs"] = jobs
    rules = yaml.safe_load((OPS / "alerts.yml").read_text("utf-8"))
    for group in rules["groups"]:
        group["interval"] = "1s"
    (tmp / "alerts.yml").write_text(yaml.safe_dump(rules))
    assert config["rule_files"] == ["alerts.yml"]
    path = tmp / "prometheus.yml"
    path.write_text(yaml.safe_dump(config))
    return path


@contextlib.contextmanager
def _process(args: list[str], log: Path, env: dict[str, str] | None = None) -> Iterator[Any]:
    with log.open("wb") as out:
        proc = subprocess.Popen(  # noqa: S603 - our own binaries
            args,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            env=env,
            preexec_fn=die_with_parent(signal.SIGKILL),
        )
    try:
        yield proc
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)


def _traffic(live: Live) -> None:
    """Inrego: three customers and a visitor. s2 objects to direct marketing: her next
    record is tagged without it, and three targets get a command to erase her marketing
    data. s1 asks for erasure: three more commands. One undecodable click goes to dead
    letters. No target answers: each command is re-issued once (--max-attempts 2),
    then escalated."""
    now = datetime.now(UTC)
    at = _instant(now - timedelta(seconds=30))
    events = [
        {
            "event_id": f"c{i}",
            "type": "customer",
            "controller": "inrego",
            "subject_id": f"s{i}",
            "occurred_at": at,
            "action": "created",
            "fields": {"name": f"Kund {i}", "email": f"kund{i}@example.se"},
        }
        for i in range(3)
    ]
    events += [
        {
            "event_id": "v1",
            "type": "click",
            "controller": "inrego",
            "subject_id": "visitor-1",
            "occurred_at": at,
            "url": "https://example.se/",
            "ip": "192.0.2.1",
            "user_agent": "UA",
        },
        {
            "event_id": "w1",
            "type": "consent",
            "controller": "inrego",
            "subject_id": "s2",
            "occurred_at": _instant(now - timedelta(seconds=20)),
            "purpose": "direct_marketing",
            "action": "object",
            "channel": "email",
        },
        {
            "event_id": "u2",
            "type": "customer",
            "controller": "inrego",
            "subject_id": "s2",
            "occurred_at": _instant(now - timedelta(seconds=15)),
            "action": "updated",
            "fields": {"phone": "070-000 00 00"},
        },
        {
            "event_id": "r1",
            "type": "privacy_request",
            "controller": "inrego",
            "subject_id": "s1",
            "occurred_at": _instant(now - timedelta(seconds=10)),
            "request_id": "R-1",
            "right": "erasure",
        },
    ]
    path = live.worker_log.with_name("events.jsonl")
    path.write_text("".join(json.dumps(e) + "\n" for e in events))
    done = subprocess.run(  # noqa: S603
        [_cli(), "produce", "--broker", live.broker, "--prefix", live.prefix, str(path)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    producer = Producer({"bootstrap.servers": live.broker, "log_level": 0})
    producer.produce(CLICKS.named(live.prefix), b"not an avro record", key=b"inrego:x")
    producer.flush(10)


def _late_answer(live: Live) -> None:
    """business-systems answers s1's erasure, escalated by now: done, in the partition of
    its command (as a sink does). It closes the command, and counts in the ack latency."""
    consumer = Consumer(
        {"bootstrap.servers": live.broker, "group.id": f"reader-{uuid.uuid4().hex[:8]}"}
    )
    topic = ERASURE_COMMANDS.named(live.prefix)
    consumer.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in range(4)])
    command = None
    deadline = time.monotonic() + 60
    while command is None and time.monotonic() < deadline:
        msg = consumer.poll(0.5)
        if msg is None or msg.error():
            continue
        _, value = SERDE.decode(msg.value() or b"")
        if value["target"] == "business-systems" and value["reason"] == "erasure_request":
            command = (msg.partition(), value)
    consumer.close()
    assert command is not None, "no erasure command for business-systems"
    partition, value = command
    ack = {
        "command_id": value["command_id"],
        "target": "business-systems",
        "status": "done",
        "completed_at": _instant(datetime.now(UTC)),
        "detail": None,
        "attempt": value["attempt"],
        "retryable": False,
        "rows": {"customers": 1},
    }
    encoded = SERDE.encode(ERASURE_ACKS.value_schema, ack)
    acks = ERASURE_ACKS.named(live.prefix)
    producer = Producer({"bootstrap.servers": live.broker, "log_level": 0})
    producer.produce(acks, encoded, key=value["command_id"].encode(), partition=partition)
    producer.flush(10)


@pytest.fixture(scope="module")
def live(prometheus: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Live]:
    tmp = tmp_path_factory.mktemp("prometheus")
    broker_port, metrics_port, api_port = free_ports(3)
    prefix = f"t-{uuid.uuid4().hex[:8]}-"
    env = {k: v for k, v in os.environ.items() if k != "KAFKA_BOOTSTRAP_SERVERS"}
    env["PRIVACY_PIPELINE_SECRETS"] = str(tmp / "secrets")
    env["TMPDIR"] = str(tmp)
    with EmbeddedBroker(port=broker_port, log_file=tmp / "tansu.log") as broker:
        worker_log = tmp / "worker.log"
        run = [_cli(), "run", "--broker", broker.bootstrap, "--prefix", prefix]
        run += ["--metrics-port", str(metrics_port), "--tick-interval", "0.5"]
        run += ["--ack-timeout", "2", "--max-attempts", "2", "--log-level", "info"]
        with _process(run, worker_log, env) as worker:
            _wait(
                "worker ready",
                lambda: worker.poll() is None and "Worker ready" in worker_log.read_text(),
                120,
                worker_log,
            )
            config = _prometheus_files(tmp, metrics_port)
            server = [
                prometheus,
                f"--config.file={config}",
                f"--storage.tsdb.path={tmp / 'data'}",
                f"--web.listen-address=127.0.0.1:{api_port}",
            ]
            with _process(server, tmp / "prometheus.log") as prom:
                live = Live(
                    broker.bootstrap,
                    prefix,
                    metrics_port,
                    f"http://127.0.0.1:{api_port}",
                    worker_log,
                )

                def ready() -> bool:
                    assert prom.poll() is None, (tmp / "prometheus.log").read_text()
                    with contextlib.suppress(OSError):
                        with urllib.request.urlopen(live.api + "/-/ready", timeout=2) as r:  # noqa: S310
                            return bool(r.status == 200)
                    return False

                _wait("prometheus ready", ready, 60, tmp / "prometheus.log")
                _traffic(live)

                def seen(expr: str) -> Callable[[], bool]:
                    return lambda: bool(live.series(expr))

                escalated = "sum(privacy_pipeline_erasure_escalations_total) == 6"
                _wait("six escalations", seen(escalated), 90, worker_log)
                _late_answer(live)
                # Everything the assertions read has been scraped (lag is measured every 10 s).
                for expr in (
                    'privacy_pipeline_erasure_acks_total{status="done"}',
                    "privacy_pipeline_erasure_ack_latency_seconds_count",
                    'privacy_pipeline_request_statuses_total{status="failed"}',
                    "privacy_pipeline_dead_letters_total",
                    'privacy_pipeline_consumer_lag_records{topic="clicks"}',
                    "privacy_pipeline_optout_latency_seconds_count > 0",
                    'ALERTS{alertname="PrivacyPipelineErasureEscalated",alertstate="firing"}',
                ):
                    _wait(f"series {expr}", seen(expr), 90, worker_log)
                time.sleep(3)  # a few more scrapes: rates over 1m have two samples
                yield live


def test_the_worker_is_up_and_exports_no_created_series(live: Live) -> None:
    [up] = live.series('up{job="privacy-pipeline"}')
    assert up["value"][1] == "1"
    assert up["metric"]["instance"] == f"127.0.0.1:{live.metrics_port}"
    assert live.series('{__name__=~"privacy_pipeline_.+_created"}') == []


def _readme_families() -> dict[str, str]:
    """`family -> type` of the README's metric tables."""
    text = (ROOT / "README.md").read_text("utf-8")
    section = text[text.index("\n## Metrics\n") :]
    section = section[: section.find("\n## ", 1)]
    families: dict[str, str] = {}
    for line in section.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) == 4 and cells[0].startswith("`"):
            families[cells[0].strip("`")] = cells[1]
    return families


def test_every_family_the_readme_lists_has_series(live: Live) -> None:
    exported = {
        s["metric"]["__name__"]
        for s in live.series('group by (__name__) ({__name__=~"privacy_pipeline_.+"})')
    }
    families = _readme_families()
    assert len(families) >= 20
    missing = []
    for family, kind in families.items():
        if family.startswith(NOT_FROM_THIS_WORKER):
            continue
        sample = "privacy_pipeline_" + family + ("_count" if kind == "histogram" else "")
        if sample not in exported:
            missing.append(sample)
    assert missing == []


def test_every_dashboard_and_rule_expression_evaluates(live: Live) -> None:
    expressions = dashboard_expressions() + rule_expressions()
    errors = []
    for expression in expressions:
        answer = live.query(expression.expr)
        if answer["status"] != "success":
            errors.append(f"{expression.where}: {answer.get('error')}")
    assert errors == []
    # A broken query is told apart (the check above can fail).
    assert live.query("sum(rate(privacy_pipeline_events_total[1m])")["status"] == "error"


def test_the_core_panels_have_data(live: Live) -> None:
    by_panel: dict[str, list[str]] = {}
    for expression in dashboard_expressions():
        title = expression.where.split(" (", 1)[1].rsplit(") ", 1)[0]
        by_panel.setdefault(title, []).append(expression.expr)
    assert set(CORE_PANELS) <= set(by_panel)
    empty = [
        f"{title}: {expr}"
        for title in CORE_PANELS
        for expr in by_panel[title]
        if not live.series(expr)
    ]
    assert empty == []


def test_the_erasure_loop_shows_in_prometheus(live: Live) -> None:
    def value(expr: str) -> float:
        [sample] = live.series(expr)
        return float(sample["value"][1])

    # Two subjects, three targets each; every command asked twice (--max-attempts 2),
    # then escalated; business-systems answered s1's late.
    for reason in ("erasure_request", "objection"):
        issued = f'privacy_pipeline_erasure_commands_total{{reason="{reason}"}}'
        assert value(f"sum({issued})") == 3
    for target in ("business-systems", "it-service-providers", "marketing-services"):
        labels = f'target="{target}",controller="inrego"'
        assert value(f"privacy_pipeline_erasure_retries_total{{{labels}}}") == 2
        reason = 'reason="attempts_exhausted"'
        assert value(f"privacy_pipeline_erasure_escalations_total{{{labels},{reason}}}") == 2
        state = 'state="escalated"'
        still_open = 1 if target == "business-systems" else 2
        assert value(f"privacy_pipeline_erasure_commands_open{{{labels},{state}}}") == still_open
        assert value(f'privacy_pipeline_erasure_commands_open{{{labels},state="waiting"}}') == 0
        assert value(f"privacy_pipeline_erasure_commands_overdue{{{labels}}}") == 0
    done = 'privacy_pipeline_erasure_acks_total{target="business-systems",status="done"}'
    assert value(done) == 1
    assert value("sum(privacy_pipeline_erasure_acks_total)") == 1
    latency = 'privacy_pipeline_erasure_ack_latency_seconds_count{target="business-systems"}'
    assert value(latency) == 1
    # Every command of R-1 escalated: the request failed (the late answer comes after).
    for status in ("in_progress", "failed"):
        labels = f'right="erasure",status="{status}",controller="inrego"'
        assert value(f"privacy_pipeline_request_statuses_total{{{labels}}}") == 1
    # Lag is reported for every partition of every topic the worker's groups read.
    topics = {s["metric"]["topic"] for s in live.series("privacy_pipeline_consumer_lag_records")}
    assert topics == {
        "customers",
        "orders",
        "clicks",
        "consents",
        "privacy-requests",
        "erasure-acks",
        "subject-log",
    }


def test_only_the_escalation_alert_fires(live: Live) -> None:
    alerts = live.get("/api/v1/alerts")["data"]["alerts"]
    firing = {a["labels"]["alertname"] for a in alerts if a["state"] == "firing"}
    assert firing == {"PrivacyPipelineErasureEscalated"}
    escalated = {
        (a["labels"]["target"], a["labels"]["reason"])
        for a in alerts
        if a["labels"]["alertname"] == "PrivacyPipelineErasureEscalated"
    }
    assert escalated == {
        ("business-systems", "attempts_exhausted"),
        ("it-service-providers", "attempts_exhausted"),
        ("marketing-services", "attempts_exhausted"),
    }
