"""`privacy-pipeline demo`: the embedded broker, the worker and synthetic traffic, live.

What runs, and where:

- the **embedded broker** (Tansu, memory only) unless ``--broker`` names one; it is
  started in its own process group, so a Ctrl-C in the terminal reaches the demo (which
  then shuts everything down in order) and not the broker, which would otherwise die
  before the worker has drained;
- the **worker** (`run_worker`: batched ingest in a child process, the faust enforce
  agent) in the main thread, as faust wants; it installs the SIGINT/SIGTERM handlers
  that stop it cleanly;
- the **traffic producer** in a spawned child process (so generating and encoding events
  never competes with the enforce agent for the GIL): realistic events of the five seed
  controllers from :class:`~privacy_pipeline.demo.traffic.TrafficModel`, Avro-encoded, at
  ``--rate`` events/s, ``occurred_at`` following the wall clock. Mixed in: a legacy import
  of former customers' history from 37–40 months ago (every 24- and 36-month retention has
  lapsed, so ``retention_expired`` erasure commands appear) and ~0.5 % malformed records
  (as producers get it wrong: unknown controller, bad timestamp, JSON instead of Avro), so
  dead letters appear. It waits until the worker has processed its first micro-batch, and
  stops after ``--max-events`` records: the in-memory broker never frees memory;
- a **live summary** on stderr every 2 s, read back from the Prometheus registry the
  worker records into: counts and closed-vocabulary labels only, never personal data or
  subject ids.

``--duration`` stops the producer, then sends the worker the same SIGTERM a supervisor
would. Without it the demo runs until Ctrl-C.
"""

from __future__ import annotations

import gc
import json
import math
import multiprocessing as mp
import os
import signal
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from random import Random
from typing import Any, NamedTuple

import click

from privacy_pipeline.demo.traffic import CONTROLLERS, TrafficModel
from privacy_pipeline.streams.settings import Settings

__all__ = [
    "DemoTraffic",
    "OutRecord",
    "Snapshot",
    "TrafficConfig",
    "bucket_quantile",
    "run_demo",
    "format_summary",
    "read_snapshot",
]

SUMMARY_INTERVAL = 2.0
"""Seconds between live summary lines."""

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
SEND_EVERY_S = 0.02
"""The traffic producer's step (and linger)."""

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
        from privacy_pipeline.streams.serde import AvroSerde

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

    def records(self) -> Iterator[OutRecord]:
        """Every record to send, ``max_events`` in all, in sending order."""
        live = self.live.events(self.n_live)
        old = self.old.events(self.n_old) if self.n_old else iter(())
        every = self.every_old
        for i in range(self.max_events):
            if every and i % every == every - 1:
                event = next(old, None)
                if event is not None:
                    event["subject_id"] = LEGACY_PREFIX + str(event["subject_id"])
                    yield self._record(event, "old")
                    continue
            event = next(live, None)
            if event is None:
                return
            yield self._record(event, "live")

    def _record(self, event: dict[str, Any], kind: str) -> OutRecord:
        from privacy_pipeline.streams.serde import RecordError, event_to_avro
        from privacy_pipeline.streams.topics import CLICKS, EVENT_SCHEMAS, input_topic

        # The model's malformed events may have any type: they go where clicks go.
        kind_of = str(event.get("type"))
        topic = (input_topic(kind_of) if kind_of in EVENT_SCHEMAS else CLICKS).name
        key = f"{event.get('controller')}:{event.get('subject_id')}".encode()
        try:
            name, record = event_to_avro(event)
            value = self.serde.encode(name, record)
        except RecordError:
            # Not even Avro can hold it: a producer with the wrong serializer sends JSON.
            text = json.dumps(event, ensure_ascii=False, separators=(",", ":"), default=str)
            return OutRecord(topic, key, text.encode(), "bad", event)
        if kind == "live" and not _looks_valid(event):
            kind = "bad"
        return OutRecord(topic, key, value, kind, event)


def _looks_valid(event: dict[str, Any]) -> bool:
    """False for the model's malformed events that still encode (ingest dead-letters them)."""
    from privacy_pipeline.processors.events import EventError, parse_event

    if event.get("controller") not in CONTROLLERS:
        return False
    try:
        parse_event(event)
    except EventError:
        return False
    return True


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

    # 20 ms steps, as a busy producer service: in 5 ms steps the embedded broker
    # spent most of a core on tiny batches at 2k events/s, and every opt-out
    # waited in its queue (p50 1.3 s; 140 ms with 20 ms steps).
    producer = Producer(Settings().tuning.traffic_producer(config.bootstrap, SEND_EVERY_S * 1000))
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
            elif short == "batch_size" and suffix == "_count":
                snap.batches = value
            elif short == "processing_seconds" and suffix == "_count":
                snap.enforced = value
            elif short == "retention_timers" and suffix == "":
                snap.timers += value
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


def format_summary(
    snap: Snapshot, previous: Snapshot | None, elapsed: float, produced: int | None = None
) -> str:
    """One summary line: rate over the last interval, then totals. Counts and labels only."""
    rate = enforced = 0.0
    if previous is not None and snap.at > previous.at:
        rate = (snap.events - previous.events) / (snap.at - previous.at)
        enforced = (snap.enforced - previous.enforced) / (snap.at - previous.at)
    sent = f"produced {produced:,}, " if produced is not None else ""
    p50, p99 = _latency(0.5, snap.optout_buckets), _latency(0.99, snap.optout_buckets)
    return (
        f"[{elapsed:5.0f}s] events {rate:,.0f}/s in, {enforced:,.0f}/s enforced "
        f"({sent}accepted {_n(snap.events)}, enforced {_n(snap.enforced)}) | "
        f"decisions {_parts(snap.decisions)} | "
        f"suppressed {_parts(snap.suppressions, 4)} | "
        f"erasure commands {_parts(snap.erasures, 7)} | "
        f"dead letters {_n(sum(snap.dead_letters.values()))} | "
        f"opt-outs {_n(snap.optouts)}, latency p50 {p50} p99 {p99}"
    )


# -- the running demo ----------------------------------------------------------------------


def _echo(message: str) -> None:
    click.echo(message, err=True)


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
    ) -> None:
        super().__init__(name="privacy-pipeline-demo-summary", daemon=True)
        self.registry = registry
        self.traffic = traffic
        self.started = started
        self.duration = duration
        self.max_events = max_events
        self.stop_worker = stop_worker
        self.finished = threading.Event()
        self.traffic_started: float | None = None
        self.first: Snapshot | None = None
        self.last_growth: Snapshot | None = None
        self._said_done = False
        self._stop_sent = False

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
                    f"(--max-events {self.max_events:,}; the in-memory broker keeps every "
                    "record). The worker keeps running until Ctrl-C or --duration."
                )
            if self.duration is not None and now - self.started >= self.duration:
                self._request_stop()
            if now >= next_line:
                next_line += SUMMARY_INTERVAL
                snap = read_snapshot(self.registry, now)
                if previous is not None and snap.enforced > previous.enforced:
                    self.last_growth = snap
                if self.traffic_started is not None:
                    _echo(format_summary(snap, previous, now - self.started, self.traffic.sent))
                previous = snap

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
        if not self._stop_sent:
            self.traffic.stop_event.set()
            if self.stop_worker():
                self._stop_sent = True
                _echo(f"demo: --duration {self.duration:g} s reached, stopping")


def _faust_handles_sigterm() -> bool:
    """True while the worker's event loop has its SIGTERM handler installed."""
    handler = signal.getsignal(signal.SIGTERM)
    return callable(handler)


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
) -> None:
    """Run the demo until Ctrl-C or *duration*: embedded broker, worker, traffic, summary."""
    from privacy_pipeline.embedded_broker.launcher import (
        MEMORY_NOTE,
        BrokerStartError,
        EmbeddedBroker,
    )
    from privacy_pipeline.processors.policy import load_packs, packaged_policies
    from privacy_pipeline.streams.metrics import PipelineMetrics, make_registry, serve_metrics
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
    # traffic producer, the worker's ingest) inherit SIG_IGN and are stopped in order.
    # The worker installs its own SIGINT handler once it runs.
    previous_sigint = signal.signal(signal.SIGINT, signal.SIG_IGN)
    embedded: EmbeddedBroker | None = None
    traffic: TrafficProcess | None = None
    monitor: _Monitor | None = None
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
        config = WorkerConfig(
            Settings(bootstrap=broker, prefix=prefix),
            partitions=partitions,
            app_id="privacy-pipeline-demo",
            secrets=secrets,
        )
        try:
            ensure_topics(broker, topic_specs(prefix, partitions))
        except TopicError as exc:
            raise click.ClickException(str(exc)) from None
        _echo(f"demo: metrics at {server.url}")
        _echo(
            f"demo: look at the topics with: privacy-pipeline tail {ERASURE_COMMANDS.name} "
            f"--broker {broker}" + (f" --prefix {prefix}" if prefix else "")
        )
        _echo(
            f"demo: {rate:g} events/s for rego, inrego, rejoin, iret, unnamed004, "
            f"seed {seed}; " + (f"stopping after {duration:g} s" if duration else "Ctrl-C stops it")
        )
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

        monitor = _Monitor(registry, traffic, started, duration, max_events, stop_worker)
        monitor.start()
        code = run_worker(config, metrics, loglevel=log_level)
    finally:
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # a second Ctrl-C must not cut cleanup
        if traffic is not None:
            traffic.stop()
        if monitor is not None:
            monitor.finished.set()
            monitor.join(5)
        final = read_snapshot(registry)
        if monitor is not None and traffic is not None:
            _echo(_final_line(final, monitor, traffic, time.monotonic() - started, code))
        server.stop()
        if embedded is not None:
            # The broker defers its exit while clients are connected; the worker's clients
            # are garbage now. It holds nothing to save: a short grace is enough.
            gc.collect()
            embedded.stop(grace=1.0)
        signal.signal(signal.SIGINT, previous_sigint)
    sys.exit(code)


def _final_line(
    final: Snapshot, monitor: _Monitor, traffic: TrafficProcess, elapsed: float, code: int
) -> str:
    """The closing summary: what was produced and what the pipeline made of it."""
    begin, end = monitor.first, monitor.last_growth
    average = 0.0
    if begin is not None and end is not None and end.at > begin.at:
        average = (end.enforced - begin.enforced) / (end.at - begin.at)  # while events flowed
    p50, p99 = _latency(0.5, final.optout_buckets), _latency(0.99, final.optout_buckets)
    status = "ok" if code == 0 else f"worker exit code {code}"
    dead = sum(final.dead_letters.values())
    unread = traffic.sent - traffic.failed - int(final.events) - int(dead)
    left = f", {unread:,} left unread in the broker" if unread > 0 else ""
    return (
        f"demo: done ({status}) after {elapsed:.1f} s: produced {traffic.sent:,} events "
        f"({traffic.old:,} legacy, {traffic.bad:,} malformed, {traffic.failed:,} not delivered); "
        f"pipeline accepted {_n(final.events)}{left}, enforced {_n(final.enforced)} "
        f"(avg {average:,.0f}/s); "
        f"decisions {_parts(final.decisions)}; "
        f"erasure commands {_parts(final.erasures, 7)}; "
        f"dead letters {_n(dead)} "
        f"({_parts(final.dead_letters)}); "
        f"opt-outs {_n(final.optouts)}, latency p50 {p50} p99 {p99}"
    )
