"""Fixtures for integration tests: a real broker, per-test topics and groups.

Every test in this folder is marked ``integration`` automatically.

Environment:

- ``PRIVACY_PIPELINE_TEST_BROKER=host:port`` reuses a running broker instead of
  starting the embedded one for the session.
- ``PRIVACY_PIPELINE_TEST_PORTS=LOW-HIGH`` makes every embedded broker the tests
  start listen on a port from that range (default: any free port).
"""

from __future__ import annotations

import contextlib
import logging
import os
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from confluent_kafka.admin import AdminClient
from worker_process import (
    BROKER_ENV,
    MakeTopics,
    Readers,
    SinkProcess,
    StartSink,
    StartWorker,
    WorkerProcess,
    pipeline_topics,
)

from privacy_pipeline.embedded_broker.launcher import EmbeddedBroker, free_port
from privacy_pipeline.streams.topic_admin import ensure_topics
from privacy_pipeline.streams.topics import topic_specs

PORTS_ENV = "PRIVACY_PIPELINE_TEST_PORTS"

_HERE = Path(__file__).resolve().parent
log = logging.getLogger(__name__)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Mark every test under tests/integration as ``integration``."""
    for item in items:
        if _HERE == item.path.parent or _HERE in item.path.parents:
            item.add_marker(pytest.mark.integration)


def _port_range() -> range | None:
    """Return the port range from ``PRIVACY_PIPELINE_TEST_PORTS``, if set."""
    spec = os.environ.get(PORTS_ENV, "").strip()
    if not spec:
        return None
    low, _, high = spec.partition("-")
    try:
        return range(int(low), int(high or low) + 1)
    except ValueError:
        raise pytest.UsageError(f"{PORTS_ENV} must look like 19300-19399, not {spec!r}") from None


def pick_port() -> int:
    """Return a free port, from ``PRIVACY_PIPELINE_TEST_PORTS`` when set."""
    return free_port(candidates=_port_range())


@pytest.fixture
def unused_port() -> int:
    """A free TCP port for a test that starts its own broker."""
    return pick_port()


@pytest.fixture(scope="session")
def broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """Bootstrap address of the session's broker (embedded, or from the environment)."""
    external = os.environ.get(BROKER_ENV, "").strip()
    if external:
        admin = AdminClient({"bootstrap.servers": external, "logger": log})
        try:
            admin.list_topics(timeout=10)
        except Exception as exc:
            pytest.fail(f"{BROKER_ENV}={external} does not answer: {exc}", pytrace=False)
        yield external
        return
    log_file = tmp_path_factory.mktemp("broker") / "tansu.log"
    embedded = EmbeddedBroker(port=pick_port() if _port_range() else None, log_file=log_file)
    with embedded:
        log.info("session broker %s (log %s)", embedded.bootstrap, log_file)
        yield embedded.bootstrap


@pytest.fixture
def topic_prefix() -> str:
    """A topic-name prefix unique to this test, e.g. ``t-1a2b3c4d-``."""
    return f"t-{uuid.uuid4().hex[:8]}-"


@pytest.fixture
def topics(broker: str, topic_prefix: str) -> Iterator[dict[str, str]]:
    """Create every pipeline topic under this test's prefix; map contract name to real name.

    The topics are deleted afterwards (best effort): the embedded broker only
    frees memory when a topic is deleted.
    """
    specs = topic_specs(topic_prefix)
    ensure_topics(broker, specs)
    yield {spec.contract_name: spec.name for spec in specs}
    _delete_topics(broker, [spec.name for spec in specs])


def _delete_topics(bootstrap: str, names: list[str]) -> None:
    """Delete *names*, logging rather than failing when that does not work."""
    admin = AdminClient({"bootstrap.servers": bootstrap})
    for name, future in admin.delete_topics(names, operation_timeout=10).items():
        try:
            future.result(timeout=10)
        except Exception as exc:  # cleanup only
            log.warning("could not delete topic %s: %s", name, exc)


@pytest.fixture
def group_id() -> str:
    """A consumer group id unique to this test."""
    return f"g-{uuid.uuid4().hex[:8]}"


# -- workers and readers on this test's topics ---------------------------------------


@pytest.fixture
def make_topics(broker: str, topic_prefix: str) -> Iterator[MakeTopics]:
    """Create every pipeline topic of this test's prefix with N partitions; afterwards,
    delete every topic of the prefix (the worker's too)."""
    with contextlib.ExitStack() as stack:
        yield lambda partitions: stack.enter_context(
            pipeline_topics(broker, topic_prefix, partitions)
        )


@pytest.fixture
def start_worker(
    broker: str, topic_prefix: str, tmp_path: Path, make_topics: MakeTopics
) -> Iterator[StartWorker]:
    """Start a ready worker on this test's prefix; every worker is stopped afterwards,
    before the topics are deleted."""
    started: list[WorkerProcess] = []

    def start(**kwargs: Any) -> WorkerProcess:
        name = kwargs.pop("name", f"worker-{len(started) + 1}")
        worker = WorkerProcess(broker, topic_prefix, tmp_path, name=name, **kwargs)
        started.append(worker)
        return worker.start().wait_ready()

    yield start
    for worker in started:
        worker.cleanup()


@pytest.fixture
def readers(broker: str, topic_prefix: str) -> Iterator[Readers]:
    r = Readers(broker, topic_prefix)
    yield r
    r.close()


@pytest.fixture
def run_sink(broker: str, topic_prefix: str, tmp_path: Path) -> Iterator[StartSink]:
    """Start `privacy-pipeline sink --target T --db URL --mapping FILE [ARGS]` on this
    test's broker and prefix (no metrics port); every sink is stopped afterwards."""
    started: list[SinkProcess] = []

    def start(target: str, db: str, mapping: Path, *args: str) -> SinkProcess:
        argv = ["--target", target, "--db", db, "--mapping", str(mapping)]
        argv += ["--broker", broker, "--prefix", topic_prefix, "--metrics-port", "0", *args]
        sink = SinkProcess(argv, tmp_path / f"sink-{target}-{len(started) + 1}.log")
        started.append(sink)
        return sink

    yield start
    for sink in started:
        sink.stop()


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[Any]:
    """On a failure, attach the tail of every process log the test wrote (workers,
    sinks), so a failure seen only in CI can be read without re-running it."""
    outcome = yield
    report = outcome.get_result()
    if report.when != "call" or not report.failed:
        return
    tmp = getattr(item, "funcargs", {}).get("tmp_path")
    if not isinstance(tmp, Path):
        return
    for path in sorted(tmp.rglob("*.log")):
        lines = path.read_text("utf-8", "replace").splitlines()
        report.sections.append(
            (f"log {path.name} (last 60 of {len(lines)} lines)", "\n".join(lines[-60:]))
        )
