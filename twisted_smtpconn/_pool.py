"""
:class:`SMTPPool`: many messages over a bounded set of reused connections.

The pool exists for the sender of many messages (the ``smtpsend`` plugin,
Buildbot's notifier under load): it keeps up to ``max_connections``
connections, reuses each for up to ``max_messages`` messages, optionally
limits the rate, and retries what failed *before* the server accepted the
message.  It never retries a message the server may already have: a
failure after the final dot was sent (``delivery_unknown``) is reported,
never repeated (RFC 1047), and neither is a permanent (5xx) refusal.
"""

from __future__ import annotations

import io
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from twisted.internet.defer import Deferred, succeed
from twisted.internet.interfaces import IDelayedCall, IReactorTime

from ._auth import Auth, coerce_auth
from ._connection import SMTPConnection
from ._envelope import Envelope, coerce_envelope
from ._errors import ProtocolError, SMTPConnectionError
from ._lifecycle import State
from ._sendinfo import SendInfo
from ._source import check_message

__all__ = ["SMTPPool"]


def _replayable(message: object) -> Callable[[], object] | None:
    """
    A function returning the message afresh for another attempt, or None
    when the message can be read only once (iterators, async iterables and
    unseekable files cannot be retried).
    """
    if isinstance(message, (str, bytes, bytearray, memoryview)):
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


@dataclass(eq=False)
class _Job:
    envelope: Envelope
    message: object
    replay: Callable[[], object] | None
    result: Deferred[SendInfo]
    attempts: int = 0
    last_error: SMTPConnectionError | None = None


@dataclass(eq=False)
class _Slot:
    """One pooled connection and what it has done."""

    connection: SMTPConnection
    sent: int = 0
    idle_call: IDelayedCall | None = None
    broken: bool = False


@dataclass
class _RateLimiter:
    """At most ``limit`` message starts in any ``interval`` seconds."""

    clock: IReactorTime
    limit: int | None
    interval: float
    starts: deque[float] = field(default_factory=deque)

    def delay(self) -> float:
        """Seconds to wait before the next start may happen (0: now)."""
        if self.limit is None:
            return 0.0
        now = self.clock.seconds()
        while self.starts and self.starts[0] <= now - self.interval:
            self.starts.popleft()
        if len(self.starts) < self.limit:
            return 0.0
        return self.starts[0] + self.interval - now

    def record(self) -> None:
        if self.limit is not None:
            self.starts.append(self.clock.seconds())


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
        if reactor is None:
            from twisted.internet import reactor as global_reactor

            reactor = global_reactor
        self._reactor = reactor
        self._clock: IReactorTime = reactor
        self._host = host
        self._port = port
        self._connection_options = dict(connection_options)
        # Build one connection now so that bad options fail here, not later.
        self._new_connection()
        self._auth = coerce_auth(auth) if auth is not None else None
        self._max_connections = max_connections
        self._max_messages = max_messages
        self._idle_timeout = float(idle_timeout)
        self._max_retries = max_retries
        self._retry_delay = float(retry_delay)
        self._max_retry_delay = float(max_retry_delay)
        self._rate = _RateLimiter(self._clock, rate_limit, float(rate_interval))
        self._waiting: deque[_Job] = deque()
        self._idle: list[_Slot] = []
        self._slots: set[_Slot] = set()
        self._opening = 0
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
        if self._closed:
            return _failed(ProtocolError("cannot send: the pool is closed"))
        try:
            checked = coerce_envelope(envelope)
            check_message(message)
        except (SMTPConnectionError, TypeError, ValueError) as error:
            return _failed(error)
        job = _Job(checked, message, _replayable(message), Deferred())
        self._waiting.append(job)
        self._pump()
        return job.result

    def close(self) -> Deferred[None]:
        """
        Stop: fail the messages not yet started, let the running ones finish,
        and QUIT every connection.  Fires when all connections are gone.
        """
        self._closed = True
        while self._waiting:
            self._waiting.popleft().result.errback(ProtocolError("the pool was closed before this message was sent"))
        for timer in list(self._timers):
            if timer.active():
                timer.cancel()
        self._timers.clear()
        quits = [self._retire(slot) for slot in self._idle]
        self._idle.clear()
        from twisted.internet.defer import gatherResults

        pending = [*quits, *self._active]
        return gatherResults(pending, consumeErrors=True).addBoth(lambda _: None) if pending else succeed(None)

    @property
    def open_connections(self) -> int:
        """How many connections are open or opening now."""
        return len(self._slots) + self._opening

    # -- scheduling ----------------------------------------------------------------

    def _pump(self) -> None:
        """Start as many waiting jobs as the limits allow."""
        while self._waiting and not self._closed:
            delay = self._rate.delay()
            if delay > 0:
                self._schedule_pump(delay)
                return
            if self._idle:
                slot = self._idle.pop()
                if slot.idle_call is not None and slot.idle_call.active():
                    slot.idle_call.cancel()
                slot.idle_call = None
            elif self.open_connections < self._max_connections:
                slot = None
            else:
                return
            job = self._waiting.popleft()
            self._rate.record()
            self._track(Deferred.fromCoroutine(self._run(job, slot)))

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

    def _track(self, d: Deferred[Any]) -> None:
        self._active.add(d)

        def done(result: object) -> object:
            self._active.discard(d)
            return result

        d.addBoth(done)

    # -- running one job ---------------------------------------------------------------

    async def _open_slot(self) -> _Slot:
        self._opening += 1
        connection = self._new_connection()
        try:
            await connection.connect()
            if self._auth is not None:
                await connection.login(self._auth)
        except BaseException:
            connection.close()
            raise
        finally:
            self._opening -= 1
        slot = _Slot(connection)
        self._slots.add(slot)
        connection.on("end", lambda: self._forget(slot))
        return slot

    def _forget(self, slot: _Slot) -> None:
        """The connection is gone (quit, or the server closed it while idle)."""
        self._slots.discard(slot)
        if slot in self._idle:
            self._idle.remove(slot)
        if slot.idle_call is not None and slot.idle_call.active():
            slot.idle_call.cancel()
        if not self._closed:
            self._pump()

    async def _run(self, job: _Job, slot: _Slot | None) -> None:
        job.attempts += 1
        try:
            if slot is None:
                slot = await self._open_slot()
            message = job.replay() if (job.replay is not None and job.attempts > 1) else job.message
            info = await slot.connection.send(job.envelope, message)
        except SMTPConnectionError as error:
            if slot is not None and error.closes_connection:
                slot.broken = True
            self._release(slot)
            self._after_failure(job, error)
        except BaseException as error:
            self._release(slot)
            job.result.errback(error)
        else:
            slot.sent += 1
            self._release(slot)
            job.result.callback(info)
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
            job.result.errback(error)
            return
        job.last_error = error
        delay = min(self._retry_delay * 2 ** (job.attempts - 1), self._max_retry_delay)

        def requeue() -> None:
            if self._closed:
                job.result.errback(error)
                return
            self._waiting.appendleft(job)
            self._pump()

        self._call_later(delay, requeue)

    def _release(self, slot: _Slot | None) -> None:
        """Put a connection back, or retire it when it is spent or broken."""
        if slot is None:
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
        if slot.idle_call is not None and slot.idle_call.active():
            slot.idle_call.cancel()
        d = slot.connection.quit()
        d.addErrback(lambda _: slot.connection.close())
        return d


def _failed(error: BaseException) -> Deferred[Any]:
    d: Deferred[Any] = Deferred()
    d.errback(error)
    return d
