"""The faust-streaming fixes: a resume that suspended nothing keeps queued records, an
empty set of active partitions fetches nothing, and installing twice changes nothing.

These pin the behaviour the enforce agent relies on, so that an upgrade of faust or mode
that moves the patched code shows up here (the fixes then log and stand down).
"""

from __future__ import annotations

import asyncio
from typing import Any

from faust.transport.drivers import aiokafka as driver
from mode.utils.queues import FlowControlEvent, FlowControlQueue

from privacy_pipeline.streams import faust_fixes

faust_fixes.install()


def test_installing_twice_wraps_nothing_twice() -> None:
    resume, fetch = FlowControlEvent.resume, driver.AIOKafkaConsumerThread._fetch_records
    faust_fixes.install()
    assert FlowControlEvent.resume is resume
    assert driver.AIOKafkaConsumerThread._fetch_records is fetch


def test_a_resume_that_suspended_nothing_keeps_the_queued_records() -> None:
    async def scenario() -> tuple[int, int]:
        flow = FlowControlEvent(initially_suspended=False)
        queue: FlowControlQueue[str] = FlowControlQueue(flow_control=flow, clear_on_resume=True)
        queue.put_nowait("subject-log record 41")
        flow.resume()  # recovery completed, flow was never suspended
        kept = queue.qsize()
        flow.suspend()  # a rebalance: then the queue must be cleared on resume
        flow.resume()
        return kept, queue.qsize()

    kept, after_rebalance = asyncio.run(scenario())
    assert kept == 1
    assert after_rebalance == 0


def test_an_empty_set_of_active_partitions_fetches_nothing() -> None:
    class Thread:
        consumer: Any = None

    calls: list[Any] = []
    patched = driver.AIOKafkaConsumerThread._fetch_records

    async def run(active: Any) -> Any:
        thread = Thread()
        thread.consumer = type("C", (), {"flow_active": True})()
        try:
            return await patched(thread, _Consumer(calls), active)
        except AttributeError:
            return "reached aiokafka"

    assert asyncio.run(run(set())) == {}
    assert calls == []  # aiokafka never asked: it would read "every partition"
    assert asyncio.run(run({"tp"})) == "reached aiokafka"


class _Consumer:
    def __init__(self, calls: list[Any]) -> None:
        self.calls = calls

    def __getattr__(self, name: str) -> Any:
        self.calls.append(name)
        raise AttributeError(name)
