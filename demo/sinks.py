"""The demo's two sinks: downstream systems on SQLite that fill their tables from the tagged
records and apply the erasure commands to them.

Two targets that two controllers each name as a recipient:

- ``web-analytics`` (rego, inrego; category ``technical`` for ``analytics``): one row per
  click in ``page_views``;
- ``credit-agency`` (rego for ``credit_assessment``, rejoin for ``contract``; ``identity``
  and ``contact``): one row per person in ``credit_subjects``.

Their mappings are the shipped examples (``sink/examples/*.yaml``). Each sink is one
spawned process running a :class:`~privacy_pipeline.sink.service.Sink` and a
:class:`~privacy_pipeline.sink.service.MaterialiserConsumer` in one thread, on one
SQLite file, with the command scopes that keep a late record from bringing erased data
back (:mod:`privacy_pipeline.sink.scopes`). Signatures are checked as in production.

The process can be paused (``kill -STOP PID``: its commands go overdue and are re-issued),
resumed (``kill -CONT PID``) or stopped (``kill PID``, or ``kill -9 PID``); the demo shows
which in its summary. Counters go to the parent through shared memory: counts only.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import signal
import time
from dataclasses import dataclass
from importlib.resources import files
from pathlib import Path
from typing import Any

import sqlalchemy as sa

from privacy_pipeline.sink.materialise import Feed

__all__ = [
    "DEMO_SINKS",
    "DemoSink",
    "SinkProcess",
    "create_tables",
    "mapping_path",
]


@dataclass(frozen=True)
class DemoSink:
    """One demo sink: its target, mapping file, feeds and database file name."""

    target: str
    mapping_file: str
    feeds: tuple[Feed, ...]

    @property
    def db_name(self) -> str:
        """The SQLite file's name in the demo's folder."""
        return f"{self.target}.db"


DEMO_SINKS: tuple[DemoSink, ...] = (
    DemoSink(
        "web-analytics",
        "web-analytics.yaml",
        (Feed("page_views", "click", key_column="event_id"),),
    ),
    DemoSink(
        "credit-agency",
        "credit-agency.yaml",
        (Feed("credit_subjects", "customer", actions=frozenset({"created", "updated"})),),
    ),
)


def mapping_path(sink: DemoSink) -> Path:
    """The shipped mapping file of a demo sink."""
    return Path(str(files("privacy_pipeline.sink").joinpath("examples", sink.mapping_file)))


def create_tables(engine: sa.Engine, target: str) -> None:
    """Create the demo table of `target` (as in the comment of its mapping file)."""
    metadata = sa.MetaData()
    if target == "web-analytics":
        sa.Table(
            "page_views",
            metadata,
            sa.Column("event_id", sa.String(64), primary_key=True),
            sa.Column("controller", sa.String(40), nullable=False),
            sa.Column("subject_id", sa.String(80), nullable=False, index=True),
            sa.Column("viewed_at", sa.DateTime(), nullable=False),
            sa.Column("url", sa.Text()),
            sa.Column("ip", sa.String(64)),
            sa.Column("user_agent", sa.Text()),
            sa.Column("anonymous_id", sa.String(64)),
            sa.Column("restricted", sa.Boolean(), nullable=False, server_default=sa.false()),
        )
    elif target == "credit-agency":
        sa.Table(
            "credit_subjects",
            metadata,
            sa.Column("controller", sa.String(40), primary_key=True),
            sa.Column("subject_id", sa.String(80), primary_key=True),
            sa.Column("registered_at", sa.DateTime(), nullable=False),
            sa.Column("name", sa.Text()),
            sa.Column("email", sa.Text()),
            sa.Column("phone", sa.String(40)),
            sa.Column("address", sa.Text()),
            sa.Column("personnummer", sa.String(13)),
            sa.Column("restricted", sa.Boolean(), nullable=False, server_default=sa.false()),
        )
    else:
        raise ValueError(f"no demo tables for target {target!r}")
    metadata.create_all(engine)


# Shared counters of one sink process (a RawArray of int64).
ROWS_WRITTEN, WITHHELD, COMMANDS_APPLIED, DEAD_LETTERS, FAILED, STARTED = range(6)
_COUNTERS = 6


def _sink_main(
    sink: DemoSink,
    db_path: str,
    bootstrap: str,
    prefix: str,
    secrets: str,
    policies: str,
    counts: Any,
    stop: Any,
) -> None:
    """Child process: create the tables, then apply commands and materialise records."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent stops us, in order
    signal.signal(signal.SIGTERM, lambda _s, _f: stop.set())
    from privacy_pipeline.sink.database import CommandApplier
    from privacy_pipeline.sink.mapping import load_mapping
    from privacy_pipeline.sink.materialise import Materialiser, target_purposes
    from privacy_pipeline.sink.service import PATIENT, MaterialiserConsumer, Sink, run_together
    from privacy_pipeline.streams.settings import Settings
    from privacy_pipeline.streams.signing import CommandVerifier

    parent = os.getppid()
    engine = sa.create_engine(f"sqlite:///{db_path}")
    create_tables(engine, sink.target)
    mapping = load_mapping(mapping_path(sink))
    settings = Settings(bootstrap=bootstrap, prefix=prefix)
    applier = CommandApplier(engine, mapping, keep_scopes=True)
    materialiser = Materialiser(
        engine,
        mapping,
        sink.feeds,
        purposes=target_purposes(policies, sink.target),
    )
    verifier = CommandVerifier.from_secrets(Path(secrets))
    # The client's own warnings are left out of the demo's terminal: after a pause
    # (kill -STOP) they would report the session time-out the demo has announced already.
    quiet = {**PATIENT, "log_level": 3}
    commands = Sink(settings, applier, verifier, consumer_config=quiet)
    records = MaterialiserConsumer(settings, materialiser, consumer_config=quiet)
    counts[STARTED] = 1

    def publish() -> None:
        counts[ROWS_WRITTEN] = records.stats.rows_written
        counts[WITHHELD] = records.stats.withheld
        counts[COMMANDS_APPLIED] = sum(commands.stats.applied.values())
        counts[FAILED] = commands.stats.applied.get("failed", 0)
        counts[DEAD_LETTERS] = sum(commands.stats.dead_letters.values())

    try:
        run_together(
            lambda: stop.is_set() or os.getppid() != parent,
            commands,
            records,
            after_step=publish,
        )
    finally:
        publish()
        engine.dispose()


class SinkProcess:
    """One demo sink in a spawned child process, with counters the parent reads."""

    def __init__(
        self,
        sink: DemoSink,
        folder: Path,
        bootstrap: str,
        prefix: str,
        secrets: Path,
        policies: Path,
    ) -> None:
        ctx = mp.get_context("spawn")
        self.sink = sink
        self.db_path = folder / sink.db_name
        self.counts: Any = ctx.RawArray("q", _COUNTERS)
        self.stop_event = ctx.Event()
        self.process = ctx.Process(
            target=_sink_main,
            args=(
                sink,
                str(self.db_path),
                bootstrap,
                prefix,
                str(secrets),
                str(policies),
                self.counts,
                self.stop_event,
            ),
            name=f"privacy-pipeline-demo-sink-{sink.target}",
            daemon=True,
        )

    def start(self) -> None:
        """Start the child."""
        self.process.start()

    @property
    def pid(self) -> int | None:
        """The child's process id (what to `kill -STOP`)."""
        return self.process.pid

    @property
    def rows_written(self) -> int:
        """Rows the sink's materialiser has written."""
        return int(self.counts[ROWS_WRITTEN])

    @property
    def withheld(self) -> int:
        """Rows not written because a command applied before had erased them."""
        return int(self.counts[WITHHELD])

    @property
    def commands_applied(self) -> int:
        """Commands the sink has answered (a redelivery counts again)."""
        return int(self.counts[COMMANDS_APPLIED])

    def state(self) -> str:
        """``starting``, ``running``, ``paused`` (SIGSTOP) or ``down``."""
        if self.process.pid is None or not self.process.is_alive():
            return "down"
        if _stopped(self.process.pid):
            return "paused"
        return "running" if self.counts[STARTED] else "starting"

    def stop(self, timeout: float = 15.0) -> None:
        """Let the child finish its step, commit and leave its groups; wait for it."""
        self.stop_event.set()
        if self.process.pid is None:
            return
        if _stopped(self.process.pid):
            os.kill(self.process.pid, signal.SIGCONT)  # a paused sink cannot stop
        deadline = time.monotonic() + timeout
        self.process.join(max(0.0, deadline - time.monotonic()))
        if self.process.is_alive():
            self.process.terminate()
            self.process.join(5)


def _stopped(pid: int) -> bool:
    """True when the process is stopped by a signal (state T in /proc; Linux only)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    # The state follows the parenthesised command name, which may itself hold spaces.
    return stat.rpartition(")")[2].split()[:1] == ["T"]
