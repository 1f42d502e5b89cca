"""One flusher thread for both plugins: the sender, which owns the network, clients and credentials.

Each plugin is an `Accumulator` (no network: it says what is ready and when to wake). The loop
asks each one `ready(now)`, puts every batch it hands out through the `Sender`, reports each
outcome back, and sleeps on one Event the thrift side sets when a full batch is waiting.
Backoff is a time per destination the accumulator compares with the clock; nothing in here
sleeps except that wait, so a stop request is seen at once.
"""

from __future__ import annotations

import gc
import logging
import socket
import threading
import time
from collections.abc import Callable
from typing import Final

from ..settings import Settings
from .accumulator import Accumulator, Batch
from .aws import AwsClients
from .retry import delivery_error
from .services import clients_for

log = logging.getLogger("osquery_aws_logger.flusher")

#: Longest the loop sleeps: the spool's fsync interval bounds what a power loss can take.
MAX_WAIT_SECONDS: Final = 1.0
#: Longest a plugin that cannot ship (settings) waits before its settings are checked again.
MAX_UNUSABLE_RECHECK: Final = 60.0
#: How often each plugin's figures are written beside its spool (for `status`).
STATE_INTERVAL_SECONDS: Final = 5.0
#: How often a line of counters is logged while something waits or fails.
REPORT_INTERVAL_SECONDS: Final = 60.0
#: How long a plugin rests after an unexpected error before it is tried again.
RECOVER_PAUSE_SECONDS: Final = 1.0
#: How often the spools' room on their filesystems is checked.
HEADROOM_SECONDS: Final = 1.0


class Sender:
    """Puts batches and reports each outcome to the accumulator that handed it out.

    Owns the AWS clients and the credentials behind them (built on first use, dropped when the
    settings change, refreshed after an expired-token answer). `clients_factory` is the seam
    for tests: anything with AwsClients' `put_prepared`, `invalidate`, `client` and
    `read_timeout` (named in the cause of a timed-out call).
    """

    def __init__(self, settings: Settings,
                 clients_factory: Callable[[Settings], AwsClients] = clients_for) -> None:
        self._settings = settings
        self._clients_factory = clients_factory
        self.clients: AwsClients | None = None

    def reset(self, settings: Settings) -> None:
        """New settings: clients are rebuilt with the new credentials, endpoints and proxy."""
        self._settings = settings
        self.clients = None

    def send(self, accumulator: Accumulator, batch: Batch, now: float) -> None:
        if self.clients is None:
            self.clients = self._clients_factory(self._settings)
        clients = self.clients
        error = None
        try:
            codes = accumulator.service.put(clients, batch.destination, batch.entries)
        except Exception as exc:
            error = delivery_error(exc, read_timeout=clients.read_timeout)
        if error is not None:
            # A failed botocore call leaves exception-traceback-frame cycles holding its request
            # (a call's worth of bytes) until the cyclic collector happens to run; through an
            # outage they pile up, one per retry. Failures are rare and spaced by backoff.
            gc.collect()
            if error.expired_credentials:
                clients.invalidate()
            accumulator.failed(batch, error, now)
            return
        accumulator.completed(batch, codes, now)


class Flusher:
    """The one background thread that ships every plugin's spool."""

    def __init__(self, accumulators: list[Accumulator], settings: Settings, *,
                 problems: list[str] | None = None,
                 clients_factory: Callable[[Settings], AwsClients] = clients_for) -> None:
        self.accumulators = accumulators
        self.sender = Sender(settings, clients_factory)
        self._settings = settings
        self._problems = list(problems or [])
        self._pending_settings: tuple[Settings, list[str]] | None = None
        self._recheck_at: dict[int, float] = {}
        self._wake = threading.Event()
        self._stop_deadline: float | None = None
        self._thread = threading.Thread(target=self._run, name="aws-logger-flusher", daemon=True)
        self._next_report = time.monotonic() + REPORT_INTERVAL_SECONDS
        self._next_state = 0.0
        self._next_headroom = 0.0
        self._lock = threading.Lock()
        #: Called every STATE_INTERVAL_SECONDS, at each change of a plugin's state and at stop,
        #: on the flusher's thread: where the operator's figures are written (state.json, the
        #: metrics file), by whoever set it up.
        self.on_report: Callable[[], None] = lambda: None

    def start(self) -> None:
        self._thread.start()

    def wake(self) -> None:
        self._wake.set()

    @property
    def settings(self) -> Settings:
        """The settings the flusher ships with now."""
        return self._settings

    def apply(self, settings: Settings, problems: list[str]) -> None:
        """New settings (from the thrift or watcher side); the flusher switches at its next turn."""
        with self._lock:
            self._pending_settings = (settings, list(problems))
        self._wake.set()

    def stop(self, timeout: float) -> bool:
        """Flush for at most `timeout` seconds, then stop. Answers whether everything was sent."""
        self._stop_deadline = time.monotonic() + timeout
        self._wake.set()
        self._thread.join(timeout + 0.5)
        drained = not self._thread.is_alive() and not any(a.waiting() for a in self.accumulators)
        for accumulator in self.accumulators:
            accumulator.publish(figures=True)
        self.on_report()
        for accumulator in self.accumulators:
            accumulator.close()
        return drained

    def _switch_settings(self, now: float) -> None:
        with self._lock:
            pending, self._pending_settings = self._pending_settings, None
        if pending is None:
            return
        settings, problems = pending
        if settings != self._settings or problems != self._problems:
            self._settings, self._problems = settings, problems
            self.sender.reset(settings)
            self._recheck_at.clear()
            for accumulator in self.accumulators:
                accumulator.apply(settings, now)
                accumulator.set_problem(self._problem(accumulator) or "")

    def _problem(self, accumulator: Accumulator) -> str | None:
        return "; ".join(self._problems) or accumulator.intake.problem or \
            accumulator.service.problem(self._settings)

    def _usable(self, accumulator: Accumulator) -> bool:
        """Whether this plugin may ship now; records of one that may not stay spooled."""
        return not accumulator.set_problem(self._problem(accumulator) or "")

    def _run(self) -> None:
        while True:
            try:
                if self._turn():
                    return
            except Exception:  # pragma: no cover - a bug must not end delivery for good
                log.exception("flusher: unexpected error; carrying on")
                self._wake.wait(MAX_WAIT_SECONDS)

    def turn(self, now: float, *, draining: bool = False) -> tuple[bool, float]:
        """Send every batch that is ready; answer whether any was sent and when to look again."""
        sent = False
        wake = now + MAX_WAIT_SECONDS
        for accumulator in self.accumulators:
            if not accumulator.waiting():
                continue
            key = id(accumulator)
            if now < self._recheck_at.get(key, 0.0):
                wake = min(wake, self._recheck_at[key])
                continue
            if not self._usable(accumulator):
                # Look again next period (or at once when new settings arrive).
                self._recheck_at[key] = now + min(accumulator.view.period, MAX_UNUSABLE_RECHECK)
                continue
            before = accumulator.state()
            try:
                ready = accumulator.ready(now, draining=draining)
                for batch in ready.batches:
                    self.sender.send(accumulator, batch, now)
                    sent = True
            except Exception:
                # A bug must cost neither rows nor the other plugin: what this one had read is
                # read again from its last acknowledgement (maybe twice, never lost), after a
                # pause so a fault that repeats does not spin.
                log.exception("%s: unexpected error; reading again from the last "
                              "acknowledged record", accumulator.plugin)
                accumulator.recover(now)
                self._recheck_at[key] = now + RECOVER_PAUSE_SECONDS
                continue
            wake = min(wake, ready.wake_at)
            if accumulator.state() != before:
                # A change of health is on disk at once, for `status` after a crash.
                self._next_state = now
        return sent, wake

    def _turn(self) -> bool:
        """One pass of the loop; answers True when the flusher is done for good."""
        now = time.monotonic()
        self._switch_settings(now)
        stopping = self._stop_deadline is not None
        if self._stop_deadline is not None and (now >= self._stop_deadline or not self._work_left()):
            return True
        for accumulator in self.accumulators:
            accumulator.sync()
        if now >= self._next_headroom:
            self._next_headroom = now + HEADROOM_SECONDS
            for group in {id(a.intake.group): a.intake.group for a in self.accumulators}.values():
                group.keep_headroom()
        sent, wake = self.turn(now, draining=stopping)
        for accumulator in self.accumulators:
            # Every plugin's problem, waiting or not: the table shows an unusable one disabled.
            accumulator.set_problem(self._problem(accumulator) or "")
            accumulator.publish(figures=True, now=now)
        self._report(now)
        if sent:
            return False  # go round again at once: more may be due (draining a backlog)
        if self._stop_deadline is not None:
            wake = min(wake, self._stop_deadline)
        self._wake.wait(max(0.0, wake - now))
        self._wake.clear()
        return False

    def _work_left(self) -> bool:
        return any(a.waiting() and not self._problem(a) for a in self.accumulators)

    def _report(self, now: float) -> None:
        if now >= self._next_state:
            self._next_state = now + STATE_INTERVAL_SECONDS
            self.on_report()
        if now < self._next_report:
            return
        self._next_report = now + REPORT_INTERVAL_SECONDS
        for accumulator in self.accumulators:
            figures = accumulator.published.figures
            c = accumulator.counters
            state = accumulator.state()
            if figures.records or state != "ok":
                log.info("%s: %s; waiting %d records, %d rows (%d bytes); accepted %d lines, "
                         "%d rows; delivered %d retried %d throttled %d dropped %s",
                         accumulator.plugin, state, figures.records, figures.rows,
                         figures.bytes, c.accepted, c.accepted_rows, c.delivered, c.retried,
                         c.throttled, {k: v for k, v in c.dropped.items() if v} or 0)


def local_host_identifier() -> str:
    """The partition key for lines that carry no hostIdentifier of their own."""
    return socket.gethostname()
