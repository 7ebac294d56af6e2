"""Helpers for the live-pipeline integration tests.

- `WorkerProcess`: `privacy-pipeline run` as a subprocess, its output in a log file, ready
  once it has logged "recovery complete" and faust's "Worker ready"; stopped with SIGTERM
  or killed with SIGKILL (the main process and the ingest child it spawned).
- `SinkProcess`: `privacy-pipeline sink` as a subprocess, its output in a log file;
  stopped with SIGTERM or killed with SIGKILL.
- `pipeline_topics`: every pipeline topic under a prefix with a given partition count,
  and every topic of that prefix deleted afterwards (the embedded broker only frees
  memory when a topic is deleted).
- `TopicReader`: reads a topic from the beginning by assignment (no group join), keeps
  every record with its raw bytes and its decoded value.
- `cli`, `evaluate`, `produce_file`: the command line as a user runs it.
- Canonical JSON event builders.
"""

from __future__ import annotations

import atexit
import contextlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaError, Producer, TopicPartition
from confluent_kafka.admin import AdminClient

from privacy_pipeline.embedded_broker.launcher import die_with_parent, free_port
from privacy_pipeline.processors.enforcer import PolicyEnforcer
from privacy_pipeline.processors.policy import load_packs, packaged_policies
from privacy_pipeline.streams.serde import AvroSerde, RecordError
from privacy_pipeline.streams.settings import ENV_SECRETS, ClientTuning
from privacy_pipeline.streams.signing import CommandVerifier
from privacy_pipeline.streams.topic_admin import ensure_topics
from privacy_pipeline.streams.topics import EVENT_SCHEMAS, TAGGED_TOPIC, input_topic, topic_specs

BROKER_ENV = "PRIVACY_PIPELINE_TEST_BROKER"
PORTS_ENV = "PRIVACY_PIPELINE_TEST_PORTS"
READY_MARKERS = ("recovery complete", "Worker ready")
RECOVERY = re.compile(r"recovery complete: (\d+) changelog records, (\d+) subjects")
TAGGED_TOPICS = tuple(TAGGED_TOPIC.values())
TAGGED_TOPIC_OF = TAGGED_TOPIC
INPUT_TOPIC_OF = {kind: input_topic(kind).name for kind in EVENT_SCHEMAS}
TUNING = ClientTuning()

SERDE = AvroSerde()
# The keys of every worker the tests start (they sign erasure commands), for this session.
TEST_SECRETS = Path(tempfile.mkdtemp(prefix="privacy-pipeline-test-secrets-"))
atexit.register(shutil.rmtree, TEST_SECRETS, ignore_errors=True)


def expected_command(decision: dict[str, Any], versions: dict[str, str]) -> dict[str, Any]:
    """The ErasureCommand (signature aside) for an evaluate erasure decision: the same
    fields, plus policy_version and the first attempt; optional fields evaluate leaves
    out are null."""
    return {
        **decision,
        "policy_version": versions[decision["controller"]],
        "recorded_before": decision.get("recorded_before"),
        "due_at": decision.get("due_at"),
        "request_id": decision.get("request_id"),
        "attempt": 1,
    }


def strip_signature(command: dict[str, Any]) -> dict[str, Any]:
    """The command without its signature, once the signature is checked against the
    test session's public key."""
    assert CommandVerifier.from_secrets(TEST_SECRETS).verify(command), command["command_id"]
    return {k: v for k, v in command.items() if k != "signature"}


def cli_path() -> str:
    """The `privacy-pipeline` entry point of the interpreter running the tests."""
    beside = Path(sys.executable).with_name("privacy-pipeline")
    if beside.exists():
        return str(beside)
    found = shutil.which("privacy-pipeline")
    if found is None:
        raise RuntimeError("privacy-pipeline is not installed next to the test interpreter")
    return found


StartWorker = Callable[..., "WorkerProcess"]
"""The `start_worker` fixture: starts a ready worker on the test's prefix."""
MakeTopics = Callable[[int], None]
"""The `make_topics` fixture: creates every pipeline topic with N partitions."""
StartSink = Callable[..., "SinkProcess"]
"""The `run_sink` fixture: starts `privacy-pipeline sink` on the test's prefix."""


def pick_port() -> int:
    """A free TCP port, from PRIVACY_PIPELINE_TEST_PORTS (LOW-HIGH) when set."""
    spec = os.environ.get(PORTS_ENV, "").strip()
    if not spec:
        return free_port()
    low, _, high = spec.partition("-")
    return free_port(candidates=range(int(low), int(high or low) + 1))


def child_env(tmp: Path | None = None) -> dict[str, str]:
    """The environment for CLI subprocesses: no broker or prefix from the caller's shell,
    and the test session's own secrets folder (not the user's)."""
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in {"KAFKA_BOOTSTRAP_SERVERS", "PRIVACY_PIPELINE_TOPIC_PREFIX"}
    }
    env["PYTHONUNBUFFERED"] = "1"
    env[ENV_SECRETS] = str(TEST_SECRETS)
    if tmp is not None:
        tmp.mkdir(parents=True, exist_ok=True)
        env["TMPDIR"] = str(tmp)  # faust's datadir lands here, not in the system /tmp
    return env


def cli(
    *args: str, stdin: str | None = None, timeout: float = 60
) -> subprocess.CompletedProcess[str]:
    """Run `privacy-pipeline ARGS` and return its result (UTF-8 text output)."""
    return subprocess.run(
        [cli_path(), *args],
        input=stdin,
        capture_output=True,
        encoding="utf-8",
        errors="replace",
        timeout=timeout,
        env=child_env(),
        check=False,
    )


def evaluate(events_file: Path) -> list[str]:
    """The exact stdout lines of `privacy-pipeline evaluate --events FILE`."""
    result = cli("evaluate", "--events", str(events_file), "--no-summary")
    assert result.returncode == 0, result.stderr
    return result.stdout.splitlines()


def produce_file(broker: str, prefix: str, path: Path) -> subprocess.CompletedProcess[str]:
    """`privacy-pipeline produce FILE`, checked: every line sent, none bad."""
    result = cli("produce", "--broker", broker, "--prefix", prefix, str(path))
    assert result.returncode == 0, result.stderr
    return result


def write_events(path: Path, events: Iterable[Mapping[str, Any]]) -> Path:
    """Canonical JSON lines."""
    path.write_text("".join(json.dumps(e, ensure_ascii=False) + "\n" for e in events), "utf-8")
    return path


def policy_versions() -> dict[str, str]:
    """controller -> the policy_version the worker stamps on its outputs."""
    enforcer = PolicyEnforcer(load_packs(packaged_policies()))
    return {c: enforcer.policy(c).version for c in enforcer.policies}


# -- processes ------------------------------------------------------------------------


def children_of(pid: int) -> list[int]:
    """Every live descendant of `pid` (read from /proc)."""
    parents: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        # pid (comm) state ppid ...: comm may hold spaces and parentheses
        ppid = int(stat[stat.rindex(")") + 2 :].split()[1])
        parents.setdefault(ppid, []).append(int(entry.name))
    out: list[int] = []
    todo = [pid]
    while todo:
        for child in parents.get(todo.pop(), []):
            out.append(child)
            todo.append(child)
    return out


def alive(pid: int) -> bool:
    """True while `pid` exists and is not a zombie."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat[stat.rindex(")") + 2] != "Z"


def _signal(pid: int, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, sig)


class WorkerProcess:
    """`privacy-pipeline run` in a subprocess, logging to a file."""

    def __init__(
        self,
        broker: str,
        prefix: str,
        log_dir: Path,
        *,
        partitions: int = 4,
        tick_interval: float = 1.0,
        app_id: str | None = None,
        metrics_port: int | None = None,
        name: str = "worker",
        extra_args: list[str] | None = None,
    ) -> None:
        self.extra_args = list(extra_args or [])
        self.broker = broker
        self.prefix = prefix
        self.partitions = partitions
        self.tick_interval = tick_interval
        self.app_id = app_id
        self.metrics_port = metrics_port
        self.log_dir = log_dir
        self.name = name
        self.log_path = log_dir / f"{name}.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self.children: list[int] = []

    @property
    def pid(self) -> int:
        assert self.proc is not None, "not started"
        return self.proc.pid

    def start(self) -> WorkerProcess:
        port = self.metrics_port or pick_port()
        args = [
            cli_path(),
            "run",
            "--broker",
            self.broker,
            "--prefix",
            self.prefix,
            "--partitions",
            str(self.partitions),
            "--tick-interval",
            str(self.tick_interval),
            "--metrics-port",
            str(port),
            "--log-level",
            "info",
        ]
        if self.app_id is not None:
            args += ["--app-id", self.app_id]
        args += self.extra_args
        self.log_dir.mkdir(parents=True, exist_ok=True)
        with self.log_path.open("wb") as log_file:
            self.proc = subprocess.Popen(
                args,
                stdin=subprocess.DEVNULL,
                stdout=log_file,
                stderr=subprocess.STDOUT,
                env=child_env(self.log_dir / f"{self.name}-tmp"),
                # SIGKILL the worker if the test run dies without its teardown (its ingest
                # child stops by itself when the worker is gone).
                preexec_fn=die_with_parent(signal.SIGKILL),
            )
        return self

    def log(self) -> str:
        """Everything the worker has written so far."""
        try:
            return self.log_path.read_text("utf-8", "replace")
        except FileNotFoundError:
            return ""

    def log_tail(self, lines: int = 40) -> str:
        return "\n".join(self.log().splitlines()[-lines:])

    def wait_ready(self, timeout: float = 90) -> WorkerProcess:
        """Until the worker logged "recovery complete" and "Worker ready"."""
        assert self.proc is not None, "not started"
        deadline = time.monotonic() + timeout
        while True:
            text = self.log()
            if all(marker in text for marker in READY_MARKERS):
                self.children = children_of(self.pid)
                return self
            if self.proc.poll() is not None:
                raise AssertionError(
                    f"{self.name} exited with {self.proc.returncode} before it was ready:\n"
                    + self.log_tail()
                )
            if time.monotonic() > deadline:
                raise AssertionError(
                    f"{self.name} not ready after {timeout} s:\n" + self.log_tail()
                )
            time.sleep(0.1)

    def recovery(self) -> tuple[int, int]:
        """(changelog records, subjects) of the first "recovery complete" line."""
        found = RECOVERY.search(self.log())
        assert found is not None, "no 'recovery complete' line:\n" + self.log_tail()
        return int(found.group(1)), int(found.group(2))

    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def pause(self) -> None:
        """SIGSTOP the main process (faust, enforce); ingest, a child, keeps running."""
        _signal(self.pid, signal.SIGSTOP)

    def resume(self) -> None:
        _signal(self.pid, signal.SIGCONT)

    def stop(self, timeout: float = 30) -> int:
        """SIGTERM, wait for a clean exit; its exit code."""
        assert self.proc is not None, "not started"
        self.children = sorted({*self.children, *children_of(self.pid)})
        self.proc.send_signal(signal.SIGTERM)
        try:
            code = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            raise AssertionError(
                f"{self.name} did not stop {timeout} s after SIGTERM:\n" + self.log_tail()
            ) from None
        self._reap_children(timeout=15)
        return code

    def kill(self, children: bool = True) -> None:
        """SIGKILL the worker (and, with `children`, the processes it spawned)."""
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.children = sorted({*self.children, *children_of(self.pid)})
        _signal(self.pid, signal.SIGKILL)
        if children:
            for pid in self.children:
                _signal(pid, signal.SIGKILL)
        self.proc.wait(10)
        if children:
            self._reap_children(timeout=10)

    def _reap_children(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while any(alive(p) for p in self.children) and time.monotonic() < deadline:
            time.sleep(0.1)
        for pid in self.children:
            if alive(pid):
                _signal(pid, signal.SIGKILL)

    def cleanup(self) -> None:
        """Whatever state it is in: nothing of it left running."""
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.resume()
            with contextlib.suppress(AssertionError):
                self.stop(timeout=20)
        self.kill()


class SinkProcess:
    """`privacy-pipeline sink` in a subprocess, logging to a file.

    A sink is one process (no children): `stop` sends SIGTERM (it commits what was
    acknowledged and leaves its group), `kill` sends SIGKILL.
    """

    def __init__(self, args: list[str], log: Path) -> None:
        self.log = log
        with log.open("wb") as out:
            self.proc = subprocess.Popen(
                [cli_path(), "sink", *args],
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                env=child_env(),
                preexec_fn=die_with_parent(),
            )

    def stop(self) -> str:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        return self.log.read_text("utf-8", "replace")

    def kill(self) -> str:
        """SIGKILL: no flush, no commit, no goodbye; its output so far."""
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(10)
        return self.log.read_text("utf-8", "replace")

    def running(self) -> bool:
        return self.proc.poll() is None

    def output(self) -> str:
        return self.log.read_text("utf-8", "replace")


# -- topics ---------------------------------------------------------------------------


@contextlib.contextmanager
def pipeline_topics(broker: str, prefix: str, partitions: int) -> Iterator[dict[str, str]]:
    """Every pipeline topic under `prefix` with `partitions`; all `prefix` topics deleted after.

    The topics must exist before anything is produced: the embedded broker auto-creates a
    topic a producer writes to with its own partition count, and the worker then refuses
    to start with another one.
    """
    specs = topic_specs(prefix, partitions)
    ensure_topics(broker, specs)
    try:
        yield {spec.contract_name: spec.name for spec in specs}
    finally:
        delete_topics(broker, prefix)


def delete_topics(broker: str, prefix: str) -> None:
    """Delete every topic whose name starts with `prefix` (best effort)."""
    admin = AdminClient({"bootstrap.servers": broker})
    names = [n for n in admin.list_topics(timeout=10).topics if n.startswith(prefix)]
    if not names:
        return
    for future in admin.delete_topics(names, operation_timeout=10).values():
        with contextlib.suppress(Exception):
            future.result(timeout=10)


@dataclass
class Record:
    """One consumed record: where it is, its raw bytes, and its decoded value."""

    topic: str
    partition: int
    offset: int
    key: bytes | None
    raw: bytes | None
    value: dict[str, Any] | None  # None when it does not decode

    @property
    def key_text(self) -> str | None:
        return None if self.key is None else self.key.decode("utf-8", "replace")


class TopicReader:
    """Reads one topic from the beginning, by assignment, accumulating its records."""

    def __init__(self, broker: str, topic: str) -> None:
        self.topic = topic
        self.records: list[Record] = []
        self.consumer = Consumer(TUNING.reader_consumer(broker, f"reader-{uuid.uuid4().hex[:8]}"))
        metadata = self.consumer.list_topics(topic, timeout=10).topics[topic]
        assert metadata.error is None and metadata.partitions, f"topic {topic} not found"
        self.consumer.assign(
            [TopicPartition(topic, p, OFFSET_BEGINNING) for p in sorted(metadata.partitions)]
        )

    def poll(self, seconds: float = 0.3) -> int:
        """Read for about `seconds`; the number of new records."""
        deadline = time.monotonic() + seconds
        got = 0
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return got
            for msg in self.consumer.consume(500, timeout=min(remaining, 0.2)):
                err = msg.error()
                if err is not None:
                    if err.code() != KafkaError._PARTITION_EOF:
                        raise AssertionError(f"consume error on {self.topic}: {err.str()}")
                    continue
                raw = msg.value()
                try:
                    value = SERDE.decode(raw)[1] if raw is not None else None
                except RecordError:
                    value = None
                self.records.append(
                    Record(msg.topic(), msg.partition(), msg.offset(), msg.key(), raw, value)
                )
                got += 1

    def wait(self, count: int, timeout: float = 20) -> None:
        """Until `count` records have been read."""
        deadline = time.monotonic() + timeout
        while len(self.records) < count:
            if time.monotonic() > deadline:
                raise AssertionError(f"{self.topic}: {len(self.records)} of {count} records")
            self.poll(0.2)

    def values(self) -> list[dict[str, Any]]:
        return [r.value for r in self.records if r.value is not None]

    def close(self) -> None:
        self.consumer.close()


class Readers:
    """A `TopicReader` per contract topic of a prefix, created on first use."""

    def __init__(self, broker: str, prefix: str) -> None:
        self.broker = broker
        self.prefix = prefix
        self._readers: dict[str, TopicReader] = {}

    def __getitem__(self, topic: str) -> TopicReader:
        reader = self._readers.get(topic)
        if reader is None:
            reader = self._readers[topic] = TopicReader(self.broker, self.prefix + topic)
        return reader

    def poll(self, topics: Iterable[str], seconds: float = 0.3) -> None:
        for topic in topics:
            self[topic].poll(seconds / 4)

    def wait(
        self,
        topics: Iterable[str],
        done: Callable[[], bool],
        timeout: float,
        what: str,
        settle: float = 0.0,
    ) -> None:
        """Poll `topics` until `done()`; then `settle` seconds more, to see extras."""
        names = list(topics)
        deadline = time.monotonic() + timeout
        while not done():
            if time.monotonic() > deadline:
                counts = {t: len(self[t].records) for t in names}
                raise AssertionError(
                    f"timed out after {timeout} s waiting for {what}: {counts}; "
                    f"a fresh reader finds {self._recount(names)}"
                )
            self.poll(names)
        if settle > 0:
            end = time.monotonic() + settle
            while time.monotonic() < end:
                self.poll(names)

    def _recount(self, topics: list[str]) -> dict[str, list[tuple[int, int]]]:
        """(partition, offset) of every record a new reader finds: tells a reader that
        fell behind from a pipeline that never wrote."""
        found = {}
        for topic in topics:
            fresh = TopicReader(self.broker, self.prefix + topic)
            try:
                fresh.poll(2.0)
                found[topic] = sorted((r.partition, r.offset) for r in fresh.records)
            finally:
                fresh.close()
        return found

    def close(self) -> None:
        for reader in self._readers.values():
            reader.close()
        self._readers.clear()


def send_raw(
    broker: str, topic: str, records: Iterable[tuple[bytes | None, bytes | None]]
) -> list[tuple[int, int]]:
    """Produce (key, value) pairs as they are; the (partition, offset) of each, in order."""
    where: dict[int, tuple[int, int]] = {}
    errors: list[str] = []
    producer = Producer(TUNING.producer(broker))
    items = list(records)
    for i, (key, value) in enumerate(items):

        def delivered(err: Any, msg: Any, i: int = i) -> None:
            if err is not None:
                errors.append(str(err))
            else:
                where[i] = (msg.partition(), msg.offset())

        producer.produce(topic, value, key=key, on_delivery=delivered)
    assert producer.flush(30) == 0, "records not delivered"
    assert not errors, errors
    return [where[i] for i in range(len(items))]


# -- canonical events -----------------------------------------------------------------


def iso(instant: datetime) -> str:
    return instant.astimezone(UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


def _event(etype: str, controller: str, subject: str, at: datetime, tag: str) -> dict[str, Any]:
    stamp = iso(at)
    return {
        "event_id": f"{controller}-{subject}-{etype}-{tag}-{stamp}",
        "type": etype,
        "controller": controller,
        "subject_id": subject,
        "occurred_at": stamp,
    }


def click(controller: str, subject: str, at: datetime, url: str = "/produkter") -> dict[str, Any]:
    e = _event("click", controller, subject, at, "visit")
    e.update({"url": f"https://example.se{url}", "ip": "192.0.2.10", "user_agent": "Mozilla/5.0"})
    return e


def customer(
    controller: str,
    subject: str,
    at: datetime,
    action: str = "created",
    role: str | None = None,
    fields: Mapping[str, str] | None = None,
) -> dict[str, Any]:
    e = _event("customer", controller, subject, at, action)
    e["action"] = action
    if role is not None:
        e["role"] = role
    e["fields"] = dict(
        fields
        if fields is not None
        else {"name": f"Person {subject}", "email": f"{subject}@example.se", "phone": "+4670000"}
    )
    return e


def order(
    controller: str, subject: str, at: datetime, action: str = "placed", order_id: str = "O-1"
) -> dict[str, Any]:
    e = _event("order", controller, subject, at, f"{action}-{order_id}")
    e.update({"action": action, "order_id": order_id, "amount": 1990.0, "currency": "SEK"})
    return e


def consent(
    controller: str,
    subject: str,
    at: datetime,
    action: str,
    purpose: str = "direct_marketing",
    channel: str = "email",
) -> dict[str, Any]:
    e = _event("consent", controller, subject, at, f"{action}-{purpose}")
    e.update({"purpose": purpose, "action": action, "channel": channel})
    return e


def request(
    controller: str, subject: str, at: datetime, right: str, purposes: list[str] | None = None
) -> dict[str, Any]:
    e = _event("privacy_request", controller, subject, at, right)
    e.update({"request_id": f"REQ-{controller}-{subject}-{right}", "right": right})
    if purposes is not None:
        e["purposes"] = purposes
    return e
