"""Group acknowledgements of the decision producer: complete in order, fail loudly.

Delivery reports are fed by hand (no broker): what is under test is the bookkeeping that
decides when a group's changelog may be written.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from privacy_pipeline.streams.outputs import GroupAck, ProducerOutputs


@pytest.fixture
def outputs() -> Iterator[ProducerOutputs]:
    # Nothing listens there: no record is ever sent (and its connection errors are muted).
    out = ProducerOutputs("127.0.0.1:9", overrides={"log_level": 0})
    yield out
    out._stopped.set()


def group_of(outputs: ProducerOutputs, sent: int) -> GroupAck:
    ack = outputs.begin()
    ack.sent = sent  # as if `send` had been called `sent` times
    outputs.end(ack)
    return ack


def test_a_group_completes_when_its_last_output_is_acknowledged(outputs: ProducerOutputs) -> None:
    ack = group_of(outputs, 2)
    outputs._delivered_in(ack, None, None)
    assert not ack.future.done()
    outputs._delivered_in(ack, None, None)
    assert ack.future.result(timeout=0) is None


def test_a_group_without_outputs_completes_when_closed(outputs: ProducerOutputs) -> None:
    assert group_of(outputs, 0).future.result(timeout=0) is None


def test_groups_complete_in_order(outputs: ProducerOutputs) -> None:
    # The later group's changelog must not be written before the earlier one's.
    first, second = group_of(outputs, 1), group_of(outputs, 1)
    outputs._delivered_in(second, None, None)
    assert not second.future.done()
    outputs._delivered_in(first, None, None)
    assert first.future.done() and second.future.done()


def test_a_group_still_open_holds_back_the_ones_after_it(outputs: ProducerOutputs) -> None:
    first = outputs.begin()
    second = group_of(outputs, 0)
    assert not second.future.done()
    outputs.end(first)
    assert first.future.done() and second.future.done()


def test_a_failed_output_fails_its_group_and_names_the_error(outputs: ProducerOutputs) -> None:
    ack = group_of(outputs, 2)
    outputs._delivered_in(ack, "Local: Message timed out", None)
    outputs._delivered_in(ack, None, None)
    with pytest.raises(RuntimeError, match="output writes failed: Local: Message timed out"):
        ack.future.result(timeout=0)


def test_a_group_whose_waiter_went_away_does_not_stop_the_poller(
    outputs: ProducerOutputs,
) -> None:
    # At shutdown the agent's wait is cancelled, which cancels the group's future.
    first, second = group_of(outputs, 1), group_of(outputs, 1)
    first.future.cancel()
    outputs._delivered_in(first, None, None)  # must not raise
    outputs._delivered_in(second, None, None)
    assert second.future.result(timeout=0) is None


def test_a_group_waiting_long_for_the_broker_is_logged_once(
    outputs: ProducerOutputs, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A worker waiting on the broker holds back its changelog and commits; the log says so.
    ack = group_of(outputs, 3)
    outputs._delivered_in(ack, None, None)
    outputs._warn_if_slow()
    assert "not acknowledged" not in caplog.text  # not yet 10 s
    monkeypatch.setattr(ack, "closed_at", ack.closed_at - 11)
    outputs._warn_if_slow()
    outputs._warn_if_slow()
    warnings = [r.getMessage() for r in caplog.records if "not acknowledged" in r.getMessage()]
    assert len(warnings) == 1
    assert "1 of 3 so far" in warnings[0]
