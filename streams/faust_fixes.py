"""Fixes to faust-streaming (0.15) that the enforce agent relies on, installed by `install()`.

Each one is applied only if the code it replaces is where it was, and each keeps the
original behaviour outside the case it fixes. Found by reproducing cold starts (a faust
app over a 4-partition log written at 100 records/s while it recovers a changelog):
records were lost in 5 of 15 starts, in none of 12 with both fixes.

1. **Fetch wait.** faust hard-codes `fetch_max_wait_ms=1500` for the worker's consumer.
   On an idle partition a fetch then waits up to 1.5 s, which was the opt-out latency.
2. **Queues cleared on a resume that suspended nothing** (faust-streaming#596). When a
   table's recovery completes, faust resumes the partitions, awaits a seek, and only then
   resumes flow control, which clears every stream queue, even when flow was not
   suspended: records the fetcher queued during the await are dropped, yet their
   offsets are consumed. The fix resumes without clearing when flow was not suspended
   (a rebalance suspends, and then clearing is right: the partitions are sought again).
3. **A live set of active partitions** (robinhood/faust#69). faust hands its live set of
   active partitions to the consumer thread; the main thread can empty it (pausing the
   changelog when recovery ends) before aiokafka reads it, and aiokafka takes an empty
   set as "every assigned partition": it returns the paused partitions' records too and
   moves past them, and faust drops them as not active. The fix takes a snapshot and
   fetches nothing when it is empty.

4. **A one-second pause at every stop.** mode's worker runs a sentinel task that sleeps
   1 s before it closes the event loop, so every stop took a second longer than its
   work; a tenth of a second still lets the loop run its last callbacks.

On a fresh group neither loss can be undone by faust (its seek to the committed offset
is a no-op without a commit); `EnforceCore` also reads back any gap it sees, as a net.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from .settings import ClientTuning

log = logging.getLogger(__name__)

DEFAULT_FETCH_WAIT_MS = ClientTuning().enforce_fetch_wait_ms

_MARK = "_privacy_pipeline_fixed"
_fetch_wait_ms = DEFAULT_FETCH_WAIT_MS


def install(fetch_wait_ms: int = DEFAULT_FETCH_WAIT_MS) -> None:
    """Install the four fixes (idempotent); the enforce consumer waits *fetch_wait_ms*."""
    global _fetch_wait_ms
    _fetch_wait_ms = fetch_wait_ms
    _fetch_wait()
    _resume_keeps_live_queues()
    _fetch_snapshot_of_active_partitions()
    _short_stop_sentinel()


STOP_SENTINEL_S = 0.1


def _short_stop_sentinel() -> None:
    from mode.worker import Worker

    original = Worker._sentinel_task
    if getattr(original, _MARK, False):
        return

    async def sentinel(self: Any) -> None:
        await asyncio.sleep(STOP_SENTINEL_S)

    setattr(sentinel, _MARK, True)
    Worker._sentinel_task = sentinel  # type: ignore[method-assign]


def _fetch_wait() -> None:
    from faust.transport.drivers import aiokafka as driver

    thread = driver.AIOKafkaConsumerThread
    if getattr(thread._create_worker_consumer, _MARK, False):
        return
    original = thread._create_worker_consumer

    def create(self: Any, transport: Any) -> Any:
        consumer = original(self, transport)
        consumer._fetch_max_wait_ms = _fetch_wait_ms
        return consumer

    setattr(create, _MARK, True)
    thread._create_worker_consumer = create  # type: ignore[method-assign]


def _resume_keeps_live_queues() -> None:
    from mode.utils.queues import FlowControlEvent

    original = FlowControlEvent.resume
    if getattr(original, _MARK, False):
        return
    if not hasattr(FlowControlEvent(), "_suspend"):
        log.warning("faust fix 2 not installed: mode's FlowControlEvent has changed")
        return

    def resume(self: Any) -> None:
        if not self._suspend.is_set():
            self._resume.set()  # flowing already: keep the records queued meanwhile
            return
        original(self)

    setattr(resume, _MARK, True)
    FlowControlEvent.resume = resume  # type: ignore[method-assign]


def _fetch_snapshot_of_active_partitions() -> None:
    from faust.transport.drivers import aiokafka as driver

    thread = driver.AIOKafkaConsumerThread
    original = thread._fetch_records
    if getattr(original, _MARK, False):
        return

    async def fetch_records(
        self: Any,
        consumer: Any,
        active_partitions: Any,
        timeout: float | None = None,  # noqa: ASYNC109 - faust's own signature
        max_records: int | None = None,
    ) -> Any:
        if active_partitions is not None:
            active_partitions = set(active_partitions)
            if not active_partitions:
                return {}  # nothing is active; aiokafka would read "everything"
        return await original(
            self, consumer, active_partitions, timeout=timeout, max_records=max_records
        )

    setattr(fetch_records, _MARK, True)
    thread._fetch_records = fetch_records  # type: ignore[method-assign]
