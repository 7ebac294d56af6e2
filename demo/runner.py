"""`privacy-pipeline demo`: the embedded broker, the worker, two sinks and synthetic
traffic, live.

What runs, and where:

- the **embedded broker** (Tansu, memory only) unless ``--broker`` names one; it is
  started in its own process group, so a Ctrl-C in the terminal reaches the demo (which
  then shuts everything down in order) and not the broker, which would otherwise die
  before the worker has drained;
- the **worker** (`run_worker`: batched ingest in a child process, the faust enforce
  agent) in the main thread, as faust wants; it installs the SIGINT/SIGTERM handlers
  that stop it cleanly. Its tracker waits DEMO_ACK_TIMEOUT (20 s) for an ack before it
  re-issues a command, so a paused sink shows within the first minute;
- **two sinks** (:mod:`privacy_pipeline.demo.sinks`), one spawned process each, on SQLite
  files in a fresh temporary folder that is kept afterwards: ``web-analytics`` (rego,
  inrego) and ``credit-agency`` (rego, rejoin). Each fills its table from the tagged
  records, as a downstream service would, and applies the erasure commands for its
  target to it. ``kill -STOP PID`` pauses one (its commands go overdue and are
  re-issued), ``kill -CONT PID`` resumes it; the demo prints the pids;
- the **loop** (:mod:`privacy_pipeline.demo.loop`), one spawned process: it counts
  commands, acks, re-issues, rows erased and request statuses for the summary, and
  answers ``not_found`` for the targets that have no sink in the demo;
- the **traffic producer** in a spawned child process (so generating and encoding events
  never competes with the enforce agent for the GIL): realistic events of the five seed
  controllers from :class:`~privacy_pipeline.demo.traffic.TrafficModel`, Avro-encoded, at
  ``--rate`` events/s, ``occurred_at`` following the wall clock. Mixed in: a legacy import
  of former customers' history from 37–40 months ago (every 24- and 36-month retention has
  lapsed, so ``retention_expired`` erasure commands appear) and ~0.5 % malformed records
  (as producers get it wrong: unknown controller, bad timestamp, JSON instead of Avro), so
  dead letters appear. It waits until the worker has processed its first micro-batch, and
  stops after ``--max-events`` records: the in-memory broker never frees memory;
- a **live summary** on stderr every 5 s, a block of lines of at most 100 columns, read
  back from the Prometheus registry the worker records into and from the loop's and the
  sinks' counters: counts, closed-vocabulary labels and pids only, never personal data
  or subject ids.

``--duration`` stops the producer, then sends the worker the same SIGTERM a supervisor
would; the sinks and the loop stop after it. Without it the demo runs until Ctrl-C.
"""

from __future__ import annotations

import gc
import json
import math
import multiprocessing as mp
import os
import shutil
import signal
import sys
import tempfile
import textwrap
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from random import Random
from typing import TYPE_CHECKING, Any, NamedTuple

import click

from privacy_pipeline.demo.loop import LoopCounts, LoopProcess
from privacy_pipeline.demo.traffic import TrafficModel
from privacy_pipeline.streams.settings import Settings

if TYPE_CHECKING:  # faust and SQLAlchemy stay out of the traffic producer's process
    from privacy_pipeline.demo.sinks import SinkProcess
    from privacy_pipeline.streams.metrics import PipelineMetrics

__all__ = [
    "DemoTraffic",
    "OutRecord",
    "SinkView",
    "Snapshot",
    "TrafficConfig",
    "bucket_quantile",
    "cli_command",
    "closing_lines",
    "format_summary",
    "read_snapshot",
    "run_demo",
]

SUMMARY_INTERVAL = 5.0
"""Seconds between summary blocks."""

DEMO_ACK_TIMEOUT = 20.0
"""The worker's --ack-timeout in the demo (10 minutes in production): a paused sink's
commands go overdue, and are re-issued, within the demo's first minute."""

DEMO_CANARY_EVERY = timedelta(seconds=30)
"""How often the demo plants deletion canaries (see `_start_canaries`): the first is
erased about 20 s into a run."""

OLD_SHARE = 0.02
"""Share of records from the legacy import (events 37-40 months old)."""

BAD_RATIO = 0.005
"""Share of live events that are malformed (they end up as dead letters)."""

LEGACY_AGE = timedelta(days=1218)  # ~40 months
LEGACY_SPAN = timedelta(days=91)  # the newest legacy event is ~37 months old
LEGACY_PREFIX = "legacy-"
EVENTS_PER_SUBJECT = 20

START_TIMEOUT = 90.0
"""Seconds to wait for the worker's first micro-batch before producing anyway."""
DRAIN_TIMEOUT = 15.0
"""Seconds the demo waits, at --duration, for the worker to enforce what came in."""
SEND_EVERY_S = 0.1
"""The traffic producer's step: it sends what came due in one burst every 100 ms."""
SEND_LINGER_MS = 10.0
"""Long enough to put a step's burst in one batch per partition, short enough that an
opt-out does not wait for the next one."""

# -- traffic -------------------------------------------------------------------------------


class OutRecord(NamedTuple):
    """One record for an input topic: where it goes, its bytes, and what it is."""

    topic: str  # contract name, without prefix
    key: bytes
    value: bytes
    kind: str  # "live", "old" (legacy import) or "bad" (malformed)
    event: dict[str, Any]  # the canonical JSON event it was made from (may be invalid)


@dataclass(frozen=True)
class TrafficConfig:
    """What the traffic producer sends, and how fast."""

    bootstrap: str
    prefix: str = ""
    rate: float = 2000.0
    max_events: int = 1_000_000
    seed: int = 0
    old_share: float = OLD_SHARE
    bad_ratio: float = BAD_RATIO


class DemoTraffic:
    """Synthetic input records: live traffic, a trickle of legacy history, some bad records.

    Live events come from a :class:`TrafficModel` whose ``max_events`` events span
    ``max_events / rate`` seconds from ``now``: sent at ``rate``, their ``occurred_at``
    keeps pace with the wall clock. Every ``1 / old_share``-th record is instead from a
    second model, 37-40 months in the past, with subject ids prefixed ``legacy-`` (a
    legacy system's import of former customers). A ``bad_ratio`` share of live events is
    malformed by the model; the ones Avro cannot even encode are sent as their JSON text,
    as a producer with the wrong serializer would. Deterministic for a given seed and now.
    """

    def __init__(
        self,
        seed: int,
        rate: float,
        max_events: int,
        now: datetime,
        *,
        old_share: float = OLD_SHARE,
        bad_ratio: float = BAD_RATIO,
    ) -> None:
        from privacy_pipeline.streams.serde import AvroSerde, RecordError, event_to_avro
        from privacy_pipeline.streams.topics import EVENT_SCHEMAS, input_topic

        if rate <= 0:
            raise ValueError("rate must be positive")
        if max_events < 1:
            raise ValueError("max_events must be at least 1")
        self.max_events = max_events
        self.every_old = round(1 / old_share) if old_share > 0 else 0
        self.n_old = max_events // self.every_old if self.every_old else 0
        self.n_live = max_events - self.n_old
        span = timedelta(seconds=max(1.0, self.n_live / rate))
        self.live = TrafficModel(
            seed,
            max(100, self.n_live // EVENTS_PER_SUBJECT),
            now,
            span,
            bad_ratio=bad_ratio,
        )
        self.old = TrafficModel(
            Random(seed).getrandbits(32) ^ 0x1E6AC7,  # noqa: S311 - not security
            max(20, self.n_old // EVENTS_PER_SUBJECT),
            now - LEGACY_AGE,
            LEGACY_SPAN,
        )
        self.serde = AvroSerde()
        self._to_avro = event_to_avro
        self._record_error = RecordError
        self._topics = {kind: input_topic(kind).name for kind in EVENT_SCHEMAS}

    def records(self) -> Iterator[OutRecord]:
        """Every record to send, ``max_events`` in all, in sending order."""
        live = self.live.marked_events(self.n_live)
        old = self.old.events(self.n_old) if self.n_old else iter(())
        every = self.every_old
        for i in range(self.max_events):
            if every and i % every == every - 1:
                event = next(old, None)
                if event is not None:
                    event["subject_id"] = LEGACY_PREFIX + str(event["subject_id"])
                    yield self._record(event, "old")
                    continue
            marked = next(live, None)
            if marked is None:
                return
            # The model says which events it made malformed (ingest dead-letters them):
            # asking the parser instead cost a quarter of the producer's time per event.
            event, bad = marked
            yield self._record(event, "bad" if bad else "live")

    def _record(self, event: dict[str, Any], kind: str) -> OutRecord:
        # The model's malformed events may have any type: they go where clicks go.
        kind_of = str(event.get("type"))
        topic = self._topics.get(kind_of, self._topics["click"])
        key = f"{event.get('controller')}:{event.get('subject_id')}".encode()
        try:
            name, record = self._to_avro(event)
            value = self.serde.encode(name, record)
        except self._record_error:
            # Not even Avro can hold it: a producer with the wrong serializer sends JSON.
            text = json.dumps(event, ensure_ascii=False, separators=(",", ":"), default=str)
            return OutRecord(topic, key, text.encode(), "bad", event)
        return OutRecord(topic, key, value, kind, event)


# Shared counters of the producer process (a RawArray of int64).
_SENT, _OLD, _BAD, _FAILED = range(4)


def _producer_main(config: TrafficConfig, counts: Any, go: Any, stop: Any, done: Any) -> None:
    """Child process: wait for `go`, then produce `config.max_events` records at the rate."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent stops us, in order
    from confluent_kafka import Producer

    parent = os.getppid()

    def orphaned() -> bool:
        return os.getppid() != parent

    while not go.wait(0.2):
        if stop.is_set() or orphaned():
            return
    failed = 0

    def delivered(err: Any, _msg: Any) -> None:
        nonlocal failed
        if err is not None:
            failed += 1

    # Few, large batches, as a busy producer service sends them. The embedded broker's
    # cost per request grows with the batches it holds: with a batch per partition every
    # 20 ms (a linger of 20 ms) it went from 0.3 to a whole core within a minute at
    # 500 events/s, and the pipeline fell behind; with 100 ms steps it stays near half
    # a core after two minutes at 1,000/s (in 5 ms steps it was worse still).
    producer = Producer(Settings().tuning.traffic_producer(config.bootstrap, SEND_LINGER_MS))
    traffic = DemoTraffic(
        config.seed,
        config.rate,
        config.max_events,
        datetime.now(UTC),
        old_share=config.old_share,
        bad_ratio=config.bad_ratio,
    )
    records = traffic.records()
    prefix = config.prefix
    sent = old = bad = 0
    started = time.monotonic()
    exhausted = False
    try:
        while not stop.is_set() and not exhausted:
            due = min(config.max_events, int((time.monotonic() - started) * config.rate) + 1)
            while sent < due:
                rec = next(records, None)
                if rec is None:
                    exhausted = True
                    break
                while True:
                    try:
                        producer.produce(
                            prefix + rec.topic, rec.value, key=rec.key, on_delivery=delivered
                        )
                        break
                    except BufferError:
                        producer.poll(0.05)
                sent += 1
                if rec.kind == "old":
                    old += 1
                elif rec.kind == "bad":
                    bad += 1
                if sent % 1000 == 0:
                    producer.poll(0)
                    counts[_SENT], counts[_OLD], counts[_BAD] = sent, old, bad
                    if stop.is_set():
                        break
            producer.poll(0)
            counts[_SENT], counts[_OLD], counts[_BAD], counts[_FAILED] = sent, old, bad, failed
            if sent >= config.max_events:
                exhausted = True
            elif orphaned():
                return
            else:
                time.sleep(SEND_EVERY_S)
        producer.flush(10)
    finally:
        counts[_SENT], counts[_OLD], counts[_BAD], counts[_FAILED] = sent, old, bad, failed
        if exhausted:
            done.set()


class TrafficProcess:
    """The traffic producer in a spawned child process, with counters the parent reads."""

    def __init__(self, config: TrafficConfig) -> None:
        ctx = mp.get_context("spawn")
        self.counts: Any = ctx.RawArray("q", 4)
        self.go = ctx.Event()
        self.stop_event = ctx.Event()
        self.done = ctx.Event()
        self.process = ctx.Process(
            target=_producer_main,
            args=(config, self.counts, self.go, self.stop_event, self.done),
            name="privacy-pipeline-demo-traffic",
            daemon=True,
        )

    def start(self) -> None:
        """Start the child (it imports, builds its producer, then waits for :meth:`release`)."""
        self.process.start()

    def release(self) -> None:
        """Let the child start producing."""
        self.go.set()

    @property
    def sent(self) -> int:
        """Records handed to the producer so far."""
        return int(self.counts[_SENT])

    @property
    def old(self) -> int:
        """Legacy-import records sent so far."""
        return int(self.counts[_OLD])

    @property
    def bad(self) -> int:
        """Malformed records sent so far."""
        return int(self.counts[_BAD])

    @property
    def failed(self) -> int:
        """Records the broker did not acknowledge."""
        return int(self.counts[_FAILED])

    def stop(self, timeout: float = 15.0) -> None:
        """Stop producing (flushing what is queued) and wait for the child."""
        self.stop_event.set()
        if self.process.pid is None:
            return
        self.process.join(timeout)
        if self.process.is_alive():
            self.process.terminate()
            self.process.join(5)


# -- reading the metrics back --------------------------------------------------------------


@dataclass
class Snapshot:
    """Totals read from the pipeline's Prometheus registry at one instant."""

    at: float = 0.0
    events: float = 0.0
    decisions: Counter[str] = field(default_factory=Counter)
    suppressions: Counter[tuple[str, str]] = field(default_factory=Counter)
    erasures: Counter[str] = field(default_factory=Counter)
    dead_letters: Counter[str] = field(default_factory=Counter)
    optout_buckets: list[tuple[float, float]] = field(default_factory=list)
    batches: float = 0.0
    enforced: float = 0.0
    timers: float = 0.0
    canaries: float = 0.0  # deletion canaries erased everywhere
    canary_seconds: float = 0.0  # their seconds from request to the last ack, summed
    canary_pending: float = 0.0  # age of the oldest canary not erased yet

    @property
    def optouts(self) -> float:
        """Opt-outs (withdrawals, objections) put in force."""
        return self.optout_buckets[-1][1] if self.optout_buckets else 0.0


def read_snapshot(registry: Any, now: float | None = None) -> Snapshot:
    """Read the privacy_pipeline_* totals the summary shows from `registry`."""
    snap = Snapshot(at=time.monotonic() if now is None else now)
    for family in registry.collect():
        name = family.name
        if not name.startswith("privacy_pipeline_"):
            continue
        short = name.removeprefix("privacy_pipeline_")
        for sample in family.samples:
            labels, value = sample.labels, float(sample.value)
            suffix = sample.name.removeprefix(name)
            if short == "events" and suffix == "_total":
                snap.events += value
            elif short == "decisions" and suffix == "_total":
                snap.decisions[labels["decision"]] += int(value)
            elif short == "suppressions" and suffix == "_total":
                snap.suppressions[(labels["purpose"], labels["reason"])] += int(value)
            elif short == "erasure_commands" and suffix == "_total":
                snap.erasures[labels["reason"]] += int(value)
            elif short == "dead_letters" and suffix == "_total":
                snap.dead_letters[labels["reason"]] += int(value)
            elif short == "optout_latency_seconds" and suffix == "_bucket":
                le = labels["le"]
                snap.optout_buckets.append((math.inf if le == "+Inf" else float(le), value))
            elif short == "batch_size_events" and suffix == "_count":
                snap.batches = value
            elif short == "processing_seconds" and suffix == "_count":
                snap.enforced = value
            elif short == "retention_timers" and suffix == "":
                snap.timers += value
            elif short == "canary_erasure_seconds" and suffix == "_count":
                snap.canaries += value
            elif short == "canary_erasure_seconds" and suffix == "_sum":
                snap.canary_seconds += value
            elif short == "canary_pending_seconds" and suffix == "":
                snap.canary_pending = max(snap.canary_pending, value)
    snap.optout_buckets.sort()
    return snap


def bucket_quantile(q: float, buckets: list[tuple[float, float]]) -> float | None:
    """The `q` quantile of a histogram from its cumulative buckets (upper bound, count).

    Interpolates linearly inside the bucket, as Prometheus' ``histogram_quantile`` does;
    an answer in the ``+Inf`` bucket is given as the largest finite bound. None when empty.
    """
    if not buckets or buckets[-1][1] <= 0:
        return None
    rank = q * buckets[-1][1]
    lower, below = 0.0, 0.0
    for bound, cumulative in buckets:
        if cumulative >= rank:
            if math.isinf(bound):
                return lower
            inside = cumulative - below
            if inside <= 0:
                return bound
            return lower + (bound - lower) * (rank - below) / inside
        lower, below = bound, cumulative
    return lower


def _n(value: float) -> str:
    return f"{int(value):,}"


def _parts(counts: Counter[Any], limit: int = 5) -> str:
    items = [(k, v) for k, v in counts.most_common() if v > 0]
    if not items:
        return "none"
    shown = [f"{'/'.join(k) if isinstance(k, tuple) else k} {_n(v)}" for k, v in items[:limit]]
    if len(items) > limit:
        shown.append(f"+{len(items) - limit} more")
    return ", ".join(shown)


def _latency(q: float, buckets: list[tuple[float, float]]) -> str:
    """The `q` quantile for people: "35ms", "2.4s", ">10s" past the last finite bucket."""
    seconds = bucket_quantile(q, buckets)
    if seconds is None:
        return "-"
    finite = [(bound, n) for bound, n in buckets if not math.isinf(bound)]
    if finite and q * buckets[-1][1] > finite[-1][1]:
        return f">{finite[-1][0]:g}s"
    return f"{seconds * 1000:.0f}ms" if seconds < 1 else f"{seconds:.1f}s"


WIDTH = 100
"""No summary line is longer than this (a terminal's 100 columns)."""
_INDENT = " " * 9


def _fit(line: str) -> str:
    """`line`, cut to WIDTH columns: a summary line never wraps."""
    return line if len(line) <= WIDTH else line[: WIDTH - 1] + "…"


@dataclass(frozen=True)
class SinkView:
    """What the summary shows of one demo sink: counts and its process, nothing personal."""

    target: str
    state: str  # starting, running, paused, down
    pid: int | None
    rows_written: int = 0
    withheld: int = 0


def _sink_part(sink: SinkView) -> str:
    where = f"pid {sink.pid}"
    if sink.state == "paused":
        where = f"PAUSED, kill -CONT {sink.pid}"
    elif sink.state == "down":
        where = "DOWN"
    return f"{sink.target} {_n(sink.rows_written)} rows ({where})"


def format_summary(
    snap: Snapshot,
    previous: Snapshot | None,
    elapsed: float,
    produced: int | None = None,
    loop: LoopCounts | None = None,
    sinks: Sequence[SinkView] = (),
) -> list[str]:
    """The summary block: rates over the last interval, then totals; each line at most
    WIDTH columns. Counts, closed-vocabulary labels and pids only."""
    rate = enforced = 0.0
    if previous is not None and snap.at > previous.at:
        rate = (snap.events - previous.events) / (snap.at - previous.at)
        enforced = (snap.enforced - previous.enforced) / (snap.at - previous.at)
    sent = f"produced {produced:,}, " if produced is not None else ""
    p50, p99 = _latency(0.5, snap.optout_buckets), _latency(0.99, snap.optout_buckets)
    lines = [
        f"[{elapsed:5.0f}s] events {rate:,.0f}/s in, {enforced:,.0f}/s enforced; "
        f"{sent}accepted {_n(snap.events)}; dead letters {_n(sum(snap.dead_letters.values()))}",
        f"{_INDENT}decisions {_parts(snap.decisions, 2)}; "
        f"opt-outs {_n(snap.optouts)}, p50 {p50} p99 {p99}",
    ]
    if loop is not None:
        lines.append(f"{_INDENT}{_sinks_line(loop)}")
        lines.append(f"{_INDENT}{_requests_line(loop)}")
    if sinks:
        lines.append(f"{_INDENT}" + ", ".join(_sink_part(s) for s in sinks))
    if snap.canaries or snap.canary_pending:
        lines.append(f"{_INDENT}{_canaries_line(snap)}")
    return [_fit(line) for line in lines]


def _canaries_line(snap: Snapshot) -> str:
    mean = snap.canary_seconds / snap.canaries if snap.canaries else 0.0
    return (
        f"canaries: {_n(snap.canaries)} erased everywhere, mean {mean:.1f} s from request "
        f"to last ack; oldest pending {snap.canary_pending:.0f} s"
    )


def _sinks_line(loop: LoopCounts) -> str:
    return (
        f"sinks: commands {_n(loop.sink_issued)}, acked {_n(loop.sink_answered)}, "
        f"overdue {_n(loop.sink_overdue)}, retried {_n(loop.sink_reissued)}; "
        f"rows erased {_n(loop.rows_erased)}"
    )


def _requests_line(loop: LoopCounts) -> str:
    parts = [f"completed {_n(loop.requests_completed)}", f"in progress {_n(loop.requests_open)}"]
    if loop.requests_partial:
        parts.append(f"partially {_n(loop.requests_partial)}")
    if loop.requests_failed:
        parts.append(f"failed {_n(loop.requests_failed)}")
    return f"requests {_n(loop.requests)}: {', '.join(parts)}; escalations {_n(loop.escalations)}"


# -- the running demo ----------------------------------------------------------------------


def _echo(message: str) -> None:
    """Print to stderr, each line wrapped at WIDTH columns (never inside a word, so a path
    or URL stays whole, even when it alone is wider)."""
    lines: list[str] = []
    for line in message.splitlines():
        if len(line) <= WIDTH:
            lines.append(line)
            continue
        lines += textwrap.wrap(
            line, WIDTH, subsequent_indent="  ", break_long_words=False, break_on_hyphens=False
        )
    click.echo("\n".join(lines), err=True)


class _Monitor(threading.Thread):
    """Prints the live summary; releases the producer once the worker is live; stops the
    demo after `duration` seconds."""

    def __init__(
        self,
        registry: Any,
        traffic: TrafficProcess,
        started: float,
        duration: float | None,
        max_events: int,
        stop_worker: Callable[[], bool],
        loop: LoopProcess | None = None,
        sinks: Sequence[SinkProcess] = (),
    ) -> None:
        super().__init__(name="privacy-pipeline-demo-summary", daemon=True)
        self.registry = registry
        self.traffic = traffic
        self.started = started
        self.duration = duration
        self.max_events = max_events
        self.stop_worker = stop_worker
        self.loop = loop
        self.sinks = sinks
        self.finished = threading.Event()
        self.traffic_started: float | None = None
        self.first: Snapshot | None = None
        self.last_growth: Snapshot | None = None
        self._said_done = False
        self._stop_sent = False
        self._drain_until: float | None = None
        self._states = {s.sink.target: "starting" for s in sinks}

    def run(self) -> None:
        """Loop until :attr:`finished` is set."""
        previous: Snapshot | None = None
        next_line = time.monotonic() + SUMMARY_INTERVAL
        while not self.finished.wait(0.1):
            now = time.monotonic()
            if self.traffic_started is None:
                self._maybe_release(now)
            if self.traffic.done.is_set() and not self._said_done:
                self._said_done = True
                _echo(
                    f"demo: stopped producing after {self.traffic.sent:,} events "
                    "(--max-events: the in-memory broker keeps them all)\n"
                    "demo: the worker keeps running until Ctrl-C or --duration"
                )
            if self.duration is not None and now - self.started >= self.duration:
                self._request_stop()
            self._note_sink_states()
            if now >= next_line:
                next_line += SUMMARY_INTERVAL
                snap = read_snapshot(self.registry, now)
                if previous is not None and snap.enforced > previous.enforced:
                    self.last_growth = snap
                if self.traffic_started is not None:
                    loop = self.loop.snapshot() if self.loop is not None else None
                    lines = format_summary(
                        snap,
                        previous,
                        now - self.started,
                        self.traffic.sent,
                        loop,
                        [sink_view(s) for s in self.sinks],
                    )
                    _echo("\n".join(lines))
                previous = snap

    def _note_sink_states(self) -> None:
        """Say at once when a sink is paused, resumed or gone: the summary is seconds away."""
        for sink in self.sinks:
            target, state = sink.sink.target, sink.state()
            before = self._states.get(target)
            if state == before or state == "starting":
                continue
            self._states[target] = state
            if state == "paused":
                _echo(
                    f"demo: sink {target} (pid {sink.pid}) is paused: its commands go overdue, "
                    "then are re-issued"
                )
            elif state == "down":
                _echo(f"demo: sink {target} (pid {sink.pid}) is down: its commands go overdue")
            elif before == "paused":
                _echo(f"demo: sink {target} (pid {sink.pid}) runs again")

    def _maybe_release(self, now: float) -> None:
        snap = read_snapshot(self.registry, now)
        waited = now - self.started
        if snap.batches > 0 or waited > START_TIMEOUT:
            if snap.batches <= 0:
                _echo(f"demo: the worker is not live after {waited:.0f} s; producing anyway")
            else:
                _echo(f"demo: worker live after {waited:.1f} s; producing synthetic traffic")
            self.traffic.release()
            self.traffic_started = now
            self.first = snap

    def _request_stop(self) -> None:
        # Traffic stops first; the worker goes once it has enforced what ingest accepted
        # (or after DRAIN_TIMEOUT), so the last requests still reach the sinks.
        if self._stop_sent:
            return
        now = time.monotonic()
        if self._drain_until is None:
            self.traffic.stop_event.set()
            self._drain_until = now + DRAIN_TIMEOUT
            _echo(f"demo: --duration {self.duration:g} s reached; enforcing what came in")
        snap = read_snapshot(self.registry, now)
        produced_all = not self.traffic.process.is_alive()  # flushed and gone
        drained = produced_all and snap.enforced >= snap.events
        if (drained or now >= self._drain_until) and self.stop_worker():
            self._stop_sent = True


def sink_view(sink: SinkProcess) -> SinkView:
    """The summary's view of a running demo sink."""
    return SinkView(sink.sink.target, sink.state(), sink.pid, sink.rows_written, sink.withheld)


def _faust_handles_sigterm() -> bool:
    """True while the worker's event loop has its SIGTERM handler installed."""
    handler = signal.getsignal(signal.SIGTERM)
    return callable(handler)


def cli_command() -> str:
    """How to run ``privacy-pipeline`` from the user's shell: as installed on PATH, else
    the script next to this Python (``.venv/bin/privacy-pipeline`` after ``make demo``)."""
    candidates = [Path(sys.argv[0])] if Path(sys.argv[0]).name == "privacy-pipeline" else []
    candidates.append(Path(sys.executable).parent / "privacy-pipeline")
    on_path = shutil.which("privacy-pipeline")
    for script in candidates:
        if not script.is_file():
            continue
        if on_path is not None and Path(on_path).resolve() == script.resolve():
            return "privacy-pipeline"
        absolute = script.absolute()
        try:
            return str(absolute.relative_to(Path.cwd()))
        except ValueError:
            return str(absolute)
    return "privacy-pipeline"


def _start_canaries(settings: Settings, secrets: Path, metrics: PipelineMetrics) -> Any:
    """Deletion canaries (issue 9, item 8), every DEMO_CANARY_EVERY, for every controller.

    `run_demo` calls this before the worker starts (the runner exports the secrets folder for the
    worker's ingest) and stops what it returns after the worker. A canary is a synthetic
    person per controller: Rejoin's reaches the credit-agency sink's table like anyone's
    and is erased from it; the other targets answer through the stand-in. Its time to
    erasure is in ``privacy_pipeline_canary_erasure_seconds``, which the summary shows.
    """
    from privacy_pipeline.demo.traffic import CONTROLLERS
    from privacy_pipeline.streams.canary import start_canaries

    return start_canaries(
        settings, CONTROLLERS, DEMO_CANARY_EVERY.total_seconds(), secrets, metrics
    )


def run_demo(
    broker: str | None,
    broker_port: int | None,
    prefix: str,
    metrics_port: int,
    rate: float,
    max_events: int,
    duration: float | None,
    seed: int,
    partitions: int,
    log_level: str,
    secrets: Path,
    ack_timeout: float = DEMO_ACK_TIMEOUT,
) -> None:
    """Run the demo until Ctrl-C or *duration*: embedded broker, worker, sinks, traffic,
    summary."""
    from privacy_pipeline.demo.sinks import DEMO_SINKS, SinkProcess
    from privacy_pipeline.embedded_broker.launcher import (
        MEMORY_NOTE,
        BrokerStartError,
        EmbeddedBroker,
    )
    from privacy_pipeline.processors.policy import load_packs, packaged_policies
    from privacy_pipeline.processors.tracker import Tracking
    from privacy_pipeline.streams.metrics import PipelineMetrics, make_registry, serve_metrics
    from privacy_pipeline.streams.signing import CommandSigner
    from privacy_pipeline.streams.topic_admin import TopicError, ensure_topics
    from privacy_pipeline.streams.topics import ERASURE_COMMANDS, topic_specs
    from privacy_pipeline.streams.worker import WorkerConfig, run_worker

    started = time.monotonic()
    registry = make_registry()
    metrics = PipelineMetrics(registry, controllers=sorted(load_packs(packaged_policies())))
    try:
        server = serve_metrics(metrics_port, registry)
    except OSError as exc:
        raise click.ClickException(
            f"cannot serve metrics on port {metrics_port}: {exc.strerror or exc}"
        ) from None

    # Ctrl-C is for the demo's main process only: children started from here on (the
    # traffic producer, the sinks, the worker's ingest) inherit SIG_IGN and are stopped in
    # order. The worker installs its own SIGINT handler once it runs.
    previous_sigint = signal.signal(signal.SIGINT, signal.SIG_IGN)
    embedded: EmbeddedBroker | None = None
    traffic: TrafficProcess | None = None
    monitor: _Monitor | None = None
    loop: LoopProcess | None = None
    sinks: list[SinkProcess] = []
    folder: Path | None = None
    canaries: Any = None
    code = 1
    try:
        if not broker:
            try:
                embedded = EmbeddedBroker(port=broker_port, own_process_group=True).start()
            except BrokerStartError as exc:
                raise click.ClickException(str(exc)) from None
            broker = embedded.bootstrap
            _echo(f"demo: started the {MEMORY_NOTE}, at {broker}")
            _echo(
                f"demo: as it never frees memory, the traffic stops after {max_events:,} "
                "events (--max-events)"
            )
        tracking = Tracking(ack_timeout=timedelta(seconds=ack_timeout)) if ack_timeout else None
        config = WorkerConfig(
            Settings(bootstrap=broker, prefix=prefix),
            partitions=partitions,
            app_id="privacy-pipeline-demo",
            secrets=secrets,
            tracking=tracking,
        )
        try:
            ensure_topics(broker, topic_specs(prefix, partitions))
        except TopicError as exc:
            raise click.ClickException(str(exc)) from None
        _echo(f"demo: metrics at {server.url}")
        _echo(
            f"demo: read any topic with: {cli_command()} tail {ERASURE_COMMANDS.name} "
            f"--broker {broker}" + (f" --prefix {prefix}" if prefix else "")
        )
        _echo(
            f"demo: {rate:g} events/s for rego, inrego, rejoin, iret, unnamed004, "
            f"seed {seed}; " + (f"stopping after {duration:g} s" if duration else "Ctrl-C stops it")
        )
        # The sinks verify the worker's signatures: the key pair must exist before they
        # start (the worker would create it too, but only once it runs).
        CommandSigner.from_secrets(secrets)
        folder = Path(tempfile.mkdtemp(prefix="privacy-pipeline-demo-"))
        for demo_sink in DEMO_SINKS:
            sink = SinkProcess(demo_sink, folder, broker, prefix, secrets, packaged_policies())
            sink.start()
            sinks.append(sink)
        if tracking is not None:
            loop = LoopProcess(broker, prefix, [s.target for s in DEMO_SINKS], ack_timeout)
            loop.start()
        _echo_sinks(sinks, folder, ack_timeout)
        traffic = TrafficProcess(
            TrafficConfig(
                bootstrap=broker, prefix=prefix, rate=rate, max_events=max_events, seed=seed
            )
        )
        traffic.start()

        def stop_worker() -> bool:
            if not _faust_handles_sigterm():
                return False  # not running yet (or already stopped): try again later
            os.kill(os.getpid(), signal.SIGTERM)
            return True

        monitor = _Monitor(
            registry, traffic, started, duration, max_events, stop_worker, loop, sinks
        )
        monitor.start()
        canaries = _start_canaries(config.settings, secrets, metrics)
        code = run_worker(config, metrics, loglevel=log_level)
    finally:
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # a second Ctrl-C must not cut cleanup
        if canaries is not None:
            canaries.stop()
        if traffic is not None:
            traffic.stop()
        if monitor is not None:
            monitor.finished.set()
            monitor.join(5)
        # The sinks answer the commands the worker issued last (up to DRAIN_TIMEOUT; not
        # when one is paused or down), then apply what reached them and flush their acks;
        # the loop reads on until the acks stop coming, so the closing counts are complete.
        if loop is not None and sinks and all(s.state() == "running" for s in sinks):
            drain_until = time.monotonic() + DRAIN_TIMEOUT
            while time.monotonic() < drain_until:
                now_counts = loop.snapshot()
                if now_counts.sink_answered >= now_counts.sink_issued:
                    break
                time.sleep(0.2)
        for sink in sinks:
            sink.stop()
        if loop is not None:
            loop.stop()
        final = read_snapshot(registry)
        if monitor is not None and traffic is not None:
            elapsed = time.monotonic() - started
            views = [sink_view(s) for s in sinks]
            counts = loop.snapshot() if loop is not None else None
            _echo("\n".join(closing_lines(final, monitor, traffic, elapsed, code, counts, views)))
        if folder is not None:
            _echo(f"demo: the sinks' databases stay in {folder}")
        server.stop()
        if embedded is not None:
            # The broker defers its exit while clients are connected; the worker's clients
            # are garbage now. It holds nothing to save: a short grace is enough.
            gc.collect()
            embedded.stop(grace=1.0)
        signal.signal(signal.SIGINT, previous_sigint)
    sys.exit(code)


def _echo_sinks(sinks: Sequence[SinkProcess], folder: Path, ack_timeout: float) -> None:
    """Where the sinks are, and how to see the tracker at work by pausing one."""
    names = ", ".join(f"{s.sink.target} (pid {s.pid})" for s in sinks)
    _echo(f"demo: sinks {names}, on SQLite in {folder}")
    if sinks and ack_timeout:
        pid = sinks[0].pid
        _echo(
            f"demo: kill -STOP {pid} pauses a sink: its commands go overdue after "
            f"{ack_timeout:g} s, then are re-issued"
        )
        _echo(f"demo: kill -CONT {pid} resumes it")
        _echo(
            "demo: a stand-in answers not_found for the targets without a sink "
            "(the demo holds none of their data)"
        )


def closing_lines(
    final: Snapshot,
    monitor: _Monitor,
    traffic: TrafficProcess,
    elapsed: float,
    code: int,
    loop: LoopCounts | None = None,
    sinks: Sequence[SinkView] = (),
) -> list[str]:
    """The closing summary: what was produced and what the pipeline made of it."""
    begin, end = monitor.first, monitor.last_growth
    average = 0.0
    if begin is not None and end is not None and end.at > begin.at:
        average = (end.enforced - begin.enforced) / (end.at - begin.at)  # while events flowed
    p50, p99 = _latency(0.5, final.optout_buckets), _latency(0.99, final.optout_buckets)
    status = "ok" if code == 0 else f"worker exit code {code}"
    dead = sum(final.dead_letters.values())
    unread = traffic.sent - traffic.failed - int(final.events) - int(dead)
    left = f"; {unread:,} left unread in the broker" if unread > 0 else ""
    lines = [
        f"demo: done ({status}) after {elapsed:.1f} s",
        f"  produced {traffic.sent:,} events ({traffic.old:,} legacy, {traffic.bad:,} "
        f"malformed, {traffic.failed:,} not delivered)",
        f"  accepted {_n(final.events)}, enforced {_n(final.enforced)} "
        f"(avg {average:,.0f}/s){left}",
        f"  decisions {_parts(final.decisions, 4)}",
        f"  erasure commands {_parts(final.erasures, 3)}",
        f"  dead letters {_n(dead)}: {_parts(final.dead_letters, 3)}",
        f"  opt-outs {_n(final.optouts)}, latency p50 {p50} p99 {p99}",
    ]
    if loop is not None:
        lines.append(f"  {_sinks_line(loop)}, restricted {_n(loop.rows_restricted)}")
        lines.append(f"  {_requests_line(loop)}")
        lines.append(f"  stand-in: {_n(loop.other_answered)} commands for targets without a sink")
    for sink in sinks:
        lines.append(
            f"  sink {sink.target}: {_n(sink.rows_written)} rows written, "
            f"{_n(sink.withheld)} withheld by commands applied before"
        )
    return [_fit(line) for line in lines]
