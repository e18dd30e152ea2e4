"""
The queue concern of ``smtpsend``: a worker (``--queue URL``) that takes
mail from RabbitMQ and delivers it through one :class:`SMTPPool`, and the
producer (``enqueue``) that puts mail there.

The worker's promise is at-least-once delivery with nothing lost: a message
leaves the queue (is acknowledged) only once its fate is settled and
recorded, and every way out of the queue is another durable queue or a
result record:

==========================================  =================================
what happened                               what the worker does
==========================================  =================================
every recipient accepted (final 2xx)        ack (``sent``)
some recipients refused for good (5xx)      ack (``partial``); refusals per
                                            recipient in the record
4xx for some recipients                     the others are done; a copy for
                                            the 4xx ones goes to the delay
                                            queue (``retry``) while retries
                                            last
everything refused for good (5xx)           ack (``refused``)
4xx, or the connection broke before the     copy to ``Q.retry.N`` (TTL, then
final dot                                   back to ``Q``), ack (``retry``);
                                            after ``--retries``: ``Q.dead``
final dot sent, no reply                    copy to ``Q.review`` (never
(``delivery_unknown``)                      retried automatically), ack
malformed (no envelope, bad header table)   copy to ``Q.dead`` with the
                                            reason, ack (``dead``)
no SMTP connection could be made (TLS,      held for a pause that grows,
AUTH...: the worker's trouble, not the      then nack with requeue (not an
message's)                                  attempt)
stopping (SIGTERM, Ctrl-C)                  not started: nack with requeue;
                                            cut after the final dot: review
==========================================  =================================

A copy is published (with publisher confirms) *before* the ack, so a crash
between the two leaves the message in both places -- a possible duplicate,
never a loss.  Acks go only to the channel the message came on: after a
lost broker connection the old delivery tags are dead and the broker
redelivers those messages; a redelivered message whose first delivery has
already settled here (same ``message_id``) is not sent again, and one whose
first delivery is still in flight waits for it.

The prefetch is the pool's window (:data:`._run.WINDOW_PER_CONNECTION` per
connection): the worker never holds more unacknowledged messages than its
connections can work on, so a slow server slows consumption.  Of those, one
per connection is sending; the others wait here, not in the pool, so that
after a lost broker connection they are let go unsent (the broker gives
them again) rather than sent by a worker that cannot acknowledge them.
"""

from __future__ import annotations

import hashlib
import json
import os
import socket
import time
import uuid
from collections import OrderedDict, deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlsplit, urlunsplit

from twisted.internet.defer import CancelledError, Deferred, DeferredList
from twisted.internet.interfaces import IDelayedCall
from twisted.python import usage

from .._amqp import (
    DEFAULT_QUEUE,
    BrokerRefusedError,
    HEADER_ATTEMPTS,
    HEADER_REASON,
    Publisher,
    QueueNames,
    check_url,
    connect,
    declare,
    message_properties,
)
from .._email import headers_envelope
from .._envelope import DSN, Envelope
from .._errors import SMTPConnectionError, TLSError
from .._passwords import PasswordSourceError, read_password
from .._pool import SendTrace, SMTPPool
from ._messages import Job, MessageContent, collect_jobs, load_script, without_bcc_bytes
from ._output import EX_OK, EX_SOFTWARE, EX_TEMPFAIL, EX_UNAVAILABLE, EX_USAGE, Console, Outcome, format_duration

__all__ = [
    "DEFAULT_RETRIES",
    "DEFAULT_RETRY_DELAY",
    "Disposition",
    "Malformed",
    "ParsedMail",
    "QueueConfig",
    "QueueTally",
    "QueueWorker",
    "decide",
    "enqueue_main",
    "parse_mail",
    "queue_config",
    "queue_url",
    "run_worker",
]

#: ``--retries`` in queue mode when not given.
DEFAULT_RETRIES = 3

#: Seconds before the first retry (doubling for each further one).
DEFAULT_RETRY_DELAY = 60.0

#: Longest delay of a retry, seconds.
MAX_RETRY_DELAY = 3600.0

#: Broker reconnection back-off, seconds.
_RECONNECT_MIN, _RECONNECT_MAX = 0.5, 15.0

#: A held message (no SMTP connection possible) waits this long, doubling.
_HOLD_MIN, _HOLD_MAX = 1.0, 30.0

#: How many settled-but-unacknowledged message ids are remembered.
_REMEMBERED = 100_000

#: Seconds the last confirms and acks may take when stopping.
_CLOSE_GRACE = 10.0

# Dispositions: what became of one delivery.
SENT = "sent"
PARTIAL = "partial"
REFUSED = "refused"
RETRY = "retry"
DEAD = "dead"
REVIEW = "review"
REQUEUED = "requeued"
HOLD = "hold"

#: AMQP properties a copy (retry, dead, review) keeps from the original.
_KEPT_PROPERTIES = (
    "content_type", "content_encoding", "correlation_id", "reply_to", "priority", "timestamp", "type", "app_id",
)

#: Dispositions after which the mail must never be sent again.
_FINAL = frozenset({SENT, PARTIAL, REFUSED, REVIEW})


class Malformed(ValueError):
    """A queue message that cannot be a mail; the text is the reason."""


@dataclass(frozen=True)
class QueueConfig:
    """The worker's settings, checked."""

    url: str
    names: QueueNames
    retries: int
    retry_delay: float
    grace: float
    worker_id: str
    prefetch: int
    connections: int

    def delay(self, number: int) -> float:
        """Seconds the ``number``-th retry waits."""
        return float(min(self.retry_delay * 2 ** (number - 1), MAX_RETRY_DELAY))


def queue_url(options: Mapping[str, Any]) -> str:
    """
    ``--queue``, checked, with the password of ``--queue-password-file`` or
    ``--queue-password-env`` put in (the command line is visible to every
    user of the machine, so the password is better kept out of it).

    :raises usage.UsageError: for a bad URL or password source.
    """
    try:
        url = check_url(options["queue"])
    except ValueError as e:
        raise usage.UsageError(f"--queue: {e}") from None
    path, variable = options.get("queue-password-file"), options.get("queue-password-env")
    if path is not None and variable is not None:
        raise usage.UsageError("give --queue-password-file or --queue-password-env, not both")
    try:
        password = read_password(path, variable)
    except PasswordSourceError as e:
        raise usage.UsageError(str(e)) from None
    if password is None:
        return url
    parts = urlsplit(url)
    if parts.password is not None:
        raise usage.UsageError("--queue has a password in the URL already; give it in one place")
    user, _, host = parts.netloc.rpartition("@")
    if not user:
        raise usage.UsageError("a queue password needs a user in the URL: amqp://USER@HOST:PORT/VHOST")
    return urlunsplit(parts._replace(netloc=f"{user}:{quote(password, safe='')}@{host}"))


def queue_config(options: Mapping[str, Any], *, retries: int | None, connections: int, window: int, grace: float) -> QueueConfig:
    """
    The worker's settings from the parsed options.

    :param retries: ``--retries`` as given (``None``: the queue default).
    :param grace: the grace period unless ``--grace`` is given.
    :raises usage.UsageError: for a bad URL, name or delay.
    """
    url = queue_url(options)
    name = options.get("queue-name") or DEFAULT_QUEUE
    if any(c.isspace() for c in name) or len(name.encode()) > 200:
        raise usage.UsageError(f"--queue-name: not a usable queue name: {name!r}")
    delay = options.get("retry-delay")
    delay = DEFAULT_RETRY_DELAY if delay is None else delay
    if not 0 < delay <= MAX_RETRY_DELAY:
        raise usage.UsageError(f"--retry-delay must be more than 0 and at most {MAX_RETRY_DELAY:.0f} seconds")
    given_grace = options.get("grace")
    if given_grace is not None:
        if not 0 < given_grace <= MAX_RETRY_DELAY:
            raise usage.UsageError(f"--grace must be more than 0 and at most {MAX_RETRY_DELAY:.0f} seconds")
        grace = float(given_grace)
    worker = options.get("worker-id") or f"{socket.gethostname()}:{os.getpid()}"
    return QueueConfig(
        url=url,
        names=QueueNames(name),
        retries=DEFAULT_RETRIES if retries is None else retries,
        retry_delay=float(delay),
        grace=grace,
        worker_id=worker,
        prefetch=connections * window,
        connections=connections,
    )


# -- the message format ---------------------------------------------------------------


def _text(value: object, what: str) -> str:
    if isinstance(value, bytes):
        try:
            return value.decode("utf-8")
        except UnicodeDecodeError:
            raise Malformed(f"{what} is not UTF-8") from None
    if not isinstance(value, str):
        raise Malformed(f"{what} must be a string, not {type(value).__name__}")
    return value


@dataclass(frozen=True)
class ParsedMail:
    """A queue message understood: what to send, and how to call it."""

    message_id: str
    envelope: Envelope
    data: bytes
    explicit_rcpt: bool


def parse_mail(body: bytes, headers: Mapping[str, Any] | None, message_id: str | None) -> ParsedMail:
    """
    The envelope and bytes of one queue message (see :mod:`.._amqp` for
    the format).

    :raises Malformed: with the reason, for anything that cannot be sent.
    """
    if not body:
        raise Malformed("the message body is empty")
    table = dict(headers or {})
    mail_from = None if table.get("mail_from") is None else _text(table["mail_from"], "mail_from")
    rcpt_to: list[str] | None = None
    if table.get("rcpt_to") is not None:
        raw = table["rcpt_to"]
        if isinstance(raw, (str, bytes)):
            raw = [raw]
        if not isinstance(raw, (list, tuple)):
            raise Malformed(f"rcpt_to must be an array of strings, not {type(raw).__name__}")
        rcpt_to = [_text(r, "each rcpt_to") for r in raw]
        if not rcpt_to:
            raise Malformed("rcpt_to is empty")
    options: dict[str, Any] = {}
    if table.get("dsn") is not None:
        dsn = table["dsn"]
        if not isinstance(dsn, Mapping):
            raise Malformed(f"dsn must be a table, not {type(dsn).__name__}")
        unknown = sorted(set(dsn) - {"ret", "envid", "notify", "orcpt"})
        if unknown:
            raise Malformed(f"dsn has unknown key(s): {', '.join(unknown)}")
        def field_value(key: str) -> str | None:
            value = dsn.get(key)
            return None if value is None else _text(value, f"dsn {key}")

        notify = dsn.get("notify")
        try:
            options["dsn"] = DSN(
                ret=field_value("ret"),
                envid=field_value("envid"),
                notify=[_text(n, "dsn notify") for n in notify] if isinstance(notify, (list, tuple)) else field_value("notify"),
                orcpt=field_value("orcpt"),
            )
        except (SMTPConnectionError, TypeError, ValueError) as e:
            raise Malformed(f"dsn: {e}") from None
    data = body
    if not body.isascii():
        options["use_8bit_mime"] = True
    try:
        envelope, parsed = headers_envelope(body, mail_from=mail_from, rcpt_to=rcpt_to, envelope_options=options)
    except (SMTPConnectionError, TypeError, ValueError) as e:
        raise Malformed(f"no usable envelope: {e}") from None
    if rcpt_to is None and parsed.get("Bcc") is not None:
        data = without_bcc_bytes(body)
    mid = message_id or f"sha1:{hashlib.sha1(body).hexdigest()}"
    return ParsedMail(message_id=mid, envelope=envelope, data=data, explicit_rcpt=rcpt_to is not None)


# -- deciding ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Disposition:
    """
    What to do with one delivery after its send settled.

    :ivar kind: one of the disposition names above.
    :ivar reason: why (for dead, review, retry and hold), else ``None``.
    :ivar retry_rcpt: for a retry: the recipients to try again.
    """

    kind: str
    reason: str | None = None
    retry_rcpt: tuple[str, ...] = ()


def _transient(code: int | None) -> bool:
    return code is not None and 400 <= code < 500


def decide(trace: SendTrace, *, attempts: int, retries: int, stopping: bool, aborted: bool) -> Disposition:
    """
    The fate of a mail whose send settled with ``trace``.

    :param attempts: delivery attempts including this one.
    :param retries: how many retries are allowed after the first attempt.
    :param stopping: the worker is stopping (a send never started is put back).
    :param aborted: the grace period ended and the connections were cut.
    """
    can_retry = attempts <= retries
    info = trace.info
    if info is not None:
        if not info.rejected:
            return Disposition(SENT)
        again = tuple(e.recipient for e in info.rejected_errors if e.recipient and _transient(e.response_code))
        if again and can_retry:
            return Disposition(PARTIAL, "some recipients were refused for now", again)
        return Disposition(PARTIAL)
    error = trace.error
    assert error is not None
    if trace.attempts == 0:
        if stopping:
            return Disposition(REQUEUED, "the worker stopped before sending it")
        return Disposition(DEAD, f"refused before sending: {error}")
    if not isinstance(error, SMTPConnectionError):
        return Disposition(DEAD, f"internal error while sending: {type(error).__name__}: {error}")
    if error.delivery_unknown:
        return Disposition(
            REVIEW,
            f"the whole message was sent but no reply came ({error}); the server may have it: "
            "not retried automatically",
        )
    if aborted:
        return Disposition(REQUEUED, "cut off when the worker stopped, before the final dot")
    if error.rejected_errors:
        again = tuple(e.recipient for e in error.rejected_errors if e.recipient and _transient(e.response_code))
        if not again:
            return Disposition(REFUSED, str(error))
        if can_retry:
            return Disposition(RETRY, str(error), again)
        return Disposition(DEAD, f"gave up after {attempts} attempt(s): {error}")
    if error.code == "ESTREAM":
        return Disposition(DEAD, f"the message could not be read: {error}")
    code = error.response_code
    if code is not None and code >= 500:
        return Disposition(REFUSED, str(error))
    if trace.connection == 0 and not error.is_transient:
        # TLS, AUTH...: nothing to do with this message.
        return Disposition(HOLD, f"no SMTP connection: {error}")
    if can_retry:
        return Disposition(RETRY, str(error))
    return Disposition(DEAD, f"gave up after {attempts} attempt(s): {error}")


# -- the worker -------------------------------------------------------------------------


@dataclass(eq=False)
class _Delivery:
    """One message as the broker delivered it, until it is acked or nacked."""

    channel: Any
    tag: int
    generation: int
    properties: Any
    body: bytes
    redelivered: bool
    received: float
    parsed: ParsedMail | None = None
    done: Deferred[None] = field(default_factory=Deferred)

    @property
    def headers(self) -> dict[str, Any]:
        return dict(getattr(self.properties, "headers", None) or {})

    @property
    def attempts_before(self) -> int:
        value = self.headers.get(HEADER_ATTEMPTS, 0)
        return value if isinstance(value, int) and value >= 0 else 0


@dataclass
class QueueTally:
    """Counts per disposition, for the progress and summary lines."""

    counts: dict[str, int] = field(default_factory=lambda: dict.fromkeys(
        (SENT, PARTIAL, REFUSED, RETRY, DEAD, REVIEW, REQUEUED, HOLD), 0
    ))

    def line(self) -> str:
        c = self.counts
        return (
            f"{c[SENT]} sent, {c[PARTIAL]} partly refused, {c[REFUSED]} refused, {c[RETRY]} to retry, "
            f"{c[DEAD]} dead-lettered, {c[REVIEW]} to review, {c[REQUEUED] + c[HOLD]} put back"
        )


class QueueWorker:
    """
    Consume ``config.names.queue`` and deliver through ``pool`` until
    :meth:`stop`; see the module docstring for the rules.

    :param record: called with every result record (a JSON-able dict), as
        it is published: the ``--report`` file and the console.
    :param notice: a line for the user (broker lost, reconnected...).
    """

    def __init__(
        self,
        reactor: Any,
        pool: SMTPPool,
        config: QueueConfig,
        *,
        record: Callable[[dict[str, Any]], None],
        notice: Callable[[str], None],
        info: Callable[[str], None],
    ) -> None:
        self._reactor = reactor
        self._pool = pool
        self._config = config
        self._record = record
        self._notice = notice
        self._info = info
        self.tally = QueueTally()
        self._stopping = False
        self._aborted = False
        self._generation = 0
        self._channel: Any = None
        self._connection: Any = None
        self._consumer: tuple[Any, str] | None = None
        self._wake: Deferred[None] | None = None
        self._session: Deferred[None] | None = None
        self._pending: set[_Delivery] = set()
        self._inflight: dict[str, list[_Delivery]] = {}
        self._buffer: deque[_Delivery] = deque()
        self._sending = 0
        self._settled: OrderedDict[str, tuple[Disposition, dict[str, Any]]] = OrderedDict()
        self._holds: dict[_Delivery, IDelayedCall] = {}
        self._hold_delay = _HOLD_MIN
        self._count = 0
        #: Why the worker gave up, if it did (see :meth:`run`).
        self.fatal: str | None = None
        self.stopped: Deferred[None] = Deferred()

    @property
    def stopping(self) -> bool:
        """:meth:`stop` was called."""
        return self._stopping

    # -- the broker connection ---------------------------------------------------

    async def run(self) -> None:
        """
        Consume until :meth:`stop`, reconnecting to the broker as needed.

        Before the first successful connection, a broker that refuses the
        login or whose certificate is not trusted ends the run (:attr:`fatal`
        says why): that is a setting to fix, not an outage to wait out.
        """
        delay = _RECONNECT_MIN
        lost_once = False
        try:
            while not self._stopping:
                self._session = Deferred.fromCoroutine(self._consume(lost_once))
                try:
                    await self._session
                    delay = _RECONNECT_MIN
                except CancelledError:
                    break
                except Exception as e:
                    if self.stopping:
                        break
                    if self._generation == 0 and isinstance(e, (BrokerRefusedError, TLSError)):
                        self.fatal = f"broker {self._where()}: {_describe(e)}"
                        self._notice(self.fatal)
                        break
                    self._notice(f"broker {self._where()}: {_describe(e)}; trying again in {delay:.1f}s")
                else:
                    if self.stopping:
                        break
                    self._notice(f"lost the broker connection ({self._where()}); reconnecting")
                lost_once = True
                await self._sleep(delay)
                delay = min(delay * 2, _RECONNECT_MAX)
            await self._drain()
        finally:
            await self._close_broker()
            self.stopped.callback(None)

    def _where(self) -> str:
        parts = urlsplit(self._config.url)
        return f"{parts.hostname}:{parts.port or 5672}"

    async def _sleep(self, seconds: float) -> None:
        if self._stopping:
            return
        wake: Deferred[None] = Deferred()
        self._wake = wake

        def ring() -> None:
            if not wake.called:
                wake.callback(None)

        call = self._reactor.callLater(seconds, ring)
        try:
            await wake
        finally:
            self._wake = None
            if call.active():
                call.cancel()

    async def _consume(self, reconnecting: bool) -> None:
        """One broker connection: set up, consume until the consumer ends."""
        connection = await connect(self._reactor, self._config.url, timeout=10.0)
        self._connection = connection
        try:
            channel = await connection.channel()
            await declare(channel, self._config.names, retries=self._config.retries)
            await channel.confirm_delivery()
            await channel.basic_qos(prefetch_count=self._config.prefetch)
            queue, tag = await channel.basic_consume(queue=self._config.names.queue, auto_ack=False)
        except BaseException:
            if connection.is_open:
                connection.close()
            raise
        self._generation += 1
        generation = self._generation
        self._channel = channel
        self._consumer = (channel, tag)
        self._info(
            f"smtpsend: worker {self._config.worker_id}: {'reconnected; ' if reconnecting else ''}"
            f"consuming {self._config.names.queue} on {self._where()} (prefetch {self._config.prefetch})"
        )
        while True:
            try:
                item = await queue.get()
            except Exception:
                break  # the consumer was cancelled, or the channel closed
            self._receive(item, generation)
        self._consumer = None
        if not self._stopping:
            # Never started, and no longer acknowledgeable: let them go.
            self._unbuffer(generation=generation)
        if not self._stopping and connection.is_open:
            # The broker cancelled the consumer (the queue was deleted, say):
            # start over on a new connection.
            connection.close()

    async def _close_broker(self) -> None:
        connection, self._connection = self._connection, None
        self._channel = None
        if connection is not None and connection.is_open:
            closed = connection.close()
            if closed is not None:
                timer = self._reactor.callLater(_CLOSE_GRACE, closed.cancel)
                try:
                    await closed
                except Exception:
                    pass
                finally:
                    if timer.active():
                        timer.cancel()

    # -- stopping ----------------------------------------------------------------

    def stop(self) -> None:
        """Stop consuming, finish what is in flight (see :meth:`_drain`)."""
        if self._stopping:
            return
        self._stopping = True
        if self._consumer is not None:
            channel, tag = self._consumer
            try:
                channel.basic_cancel(tag).addErrback(lambda _: None)
            except Exception:
                pass
        elif self._session is not None and not self._session.called:
            self._session.cancel()
        if self._wake is not None and not self._wake.called:
            self._wake.callback(None)
        # Messages not yet on a connection go back to the queue.
        self._unbuffer()
        self._pool.close()
        for delivery, call in list(self._holds.items()):
            call.cancel()
            self._release_hold(delivery)

    async def _drain(self) -> None:
        """Wait for the deliveries in flight; after the grace period, cut them."""
        if self._pending:
            self._info(
                f"smtpsend: worker {self._config.worker_id}: stopping: finishing {len(self._pending)} "
                f"message(s) in flight (at most {self._config.grace:.0f}s)"
            )
        cut = self._reactor.callLater(self._config.grace, self._abort)
        try:
            await self._all_done()
        finally:
            if cut.active():
                cut.cancel()
        closing = self._pool.close()
        quit_cut = self._reactor.callLater(_CLOSE_GRACE, self._pool.abort)
        try:
            await closing
        finally:
            if quit_cut.active():
                quit_cut.cancel()

    def _abort(self) -> None:
        self._aborted = True
        self._pool.abort()

    async def _all_done(self) -> None:
        while self._pending:
            await DeferredList([d.done for d in list(self._pending)], consumeErrors=True)

    # -- one delivery ------------------------------------------------------------

    def _receive(self, item: Any, generation: int) -> None:
        delivery = _Delivery(
            channel=item.channel,
            tag=item.method.delivery_tag,
            generation=generation,
            properties=item.properties,
            body=item.body,
            redelivered=bool(item.method.redelivered),
            received=time.time(),
        )
        self._pending.add(delivery)
        delivery.done.addBoth(lambda _: self._pending.discard(delivery))
        try:
            delivery.parsed = parse_mail(delivery.body, delivery.headers, getattr(item.properties, "message_id", None))
        except Malformed as e:
            self._dispose(delivery, Disposition(DEAD, f"malformed: {e}"), None, attempts=delivery.attempts_before)
            return
        self._start(delivery)

    def _start(self, delivery: _Delivery) -> None:
        parsed = delivery.parsed
        assert parsed is not None
        mid = parsed.message_id
        if self._stopping:
            self._dispose(delivery, Disposition(REQUEUED, "the worker is stopping"), None, attempts=delivery.attempts_before)
            return
        if mid in self._inflight:
            # Redelivered (the broker connection was lost) while the first
            # delivery is still being sent: wait for that one.
            self._inflight[mid].append(delivery)
            return
        earlier = self._settled.pop(mid, None)
        if earlier is not None:
            disposition, record = earlier
            record = dict(record, note="settled before the broker connection was lost; not sent again")
            self._dispose(delivery, disposition, None, attempts=delivery.attempts_before, record=record)
            return
        self._inflight[mid] = []
        self._buffer.append(delivery)
        self._pump()

    def _pump(self) -> None:
        """
        Hand buffered deliveries to the pool, one per connection at a time.

        The prefetch holds a second message per connection here rather than
        in the pool, so that a message whose channel died before it started
        is dropped (the broker gives it again, maybe to another worker)
        instead of being sent by a worker that can no longer acknowledge it.
        """
        while self._buffer and self._sending < self._config.connections and not self._stopping:
            delivery = self._buffer.popleft()
            if delivery.generation != self._generation:
                self._drop(delivery)
                continue
            self._send(delivery)

    def _send(self, delivery: _Delivery) -> None:
        parsed = delivery.parsed
        assert parsed is not None
        self._sending += 1
        started_wall = time.time()
        started = self._reactor.seconds()
        d = self._pool.send_traced(parsed.envelope, parsed.data)
        d.addBoth(self._one_less)
        d.addCallback(self._sent, delivery, started_wall, started)
        d.addErrback(self._crashed, delivery)

    def _one_less(self, result: Any) -> Any:
        self._sending -= 1
        return result

    def _drop(self, delivery: _Delivery) -> None:
        """A delivery never started whose channel is gone: forget it."""
        parsed = delivery.parsed
        assert parsed is not None
        if not delivery.done.called:
            delivery.done.callback(None)
        for later in self._inflight.pop(parsed.message_id, []):
            self._start(later)

    def _unbuffer(self, *, generation: int | None = None) -> None:
        """
        Take back the buffered deliveries (of ``generation``, or all):
        dropped if their channel is gone, else put back on the queue.
        """
        keep: deque[_Delivery] = deque()
        while self._buffer:
            delivery = self._buffer.popleft()
            if generation is not None and delivery.generation != generation:
                keep.append(delivery)
            elif delivery.generation != self._generation or generation is not None:
                self._drop(delivery)
            else:
                assert delivery.parsed is not None
                waiting = self._inflight.pop(delivery.parsed.message_id, [])
                self._dispose(
                    delivery, Disposition(REQUEUED, "the worker stopped before sending it"), None,
                    attempts=delivery.attempts_before,
                )
                for later in waiting:
                    self._start(later)
        self._buffer = keep

    def _sent(self, trace: SendTrace, delivery: _Delivery, started_wall: float, started: float) -> None:
        parsed = delivery.parsed
        assert parsed is not None
        attempts = delivery.attempts_before + (1 if trace.attempts else 0)
        disposition = decide(
            trace,
            attempts=attempts,
            retries=self._config.retries,
            stopping=self._stopping,
            aborted=self._aborted,
        )
        outcome = self._outcome(trace, delivery, started_wall, self._reactor.seconds() - started)
        self._dispose(delivery, disposition, outcome, attempts=attempts)
        if disposition.kind in (SENT,):
            self._hold_delay = _HOLD_MIN
        waiting = self._inflight.pop(parsed.message_id, [])
        for later in waiting:
            self._start(later)
        self._pump()

    def _crashed(self, failure: Any, delivery: _Delivery) -> None:
        # A bug in this module: the message goes back; the worker stops.
        self._notice(f"internal error: {failure.getTraceback()}")
        if delivery.parsed is not None:
            self._inflight.pop(delivery.parsed.message_id, None)
        self._settle_broker(delivery, REQUEUED)
        self.stop()

    def _outcome(self, trace: SendTrace, delivery: _Delivery, started_wall: float, elapsed: float) -> Outcome:
        parsed = delivery.parsed
        assert parsed is not None
        self._count += 1
        job = Job(
            index=self._count,
            source=f"{self._config.names.queue} {parsed.message_id}",
            mail_from=parsed.envelope.mail_from,
            rcpt_to=tuple(parsed.envelope.rcpt_to),
            content=MessageContent(data=parsed.data),
            dsn=parsed.envelope.dsn,
        )
        if trace.info is not None:
            return Outcome.sent(
                job, trace.info, started=started_wall, elapsed=elapsed, connection=trace.connection, attempts=trace.attempts
            )
        assert trace.error is not None
        return Outcome.failed(
            job,
            trace.error,
            connected=trace.connection != 0,
            started=started_wall,
            elapsed=elapsed,
            connection=trace.connection,
            attempts=trace.attempts,
        )

    def _make_record(
        self, delivery: _Delivery, disposition: Disposition, outcome: Outcome | None, *, attempts: int, queue: str | None
    ) -> dict[str, Any]:
        parsed = delivery.parsed
        base: dict[str, Any] = {}
        if outcome is not None:
            base = outcome.as_report()
            for key in ("index", "source", "exit_code", "attempts", "connection", "status"):
                base.pop(key, None)
        elif parsed is not None:
            base = {"from": parsed.envelope.mail_from, "to": list(parsed.envelope.rcpt_to)}
        return {
            "message_id": parsed.message_id if parsed is not None else getattr(delivery.properties, "message_id", None),
            "status": disposition.kind,
            "final": disposition.kind in _FINAL or disposition.kind == DEAD,
            "queue": queue,
            "reason": disposition.reason,
            "retry_rcpt": list(disposition.retry_rcpt),
            "attempts": attempts,
            "redelivered": delivery.redelivered,
            "worker": self._config.worker_id,
            "received": delivery.received,
            "settled": time.time(),
            **base,
        }

    def _copy(self, delivery: _Delivery, disposition: Disposition, attempts: int) -> tuple[str, Any, bytes] | None:
        """The message to publish elsewhere before the ack, if any: (queue, properties, body)."""
        names = self._config.names
        kind = disposition.kind
        if kind not in (RETRY, DEAD, REVIEW) and not (kind == PARTIAL and disposition.retry_rcpt):
            return None
        headers = delivery.headers
        headers[HEADER_ATTEMPTS] = attempts
        headers["x-smtpsend-worker"] = self._config.worker_id
        parsed = delivery.parsed
        body = delivery.body
        # The producer's other properties travel with the message (not
        # user_id: the broker checks it against the publishing user).
        more: dict[str, Any] = {
            name: getattr(delivery.properties, name)
            for name in _KEPT_PROPERTIES
            if getattr(delivery.properties, name, None) is not None
        }
        if kind in (RETRY, PARTIAL):
            assert parsed is not None
            queue = names.retry(attempts)
            more["expiration"] = str(int(self._config.delay(attempts) * 1000))
            if disposition.retry_rcpt and tuple(disposition.retry_rcpt) != tuple(parsed.envelope.rcpt_to):
                # Some recipients are done: the copy names the others, and
                # carries the bytes as sent (a Bcc field already removed).
                headers["rcpt_to"] = list(disposition.retry_rcpt)
                headers["mail_from"] = parsed.envelope.mail_from
                body = parsed.data
        else:
            queue = names.dead if kind == DEAD else names.review
            headers[HEADER_REASON] = disposition.reason or kind
        mid = parsed.message_id if parsed is not None else getattr(delivery.properties, "message_id", None)
        properties = message_properties(mid, headers, **more)
        return queue, properties, body

    def _dispose(
        self,
        delivery: _Delivery,
        disposition: Disposition,
        outcome: Outcome | None,
        *,
        attempts: int,
        record: dict[str, Any] | None = None,
    ) -> None:
        if disposition.kind == HOLD:
            self._hold(delivery, disposition)
            return
        copy = self._copy(delivery, disposition, attempts)
        if record is None:
            record = self._make_record(delivery, disposition, outcome, attempts=attempts, queue=copy[0] if copy else None)
        self.tally.counts[disposition.kind] += 1
        self._record(record)
        Deferred.fromCoroutine(self._publish_and_settle(delivery, disposition, record, copy))

    async def _publish_and_settle(
        self, delivery: _Delivery, disposition: Disposition, record: dict[str, Any], copy: tuple[str, Any, bytes] | None
    ) -> None:
        """
        Publish the result record and the copy, if any, then ack (or nack).

        A copy holds the mail from now on, so the ack waits for its confirm.
        The result record is not the mail: the ack goes right after it
        (same channel, in order) without waiting for its confirm, so that a
        broker lost in between costs at worst a record (``--report`` has it
        too), never a second delivery of the mail.
        """
        channel = delivery.channel
        recorded: Deferred[Any] | None = None
        try:
            if delivery.generation != self._generation or self._channel is not channel or not channel.is_open:
                raise _StaleChannel()
            if disposition.kind != REQUEUED:
                recorded = channel.basic_publish(
                    exchange=self._config.names.results,
                    routing_key="",
                    body=json.dumps(record, ensure_ascii=False).encode("utf-8"),
                    properties=message_properties(
                        str(record.get("message_id") or uuid.uuid4().hex), {}, content_type="application/json"
                    ),
                )
                if copy is not None:
                    queue, properties, body = copy
                    await channel.basic_publish(exchange="", routing_key=queue, body=body, properties=properties)
                    if delivery.generation != self._generation or not channel.is_open:
                        raise _StaleChannel()
            self._settle_broker(delivery, disposition.kind)
        except Exception as e:
            # The channel is gone: the broker will deliver the message again.
            # Remember a final outcome so that it is not sent twice.
            if recorded is not None:
                recorded.addErrback(lambda _: None)
            if not isinstance(e, _StaleChannel) and channel.is_open:
                self._notice(f"could not settle {record.get('message_id')}: {_describe(e)}")
            parsed = delivery.parsed
            if parsed is not None and disposition.kind in _FINAL:
                self._settled[parsed.message_id] = (disposition, record)
                while len(self._settled) > _REMEMBERED:
                    self._settled.popitem(last=False)
            if not delivery.done.called:
                delivery.done.callback(None)
            return
        if recorded is not None:
            try:
                await recorded
            except Exception as e:
                if channel.is_open:
                    self._notice(f"the result record of {record.get('message_id')} was not confirmed: {_describe(e)}")

    def _settle_broker(self, delivery: _Delivery, kind: str) -> None:
        """Ack (or nack with requeue) on the delivery's own channel, once."""
        if delivery.done.called:
            return
        try:
            if delivery.generation == self._generation and delivery.channel.is_open:
                if kind == REQUEUED:
                    delivery.channel.basic_nack(delivery.tag, requeue=True)
                else:
                    delivery.channel.basic_ack(delivery.tag)
        finally:
            delivery.done.callback(None)

    def _hold(self, delivery: _Delivery, disposition: Disposition) -> None:
        """No SMTP connection: keep the message a while, then put it back."""
        self.tally.counts[HOLD] += 1
        delay = self._hold_delay
        self._hold_delay = min(self._hold_delay * 2, _HOLD_MAX)
        self._notice(f"{disposition.reason}; putting the message back in {delay:.0f}s")
        self._holds[delivery] = self._reactor.callLater(delay, self._release_hold, delivery)

    def _release_hold(self, delivery: _Delivery) -> None:
        self._holds.pop(delivery, None)
        self._settle_broker(delivery, REQUEUED)


class _StaleChannel(Exception):
    """The delivery's channel is closed: it can be neither acked nor nacked."""


def _describe(error: BaseException) -> str:
    text = str(error) or type(error).__name__
    return f"{type(error).__name__}: {text}" if type(error).__name__ not in text else text


# -- main for --queue -------------------------------------------------------------------


async def run_worker(
    reactor: Any,
    pool: SMTPPool,
    config: QueueConfig,
    out: Console,
    report: Any,
    *,
    verbose: bool,
) -> int:
    """
    Run a worker until SIGTERM or Ctrl-C (a "before shutdown" trigger), then
    print the summary line; 0 after a graceful stop, 69 if the broker
    refused the login or its certificate at the start.
    """
    started = reactor.seconds()
    worker: QueueWorker

    def record(result: dict[str, Any]) -> None:
        if report is not None:
            report.write_record(result)
        kind = result["status"]
        line = f"smtpsend: [{config.worker_id}] {kind} {result.get('message_id')}"
        if result.get("reason"):
            line += f": {result['reason']}"
        if kind in (DEAD, REVIEW, REFUSED, PARTIAL):
            out.problem(line)
        elif verbose:
            out.info(line)
        if out.interactive:
            elapsed = reactor.seconds() - started
            done = worker.tally.counts[SENT] + worker.tally.counts[PARTIAL]
            out.status(f"{worker.tally.line()}  {done / elapsed if elapsed > 0 else 0:.1f} msg/s")

    worker = QueueWorker(
        reactor,
        pool,
        config,
        record=record,
        notice=lambda text: out.problem(f"smtpsend: [{config.worker_id}] {text}"),
        info=out.info,
    )
    held: list[Deferred[None]] = []

    def before_shutdown() -> Deferred[None]:
        out.info(f"smtpsend: worker {config.worker_id}: stopping")
        worker.stop()
        d: Deferred[None] = Deferred()
        held.append(d)
        return d

    trigger = reactor.addSystemEventTrigger("before", "shutdown", before_shutdown)
    try:
        await worker.run()
    finally:
        if held:
            for d in held:
                reactor.callLater(0, d.callback, None)
        else:
            reactor.removeSystemEventTrigger(trigger)
    elapsed = reactor.seconds() - started
    done = worker.tally.counts[SENT] + worker.tally.counts[PARTIAL]
    status = EX_OK if worker.fatal is None else EX_UNAVAILABLE
    out.info(
        f"smtpsend: worker {config.worker_id}: {worker.tally.line()}; "
        f"{format_duration(elapsed)}, {done / elapsed if elapsed > 0 else 0:.1f} msg/s; exit status {status}"
    )
    return status


# -- the producer: enqueue --------------------------------------------------------------


async def enqueue_main(reactor: Any, options: Mapping[str, Any], out: Console, stdin: Any = None) -> int:
    """
    ``python -m twisted_smtpconn enqueue --queue URL ...``: put every
    message of the send mode's sources on the queue, each confirmed by the
    broker; 0 when all were, 75 if the broker could not take them.
    """
    try:
        url = queue_url(options)
        script = load_script(Path(options["script"])) if options.get("script") else None
        jobs = collect_jobs(options, script, stdin=stdin)
    except usage.UsageError as e:
        out.usage_error(f"smtpsend enqueue: {e}")
        return EX_USAGE
    name = options.get("queue-name") or DEFAULT_QUEUE
    started = reactor.seconds()
    try:
        publisher = await Publisher.open(reactor, url, name)
    except (BrokerRefusedError, TLSError) as e:
        out.problem(f"smtpsend enqueue: {_describe(e)}")
        return EX_UNAVAILABLE
    except Exception as e:
        out.problem(f"smtpsend enqueue: cannot reach the broker: {_describe(e)}")
        return EX_TEMPFAIL
    confirmed = 0
    try:
        window: list[Deferred[str]] = []
        for job in jobs:
            with job.content.open() as stream:
                body = stream.read()
            d = publisher.publish(body, mail_from=job.mail_from, rcpt_to=list(job.rcpt_to), dsn=job.dsn)
            if options.get("verbose"):

                def say(mid: str, source: str = job.source) -> str:
                    out.info(f"smtpsend enqueue: {source}: {mid}")
                    return mid

                d.addCallback(say)
            window.append(d)
            if len(window) >= 500:
                for pending in window:
                    await pending
                    confirmed += 1
                window = []
        for pending in window:
            await pending
            confirmed += 1
    except Exception as e:
        out.problem(f"smtpsend enqueue: {confirmed} of {len(jobs)} confirmed, then: {_describe(e)}")
        return EX_TEMPFAIL
    finally:
        try:
            await publisher.close()
        except Exception:
            pass
    elapsed = reactor.seconds() - started
    out.info(f"smtpsend enqueue: {confirmed} message(s) queued on {name} (confirmed by the broker) in {elapsed:.1f}s")
    return EX_OK if confirmed == len(jobs) else EX_SOFTWARE

