"""Test doubles for tests and benchmarks; not used by the runtime.

Both classes implement the `Outputs` protocol of `enforce.py` (what `EnforceCore` sends
its decisions to), without a broker:

- `FakeOutputs` keeps every record sent and notes each flush, for tests to inspect;
- `NullOutputs` only counts records and bytes, for benchmarks.
"""

from __future__ import annotations

from functools import cache
from typing import TYPE_CHECKING, Any

from .serde import AvroSerde

if TYPE_CHECKING:
    from .enforce import Outputs

__all__ = ["FakeOutputs", "NullOutputs"]


@cache
def _default_serde() -> AvroSerde:
    # Built once, on first use: an AvroSerde compiles every schema.
    return AvroSerde()


class FakeOutputs:
    """Collects what the core sends; remembers how many records preceded each flush.

    `sent` holds ``(topic, key, value)`` of every record sent since the last `take`;
    `flushes` holds, for each `flush`, how many records `sent` held at that moment.
    """

    def __init__(self, serde: AvroSerde | None = None) -> None:
        self.sent: list[tuple[str, bytes | None, bytes]] = []
        self.flushes: list[int] = []
        self._serde = serde

    def send(self, topic: str, key: bytes | None, value: bytes) -> None:
        """Keep the record."""
        self.sent.append((topic, key, value))

    def flush(self) -> None:
        """Note how many records were sent before this flush."""
        self.flushes.append(len(self.sent))

    def take(self) -> list[tuple[str, bytes | None, str, dict[str, Any]]]:
        """(topic, key, schema name, decoded value) of everything sent so far; then clear.

        Values are decoded with the serde given, or else with the project's schemas.
        """
        serde = self._serde if self._serde is not None else _default_serde()
        out: list[tuple[str, bytes | None, str, dict[str, Any]]] = []
        for topic, key, value in self.sent:
            name, record = serde.decode(value)
            out.append((topic, key, name, record))
        self.sent = []
        return out


class NullOutputs:
    """Counts what would be sent: `sent` records, of `bytes` value bytes in all."""

    def __init__(self) -> None:
        self.sent = 0
        self.bytes = 0

    def send(self, topic: str, key: bytes | None, value: bytes) -> None:
        """Count the record and its value's bytes; keep nothing."""
        self.sent += 1
        self.bytes += len(value)

    def flush(self) -> None:
        """Nothing to wait for."""
        return None


if TYPE_CHECKING:
    # mypy checks here that both doubles implement the `Outputs` protocol.
    _FAKE: Outputs = FakeOutputs()
    _NULL: Outputs = NullOutputs()
