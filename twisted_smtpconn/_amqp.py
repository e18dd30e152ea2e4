"""
Mail on a RabbitMQ queue: the message format, the names, the connection,
and :func:`enqueue`.

One AMQP message is one mail.  The format is fixed, because producers in
other languages write it and other programs read the queues:

* the body is the RFC 5322 message, bytes, delivered unchanged;
* the ``headers`` table may carry ``mail_from`` (a string), ``rcpt_to`` (an
  array of strings) and ``dsn`` (a table with the keys of :class:`DSN`:
  ``ret``, ``envid``, ``notify``, ``orcpt``); without ``mail_from`` /
  ``rcpt_to`` the envelope comes from the message's own fields, as
  :meth:`SMTPConnection.send_message` takes it (and ``Bcc:`` is then
  removed before sending);
* the ``message_id`` property names the mail in the result records.

For the queue ``Q`` (default ``smtpsend``) there are: ``Q.dead`` (malformed
messages, and those whose retries ran out), ``Q.review`` (sent up to the
final dot with no reply: they may have been delivered), ``Q.results`` (a
fanout exchange of JSON result records) and ``Q.retry.N`` (the delay queue
of the N-th retry: a message waits there for its per-message TTL, then is
dead-lettered back to ``Q``).  Every queue is durable and every message
persistent.

pika (the ``queue`` extra) is imported only when a function here is called,
so that the rest of the library does not need it.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from twisted.internet.defer import Deferred
from twisted.internet.endpoints import HostnameEndpoint, connectProtocol

from ._envelope import DSN

if TYPE_CHECKING:
    from pika.adapters.twisted_connection import TwistedChannel, TwistedProtocolConnection

__all__ = [
    "DEFAULT_QUEUE",
    "HEADER_ATTEMPTS",
    "HEADER_REASON",
    "QueueNames",
    "Publisher",
    "check_url",
    "connect",
    "declare",
    "enqueue",
    "mail_headers",
    "message_properties",
]

#: The queue name when none is given.
DEFAULT_QUEUE = "smtpsend"

#: How many delivery attempts a message has had (set on every retry).
HEADER_ATTEMPTS = "x-smtpsend-attempts"

#: Why a message is on the dead-letter or review queue.
HEADER_REASON = "x-smtpsend-reason"

_INSTALL = "the queue needs pika: pip install 'twisted_smtpconn[queue]'"


def _pika() -> Any:
    try:
        import pika
        import pika.adapters.twisted_connection
    except ImportError:  # pragma: no cover - the queue extra is installed in CI
        raise RuntimeError(_INSTALL) from None
    return pika


@dataclass(frozen=True)
class QueueNames:
    """The names derived from one queue name (see the module docstring)."""

    queue: str = DEFAULT_QUEUE

    @property
    def dead(self) -> str:
        return f"{self.queue}.dead"

    @property
    def review(self) -> str:
        return f"{self.queue}.review"

    @property
    def results(self) -> str:
        return f"{self.queue}.results"

    def retry(self, number: int) -> str:
        """The delay queue of the ``number``-th retry (from 1)."""
        return f"{self.queue}.retry.{number}"


def check_url(url: str) -> str:
    """
    ``url`` if it is an ``amqp://`` URL this module can use.

    :raises ValueError: with a message naming the problem.
    """
    parts = urlsplit(url)
    if parts.scheme == "amqps":
        raise ValueError("amqps:// (AMQP over TLS) is not supported yet; use amqp:// on a trusted network")
    if parts.scheme != "amqp":
        raise ValueError(f"the queue URL must start with amqp://, not {url!r}")
    if not parts.hostname:
        raise ValueError(f"the queue URL names no host: {url!r}")
    try:
        parts.port
    except ValueError:
        raise ValueError(f"the queue URL has a bad port: {url!r}") from None
    return url


async def connect(reactor: Any, url: str, *, timeout: float = 30.0) -> TwistedProtocolConnection:
    """
    Open an AMQP connection to ``url`` and wait until it is ready.

    :raises Exception: whatever connecting or the AMQP handshake raised.
    """
    pika = _pika()
    check_url(url)
    parameters = pika.URLParameters(url)
    endpoint = HostnameEndpoint(reactor, parameters.host, parameters.port, timeout=timeout)
    connection = pika.adapters.twisted_connection.TwistedProtocolConnection(parameters, custom_reactor=reactor)
    await connectProtocol(endpoint, connection)  # type: ignore[no-untyped-call]
    ready = connection.ready
    if ready is not None:
        await ready
    return connection


async def declare(channel: TwistedChannel, names: QueueNames, *, retries: int = 0) -> None:
    """
    Declare the queue, ``.dead``, ``.review``, the ``.results`` exchange and
    the delay queues of ``retries`` retries, all durable (a no-op for those
    that exist with the same settings).
    """
    await channel.queue_declare(queue=names.queue, durable=True)
    await channel.queue_declare(queue=names.dead, durable=True)
    await channel.queue_declare(queue=names.review, durable=True)
    await channel.exchange_declare(exchange=names.results, exchange_type="fanout", durable=True)
    for number in range(1, retries + 1):
        await channel.queue_declare(
            queue=names.retry(number),
            durable=True,
            arguments={"x-dead-letter-exchange": "", "x-dead-letter-routing-key": names.queue},
        )


def _dsn_table(dsn: DSN | Mapping[str, Any] | None) -> dict[str, Any] | None:
    if dsn is None:
        return None
    if not isinstance(dsn, DSN):
        dsn = DSN(**dict(dsn))
    table: dict[str, Any] = {}
    if dsn.ret is not None:
        table["ret"] = dsn.ret
    if dsn.envid is not None:
        table["envid"] = dsn.envid
    if dsn.notify is not None:
        table["notify"] = list(dsn.notify)
    if dsn.orcpt is not None:
        table["orcpt"] = dsn.orcpt
    return table or None


def mail_headers(
    *,
    mail_from: str | None = None,
    rcpt_to: str | Iterable[str] | None = None,
    dsn: DSN | Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """The AMQP ``headers`` table of the message format for this envelope."""
    headers: dict[str, Any] = {}
    if mail_from is not None:
        headers["mail_from"] = mail_from
    if rcpt_to is not None:
        headers["rcpt_to"] = [rcpt_to] if isinstance(rcpt_to, str) else list(rcpt_to)
    table = _dsn_table(dsn)
    if table is not None:
        headers["dsn"] = table
    return headers


def message_properties(message_id: str | None, headers: Mapping[str, Any], **more: Any) -> Any:
    """pika's ``BasicProperties`` for a persistent mail message (``more``: other properties)."""
    pika = _pika()
    settings: dict[str, Any] = {"delivery_mode": 2, "content_type": "message/rfc822", **more}
    return pika.BasicProperties(message_id=message_id, headers=dict(headers), **settings)


def _as_bytes(message: object) -> bytes:
    if isinstance(message, bytes):
        return message
    if isinstance(message, str):
        return message.encode("utf-8")
    as_bytes = getattr(message, "as_bytes", None)
    if callable(as_bytes):
        data = as_bytes()
        if isinstance(data, bytes):
            return data
    raise TypeError(f"message must be bytes, str or an email message, not {type(message).__name__}")


class Publisher:
    """
    One AMQP connection and channel in confirm mode, for publishing mail
    to one queue: each :meth:`publish` fires once the broker has the
    message (persisted, for a durable queue), or fails.
    """

    def __init__(self, connection: TwistedProtocolConnection, channel: TwistedChannel, names: QueueNames) -> None:
        self._connection = connection
        self._channel = channel
        self.names = names

    @classmethod
    async def open(cls, reactor: Any, url: str, queue_name: str = DEFAULT_QUEUE) -> Publisher:
        """Connect, declare the queue (durable) and turn on publisher confirms."""
        connection = await connect(reactor, url)
        try:
            channel = await connection.channel()
            names = QueueNames(queue_name)
            await channel.queue_declare(queue=names.queue, durable=True)
            await channel.confirm_delivery()
        except BaseException:
            connection.close()
            raise
        return cls(connection, channel, names)

    def publish(
        self,
        message: object,
        *,
        mail_from: str | None = None,
        rcpt_to: str | Iterable[str] | None = None,
        dsn: DSN | Mapping[str, Any] | None = None,
        message_id: str | None = None,
    ) -> Deferred[str]:
        """
        Publish one mail (persistent, ``mandatory``: a message no queue
        takes fails rather than vanishing).

        :returns: a Deferred firing with the message id once the broker
            confirmed it.
        """
        body = _as_bytes(message)
        mid = message_id if message_id is not None else uuid.uuid4().hex
        properties = message_properties(mid, mail_headers(mail_from=mail_from, rcpt_to=rcpt_to, dsn=dsn))
        d: Deferred[Any] = self._channel.basic_publish(
            exchange="", routing_key=self.names.queue, body=body, properties=properties, mandatory=True
        )
        return d.addCallback(lambda _: mid)

    async def close(self) -> None:
        """Close the connection (after the confirms already received)."""
        if self._connection.is_open:
            closed = self._connection.close()
            if closed is not None:
                await closed


def enqueue(
    url: str,
    message: object,
    *,
    mail_from: str | None = None,
    rcpt_to: str | Iterable[str] | None = None,
    dsn: DSN | Mapping[str, Any] | None = None,
    message_id: str | None = None,
    queue_name: str = DEFAULT_QUEUE,
    reactor: Any = None,
) -> Deferred[str]:
    """
    Put one mail on the RabbitMQ queue that ``smtpsend --queue`` workers
    consume, and say so only once the broker has it (publisher confirms).

    :param url: ``amqp://USER:PASS@HOST:PORT/VHOST``.
    :param message: the RFC 5322 message: bytes (sent unchanged), ``str``
        (UTF-8) or an ``email.message.Message``.
    :param mail_from: the envelope sender; ``None``: the worker takes it
        from the message's fields.
    :param rcpt_to: the envelope recipients; ``None``: from To/Cc/Bcc.
    :param dsn: DSN parameters (a :class:`DSN` or its keywords).
    :param message_id: names the mail in the result records (default: a
        new random id).
    :param queue_name: the queue (declared durable if it does not exist).
    :returns: a Deferred firing with the message id, or failing if the
        broker could not be reached or refused the message.
    """
    if reactor is None:
        from twisted.internet import reactor as default_reactor

        reactor = default_reactor

    async def run() -> str:
        body = _as_bytes(message)
        headers = mail_headers(mail_from=mail_from, rcpt_to=rcpt_to, dsn=dsn)  # checks the DSN first
        del headers
        publisher = await Publisher.open(reactor, url, queue_name)
        try:
            return await publisher.publish(
                body, mail_from=mail_from, rcpt_to=rcpt_to, dsn=dsn, message_id=message_id
            )
        finally:
            await publisher.close()

    return Deferred.fromCoroutine(run())
