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

import functools
import uuid
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from twisted.internet.defer import Deferred
from twisted.internet.endpoints import HostnameEndpoint, connectProtocol, wrapClientTLS
from twisted.internet.protocol import connectionDone
from twisted.python.failure import Failure

from ._envelope import DSN
from ._errors import TLSError
from ._tls_creator import make_client_creator
from ._tls_settings import TLSSettings, check_tls_settings

if TYPE_CHECKING:
    from pika.adapters.twisted_connection import TwistedChannel, TwistedProtocolConnection

__all__ = [
    "BrokerRefusedError",
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


class BrokerRefusedError(ConnectionError):
    """The broker refused the user, the password or the virtual host."""


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


#: The TLS query parameters of RabbitMQ's ``amqps://`` URI specification
#: that this module reads itself (pika's own parameters pass through).
_TLS_QUERY = {
    "cacertfile": "ca_certs",
    "certfile": "client_cert",
    "keyfile": "client_key",
    "server_name_indication": "servername",
}


@dataclass(frozen=True)
class _Target:
    """A checked queue URL: pika's form of it, and the TLS settings for ``amqps``."""

    pika_url: str
    host: str
    port: int
    tls: TLSSettings | None


def _parse_url(url: str) -> _Target:
    parts = urlsplit(url)
    if parts.scheme not in ("amqp", "amqps"):
        raise ValueError(f"the queue URL must start with amqp:// or amqps://, not {url!r}")
    if not parts.hostname:
        raise ValueError(f"the queue URL names no host: {url!r}")
    try:
        port = parts.port
    except ValueError:
        raise ValueError(f"the queue URL has a bad port: {url!r}") from None
    secure = parts.scheme == "amqps"
    query = parse_qsl(parts.query, keep_blank_values=True)
    tls: TLSSettings | None = None
    if secure:
        given: dict[str, Any] = {}
        rest = []
        for key, value in query:
            if key in _TLS_QUERY:
                given[_TLS_QUERY[key]] = value
            elif key == "verify":
                if value not in ("verify_peer", "verify_none"):
                    raise ValueError(f"the queue URL's verify must be verify_peer or verify_none, not {value!r}")
                given["reject_unauthorized"] = value == "verify_peer"
            else:
                rest.append((key, value))
        query = rest
        try:
            tls = TLSSettings.from_mapping(check_tls_settings(given))
        except (TypeError, ValueError) as e:
            raise ValueError(f"the queue URL's TLS parameters: {e}") from None
    else:
        for key, _ in query:
            if key in _TLS_QUERY or key == "verify":
                raise ValueError(f"the queue URL's {key} is for amqps://")
    port = port if port is not None else (5671 if secure else 5672)
    # pika is given a plain amqp:// URL: the transport (TLS included) is
    # Twisted's, and pika ignores its own TLS settings on it.
    userinfo = parts.netloc.rpartition("@")[0] + "@" if "@" in parts.netloc else ""
    pika_url = urlunsplit(("amqp", userinfo + _host_port(parts.hostname, port), parts.path, urlencode(query), ""))
    return _Target(pika_url=pika_url, host=parts.hostname, port=port, tls=tls)


def _host_port(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def check_url(url: str) -> str:
    """
    ``url`` if it is an ``amqp://`` or ``amqps://`` URL this module can use.

    ``amqps://`` takes RabbitMQ's URI query parameters for TLS:
    ``cacertfile`` (a PEM bundle to trust instead of the system's),
    ``certfile`` and ``keyfile`` (a client certificate),
    ``server_name_indication`` (the name to verify, default the host) and
    ``verify`` (``verify_peer``, the default, or ``verify_none``).

    :raises ValueError: with a message naming the problem.
    """
    _parse_url(url)
    return url


async def connect(reactor: Any, url: str, *, timeout: float = 30.0) -> TwistedProtocolConnection:
    """
    Open an AMQP connection to ``url`` and wait until it is ready (over
    TLS for ``amqps://``, the certificate verified as for SMTP).

    :raises Exception: whatever connecting, TLS or the AMQP handshake raised.
    """
    pika = _pika()
    target = _parse_url(url)
    parameters = pika.URLParameters(target.pika_url)
    endpoint: Any = HostnameEndpoint(reactor, target.host, target.port, timeout=timeout)
    if target.tls is not None:
        endpoint = wrapClientTLS(make_client_creator(target.tls, target.host), endpoint)
    connection = _connection_class()(parameters, custom_reactor=reactor)
    await connectProtocol(endpoint, connection)  # type: ignore[no-untyped-call]
    ready = connection.ready
    if ready is not None:
        try:
            await ready
        except Exception as e:
            # pika reports every failed handshake as "AMQPConnectionError: 1";
            # say what it was.
            lost = connection.lost_reason
            if lost is not None and isinstance(lost.value, TLSError):
                raise lost.value from None
            why = connection.failed_reason or (lost.value if lost is not None else None)
            refused = (
                pika.exceptions.AuthenticationError,
                pika.exceptions.ProbableAuthenticationError,
                pika.exceptions.ProbableAccessDeniedError,
            )
            stage = connection.stage_at_loss
            # pika's handshake states: the login sent, the virtual host asked for.
            start, tune = pika.connection.Connection.CONNECTION_START, pika.connection.Connection.CONNECTION_TUNE
            if isinstance(why, refused) or stage in (start, tune):
                # RabbitMQ closes the connection without a word on a bad
                # login (stage "start") or a virtual host the user may not
                # open ("tune").
                what = "the login" if stage != tune else "access to the virtual host"
                raise BrokerRefusedError(
                    f"{target.host}:{target.port} refused {what} (it closed the connection during the handshake:"
                    " check the user, the password and the virtual host)"
                ) from None
            if why is not None and why is not e:
                raise pika.exceptions.AMQPConnectionError(
                    f"{target.host}:{target.port}: {type(why).__name__}: {why}"
                ) from None
            raise
    return connection


@functools.cache
def _connection_class() -> Any:
    """pika's Twisted protocol, keeping why a connection failed (pika drops it)."""
    pika = _pika()

    base: Any = pika.adapters.twisted_connection.TwistedProtocolConnection

    class _Connection(base):  # type: ignore[misc]
        lost_reason: Failure | None = None
        failed_reason: BaseException | None = None
        stage_at_loss: int | None = None

        def connectionLost(self, reason: Failure = connectionDone) -> None:
            self.lost_reason = reason
            if self.ready is not None:
                # Still in the handshake: which step the broker cut.
                self.stage_at_loss = self._impl.connection_state
            super().connectionLost(reason)

        def _on_connection_failed(self, connection: Any, error: BaseException | None = None) -> None:
            self.failed_reason = error
            super()._on_connection_failed(connection, error)

    return _Connection


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

    :param url: ``amqp://USER:PASS@HOST:PORT/VHOST``, or ``amqps://...``
        for TLS (with RabbitMQ's ``cacertfile``, ``certfile``, ``keyfile``,
        ``server_name_indication`` and ``verify`` query parameters).
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
        broker could not be reached (:class:`TLSError` if its certificate
        was not trusted) or refused the message.
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
