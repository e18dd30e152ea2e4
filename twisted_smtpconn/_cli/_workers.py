"""
Sending the run's jobs through one :class:`~twisted_smtpconn.SMTPPool`.

The pool decides which connection carries which message: it opens up to
``--connections`` of them, replaces each after
``--max-messages-per-connection`` messages, keeps to ``--rate`` and retries
(``--retries``) only what failed before the server could have the message.
This module decides what to hand it and what to say about each job:

* at most :data:`WINDOW_PER_CONNECTION` sends per connection are handed to
  the pool at a time, so that a spool of any size costs memory (and open
  files) for that many messages only, while a connection that comes free
  finds its next message already waiting;
* every job gets exactly one :class:`Outcome`, through ``record``;
* a message whose last attempt got no connection (connecting, TLS or AUTH
  failed) is reported *not sent*, with that error;
* the run gives up after one such failure per connection in a row, or
  :data:`BROKEN_PER_CONNECTION` per connection of messages in a row that
  lost theirs: a server that is down or keeps dropping us is not fed the
  whole spool.  The pool is closed and the jobs left are reported not sent
  with the last error;
* on :meth:`RunControl.stop` (Ctrl-C) the pool is closed at once: the
  messages it had not started are reported not sent (``EINTERRUPTED``),
  the running ones finish; :meth:`RunControl.abort` cuts those too.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import BinaryIO

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorTime

from .._envelope import DSN, Envelope
from .._errors import EnvelopeError, SMTPConnectionError, StreamError
from .._pool import SendTrace, SMTPPool
from ._exitcodes import EX_TEMPFAIL, classify
from ._jobs import Job
from ._results import ErrorInfo, Outcome

__all__ = [
    "BROKEN_PER_CONNECTION",
    "RunControl",
    "WINDOW_PER_CONNECTION",
    "deliver_all",
    "open_job",
]

#: Sends handed to the pool per connection at a time: one running, one
#: ready to start the moment a connection is free.
WINDOW_PER_CONNECTION = 2

#: Messages in a row, per connection, that lost their connection after
#: which the run gives up.
BROKEN_PER_CONNECTION = 3

#: Seconds the final QUITs may take before the connections are dropped.
_QUIT_GRACE = 10.0

_INTERRUPTED = ErrorInfo(code="EINTERRUPTED", message="interrupted before sending")


@dataclass(eq=False)
class RunControl:
    """
    Ctrl-C's handle on a run.

    Made before the pool exists (the embedded server starts first), and
    given the pool by :func:`deliver_all` once it does.

    :ivar stopping: set by :meth:`stop`: no new job is started.
    :ivar aborted: set by :meth:`abort`: the messages in flight were cut.
    """

    stopping: bool = False
    aborted: bool = False
    pool: SMTPPool | None = None

    def stop(self) -> None:
        """Start no new job; let the pool finish the messages it is sending."""
        self.stopping = True
        if self.pool is not None:
            self.pool.close()

    def abort(self) -> None:
        """Drop every connection now: the messages in flight fail."""
        self.stopping = True
        self.aborted = True
        if self.pool is not None:
            self.pool.abort()


def open_job(job: Job) -> tuple[Envelope, BinaryIO]:
    """
    The envelope of ``job`` and its message, opened; the caller closes it.

    :raises EnvelopeError: if the envelope is unusable.
    :raises StreamError: if the message cannot be read.
    """
    try:
        dsn = (
            None
            if job.dsn is None
            else DSN(
                ret=job.dsn.ret,
                envid=job.dsn.envid,
                notify=None if job.dsn.notify is None else list(job.dsn.notify),
                orcpt=job.dsn.orcpt,
            )
        )
        envelope = Envelope(
            job.mail_from,
            list(job.rcpt_to),
            size=job.content.size_hint(),
            use_8bit_mime=job.use_8bit_mime,
            dsn=dsn,
        )
    except (ValueError, TypeError) as e:
        raise EnvelopeError(f"unusable envelope: {e}") from None
    try:
        stream = job.content.open()
    except OSError as e:
        raise StreamError(f"cannot read {job.source}: {e.strerror or e}") from None
    return envelope, stream


def _loses_connection(error: BaseException) -> bool:
    return not isinstance(error, SMTPConnectionError) or error.closes_connection


class _Streak:
    """
    Counts the settled messages in a row whose trouble was the connection,
    not the message, and says when to give up.
    """

    def __init__(self, connections: int) -> None:
        self._unreachable_limit = connections
        self._broken_limit = BROKEN_PER_CONNECTION * connections
        self.unreachable = 0
        self.broken = 0

    def add(self, trace: SendTrace) -> bool:
        """Count ``trace``; whether it is time to give up."""
        error = trace.error
        if trace.attempts == 0:
            return False  # never tried: says nothing about the server
        if error is None or (trace.connection != 0 and not _loses_connection(error)):
            self.unreachable = self.broken = 0
            return False
        self.unreachable = self.unreachable + 1 if trace.connection == 0 else 0
        self.broken += 1
        return self.unreachable >= self._unreachable_limit or self.broken >= self._broken_limit


class _Delivery:
    """One run of :func:`deliver_all`."""

    def __init__(
        self,
        clock: IReactorTime,
        pool: SMTPPool,
        jobs: Iterator[Job],
        *,
        connections: int,
        record: Callable[[Outcome], None],
        notice: Callable[[str], None],
        control: RunControl,
    ) -> None:
        self._clock = clock
        self._pool = pool
        self._jobs = jobs
        self._window = WINDOW_PER_CONNECTION * connections
        self._streak = _Streak(connections)
        self._record = record
        self._notice = notice
        self._control = control
        self._outstanding = 0
        self._filling = False
        self._exhausted = False
        self._gave_up: BaseException | None = None
        self._crash: BaseException | None = None
        self.done: Deferred[None] = Deferred()

    def _stopped(self) -> bool:
        return self._control.stopping or self._gave_up is not None or self._crash is not None

    def _leftover_reason(self) -> tuple[ErrorInfo, int]:
        if self._gave_up is not None:
            return ErrorInfo.from_exception(self._gave_up), classify(self._gave_up, connected=False)
        return _INTERRUPTED, EX_TEMPFAIL

    def fill(self) -> None:
        """Hand the pool jobs up to the window; fire :attr:`done` at the end."""
        if self._filling:
            # A send settled while a job was being handed over: the loop
            # below goes on, so no recursion (a spool can be long).
            return
        self._filling = True
        try:
            while not self._stopped() and self._outstanding < self._window:
                job = next(self._jobs, None)
                if job is None:
                    self._exhausted = True
                    break
                self._start(job)
        except Exception as e:
            self._halt(e)
        finally:
            self._filling = False
        if self._outstanding == 0 and (self._exhausted or self._stopped()) and not self.done.called:
            if self._crash is not None:
                self.done.errback(self._crash)
            else:
                self.done.callback(None)

    def _start(self, job: Job) -> None:
        if job.problem is not None:
            self._record(Outcome.unsendable(job))
            return
        started_wall = time.time()
        started = self._clock.seconds()
        try:
            envelope, stream = open_job(job)
        except SMTPConnectionError as e:
            self._record(
                Outcome.failed(
                    job, e, connected=False, started=started_wall, elapsed=0.0, connection=0, attempts=0
                )
            )
            return
        self._outstanding += 1
        d = self._pool.send_traced(envelope, stream)
        d.addCallback(self._settled, job, stream, started_wall, started)

    def _settled(
        self, trace: SendTrace, job: Job, stream: BinaryIO, started_wall: float, started: float
    ) -> None:
        self._outstanding -= 1
        try:
            stream.close()
            self._record(self._outcome(trace, job, started_wall, self._clock.seconds() - started))
            if self._streak.add(trace) and not self._stopped():
                assert trace.error is not None
                self._give_up(trace.error)
        except Exception as e:
            self._halt(e)
        self.fill()

    def _outcome(self, trace: SendTrace, job: Job, started_wall: float, elapsed: float) -> Outcome:
        if trace.info is not None:
            return Outcome.sent(
                job,
                trace.info,
                started=started_wall,
                elapsed=elapsed,
                connection=trace.connection,
                attempts=trace.attempts,
            )
        error = trace.error
        assert error is not None
        if trace.attempts == 0 and self._stopped():
            # The pool was closed before it started this one.
            reason, code = self._leftover_reason()
            return Outcome.not_sent(job, reason=reason, exit_code=code)
        if trace.attempts > 0 and trace.connection == 0:
            return Outcome.not_sent(
                job,
                reason=ErrorInfo.from_exception(error),
                exit_code=classify(error, connected=False),
                attempts=trace.attempts,
            )
        outcome = Outcome.failed(
            job,
            error,
            connected=trace.connection != 0,
            started=started_wall,
            elapsed=elapsed,
            connection=trace.connection,
            attempts=trace.attempts,
        )
        if self._control.aborted:
            # Cut by our own Ctrl-C, not refused: try again later.
            unknown = getattr(error, "delivery_unknown", False)
            message = "cut off when the Ctrl-C grace period ended" + (
                " after the whole message was sent: the server may have it" if unknown else ""
            )
            outcome = dataclasses.replace(
                outcome, error=ErrorInfo(code="EINTERRUPTED", message=message), exit_code=EX_TEMPFAIL
            )
        return outcome

    def _give_up(self, error: BaseException) -> None:
        self._gave_up = error
        if self._streak.unreachable:
            why = f"{self._streak.unreachable} message(s) in a row could not get a connection"
        else:
            why = f"{self._streak.broken} message(s) in a row lost their connection"
        self._notice(f"giving up: {why}; last error: {error}")
        self._pool.close()

    def _halt(self, error: BaseException) -> None:
        """A bug (or an unwritable report): stop, and fail the run once the pool is quiet."""
        if self._crash is None:
            self._crash = error
        self._pool.close()

    def report_leftovers(self) -> None:
        """Every job never handed to the pool is reported not sent."""
        if self._crash is not None:
            return
        reason, code = self._leftover_reason()
        for job in self._jobs:
            self._record(Outcome.not_sent(job, reason=reason, exit_code=code))


async def deliver_all(
    clock: IReactorTime,
    pool: SMTPPool,
    jobs: Iterable[Job],
    *,
    connections: int,
    record: Callable[[Outcome], None],
    notice: Callable[[str], None],
    control: RunControl,
) -> None:
    """
    Send every job through ``pool``, then close it.

    :param clock: for timings and the grace period of the final QUITs.
    :param pool: the run's pool, made with ``max_connections=connections``.
    :param connections: the pool's ``max_connections``: sets how many
        sends are handed over at a time and when to give up.
    :param record: called exactly once for every job, as it settles.
    :param notice: called with a line for the user (giving up).
    :param control: the run's stop switch; given ``pool``.
    :raises Exception: what ``record`` raised, once the pool is closed.
    """
    control.pool = pool
    run = _Delivery(
        clock, pool, iter(jobs), connections=connections, record=record, notice=notice, control=control
    )
    if control.stopping:
        pool.close()  # Ctrl-C came before the pool existed.
    try:
        run.fill()
        await run.done
        run.report_leftovers()
    finally:
        closing = pool.close()
        cut = clock.callLater(_QUIT_GRACE, pool.abort)
        try:
            await closing
        finally:
            if cut.active():
                cut.cancel()
