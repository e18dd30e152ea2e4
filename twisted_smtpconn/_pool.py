"""
:class:`SMTPPool`: many messages over a bounded set of reused connections.

The pool exists for the sender of many messages (the ``smtpsend`` plugin,
Buildbot's notifier under load): it keeps up to ``max_connections``
connections, reuses each for up to ``max_messages`` messages, optionally
limits the rate, and retries what failed *before* the server accepted the
message.  It never retries a message the server may already have: a
failure after the final dot was sent (``delivery_unknown``) is reported,
never repeated (RFC 1047), and neither is a permanent (5xx) refusal.

A sender that reports on every message (``smtpsend``) needs more than the
:class:`SendInfo` or the error: how many attempts a message took and which
of the pool's connections carried it, or whether no connection could be
made at all.  :meth:`SMTPPool.send_traced` answers with a :class:`SendTrace`
holding all of it; :meth:`SMTPPool.send` is that, unwrapped.
"""

from __future__ import annotations

import io
from email.message import Message
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from twisted.internet.defer import Deferred, DeferredList, fail, succeed
from twisted.internet.interfaces import IDelayedCall, IReactorTime

from ._auth import Auth, coerce_auth
from ._connection import SMTPConnection
from ._email import headers_envelope
from ._envelope import Envelope, coerce_envelope
from ._errors import ProtocolError, SMTPConnectionError
from ._lifecycle import State
from ._logging import make_logger
from ._options import default_reactor, validate_options
from ._sendinfo import SendInfo
from ._source import check_message

__all__ = ["SMTPPool", "SendTrace"]


def _replayable(message: object) -> Callable[[], object] | None:
    """
    A function returning the message afresh for another attempt, or None
    when the message can be read only once (iterators, async iterables and
    unseekable files cannot be retried).
    """
    if isinstance(message, (str, bytes, bytearray, memoryview, Message)):
        # An email object is serialised afresh for each attempt.
        return lambda: message
    seekable = getattr(message, "seekable", None)
    if isinstance(message, io.IOBase) or (seekable is not None and hasattr(message, "read")):
        try:
            if message.seekable():  # type: ignore[attr-defined]
                start = message.tell()  # type: ignore[attr-defined]

                def rewind() -> object:
                    message.seek(start)  # type: ignore[attr-defined]
                    return message

                return rewind
        except (OSError, ValueError):
            return None
    return None


@dataclass(frozen=True)
class SendTrace:
    """
    How one message sent through the pool ended, and how it got there.

    Exactly one of ``info`` and ``error`` is set.

    :ivar info: the server's acceptance, as :meth:`SMTPConnection.send`
        gives it.
    :ivar error: why the message was not sent: the last attempt's error, or
        what refused it before any attempt.
    :ivar attempts: how many times sending it was started (0: never, because
        the arguments were refused or the pool was closed first).
    :ivar connection: which of the pool's connections carried the last
        attempt, numbered from 1 in the order the pool opened them; 0 when
        that attempt got no connection (connecting, TLS or AUTH failed) or
        there was no attempt.
    """

    info: SendInfo | None
    error: BaseException | None
    attempts: int
    connection: int


@dataclass(eq=False)
class _Job:
    envelope: Envelope
    message: object
    replay: Callable[[], object] | None
    result: Deferred[SendTrace]
    attempts: int = 0
    connection: int = 0
    last_error: SMTPConnectionError | None = None

    def succeed(self, info: SendInfo) -> None:
        self.result.callback(SendTrace(info, None, self.attempts, self.connection))

    def fail(self, error: BaseException) -> None:
        self.result.callback(SendTrace(None, error, self.attempts, self.connection))


@dataclass(eq=False)
class _Slot:
    """One pooled connection and what it has done."""

    connection: SMTPConnection
    number: int
    sent: int = 0
    idle_call: IDelayedCall | None = None
    broken: bool = False
    #: Sends running on it now (at most two: see SMTPPool._second_lane).
    in_flight: int = 0
    retired: bool = False


@dataclass
class _RateLimiter:
    """
    At most ``limit`` messages start at the server in any ``interval``
    seconds, a start being the moment MAIL is written.

    A message given a connection is *reserved* until its MAIL goes out (a
    new connection may take a while to greet us), and a reservation counts
    as a start at the latest possible moment: so the starts the server sees,
    not the moments the pool handed messages out, keep to the limit.
    """

    clock: IReactorTime
    limit: int | None
    interval: float
    starts: deque[float] = field(default_factory=deque)
    reserved: int = 0

    def delay(self) -> float:
        """Seconds to wait before another message may be reserved (0: now)."""
        if self.limit is None:
            return 0.0
        now = self.clock.seconds()
        while self.starts and self.starts[0] <= now - self.interval:
            self.starts.popleft()
        if len(self.starts) + self.reserved < self.limit:
            return 0.0
        if not self.starts:
            # Every place is reserved; a start or a release pumps again.
            return float("inf")
        return self.starts[0] + self.interval - now

    def reserve(self) -> None:
        if self.limit is not None:
            self.reserved += 1

    def started(self) -> None:
        """A reserved message's MAIL is being written now."""
        if self.limit is not None:
            self.reserved -= 1
            self.starts.append(self.clock.seconds())

    def release(self) -> None:
        """A reserved message ended without starting."""
        if self.limit is not None:
            self.reserved -= 1


class SMTPPool:
    """
    A pool of :class:`SMTPConnection` objects to one server.

    :param max_connections: connections open at once, at most.
    :param max_messages: messages sent over one connection before it is
        replaced with a fresh one.
    :param rate_limit: at most this many messages started per
        ``rate_interval`` seconds (None: unlimited).
    :param idle_timeout: seconds an unused connection stays open.
    :param max_retries: further attempts for a message that failed before
        acceptance with a transient error (4xx, or the connection failing
        before the final dot was sent).
    :param retry_delay: seconds before the first retry; doubled for each
        further one, capped at ``max_retry_delay``.
    :param auth: credentials for ``login()`` on every new connection.
    :param connection_options: any keyword of :class:`SMTPConnection`.
    """

    def __init__(
        self,
        host: str = "localhost",
        port: int | None = None,
        *,
        max_connections: int = 5,
        max_messages: int = 100,
        rate_limit: int | None = None,
        rate_interval: float = 1.0,
        idle_timeout: float = 30.0,
        max_retries: int = 3,
        retry_delay: float = 1.0,
        max_retry_delay: float = 60.0,
        auth: Auth | Mapping[str, Any] | None = None,
        reactor: Any = None,
        **connection_options: Any,
    ) -> None:
        for label, value in (("max_connections", max_connections), ("max_messages", max_messages)):
            if isinstance(value, bool) or not isinstance(value, int):
                raise TypeError(f"{label} must be an int")
            if value < 1:
                raise ValueError(f"{label} must be at least 1, not {value}")
        if rate_limit is not None and (isinstance(rate_limit, bool) or not isinstance(rate_limit, int) or rate_limit < 1):
            raise ValueError(f"rate_limit must be a positive int or None, not {rate_limit!r}")
        if isinstance(max_retries, bool) or not isinstance(max_retries, int) or max_retries < 0:
            raise ValueError(f"max_retries must be a non-negative int, not {max_retries!r}")
        for label, seconds in (
            ("rate_interval", rate_interval),
            ("idle_timeout", idle_timeout),
            ("retry_delay", retry_delay),
            ("max_retry_delay", max_retry_delay),
        ):
            if isinstance(seconds, bool) or not isinstance(seconds, (int, float)) or not seconds > 0:
                raise ValueError(f"{label} must be a positive number of seconds, not {seconds!r}")
        reactor = default_reactor(reactor)
        self._reactor = reactor
        self._clock: IReactorTime = reactor
        self._host = host
        self._port = port
        self._connection_options = dict(connection_options)
        # Bad options fail here, not at the first message: the connections'
        # own check, with the options they will get.
        checked = dict(connection_options)
        make_logger(checked.pop("logger", None))
        validate_options(host=host, port=port, **checked)
        self._auth = coerce_auth(auth) if auth is not None else None
        self._max_connections = max_connections
        self._max_messages = max_messages
        self._idle_timeout = float(idle_timeout)
        self._max_retries = max_retries
        self._retry_delay = float(retry_delay)
        self._max_retry_delay = float(max_retry_delay)
        self._rate = _RateLimiter(self._clock, rate_limit, float(rate_interval))
        self._waiting: deque[_Job] = deque()
        self._retrying: set[_Job] = set()
        self._idle: list[_Slot] = []
        self._slots: set[_Slot] = set()
        self._connecting: set[SMTPConnection] = set()
        self._opened = 0
        self._timers: set[IDelayedCall] = set()
        self._pump_call: IDelayedCall | None = None
        self._closed = False
        self._active: set[Deferred[Any]] = set()

    def _new_connection(self) -> SMTPConnection:
        return SMTPConnection(self._host, self._port, reactor=self._reactor, **self._connection_options)

    # -- public ------------------------------------------------------------------

    def send(self, envelope: Envelope | Mapping[str, Any], message: object) -> Deferred[SendInfo]:
        """
        Send one message through the pool: same arguments and result as
        :meth:`SMTPConnection.send`.
        """
        return self.send_traced(envelope, message).addCallback(_unwrap)

    def send_traced(self, envelope: Envelope | Mapping[str, Any], message: object) -> Deferred[SendTrace]:
        """
        Send one message like :meth:`send`, and say how it went.

        :returns: a Deferred that always fires with a :class:`SendTrace`
            (never fails): the :class:`SendInfo` or the error, the number
            of attempts and the connection that carried the last one.
        """
        if self._closed:
            closed = ProtocolError("cannot send: the pool is closed")
            closed.closes_connection = False
            return succeed(SendTrace(None, closed, 0, 0))
        try:
            checked = coerce_envelope(envelope)
            check_message(message)
        except (SMTPConnectionError, TypeError, ValueError) as error:
            return succeed(SendTrace(None, error, 0, 0))
        job = _Job(checked, message, _replayable(message), Deferred())
        self._waiting.append(job)
        self._pump()
        return job.result

    def close(self) -> Deferred[None]:
        """
        Stop: fail the messages not yet started (and those waiting for a
        retry, with their last error), let the running ones finish, and QUIT
        every connection.  Fires when all connections are gone.  Calling it
        again returns another Deferred for the same end.
        """
        self._closed = True
        while self._waiting:
            job = self._waiting.popleft()
            job.fail(job.last_error or ProtocolError("the pool was closed before this message was sent"))
        for timer in list(self._timers):
            if timer.active():
                timer.cancel()
        self._timers.clear()
        # Their requeue timers are gone with the others.
        retrying, self._retrying = self._retrying, set()
        for job in retrying:
            job.fail(job.last_error or ProtocolError("the pool was closed before this message was retried"))
        idle, self._idle = self._idle, []
        for slot in idle:
            self._track(self._retire(slot))
        return Deferred.fromCoroutine(self._drain())

    def abort(self) -> Deferred[None]:
        """
        Close at once: as :meth:`close`, but every connection, including
        those still connecting or sending, is dropped without QUIT.  The
        messages in flight fail (with ``delivery_unknown`` set if their final
        dot had been sent).  For a caller that gave the running messages
        all the time it could.

        :returns: what :meth:`close` returns.
        """
        closing = self.close()
        for connection in [*self._connecting, *(slot.connection for slot in self._slots)]:
            connection.close()
        return closing

    @property
    def open_connections(self) -> int:
        """How many connections are open or opening now."""
        return len(self._slots) + len(self._connecting)

    async def _drain(self) -> None:
        # Running jobs retire their connections when they end, which adds
        # work to wait for: go on until none is left.
        while self._active:
            await DeferredList(list(self._active), consumeErrors=True)

    # -- scheduling ----------------------------------------------------------------

    def _pump(self) -> None:
        """Start as many waiting jobs as the limits allow."""
        while self._waiting and not self._closed:
            delay = self._rate.delay()
            if delay == float("inf"):
                return
            if delay > 0:
                self._schedule_pump(delay)
                return
            slot: _Slot | None
            if self._idle:
                slot = self._idle.pop()
                self._stop_idle_timer(slot)
            elif self.open_connections < self._max_connections:
                slot = None
            else:
                slot = self._second_lane()
                if slot is None:
                    return
            if slot is not None:
                slot.in_flight += 1
            job = self._waiting.popleft()
            self._rate.reserve()
            self._track(Deferred.fromCoroutine(self._run(job, slot)))

    def _second_lane(self) -> _Slot | None:
        """
        A busy connection that may take one more message now.

        With PIPELINING a send queued behind a running one starts as soon as
        the running one's final dot is written, so its envelope shares a
        round trip with the previous final reply (SMTPConnection's hand-over).
        Only when every connection is busy and no new one may be opened; at
        most two sends per connection, so a failure costs little.
        """
        for slot in self._slots:
            if (
                slot.in_flight == 1
                and not (slot.broken or slot.retired)
                and slot.sent + slot.in_flight < self._max_messages
                and slot.connection._accepts_overlap()
            ):
                return slot
        return None

    def _schedule_pump(self, delay: float) -> None:
        if self._pump_call is not None and self._pump_call.active():
            return
        self._pump_call = self._call_later(delay, self._pump)

    def _call_later(self, delay: float, f: Callable[[], None]) -> IDelayedCall:
        def run() -> None:
            self._timers.discard(call)
            f()

        call = self._clock.callLater(delay, run)
        self._timers.add(call)
        return call

    def _stop_idle_timer(self, slot: _Slot) -> None:
        # Also forgotten here: a long run reuses connections many times.
        call, slot.idle_call = slot.idle_call, None
        if call is not None:
            self._timers.discard(call)
            if call.active():
                call.cancel()

    def _track(self, d: Deferred[Any]) -> None:
        self._active.add(d)

        def done(result: object) -> object:
            self._active.discard(d)
            return result

        d.addBoth(done)

    # -- running one job ---------------------------------------------------------------

    async def _open_slot(self) -> _Slot:
        connection = self._new_connection()
        self._opened += 1
        number = self._opened
        self._connecting.add(connection)
        try:
            await connection.connect()
            if self._auth is not None:
                await connection.login(self._auth)
        except BaseException:
            connection.close()
            raise
        finally:
            self._connecting.discard(connection)
        slot = _Slot(connection, number)
        self._slots.add(slot)
        connection.on("end", lambda: self._forget(slot))
        return slot

    def _forget(self, slot: _Slot) -> None:
        """The connection is gone (quit, or the server closed it while idle)."""
        self._slots.discard(slot)
        if slot in self._idle:
            self._idle.remove(slot)
        self._stop_idle_timer(slot)
        if not self._closed:
            self._pump()

    async def _run(self, job: _Job, slot: _Slot | None) -> None:
        job.attempts += 1
        job.connection = 0 if slot is None else slot.number
        reserved = [True]

        def started() -> None:
            if reserved:
                reserved.clear()
                self._rate.started()

        try:
            if slot is None:
                slot = await self._open_slot()
                slot.in_flight += 1
                job.connection = slot.number
            message = job.replay() if (job.replay is not None and job.attempts > 1) else job.message
            info = await slot.connection._send_reporting(job.envelope, message, started)
        except SMTPConnectionError as error:
            if slot is not None and error.closes_connection:
                slot.broken = True
            self._release(slot)
            self._after_failure(job, error)
        except BaseException as error:
            self._release(slot)
            job.fail(error)
        else:
            slot.sent += 1
            self._release(slot)
            job.succeed(info)
        if reserved:
            # It ended before its MAIL was written: the place is free again.
            self._rate.release()
        self._pump()

    def _after_failure(self, job: _Job, error: SMTPConnectionError) -> None:
        retryable = (
            error.is_transient
            and not error.delivery_unknown
            and job.replay is not None
            and job.attempts <= self._max_retries
            and not self._closed
        )
        if not retryable:
            job.fail(error)
            return
        job.last_error = error
        delay = min(self._retry_delay * 2 ** (job.attempts - 1), self._max_retry_delay)

        def requeue() -> None:
            self._retrying.discard(job)
            self._waiting.appendleft(job)
            self._pump()

        # close() cancels the timer and fails the job with its last error.
        self._retrying.add(job)
        self._call_later(delay, requeue)

    def _release(self, slot: _Slot | None) -> None:
        """Put a connection back, or retire it when it is spent or broken."""
        if slot is None:
            return
        slot.in_flight -= 1
        if slot.in_flight > 0:
            # Its other send is still running; that one's release decides.
            return
        spent = slot.sent >= self._max_messages
        if slot.broken or spent or self._closed or slot.connection.state is not State.READY:
            self._track(self._retire(slot))
            return
        slot.idle_call = self._call_later(self._idle_timeout, lambda: self._expire(slot))
        self._idle.append(slot)

    def _expire(self, slot: _Slot) -> None:
        if slot in self._idle:
            self._idle.remove(slot)
            self._track(self._retire(slot))

    def _retire(self, slot: _Slot) -> Deferred[None]:
        slot.retired = True
        self._stop_idle_timer(slot)
        d = slot.connection.quit()
        d.addErrback(lambda _: slot.connection.close())
        return d

    def send_message(
        self,
        message: object,
        *,
        mail_from: str | None = None,
        rcpt_to: str | list[str] | None = None,
        **envelope_options: Any,
    ) -> Deferred[SendInfo]:
        """
        Send an ``email.message.Message`` (or ``str``/``bytes``) through the
        pool: same arguments and result as
        :meth:`SMTPConnection.send_message`.
        """
        try:
            envelope, parsed = headers_envelope(
                message, mail_from=mail_from, rcpt_to=rcpt_to, envelope_options=envelope_options
            )
        except (SMTPConnectionError, TypeError, ValueError) as error:
            return fail(error)
        return self.send(envelope, parsed)


def _unwrap(trace: SendTrace) -> SendInfo:
    if trace.info is not None:
        return trace.info
    assert trace.error is not None
    raise trace.error
