"""End-to-end benchmark of the live pipeline against a bare passthrough, in one run.

    python bench/bench_pipeline.py [--events 200000] [--subjects 10000]
                                   [--restart-subjects 100000] [--quick] [--check]

Everything runs on one embedded broker (Tansu) that this script starts on a port in
19800-19899 and stops at the end; the worker runs as a subprocess (`privacy-pipeline run`,
4 partitions, tick interval 1 s) with its Prometheus metrics on another port of that range.

1. Input (not timed): `--events` synthetic events over `--subjects` subjects
   (`privacy_pipeline.demo.traffic.TrafficModel`, the last 30 days, `--bad-ratio` of them
   malformed), Avro-encoded with `AvroSerde`, produced to the five input topics of two
   fresh prefixes: one for the baseline, one for the pipeline. Both read the same data.
2. Baseline: one confluent-kafka loop, `consume(num_messages=2000)` -> `serde.decode` ->
   `serde.encode` -> `produce` to one output topic; partitions assigned directly (no group
   join). Timed from the first record consumed to the last one produced and flushed.
3. Pipeline: the worker starts once the input is in place. Timed from the first input
   record ingest consumed (the `produced_at_ms` of the first subject-log batch holding an
   event, read back from the subject log afterwards) until every event has its outcome:
   `privacy_pipeline_processing_seconds_count` (one per event enforce has run, observed
   after its decisions are flushed to the broker) plus `privacy_pipeline_dead_letters_total`
   (bad input) reaches the number of events produced, polled every 0.1 s. Exact: each
   event is counted once, when its outputs are acknowledged. Afterwards the output topics
   are counted by reading them (tagged-* must equal the valid customer/order/click events).
4. Opt-out latency: with that worker running, fresh traffic (new subjects, the generator's
   natural mix, about 4 % consent withdrawals/objections) is produced at half the measured
   pipeline rate for `--latency-seconds`; p50/p99 of the difference of
   `privacy_pipeline_optout_latency_seconds` (before/after), linearly interpolated within
   buckets as Prometheus' histogram_quantile does. The latency is from the input record's
   Kafka timestamp (set when this script produces it) to the withdrawal being in force
   (its decisions flushed).
5. Restart: on a fresh prefix, one `customer created` event per subject for
   `--restart-subjects` subjects, processed by a fresh worker and checked to be in the state
   changelog; then the worker and its children get SIGKILL, a new worker starts, and the time
   from its process start to "recovery complete" and to "Worker ready" in its log is taken;
   the subject count it logs must equal `--restart-subjects`.

Prints progress on stderr, a table on stdout and, as the last line, one JSON object.
Targets: ratio >= 0.4, opt-out p99 <= 100 ms, restart <= 30 s (exit 1 on a miss only with
`--check`; otherwise the table says MISSED).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shlex
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from collections import Counter
from collections.abc import Callable, Iterable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaError, Producer, TopicPartition
from prometheus_client.parser import text_string_to_metric_families

from privacy_pipeline.demo.traffic import CONTROLLERS, TrafficModel
from privacy_pipeline.embedded_broker.launcher import EmbeddedBroker
from privacy_pipeline.processors.events import EventError, parse_event
from privacy_pipeline.streams.enforce import decode_changelog
from privacy_pipeline.streams.serde import AvroSerde, RecordError, event_to_avro
from privacy_pipeline.streams.settings import ClientTuning
from privacy_pipeline.streams.topic_admin import ensure_topics
from privacy_pipeline.streams.topics import (
    AUDIT,
    CLICKS,
    DEAD_LETTERS,
    ERASURE_COMMANDS,
    EVENT_SCHEMAS,
    INPUT_TOPICS,
    SUBJECT_LOG,
    TAGGED_TOPIC,
    TopicSpec,
    input_topic,
    topic_specs,
)

TARGET_RATIO = 0.4
TARGET_OPTOUT_P99_MS = 100.0
TARGET_RESTART_S = 30.0
PORTS = range(19800, 19900)
PARTITIONS = 4
SEND_EVERY_MS = 20  # latency traffic: produce (and linger) in 20 ms steps (see bench/README)
TICK_INTERVAL = 1.0
CLI = [str(Path(sys.executable).with_name("privacy-pipeline"))]
TUNING = ClientTuning()
TOPIC_OF = {kind: input_topic(kind).name for kind in EVENT_SCHEMAS}
INPUTS = INPUT_TOPICS
COUNTED_OUTPUTS = (*TAGGED_TOPIC.values(), AUDIT.name, ERASURE_COMMANDS.name, DEAD_LETTERS.name)
READY_RE = re.compile(r"Worker ready")
RECOVERED_RE = re.compile(r"recovery complete: (\d+) changelog records, (\d+) subjects")

Record = tuple[str, bytes, bytes]  # (unprefixed topic, key, value)


def progress(text: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {text}", file=sys.stderr, flush=True)


# -- ports, processes -------------------------------------------------------------------


def free_ports(n: int) -> list[int]:
    """The first `n` ports of 19800-19899 nobody listens on."""
    found = []
    for port in PORTS:
        with socket.socket() as s:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
        found.append(port)
        if len(found) == n:
            return found
    raise SystemExit("no free ports left in 19800-19899")


def descendants(pid: int) -> list[int]:
    """Every descendant of `pid` (read from /proc), children first."""
    parents: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        parents.setdefault(ppid, []).append(int(entry))
    out: list[int] = []
    todo = [pid]
    while todo:
        for child in parents.get(todo.pop(), []):
            out.append(child)
            todo.append(child)
    return out


def rss_mb(pid: int | None) -> float:
    """Resident memory of one process in MB (0 if gone)."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


def cpu_seconds(pid: int | None) -> float:
    """User + system CPU seconds of one process so far (0 if gone)."""
    if pid is None:
        return 0.0
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class Worker:
    """`privacy-pipeline run` as a subprocess, its log in a file, its metrics scraped."""

    def __init__(self, bootstrap: str, prefix: str, metrics_port: int, logdir: Path) -> None:
        self.bootstrap = bootstrap
        self.prefix = prefix
        self.metrics_port = metrics_port
        self.log_path = logdir / f"worker-{prefix.strip('-')}-{metrics_port}-{time.time():.0f}.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self.started = 0.0
        self.pids: list[int] = []

    def start(self) -> Worker:
        cmd = [
            *CLI, "run", "--broker", self.bootstrap, "--prefix", self.prefix,
            "--partitions", str(PARTITIONS), "--tick-interval", str(TICK_INTERVAL),
            "--metrics-port", str(self.metrics_port), "--log-level", "info",
        ]  # fmt: skip
        with self.log_path.open("wb") as log:
            self.started = time.monotonic()
            self.proc = subprocess.Popen(  # noqa: S603 - our own CLI, fixed argv
                cmd, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT
            )
        return self

    @property
    def pid(self) -> int:
        assert self.proc is not None  # noqa: S101
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def log_text(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""

    def log_tail(self, n: int = 25) -> str:
        lines = [ln for ln in self.log_text().splitlines() if not ln.startswith("%")]
        return "\n".join(lines[-n:])

    def wait_log(self, pattern: re.Pattern[str], timeout: float) -> tuple[float, re.Match[str]]:
        """Seconds from process start until `pattern` appears in the log (polled each 20 ms)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            found = pattern.search(self.log_text())
            if found:
                return time.monotonic() - self.started, found
            if not self.alive():
                raise RuntimeError(f"worker exited:\n{self.log_tail()}")
            time.sleep(0.02)
        raise RuntimeError(
            f"no '{pattern.pattern}' in the worker log in {timeout} s:\n{self.log_tail()}"
        )

    def metrics(self) -> dict[str, float]:
        """Every sample of the worker's /metrics, summed over labels, keyed by sample name
        (histogram buckets keyed `name{le}`)."""
        url = f"http://127.0.0.1:{self.metrics_port}/metrics"
        with urllib.request.urlopen(url, timeout=5) as r:  # noqa: S310 - localhost
            text = r.read().decode()
        out: dict[str, float] = {}
        for family in text_string_to_metric_families(text):
            for s in family.samples:
                key = f"{s.name}{{{s.labels['le']}}}" if "le" in s.labels else s.name
                out[key] = out.get(key, 0.0) + s.value
        return out

    def cpu(self) -> dict[str, float]:
        """CPU seconds of the worker process and of its descendants (ingest)."""
        if not self.alive():
            return {"worker": 0.0, "ingest": 0.0}
        # Looked up each time: ingest starts a few seconds after the worker is ready.
        self.pids = descendants(self.pid) or self.pids
        return {"worker": cpu_seconds(self.pid), "ingest": sum(map(cpu_seconds, self.pids))}

    def stop(self) -> None:
        """SIGTERM, then SIGKILL after 30 s; children left behind are killed by pid."""
        if self.proc is None:
            return
        kids = descendants(self.proc.pid) if self.alive() else []
        if self.alive():
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        _kill_left(kids, wait=5.0)

    def kill9(self) -> list[int]:
        """SIGKILL the worker and then each of its descendants, by pid (a lost machine)."""
        assert self.proc is not None  # noqa: S101
        kids = descendants(self.proc.pid)
        self.proc.kill()
        self.proc.wait()
        _kill_left(kids, wait=0.0)
        return kids


def _kill_left(pids: Iterable[int], wait: float) -> None:
    deadline = time.monotonic() + wait
    for pid in pids:
        while time.monotonic() < deadline and Path(f"/proc/{pid}").exists():
            time.sleep(0.05)
        try:
            os.kill(pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass


# -- input ------------------------------------------------------------------------------


def encode_events(
    serde: AvroSerde, events: Iterable[dict[str, Any]]
) -> tuple[list[Record], Counter[str]]:
    """Avro records for each event; an event that does not encode is sent as its JSON text
    (a broken producer), which ingest must dead-letter. Counts valid events by type, and
    the `unencodable` and `invalid` (encodable, but ingest must dead-letter them) ones."""
    out: list[Record] = []
    kinds: Counter[str] = Counter()
    for event in events:
        key = f"{event.get('controller')}:{event.get('subject_id')}".encode()
        topic = TOPIC_OF.get(event.get("type"), CLICKS.name)  # type: ignore[arg-type]
        try:
            value = serde.encode(*event_to_avro(event))
        except (RecordError, KeyError, TypeError):
            value = json.dumps(event, default=str).encode()
            kinds["unencodable"] += 1
        else:
            try:
                valid = parse_event(event).controller in CONTROLLERS
            except EventError:
                valid = False
            kinds[event["type"] if valid else "invalid"] += 1
        out.append((topic, key, value))
    return out, kinds


def producer(bootstrap: str, linger_ms: int = 20) -> Producer:
    return Producer(TUNING.traffic_producer(bootstrap, linger_ms))


def produce_all(bootstrap: str, prefix: str, records: list[Record]) -> float:
    """Produce and flush `records`; return events/s."""
    p = producer(bootstrap)
    t0 = time.perf_counter()
    for n, (topic, key, value) in enumerate(records):
        while True:
            try:
                p.produce(prefix + topic, value, key=key)
                break
            except BufferError:
                p.poll(0.05)
        if n % 1000 == 0:
            p.poll(0)
    if p.flush(60):
        raise RuntimeError("input not flushed within 60 s")
    return len(records) / (time.perf_counter() - t0)


def customer_created(n: int, start: datetime) -> list[dict[str, Any]]:
    """One `customer created` event per subject, over five controllers, one ms apart."""
    first = ("Anna", "Erik", "Maria", "Lars", "Karin", "Johan", "Eva", "Nils")
    last = ("Berg", "Lind", "Holm", "Ek", "Nord", "Strand", "Sjö", "Dahl")
    out = []
    for i in range(n):
        a, b = first[i % 8], last[(i // 8) % 8]
        out.append(
            {
                "event_id": str(uuid.UUID(int=(7 << 100) + i)),
                "type": "customer",
                "controller": CONTROLLERS[i % len(CONTROLLERS)],
                "subject_id": f"restart-{i:07d}",
                "occurred_at": (start + timedelta(milliseconds=i))
                .isoformat(timespec="milliseconds")
                .replace("+00:00", "Z"),
                "action": "created",
                "role": "customer",
                "fields": {"name": f"{a} {b}", "email": f"{a.lower()}.{b.lower()}{i}@example.com"},
            }
        )
    return out


# -- reading topics ---------------------------------------------------------------------


def _consumer(bootstrap: str) -> Consumer:
    config = TUNING.reader_consumer(bootstrap, f"bench-{uuid.uuid4().hex[:8]}")
    return Consumer({**config, "enable.partition.eof": True})


def read_topics(
    bootstrap: str,
    topics: Iterable[str],
    on_batch: Callable[[list[Any]], bool] | None = None,
    idle: float = 3.0,
) -> Counter[str]:
    """Read `topics` from the beginning to their end; count records per topic. `on_batch`
    sees each consumed batch and may return True to stop early."""
    c = _consumer(bootstrap)
    parts = [TopicPartition(t, p, OFFSET_BEGINNING) for t in topics for p in range(PARTITIONS)]
    c.assign(parts)
    counts: Counter[str] = Counter()
    open_parts = {(tp.topic, tp.partition) for tp in parts}
    last = time.monotonic()
    try:
        while open_parts and time.monotonic() - last < idle:
            msgs = c.consume(num_messages=5000, timeout=0.2)
            good = []
            for m in msgs:
                err = m.error()
                if err is not None:
                    if err.code() == KafkaError._PARTITION_EOF:
                        open_parts.discard((m.topic(), m.partition()))
                    continue
                counts[m.topic()] += 1
                good.append(m)
            if good:
                last = time.monotonic()
                if on_batch is not None and on_batch(good):
                    break
    finally:
        c.close()
    return counts


def first_ingest_ms(bootstrap: str, serde: AvroSerde, subject_log: str) -> int | None:
    """`produced_at_ms` of the earliest subject-log batch that holds an event (not a tick)."""
    found: dict[int, int] = {}

    def look(msgs: list[Any]) -> bool:
        for m in msgs:
            if m.partition() in found:
                continue
            _, batch = serde.decode(m.value(), "SubjectBatch")
            if any(item["key"] for item in batch["items"]):
                found[m.partition()] = batch["produced_at_ms"]
        return len(found) == PARTITIONS

    read_topics(bootstrap, [subject_log], look, idle=2.0)
    return min(found.values()) if found else None


def skipped_records(bootstrap: str, serde: AvroSerde, prefix: str) -> dict[str, int] | None:
    """Subject-log records the enforce agent never ran: below the last record it wrote a
    changelog record for (keys `partition:offset[:chunk]`), with no changelog record of
    their own. Returns {"records", "events"}, or None if the keys cannot be read."""
    done: set[tuple[int, int]] = set()

    def keys(msgs: list[Any]) -> bool:
        for m in msgs:
            parts = (m.key() or b"").decode(errors="replace").split(":")
            if len(parts) >= 2 and parts[0].isdigit() and parts[1].isdigit():
                done.add((int(parts[0]), int(parts[1])))
        return False

    read_topics(bootstrap, [f"{prefix}privacy-pipeline-subject-state-changelog"], keys)
    if not done:
        return None
    last = {p: max(o for q, o in done if q == p) for p, _ in done}
    events: dict[tuple[int, int], int] = {}

    def batches(msgs: list[Any]) -> bool:
        for m in msgs:
            if m.offset() < last.get(m.partition(), -1) and (m.partition(), m.offset()) not in done:
                _, batch = serde.decode(m.value(), "SubjectBatch")
                events[(m.partition(), m.offset())] = sum(1 for i in batch["items"] if i["key"])
        return False

    read_topics(bootstrap, [SUBJECT_LOG.named(prefix)], batches)
    if events:
        progress(
            f"  subject-log records never run by the agent (partition, offset): {sorted(events)}"
        )
    return {"records": len(events), "events": sum(events.values())}


def changelog_subjects(bootstrap: str, topic: str, want: int, timeout: float) -> int:
    """Distinct subject keys in the state changelog, read until `want` or `timeout`."""
    deadline = time.monotonic() + timeout
    seen: set[str] = set()
    while True:
        seen.clear()

        def look(msgs: list[Any]) -> bool:
            for m in msgs:
                if m.value():
                    seen.update(k for k in decode_changelog(m.value()) if not k.startswith("__"))
            return len(seen) >= want

        read_topics(bootstrap, [topic], look, idle=2.0)
        if len(seen) >= want or time.monotonic() > deadline:
            return len(seen)
        time.sleep(1.0)


# -- histograms -------------------------------------------------------------------------


def histogram_delta(
    before: dict[str, float], after: dict[str, float], name: str
) -> list[tuple[float, float]]:
    """[(upper bound, cumulative count)] of the observations between two scrapes."""
    prefix = f"{name}_bucket{{"
    out = []
    for key, value in after.items():
        if key.startswith(prefix):
            le = key[len(prefix) : -1]
            out.append((float(le), value - before.get(key, 0.0)))
    return sorted(out)


def beyond(buckets: list[tuple[float, float]], q: float) -> bool:
    """True when the q-quantile lies in the +Inf bucket (the figure is then a lower limit)."""
    return len(buckets) > 1 and buckets[-2][1] < q * buckets[-1][1]


def quantile(buckets: list[tuple[float, float]], q: float) -> float | None:
    """Prometheus `histogram_quantile`: linear within the bucket, lower edge 0 for the
    first; in the +Inf bucket, the largest finite bound."""
    if not buckets or buckets[-1][1] <= 0:
        return None
    total = buckets[-1][1]
    rank = q * total
    lower, below = 0.0, 0.0
    for upper, cum in buckets:
        if cum >= rank:
            if upper == float("inf"):
                return lower
            if cum == below:
                return upper
            return lower + (upper - lower) * (rank - below) / (cum - below)
        lower, below = upper, cum
    return lower


# -- phases -----------------------------------------------------------------------------


def run_baseline(bootstrap: str, prefix: str, n: int, serde: AvroSerde) -> dict[str, Any]:
    """consume -> decode -> encode -> produce, batched; events/s and CPU per event."""
    out_topic = prefix + "passthrough"
    c = Consumer(TUNING.reader_consumer(bootstrap, f"bench-baseline-{uuid.uuid4().hex[:8]}"))
    c.assign(
        [TopicPartition(prefix + t, p, OFFSET_BEGINNING) for t in INPUTS for p in range(PARTITIONS)]
    )
    p = producer(bootstrap, linger_ms=5)
    decode, encode, produce, poll = serde.decode, serde.encode, p.produce, p.poll
    seen = bad = 0
    t0: float | None = None
    cpu0 = 0.0
    deadline = time.monotonic() + 600
    while seen < n and time.monotonic() < deadline:
        msgs = c.consume(num_messages=2000, timeout=0.5)
        if msgs and t0 is None:
            t0, cpu0 = time.perf_counter(), time.process_time()
        for m in msgs:
            if m.error() is not None:
                continue
            seen += 1
            try:
                name, record = decode(m.value())
            except RecordError:
                bad += 1
                continue
            value = encode(name, record)
            while True:
                try:
                    produce(out_topic, value, key=m.key())
                    break
                except BufferError:
                    poll(0.01)
        poll(0)
    p.flush(60)
    t1 = time.perf_counter()
    cpu = time.process_time() - cpu0
    c.close()
    if t0 is None or seen < n:
        raise RuntimeError(f"baseline read {seen} of {n} records")
    secs = t1 - t0
    return {"eps": n / secs, "seconds": secs, "undecodable": bad, "cpu_us_per_event": cpu / n * 1e6}


def outcomes(m: dict[str, float]) -> float:
    return m.get("privacy_pipeline_processing_seconds_count", 0.0) + m.get(
        "privacy_pipeline_dead_letters_total", 0.0
    )


def wait_outcomes(
    worker: Worker,
    target: float,
    stall: float = 90.0,
    poll: float = 0.1,
    label: str = "",
    give_up: bool = False,
) -> tuple[float, dict[str, float], float | None, bool]:
    """Poll metrics until outcomes reach `target`; return (time reached, last scrape,
    time the first outcome was seen, True). With `give_up`, no progress for `stall`
    seconds returns (time of the last progress, last scrape, first, False) instead of
    raising."""
    last_change = time.monotonic()
    last_change_wall = time.time()
    last_value = -1.0
    last_print = 0.0
    first: float | None = None
    prev, prev_value = time.monotonic(), 0.0  # the previous scrape
    while True:
        now = time.monotonic()
        try:
            m = worker.metrics()
        except OSError:
            m = {}
        value = outcomes(m)
        if value > 0 and first is None:
            first = time.time()
        if value >= target:
            return time.time(), m, first, True
        if value != last_value:
            last_value, last_change, last_change_wall = value, now, time.time()
        elif now - last_change > stall:
            if give_up:
                progress(f"  {label}: GAVE UP, stuck at {value:.0f} of {target:.0f} for {stall} s")
                return last_change_wall, m, first, False
            raise RuntimeError(
                f"{label}: stuck at {value:.0f} of {target:.0f} outcomes for {stall} s:\n"
                f"{worker.log_tail()}"
            )
        if not worker.alive():
            raise RuntimeError(f"{label}: worker exited:\n{worker.log_tail()}")
        if now - last_print > 5:
            last_print = now
            progress(f"  {label}: {value:.0f} / {target:.0f}")
        # A scrape costs the worker CPU (and its GIL): scrape every 0.5 s while the end is
        # more than about a second away, at `poll` near it.
        rate = (value - prev_value) / max(now - prev, 1e-3)
        prev, prev_value = now, value
        time.sleep(poll if rate <= 0 or target - value < rate * 1.0 else 0.5)


def run_pipeline(
    bootstrap: str, prefix: str, n: int, serde: AvroSerde, worker: Worker, valid: Counter[str]
) -> dict[str, Any]:
    worker.start()
    ready_s, _ = worker.wait_log(READY_RE, timeout=120)
    progress(f"  worker ready {ready_s:.1f} s after start")
    ready_at = time.time()
    cpu0 = worker.cpu()
    t_end, m, first_seen, complete = wait_outcomes(
        worker, n, stall=30.0, label="pipeline", give_up=True
    )
    done = outcomes(m)
    cpu1 = worker.cpu()
    first_ms = first_ingest_ms(bootstrap, serde, SUBJECT_LOG.named(prefix))
    t_start = first_ms / 1000.0 if first_ms is not None else ready_at
    secs = t_end - t_start
    counts = read_topics(bootstrap, [prefix + t for t in COUNTED_OUTPUTS])
    batches = worker.metrics().get("privacy_pipeline_batch_size_events_count", 0.0)
    time.sleep(0.5)  # the changelog record of a batch is sent right after its metrics
    changelog = read_topics(
        bootstrap, [f"{prefix}privacy-pipeline-subject-state-changelog"], idle=3.0
    )
    skipped = skipped_records(bootstrap, serde, prefix)
    crashes = worker.log_text().count("Crashed reason=")
    tagged = sum(counts[prefix + t] for t in COUNTED_OUTPUTS[:3])
    want_tagged = valid["customer"] + valid["order"] + valid["click"]
    return {
        "eps": done / secs,
        "seconds": secs,
        "complete": complete,
        "outcomes": done,
        "eps_from_ready": done / max(1e-9, t_end - max(ready_at, t_start)),
        "startup_s": ready_s,
        "head_start_s": (ready_at - t_start) if ready_at > t_start else 0.0,
        "first_output_after_start_s": (first_seen - t_start) if first_seen else None,
        "processed": m.get("privacy_pipeline_processing_seconds_count", 0.0),
        "dead_letters": m.get("privacy_pipeline_dead_letters_total", 0.0),
        "accepted": m.get("privacy_pipeline_events_total", 0.0),
        "batches": m.get("privacy_pipeline_batch_size_events_count", 0.0),
        "batch_items_mean": m.get("privacy_pipeline_batch_size_events_sum", 0.0)
        / max(1.0, m.get("privacy_pipeline_batch_size_events_count", 0.0)),
        "cpu_worker_us_per_event": (cpu1["worker"] - cpu0["worker"]) / max(done, 1.0) * 1e6,
        "cpu_ingest_us_per_event": (cpu1["ingest"] - cpu0["ingest"]) / max(done, 1.0) * 1e6,
        "outputs": {t: counts[prefix + t] for t in COUNTED_OUTPUTS},
        "tagged": tagged,
        "tagged_expected": want_tagged,
        # one changelog record per micro-batch, plus the fence record of each partition
        "changelog_records": sum(changelog.values()) - PARTITIONS,
        "changelog_batches": batches,
        "agent_crashes": crashes,
        "skipped": skipped,
    }


def run_latency(
    bootstrap: str,
    prefix: str,
    worker: Worker,
    rate: float,
    seconds: float,
    seed: int,
    serde: AvroSerde,
) -> dict[str, Any]:
    """Produce fresh traffic at `rate` for `seconds`; opt-out latency from the histogram."""
    n = max(100, int(rate * seconds))
    lead = 3.0 + n * 8e-5
    start = datetime.now(UTC) + timedelta(seconds=lead)
    model = TrafficModel(seed, max(200, n // 15), start, timedelta(seconds=seconds))
    events = list(model.events(n))
    optouts = sum(
        1
        for e in events
        if (e["type"] == "consent" and e["action"] in ("withdraw", "object"))
        or (e["type"] == "privacy_request" and e["right"] == "objection")
    )
    records, _ = encode_events(serde, events)
    p = producer(bootstrap, linger_ms=SEND_EVERY_MS)
    before = worker.metrics()
    base = outcomes(before)
    progress(f"  producing {n} events at {rate:.0f}/s for {seconds:.0f} s ({optouts} opt-outs)")
    t0 = time.perf_counter()
    sent = 0
    while sent < n:
        due = min(n, int((time.perf_counter() - t0) * rate) + 1)
        while sent < due:
            topic, key, value = records[sent]
            p.produce(prefix + topic, value, key=key)
            sent += 1
        p.poll(0)
        time.sleep(SEND_EVERY_MS / 1000)
    p.flush(30)
    produce_s = time.perf_counter() - t0
    sent_at = time.time()
    done_at, after, _, complete = wait_outcomes(
        worker, base + n, stall=20.0, label="latency", give_up=True
    )
    name = "privacy_pipeline_optout_latency_seconds"
    opt = histogram_delta(before, after, name)
    proc = histogram_delta(before, after, "privacy_pipeline_processing_seconds")
    side = histogram_delta(before, after, "privacy_pipeline_subject_log_delay_seconds")

    def ms(buckets: list[tuple[float, float]], q: float) -> float | None:
        v = quantile(buckets, q)
        return None if v is None else v * 1000.0

    return {
        "rate": rate,
        "events": n,
        "produce_s": produce_s,
        "drain_s": done_at - sent_at,
        "complete": complete,
        "outcomes": outcomes(after) - base,
        # p99 beyond the largest finite bucket: the figure is that bound, a lower limit
        "capped": beyond(opt, 0.99),
        "p50_capped": beyond(opt, 0.5),
        "all_capped": beyond(proc, 0.99),
        "all_p50_capped": beyond(proc, 0.5),
        "optouts_produced": optouts,
        "optouts_observed": opt[-1][1] if opt else 0.0,
        "p50_ms": ms(opt, 0.5),
        "p99_ms": ms(opt, 0.99),
        "all_p50_ms": ms(proc, 0.5),
        "all_p99_ms": ms(proc, 0.99),
        # from the micro-batch written by ingest to its decisions sent: the enforce side
        "enforce_p50_ms": ms(side, 0.5),
        "enforce_p99_ms": ms(side, 0.99),
        "buckets": [(le, cum) for le, cum in opt],
    }


def run_restart(
    bootstrap: str, prefix: str, subjects: int, serde: AvroSerde, ports: list[int], logdir: Path
) -> dict[str, Any]:
    ensure_topics(bootstrap, topic_specs(prefix, PARTITIONS))
    records, _ = encode_events(
        serde, customer_created(subjects, datetime.now(UTC) - timedelta(hours=1))
    )
    produce_all(bootstrap, prefix, records)
    first = Worker(bootstrap, prefix, ports[0], logdir).start()
    try:
        first.wait_log(READY_RE, timeout=120)
        t0 = time.perf_counter()
        _, m, _, complete = wait_outcomes(
            first, subjects, stall=30.0, label="restart state", give_up=True
        )
        build_s = time.perf_counter() - t0
        built = int(outcomes(m))
        changelog = f"{prefix}privacy-pipeline-subject-state-changelog"
        in_log = changelog_subjects(bootstrap, changelog, built, timeout=60)
        progress(f"  {in_log} subjects in the changelog; SIGKILL worker pid {first.pid}")
        killed = first.kill9()
    except BaseException:
        first.stop()
        raise
    progress(f"  killed {1 + len(killed)} processes; restarting")
    second = Worker(bootstrap, prefix, ports[1], logdir).start()
    try:
        recovered_s, found = second.wait_log(RECOVERED_RE, timeout=180)
        ready_s, _ = second.wait_log(READY_RE, timeout=60)
    finally:
        second.stop()
    return {
        "subjects": subjects,
        "build_s": build_s,
        "built": built,
        "changelog_subjects": in_log,
        "recovered_s": recovered_s,
        "ready_s": ready_s,
        "changelog_records": int(found.group(1)),
        "recovered_subjects": int(found.group(2)),
    }


# -- report -----------------------------------------------------------------------------


def verdict(ok: bool) -> str:
    return "ok" if ok else "MISSED"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--events", type=int, default=None, help="events (default 200000)")
    ap.add_argument("--subjects", type=int, default=None, help="subjects (default 10000)")
    ap.add_argument("--restart-subjects", type=int, default=None, help="default 100000")
    ap.add_argument("--latency-seconds", type=float, default=None, help="default 15")
    ap.add_argument("--bad-ratio", type=float, default=0.001, help="malformed share of input")
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--quick", action="store_true", help="20k events, 10k restart subjects")
    ap.add_argument("--check", action="store_true", help="exit 1 when a target is missed")
    ap.add_argument("--logdir", type=Path, default=None, help="keep worker logs here")
    ap.add_argument(
        "--worker-cmd",
        default=None,
        help="command that replaces `privacy-pipeline` to start workers (A/B experiments)",
    )
    args = ap.parse_args(argv)
    quick = args.quick
    n_events = args.events or (20_000 if quick else 200_000)
    n_subjects = args.subjects or (2_000 if quick else 10_000)
    n_restart = args.restart_subjects or (10_000 if quick else 100_000)
    lat_s = args.latency_seconds or (8.0 if quick else 15.0)
    logdir = args.logdir or Path(tempfile.mkdtemp(prefix="bench-pipeline-"))
    logdir.mkdir(parents=True, exist_ok=True)
    if args.worker_cmd:
        CLI[:] = shlex.split(args.worker_cmd)

    load = os.getloadavg()[0]
    progress(f"{os.cpu_count()} CPUs, load average {load:.2f}; logs in {logdir}")
    if load > 0.5:
        progress("  WARNING: the machine is busy; figures will be lower than on an idle one")

    run = uuid.uuid4().hex[:6]
    base_prefix, pipe_prefix, restart_prefix = f"bb{run}-", f"bp{run}-", f"br{run}-"
    broker_port, *metric_ports = free_ports(4)
    broker = EmbeddedBroker(port=broker_port, log_file=logdir / "broker.log").start()
    bootstrap = broker.bootstrap
    serde = AvroSerde()
    worker: Worker | None = None
    try:
        progress(f"broker {bootstrap}; generating {n_events} events over {n_subjects} subjects")
        t = time.perf_counter()
        now = datetime.now(UTC)
        model = TrafficModel(
            args.seed,
            n_subjects,
            now - timedelta(days=30),
            timedelta(days=30),
            bad_ratio=args.bad_ratio,
        )
        records, kinds = encode_events(serde, model.events(n_events))
        progress(f"  generated and encoded in {time.perf_counter() - t:.1f} s: {dict(kinds)}")
        passthrough = TopicSpec(base_prefix + "passthrough", PARTITIONS, 86_400_000, "bytes")
        ensure_topics(bootstrap, [*topic_specs(base_prefix, PARTITIONS), passthrough])
        ensure_topics(bootstrap, topic_specs(pipe_prefix, PARTITIONS))
        produce_eps = produce_all(bootstrap, base_prefix, records)
        produce_all(bootstrap, pipe_prefix, records)
        sizes = sum(len(v) for _, _, v in records) / len(records)
        progress(f"  produced twice; {produce_eps:,.0f} events/s, mean value {sizes:.0f} bytes")
        del records

        progress("baseline: consume -> decode -> encode -> produce")
        broker_cpu0 = cpu_seconds(broker.pid)
        baseline = run_baseline(bootstrap, base_prefix, n_events, serde)
        baseline["broker_cpu_us_per_event"] = (
            (cpu_seconds(broker.pid) - broker_cpu0) / n_events * 1e6
        )
        progress(f"  {baseline['eps']:,.0f} events/s; broker RSS {rss_mb(broker.pid):,.0f} MB")

        progress("pipeline: privacy-pipeline run on the same input")
        worker = Worker(bootstrap, pipe_prefix, metric_ports[0], logdir)
        broker_cpu0 = cpu_seconds(broker.pid)
        pipeline = run_pipeline(bootstrap, pipe_prefix, n_events, serde, worker, kinds)
        pipeline["broker_cpu_us_per_event"] = (
            (cpu_seconds(broker.pid) - broker_cpu0) / n_events * 1e6
        )
        progress(
            f"  {pipeline['eps']:,.0f} events/s ({pipeline['outcomes']:,.0f} outcomes, "
            f"{pipeline['agent_crashes']} agent crashes); broker RSS {rss_mb(broker.pid):,.0f} MB"
        )

        progress("opt-out latency at half the pipeline's capacity")
        latency = run_latency(
            bootstrap, pipe_prefix, worker, pipeline["eps"] / 2, lat_s, args.seed + 1, serde
        )
        progress(
            f"  p50 {latency['p50_ms']} ms, p99 {latency['p99_ms']} ms; "
            f"broker RSS {rss_mb(broker.pid):,.0f} MB"
        )
        worker.stop()
        worker = None

        progress(f"restart: state of {n_restart} subjects, SIGKILL, restart")
        restart = run_restart(bootstrap, restart_prefix, n_restart, serde, metric_ports[1:], logdir)
        progress(
            f"  ready {restart['ready_s']:.1f} s after start; broker RSS "
            f"{rss_mb(broker.pid):,.0f} MB"
        )
        broker_rss = rss_mb(broker.pid)
    finally:
        if worker is not None:
            worker.stop()
        broker.stop()

    ratio = pipeline["eps"] / baseline["eps"]
    p99 = latency["p99_ms"]
    ok_ratio = ratio >= TARGET_RATIO and pipeline["complete"]
    ok_latency = p99 is not None and p99 <= TARGET_OPTOUT_P99_MS and latency["complete"]
    ok_restart = (
        restart["ready_s"] <= TARGET_RESTART_S and restart["recovered_subjects"] == n_restart
    )
    ok_exact = pipeline["tagged"] == pipeline["tagged_expected"]
    ok_changelog = (
        pipeline["changelog_records"] >= pipeline["changelog_batches"]
        and not pipeline["agent_crashes"]
    )
    skipped = pipeline["skipped"]
    ok_skipped = skipped is not None and skipped["events"] == 0

    def f(v: float | None, fmt: str = "{:,.0f}") -> str:
        return "n/a" if v is None else fmt.format(v)

    rows = [
        (
            "input",
            f"{n_events:,} events, {n_subjects:,} subjects, "
            f"{kinds['unencodable'] + kinds['invalid']} malformed, produce {produce_eps:,.0f}/s",
            "",
        ),
        (
            "baseline passthrough",
            f"{baseline['eps']:,.0f} events/s in {baseline['seconds']:.1f} s "
            f"({baseline['cpu_us_per_event']:.1f} µs CPU/event)",
            "",
        ),
        (
            "pipeline end to end",
            f"{pipeline['eps']:,.0f} events/s in {pipeline['seconds']:.1f} s",
            ""
            if pipeline["complete"]
            else f"INCOMPLETE: {pipeline['outcomes']:,.0f} of {n_events:,} outcomes, then stuck",
        ),
        (
            "  ratio pipeline/baseline",
            f"{ratio:.2f}",
            f"target >= {TARGET_RATIO}: {verdict(ok_ratio)}",
        ),
        (
            "  worker startup",
            f"{pipeline['startup_s']:.1f} s to Worker ready; ingest "
            f"head start {pipeline['head_start_s']:.1f} s",
            "",
        ),
        ("  events/s after Worker ready", f"{pipeline['eps_from_ready']:,.0f}", ""),
        (
            "  CPU per event",
            f"enforce {pipeline['cpu_worker_us_per_event']:.0f} µs, ingest "
            f"{pipeline['cpu_ingest_us_per_event']:.0f} µs, broker "
            f"{pipeline['broker_cpu_us_per_event']:.0f} µs (baseline broker "
            f"{baseline['broker_cpu_us_per_event']:.0f} µs)",
            "",
        ),
        (
            "  micro-batches",
            f"{pipeline['batches']:,.0f}, mean {pipeline['batch_items_mean']:.0f} items",
            "",
        ),
        (
            "  outcomes",
            f"{pipeline['processed']:,.0f} processed + {pipeline['dead_letters']:,.0f} "
            f"dead letters",
            "",
        ),
        (
            "  tagged records",
            f"{pipeline['tagged']:,} of {pipeline['tagged_expected']:,} "
            "customer/order/click events",
            verdict(ok_exact),
        ),
        (
            "  state changelog",
            f"{pipeline['changelog_records']:,} records for {pipeline['changelog_batches']:,.0f} "
            f"micro-batches (ticks included); enforce agent crashes: {pipeline['agent_crashes']}",
            verdict(ok_changelog),
        ),
        (
            "  subject-log records skipped",
            "n/a (changelog keys not partition:offset)"
            if skipped is None
            else f"{skipped['records']} records, {skipped['events']:,} events never run by enforce",
            verdict(ok_skipped),
        ),
        ("  output topics", ", ".join(f"{k} {v:,}" for k, v in pipeline["outputs"].items()), ""),
        (
            "opt-out latency",
            f"at {latency['rate']:,.0f} events/s for {lat_s:.0f} s, "
            f"{latency['optouts_observed']:.0f} opt-outs",
            "",
        ),
        (
            "  p50 / p99",
            f"{'>= ' if latency['p50_capped'] else ''}{f(latency['p50_ms'], '{:.1f}')} / "
            f"{'>= ' if latency['capped'] else ''}"
            f"{f(latency['p99_ms'], '{:.1f}')} ms",
            f"p99 target <= {TARGET_OPTOUT_P99_MS:.0f} ms: {verdict(ok_latency)}",
        ),
        (
            "  backlog",
            f"all done {latency['drain_s']:.1f} s after the last send "
            f"({'kept up' if latency['drain_s'] < 1.0 else 'fell behind'})"
            if latency["complete"]
            else f"INCOMPLETE: {latency['outcomes']:,.0f} of {latency['events']:,} outcomes",
            "",
        ),
        (
            "  all events p50 / p99",
            f"{'>= ' if latency['all_p50_capped'] else ''}{f(latency['all_p50_ms'], '{:.1f}')} / "
            f"{'>= ' if latency['all_capped'] else ''}"
            f"{f(latency['all_p99_ms'], '{:.1f}')} ms",
            "",
        ),
        (
            "  of which enforce p50 / p99",
            f"{f(latency['enforce_p50_ms'], '{:.1f}')} / {f(latency['enforce_p99_ms'], '{:.1f}')}"
            " ms (subject log to decisions sent; the rest is the input hop and ingest)",
            "",
        ),
        (
            "restart",
            f"{n_restart:,} subjects (state of {restart['built']:,} built in "
            f"{restart['build_s']:.1f} s, {restart['changelog_subjects']:,} in changelog)",
            "",
        ),
        (
            "  recovery complete",
            f"{restart['recovered_s']:.1f} s, {restart['recovered_subjects']:,} "
            f"subjects from {restart['changelog_records']:,} records",
            "",
        ),
        (
            "  Worker ready",
            f"{restart['ready_s']:.1f} s after process start",
            f"target <= {TARGET_RESTART_S:.0f} s, all subjects: {verdict(ok_restart)}",
        ),
    ]
    width = max(len(r[0]) for r in rows)
    print(
        f"\nbench_pipeline ({'quick' if quick else 'full'}), {time.strftime('%Y-%m-%d %H:%M')}, "
        f"{os.cpu_count()} CPUs, load average at start {load:.2f}"
    )
    for name, value, note in rows:
        print(f"{name:<{width}}  {value}" + (f"   [{note}]" if note else ""))
    print(
        "latency figures interpolate linearly within histogram buckets "
        "(bounds 1, 2.5, 5, 10, 25, 50, 100, 250 ms ...)"
    )
    summary = {
        "pipeline_eps": round(pipeline["eps"]),
        "passthrough_eps": round(baseline["eps"]),
        "ratio": round(ratio, 3),
        "optout_p50_ms": None if latency["p50_ms"] is None else round(latency["p50_ms"], 1),
        "optout_p99_ms": None if p99 is None else round(p99, 1),
        "optout_p99_lower_limit": latency["capped"],
        "restart_ready_s": round(restart["ready_s"], 2),
        "restart_recovery_s": round(restart["recovered_s"], 2),
        "restart_subjects": restart["recovered_subjects"],
        "events": n_events,
        "pipeline_complete": pipeline["complete"],
        "latency_complete": latency["complete"],
        "subjects": n_subjects,
        "dead_letters": int(pipeline["dead_letters"]),
        "tagged": pipeline["tagged"],
        "tagged_expected": pipeline["tagged_expected"],
        "micro_batches": int(pipeline["batches"]),
        "changelog_records": pipeline["changelog_records"],
        "agent_crashes": pipeline["agent_crashes"],
        "skipped_events": None if skipped is None else skipped["events"],
        "pipeline_eps_from_ready": round(pipeline["eps_from_ready"]),
        "worker_startup_s": round(pipeline["startup_s"], 2),
        "enforce_cpu_us_per_event": round(pipeline["cpu_worker_us_per_event"], 1),
        "ingest_cpu_us_per_event": round(pipeline["cpu_ingest_us_per_event"], 1),
        "latency_rate_eps": round(latency["rate"]),
        "optouts": int(latency["optouts_observed"]),
        "latency_drain_s": round(latency["drain_s"], 2),
        "all_events_p99_ms": None
        if latency["all_p99_ms"] is None
        else round(latency["all_p99_ms"], 1),
        "enforce_p99_ms": None
        if latency["enforce_p99_ms"] is None
        else round(latency["enforce_p99_ms"], 1),
        "load_average": round(load, 2),
        "broker_rss_mb": round(broker_rss),
        "quick": quick,
    }
    missed = not (
        ok_ratio and ok_latency and ok_restart and ok_exact and ok_changelog and ok_skipped
    )
    print(json.dumps(summary))
    return 1 if missed and args.check else 0


if __name__ == "__main__":
    sys.exit(main())
