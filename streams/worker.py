"""The live worker: faust enforce agent over the subject log, with batched ingest beside it.

Shape (see the design's Runtime section):

    inputs --(ingest process: confluent-kafka, batched)--> subject-log micro-batches
    subject-log --(faust agent: EnforceCore)--> tagged-*, erasure-commands, audit

Subject state lives in a faust table whose changelog gets **one record per micro-batch**
(the states that batch changed, plus the partition clock) instead of one per subject:
faust pays ~120 µs per table write, which would cap the pipeline near 8k events/s.
Recovery is faust's, reading that changelog back through `apply_changelog_batch`. Before
the worker starts, a fence record is written to every changelog partition: the embedded
broker reports the end of a partition as the start of its last producer batch, and a
one-record batch at the end makes that answer exact, so recovery reads everything.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import multiprocessing as mp
import os
import queue
import signal
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import faust
from confluent_kafka import ConsumerGroupTopicPartitions, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, OffsetSpec  # type: ignore[attr-defined]

from privacy_pipeline.processors.enforcer import PolicyEnforcer
from privacy_pipeline.processors.policy import load_packs, packaged_policies
from privacy_pipeline.processors.tracker import Tracking

from . import faust_fixes
from .enforce import STATE_GAUGES_EVERY_S, EnforceCore, Group, decode_changelog
from .metrics import PipelineMetrics
from .outputs import GroupAck, ProducerOutputs
from .serde import AvroSerde
from .settings import Settings, default_secrets
from .signing import CommandSigner
from .subject_log import SubjectLogReader
from .topic_admin import ensure_topics
from .topics import ERASURE_ACKS, INPUT_TOPICS, SUBJECT_LOG, TopicSpec, topic_specs

log = logging.getLogger(__name__)

# A group of ready micro-batches: at most this many, waiting at most this long for more.
GROUP_MAX_BATCHES = 64
GROUP_WITHIN_S = 0.005
# Groups whose outputs may await their acknowledgement while the next group runs.
PIPELINE_DEPTH = 2

# Python's cyclic collector: a full pass walks every tracked object, i.e. the state of every
# subject, and paused the worker 60-270 ms several times a minute (gc callbacks, 10k
# subjects). Young collections are made rarer, and what is alive is frozen (left out of
# later passes) once recovery completes and then every minute: subject states live long,
# and the hot path makes little cyclic garbage (a pass freed 0-100 objects). What was
# already garbage in an old generation when frozen is never freed: a few objects a minute.
GC_THRESHOLDS = (50_000, 50, 100)
GC_FREEZE_EVERY_S = 60.0

# How often the consumer lag is measured: two requests to the broker per group, in a
# thread of its own; a lag worth an alert lasts minutes.
LAG_EVERY_S = 10.0
LAG_TIMEOUT_S = 5.0
_LATEST = OffsetSpec.latest()  # type: ignore[no-untyped-call]  # confluent-kafka's stubs
_EARLIEST = OffsetSpec.earliest()  # type: ignore[no-untyped-call]

FENCE_KEY = b"__fence__"
_scratch = tempfile.TemporaryDirectory(prefix="privacy-pipeline-")
STATE_TABLE = "subject-state"


@dataclass
class WorkerConfig:
    """Settings of one live worker."""

    settings: Settings
    partitions: int = 4
    app_id: str = "privacy-pipeline"
    policies: Path = field(default_factory=packaged_policies)
    tick_interval: float = 1.0
    ingest: bool = True
    datadir: Path | None = None
    secrets: Path = field(default_factory=default_secrets)
    tracking: Tracking | None = field(default_factory=Tracking)  # None: issue once

    @property
    def bootstrap(self) -> str:
        """The broker's address (the settings must name one)."""
        return self.settings.broker

    @property
    def prefix(self) -> str:
        """The topic name prefix."""
        return self.settings.prefix

    @property
    def full_app_id(self) -> str:
        return f"{self.prefix}{self.app_id}"

    @property
    def changelog_topic(self) -> str:
        return f"{self.full_app_id}-{STATE_TABLE}-changelog"


class _Closed:
    def send(self, topic: str, key: bytes | None, value: bytes) -> None:
        raise RuntimeError("the worker has stopped")

    def flush(self) -> None:
        return None


class SubjectStateTable(faust.Table[str, Any]):
    """A faust table whose changelog holds one record of state changes per micro-batch."""

    core: EnforceCore | None = None
    ready_at: float | None = None
    restored_records = 0
    on_ready: Any = None  # called once, when the first recovery completes

    def apply_changelog_batch(self, batch: Iterable[Any]) -> None:
        core = self.core
        assert core is not None  # noqa: S101 - set before the worker starts
        for event in batch:
            if event.key == FENCE_KEY or not event.value:
                continue
            core.restore(event.message.partition, decode_changelog(event.value))
            self.restored_records += 1

    async def on_recovery_completed(self, active_tps: Any, standby_tps: Any) -> None:
        await super().on_recovery_completed(active_tps, standby_tps)
        first = self.ready_at is None
        self.ready_at = time.time()
        freeze_long_lived()
        if first and self.on_ready is not None:
            self.on_ready()
        subjects = len(self.core.states) if self.core else 0
        log.info(
            "recovery complete: %d changelog records, %d subjects", self.restored_records, subjects
        )


def freeze_long_lived() -> None:
    """Collect the young generations, then leave every live object out of later passes."""
    gc.collect(1)
    gc.freeze()


def changelog_spec(config: WorkerConfig) -> TopicSpec:
    """The state changelog: never compacted (its keys are per batch), kept forever."""
    return TopicSpec(
        name=config.changelog_topic,
        partitions=config.partitions,
        retention_ms=-1,
        value_schema="StateChanges",
        key_schema="bytes",
        doc="subject-state changes, one record per subject-log micro-batch",
        internal=True,
    )


def prepare(config: WorkerConfig) -> None:
    """Create every topic, then fence each changelog partition (exact recovery on Tansu).

    Input and output topics that already exist are used as they are (a producer may have
    created them first); the subject log and the changelog must have `partitions`.
    """
    admin = AdminClient({"bootstrap.servers": config.bootstrap})
    existing = set(admin.list_topics(timeout=30).topics)
    specs = [
        spec
        for spec in [*topic_specs(config.prefix, config.partitions), changelog_spec(config)]
        if spec.internal or spec.contract_name == SUBJECT_LOG.name or spec.name not in existing
    ]
    ensure_topics(config.bootstrap, specs)
    # One record per producer batch: the end offset is then exact (see flush below).
    producer = Producer(config.settings.tuning.producer(config.bootstrap, **{"linger.ms": 0}))
    for partition in range(config.partitions):
        producer.produce(config.changelog_topic, b"", key=FENCE_KEY, partition=partition)
        producer.flush(30)  # one record per producer batch: the end offset is then exact


def build_app(
    config: WorkerConfig, metrics: PipelineMetrics | None = None
) -> tuple[faust.App, SubjectStateTable, EnforceCore]:
    """The faust app with its subject-log agent and state table."""
    tuning = config.settings.tuning
    faust_fixes.install(fetch_wait_ms=tuning.enforce_fetch_wait_ms)
    # faust wants a data folder even with in-memory tables; a temporary one goes with us.
    datadir = config.datadir or Path(_scratch.name)
    app = faust.App(
        config.full_app_id,
        broker=f"kafka://{config.bootstrap}",
        store="memory://",
        datadir=str(datadir),
        topic_partitions=config.partitions,
        topic_replication_factor=1,
        web_enabled=False,
        consumer_auto_offset_reset="earliest",
        table_standby_replicas=0,
        broker_commit_every=1000,
        broker_commit_interval=1.0,
        **tuning.faust_app(),
    )
    subject_log = app.topic(
        SUBJECT_LOG.named(config.prefix),
        key_type=bytes,
        value_type=bytes,
        key_serializer="raw",
        value_serializer="raw",
        partitions=config.partitions,
    )
    changelog = app.topic(
        config.changelog_topic,
        key_type=bytes,
        value_type=bytes,
        key_serializer="raw",
        value_serializer="raw",
        partitions=config.partitions,
        compacting=False,
        deleting=False,
        internal=False,
    )
    table = SubjectStateTable(
        app=app,
        name=STATE_TABLE,
        default=None,
        partitions=config.partitions,
        key_type=bytes,
        value_type=bytes,
        changelog_topic=changelog,
        help="Subject states (consent ledger, retention holds, timers), micro-batched changelog",
    )
    app.tables.add(table)
    enforcer = PolicyEnforcer(load_packs(config.policies), tracking=config.tracking)
    core = EnforceCore(
        enforcer,
        AvroSerde(),
        ProducerOutputs(config.bootstrap, tuning=tuning),
        states={},
        partitions=config.partitions,
        prefix=config.prefix,
        metrics=metrics,
        signer=CommandSigner.from_secrets(config.secrets),
        refetch=SubjectLogReader(
            config.bootstrap, SUBJECT_LOG.named(config.prefix), tuning=tuning
        ).read,
    )
    table.core = core

    executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="enforce")

    outputs = core.outputs
    assert isinstance(outputs, ProducerOutputs)  # noqa: S101 - built just above

    def run_group(batches: list[tuple[int, bytes, int]]) -> tuple[Group, GroupAck]:
        ack = outputs.begin()
        try:
            return core.run_group(batches), ack
        finally:
            outputs.end(ack)

    @app.timer(GC_FREEZE_EVERY_S)  # type: ignore[untyped-decorator]  # faust returns Callable
    async def freeze() -> None:
        freeze_long_lived()

    @app.timer(STATE_GAUGES_EVERY_S)  # type: ignore[untyped-decorator]  # faust returns Callable
    async def state_gauges() -> None:
        # Groups set these gauges too, but overdue commands come with the wall clock, and
        # a recovered state should show while no traffic comes. In the enforce thread, as
        # the groups: the gauges read the state they change. Not while recovering: the
        # changelog is then being applied to the states in this loop's thread.
        if metrics is None or table.ready_at is None or app.rebalancing:
            return
        await asyncio.get_running_loop().run_in_executor(executor, core.observe_state)

    @app.agent(subject_log, name="enforce")
    async def enforce(stream: Any) -> None:
        loop = asyncio.get_running_loop()
        # Groups whose outputs are on their way: their changelog records are written in
        # order, each once its outputs are acknowledged, while the next group runs.
        acking: asyncio.Queue[tuple[Group, GroupAck]] = asyncio.Queue(maxsize=PIPELINE_DEPTH)

        async def write_changelogs() -> None:
            while True:
                group, ack = await acking.get()
                await asyncio.wrap_future(ack.future)
                core.observe(group)
                for partition, offset, records in group.done:
                    for i, record in enumerate(records):
                        key = f"{partition}:{offset}:{i}".encode()
                        await table.changelog_topic.send(key=key, value=record, partition=partition)

        writer = asyncio.ensure_future(write_changelogs())
        try:
            # Micro-batches that are ready together run as one group: a group's outputs
            # are acknowledged as a whole, and one wait per micro-batch capped the worker
            # at a few hundred micro-batches a second under light load.
            async for events in stream.take_events(GROUP_MAX_BATCHES, within=GROUP_WITHIN_S):
                batches = [(e.message.partition, e.value, e.message.offset) for e in events]
                # One thread, awaited per group: order is kept, and the loop stays free for
                # heartbeats, commits and changelog writes while the group runs.
                done = await loop.run_in_executor(executor, run_group, batches)
                queued = asyncio.ensure_future(acking.put(done))
                await asyncio.wait({queued, writer}, return_when=asyncio.FIRST_COMPLETED)
                if writer.done():
                    queued.cancel()
                    writer.result()  # raises what stopped it (outputs not acknowledged)
                    raise RuntimeError("the changelog writer stopped")
        finally:
            writer.cancel()

    return app, table, core


# -- ingest in its own process, its metrics forwarded to the worker's registry ----------


def _ingest_main(
    config: WorkerConfig, controllers: list[str], out: Any, stop: Any, parent: int
) -> None:
    from .canary import canary_verifier
    from .ingest import Ingest  # a fresh process: import here

    # A terminal's Ctrl-C reaches the whole group; the worker stops us in order instead.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    gc.set_threshold(*GC_THRESHOLDS)  # ingest keeps little, but allocates per record

    pending: Counter[tuple[str, ...]] = Counter()

    def dead(topic: str, reason: str) -> None:
        pending[("dead", topic, reason)] += 1

    def event(topic: str, etype: str, controller: str) -> None:
        pending[("event", topic, etype, controller)] += 1

    ingest = Ingest(
        config.bootstrap,
        controllers,
        config.partitions,
        prefix=config.prefix,
        group_id=f"{config.full_app_id}-ingest",
        tick_interval=config.tick_interval,
        tuning=config.settings.tuning,
        on_dead_letter=dead,
        on_event=event,
        # The worker's own key checks the canaries ingest lets through.
        canary_verifier=canary_verifier(config.secrets),
    )
    last = time.monotonic()
    try:
        # Stop with the worker, also when it was killed outright (kill -9).
        while not stop.is_set() and os.getppid() == parent:
            ingest.step()
            if pending and time.monotonic() - last > 0.5:
                out.put(dict(pending))
                pending.clear()
                last = time.monotonic()
    finally:
        if pending:
            out.put(dict(pending))
        ingest.close()


class IngestProcess:
    """Runs ingest in a child process and feeds its counts into `metrics`."""

    def __init__(self, config: WorkerConfig, metrics: PipelineMetrics | None) -> None:
        ctx = mp.get_context("spawn")
        self._queue: Any = ctx.Queue()
        self._stop = ctx.Event()
        controllers = sorted(load_packs(config.policies))
        self.process = ctx.Process(
            target=_ingest_main,
            # The parent's pid is passed, not read in the child: if the worker dies while
            # the child is still starting, getppid() there would already be init's.
            args=(config, controllers, self._queue, self._stop, os.getpid()),
            name="privacy-pipeline-ingest",
            daemon=True,
        )
        self.metrics = metrics
        self._pump = threading.Thread(target=self._forward, daemon=True)
        self._running = True

    def start(self) -> None:
        self.process.start()
        self._pump.start()

    def _forward(self) -> None:
        while self._running or not self._queue.empty():
            try:
                counts = self._queue.get(timeout=0.5)
            except queue.Empty:
                if not self.process.is_alive():
                    return
                continue
            if self.metrics is None:
                continue
            for key, n in counts.items():
                if key[0] == "dead":
                    self.metrics.observe_dead_letter(key[1], key[2], n)
                else:
                    self.metrics.observe_event(key[1], key[2], key[3], n)

    def request_stop(self) -> None:
        """Tell ingest to finish its step, flush, commit and leave; `stop` waits for it."""
        self._stop.set()

    def stop(self) -> None:
        self._stop.set()
        if self.process.pid is None:  # never started
            return
        self.process.join(15)
        if self.process.is_alive():
            self.process.terminate()
        self._running = False


# -- consumer lag ----------------------------------------------------------------------


class ConsumerLag:
    """Measures, in a thread, the records the worker's consumer groups have not read yet.

    Ingest's group (``{prefix}{app_id}-ingest``) reads the input topics and erasure-acks;
    the enforce agent's (faust's, ``{prefix}{app_id}``) reads the subject log. For every
    partition: its high watermark less the group's committed offset (its low watermark
    when the group has committed none: both groups start from the earliest record).
    Committed offsets trail what was read by up to a commit interval (about 1 s), so this
    is an upper bound on what is left to read, and it is what a restart would re-read.

    Every worker measures every partition (the groups' commits are shared): dashboards
    and alerts take the max over workers. On the embedded broker the high watermark is
    the start of a partition's last producer batch plus one, so the lag is under-counted
    by up to a batch.
    """

    def __init__(self, config: WorkerConfig, metrics: PipelineMetrics) -> None:
        self.metrics = metrics
        prefix = config.prefix
        self.groups: dict[str, list[str]] = {
            f"{config.full_app_id}-ingest": [
                prefix + t for t in (*INPUT_TOPICS, ERASURE_ACKS.name)
            ],
            config.full_app_id: [SUBJECT_LOG.named(prefix)],
        }
        self.prefix = prefix
        # librdkafka's own log lines would repeat every refused connection; one line of
        # ours says it when a measurement fails.
        self._admin = AdminClient({"bootstrap.servers": config.bootstrap, "log_level": 0})
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="consumer-lag", daemon=True)
        self._failing = False

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        # Not joined for long: a measurement in flight may wait LAG_TIMEOUT_S on a broker
        # that went away, and the thread is a daemon.
        self._stop.set()
        self._thread.join(0.5)

    def _run(self) -> None:
        while not self._stop.wait(LAG_EVERY_S):
            try:
                lag = self.measure()
            except Exception as exc:  # keep measuring: the broker may come back
                if not self._failing:
                    log.warning("consumer lag not measured: %s", exc)
                self._failing = True
                continue
            if self._failing:
                log.warning("consumer lag measured again")
            self._failing = False
            self.metrics.replace_consumer_lag(lag)

    def measure(self) -> dict[tuple[str, int], int]:
        """``(topic contract name, partition) -> records not yet read``, every partition
        of every topic of both groups."""
        admin = self._admin
        metadata = admin.list_topics(timeout=LAG_TIMEOUT_S).topics
        lag: dict[tuple[str, int], int] = {}
        for group, topics in self.groups.items():
            partitions = [
                TopicPartition(topic, p)
                for topic in topics
                if topic in metadata
                for p in sorted(metadata[topic].partitions)
            ]
            if not partitions:
                continue
            request = [ConsumerGroupTopicPartitions(group, partitions)]
            [future] = admin.list_consumer_group_offsets(
                request, request_timeout=LAG_TIMEOUT_S
            ).values()
            committed = {
                (tp.topic, tp.partition): tp.offset
                for tp in future.result(LAG_TIMEOUT_S).topic_partitions
            }
            high = self._offsets(partitions, _LATEST)
            low = self._offsets(partitions, _EARLIEST)
            for tp in partitions:
                key = (tp.topic, tp.partition)
                position = committed.get(key, -1)
                if position < 0:  # nothing committed yet: it reads from the earliest
                    position = low[key]
                lag[(tp.topic.removeprefix(self.prefix), tp.partition)] = max(
                    0, high[key] - position
                )
        return lag

    def _offsets(
        self, partitions: list[TopicPartition], spec: OffsetSpec
    ) -> dict[tuple[str, int], int]:
        futures = self._admin.list_offsets(
            {tp: spec for tp in partitions}, request_timeout=LAG_TIMEOUT_S
        )
        return {
            (tp.topic, tp.partition): int(f.result(LAG_TIMEOUT_S).offset)
            for tp, f in futures.items()
        }


def run_worker(
    config: WorkerConfig,
    metrics: PipelineMetrics | None,
    loglevel: str = "warn",
    on_ready: Callable[[], None] | None = None,
) -> int:
    """Prepare topics, start ingest, run the faust worker until stopped; return exit code.

    `on_ready` is called once the worker owns its partitions, has recovered their state
    and has started ingest: from then on events are enforced.
    """
    prepare(config)
    gc.set_threshold(*GC_THRESHOLDS)
    app, table, core = build_app(config, metrics)
    lag = ConsumerLag(config, metrics) if metrics is not None else None
    if lag is not None:
        lag.start()
    ingest = IngestProcess(config, metrics) if config.ingest else None

    def ready() -> None:
        # Ingest starts once the worker has its partitions and state: its first ticks
        # would otherwise wait in the subject log while faust joins and recovers.
        if ingest is not None:
            ingest.start()
        if on_ready is not None:
            on_ready()

    table.on_ready = ready
    if ingest is not None:
        # Ingest winds down (its last flush and commit, leaving its group) while faust
        # stops, not after it: a stop takes the longer of the two, not their sum.
        @app.on_before_shutdown.connect  # type: ignore[arg-type]  # faust: untyped
        async def _stop_ingest(_app: Any, **_kwargs: Any) -> None:
            ingest.request_stop()

    worker = faust.Worker(app, loglevel=loglevel, quiet=True, redirect_stdouts=False)
    if not sys.stdout.isatty():
        worker.spinner = None  # no cursor-control codes in logs and pipes
    try:
        worker.execute_from_commandline()
    except SystemExit as exc:
        return int(exc.code or 0)
    finally:
        if lag is not None:
            lag.stop()
        if ingest is not None:
            ingest.stop()
        if isinstance(core.outputs, ProducerOutputs):
            with contextlib.suppress(Exception):
                core.outputs.close()
        core.outputs = _Closed()  # drop the producer: an open connection delays broker stop
        # Frozen objects are never collected: let a caller's gc.collect() free the app's
        # clients (the demo does, so that the embedded broker can exit).
        gc.unfreeze()
        with contextlib.suppress(Exception):
            asyncio.get_event_loop().close()
    return 0


__all__ = ["ConsumerLag", "WorkerConfig", "build_app", "prepare", "run_worker"]
