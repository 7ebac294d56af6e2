"""Decision output through confluent-kafka, acknowledged per group of micro-batches.

The enforce agent may write a group's changelog records only once the broker has
acknowledged the group's outputs (tagged records, commands, audit records). Waiting for
that with a flush after every group left the worker idle for a round trip per group;
instead each group gets a `GroupAck` whose future completes when its last output is
acknowledged, and groups complete strictly in order (a group's changelog holds only the
subjects it changed, so a later group's changelog must never land before an earlier
one's). A poller thread serves the delivery reports, so the next group runs meanwhile.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections import deque
from collections.abc import Mapping
from concurrent.futures import Future, InvalidStateError
from functools import partial
from typing import Any

from confluent_kafka import Producer

from .settings import ClientTuning

log = logging.getLogger(__name__)

# A group whose outputs wait longer than this for the broker is logged: the worker then
# waits, its changelog and commits held back, and nothing else would say why.
SLOW_ACK_S = 10.0


class GroupAck:
    """The outputs of one group: how many were sent, how many acknowledged."""

    __slots__ = ("acked", "closed", "closed_at", "errors", "future", "sent", "warned")

    def __init__(self) -> None:
        self.sent = 0
        self.acked = 0
        self.closed = False
        self.errors: list[str] = []
        self.future: Future[None] = Future()
        self.closed_at = 0.0
        self.warned = False


class ProducerOutputs:
    """Sends outputs; `begin`/`end` bracket a group, whose `GroupAck.future` completes
    once every output sent in between is acknowledged (or fails, naming the errors)."""

    def __init__(
        self,
        bootstrap: str,
        poll_interval: float = 0.01,
        tuning: ClientTuning | None = None,
        overrides: Mapping[str, Any] | None = None,
    ) -> None:
        # No flush per group: the linger alone makes the batches (see ClientTuning).
        config = (tuning or ClientTuning()).output_producer(bootstrap)
        self.producer = Producer({**config, **(overrides or {})})
        self._lock = threading.Lock()
        self._groups: deque[GroupAck] = deque()
        self._current: GroupAck | None = None
        self._errors: list[str] = []  # of outputs sent outside a group
        self._stopped = threading.Event()
        self._poll_interval = poll_interval
        self._poller = threading.Thread(target=self._poll, name="output-acks", daemon=True)
        self._poller.start()

    # -- groups

    def begin(self) -> GroupAck:
        """Start a group: outputs sent from now until `end` belong to it."""
        ack = GroupAck()
        with self._lock:
            self._groups.append(ack)
        self._current = ack
        return ack

    def end(self, ack: GroupAck) -> None:
        """Close the group: nothing more will be sent in it."""
        self._current = None
        with self._lock:
            ack.closed = True
            ack.closed_at = time.monotonic()
            self._complete_ready()

    def _complete_ready(self) -> None:
        # Under the lock. Strictly in order: a group completes after those before it.
        groups = self._groups
        while groups and groups[0].closed and groups[0].acked == groups[0].sent:
            ack = groups.popleft()
            # Its waiter may have gone (the agent cancelled at shutdown): nothing to tell.
            with contextlib.suppress(InvalidStateError):
                if ack.errors:
                    failed = "; ".join(ack.errors[:3])
                    ack.future.set_exception(RuntimeError(f"output writes failed: {failed}"))
                else:
                    ack.future.set_result(None)

    def _delivered_in(self, ack: GroupAck, err: Any, _msg: Any) -> None:
        with self._lock:
            ack.acked += 1
            if err is not None:
                ack.errors.append(str(err))
            if ack.acked == ack.sent and ack.closed:
                self._complete_ready()

    def _delivered(self, err: Any, _msg: Any) -> None:
        if err is not None:
            with self._lock:
                self._errors.append(str(err))

    def _poll(self) -> None:
        while not self._stopped.is_set():
            self.producer.poll(self._poll_interval)
            self._warn_if_slow()

    def _warn_if_slow(self) -> None:
        with self._lock:
            oldest = self._groups[0] if self._groups else None
            if oldest is None or oldest.warned or not oldest.closed:
                return
            waited = time.monotonic() - oldest.closed_at
            if waited < SLOW_ACK_S:
                return
            oldest.warned = True
            sent, acked = oldest.sent, oldest.acked
        log.warning(
            "outputs not acknowledged %.0f s after their group ended: %d of %d so far; "
            "the worker waits for the broker",
            waited,
            acked,
            sent,
        )

    # -- Outputs

    def send(self, topic: str, key: bytes | None, value: bytes) -> None:
        """Queue one record (waiting while the producer's queue is full)."""
        ack = self._current
        if ack is not None:
            with self._lock:
                ack.sent += 1
            callback: Any = partial(self._delivered_in, ack)
        else:
            callback = self._delivered
        while True:
            try:
                self.producer.produce(topic, value, key=key, on_delivery=callback)
                return
            except BufferError:
                time.sleep(0.005)  # the poller drains the queue

    def flush(self) -> None:
        """Wait until every output sent so far is acknowledged; raise if any failed."""
        self.producer.flush(30)
        with self._lock:
            errors, self._errors = self._errors, []
        if errors:
            raise RuntimeError(f"output writes failed: {'; '.join(errors[:3])}")

    def close(self) -> None:
        """Flush, then stop the poller."""
        try:
            self.flush()
        finally:
            self._stopped.set()
            self._poller.join(5)
