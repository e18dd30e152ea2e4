"""
A strictly typed caller of the public API, for ``mypy --strict`` only.

Nothing here runs in the test suite (the name has no ``test_`` prefix); the
file exists so that mypy proves, from the outside, that the public names
carry annotations a typed application can rely on: the result types of the
Deferreds, the attributes after ``connect()``, and the error fields.  Every
assignment to an annotated variable below is a claim mypy checks.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from email.message import EmailMessage
from typing import BinaryIO

from twisted.internet.defer import Deferred, succeed
from twisted.internet.interfaces import IReactorTCP
from twisted.logger import Logger

from twisted_smtpconn import (
    DSN,
    Auth,
    AuthenticationError,
    ConnectionFailedError,
    Envelope,
    EnvelopeError,
    MessageError,
    ProtocolError,
    SendInfo,
    SMTPConnection,
    SMTPConnectionError,
    SMTPPool,
    SMTPTimeoutError,
    SocketError,
    StreamError,
    TLSError,
    enqueue,
    send,
)


class TokenProvider:
    """An XOAUTH2 token provider: a ``user`` and ``get_token(renew)``."""

    user = "me@example.test"

    def __init__(self) -> None:
        self.renewals = 0

    def get_token(self, renew: bool) -> Deferred[str]:
        if renew:
            self.renewals += 1
        return succeed(f"token-{self.renewals}")


def make_connection(reactor: IReactorTCP, log: Logger) -> SMTPConnection:
    return SMTPConnection(
        "smtp.example.test",
        587,
        require_tls=True,
        name="client.example.test",
        connection_timeout=10.0,
        greeting_timeout=5.0,
        socket_timeout=60.0,
        logger=log,
        debug=True,
        auth_method="PLAIN",
        tls={"ca_certs": "/etc/ssl/certs/ca-certificates.crt", "min_version": "TLSv1.2"},
        reactor=reactor,
    )


def make_lmtp_connection(reactor: IReactorTCP) -> SMTPConnection:
    return SMTPConnection("::1", 24, lmtp=True, ignore_tls=True, logger=True, reactor=reactor)


async def chunks() -> AsyncIterator[bytes]:
    yield b"Subject: streamed\r\n\r\n"
    yield b"body\r\n"


def lines() -> Iterator[bytes]:
    yield b"Subject: lines\n\n"
    yield b"body\n"


async def deliver(conn: SMTPConnection, password: str, attachment: BinaryIO) -> list[SendInfo]:
    connected: SMTPConnection = await conn.connect()
    secure: bool = connected.secure
    extensions: dict[str, str] = conn.extensions
    mechanisms: list[str] = conn.auth_methods
    greeting: str = conn.greeting
    print(secure, extensions, mechanisms, greeting)

    logging_in: Deferred[None] = conn.login(Auth(user="me", password=password, method="PLAIN"))
    await logging_in
    await conn.login({"user": "me", "pass": password})
    await conn.login(Auth(xoauth2=TokenProvider()))

    envelope = Envelope(
        "me@example.test",
        ["you@example.test", "them@example.test"],
        size=1024,
        use_8bit_mime=True,
        dsn=DSN(ret="HDRS", envid="id-1", notify=["FAILURE", "DELAY"], orcpt="you@example.test"),
    )
    mail_from: str = envelope.mail_from
    recipients: tuple[str, ...] = envelope.rcpt_to
    dsn: DSN | None = envelope.dsn
    print(mail_from, recipients, dsn)

    results: list[SendInfo] = [
        await conn.send(envelope, "Subject: text\n\nhello\n"),
        await conn.send(Envelope("", "you@example.test"), b"Subject: bytes\r\n\r\nhello\r\n"),
        await conn.send({"from": "me@example.test", "to": ["you@example.test"]}, attachment),
        await conn.send({"from": "me@example.test", "to": "you@example.test", "dsn": {"notify": "NEVER"}}, lines()),
        await conn.send(Envelope("me@example.test", "ü@example.test", smtputf8=True), chunks()),
    ]
    for info in results:
        accepted: list[str] = info.accepted
        rejected: list[str] = info.rejected
        rejected_errors: list[SMTPConnectionError] = info.rejected_errors
        response: str = info.response
        timing: float = info.envelope_time + info.message_time
        size: int = info.message_size
        print(accepted, rejected, [e.recipient for e in rejected_errors], response, timing, size)

    resetting: Deferred[None] = conn.reset()
    await resetting
    quitting: Deferred[None] = conn.quit()
    await quitting
    return results


def watch(conn: SMTPConnection) -> Deferred[None]:
    def on_error(error: SMTPConnectionError) -> None:
        print(describe(error))

    conn.on("connect", lambda: print("connected"))
    conn.on("error", on_error)
    conn.on("end", lambda: print("gone"))
    closed: Deferred[None] = conn.when_closed()
    return closed


def describe(error: SMTPConnectionError) -> str:
    code: str = error.code
    response: str | None = error.response
    response_code: int | None = error.response_code
    command: str | None = error.command
    enhanced: str | None = error.enhanced_status
    recipient: str | None = error.recipient
    per_recipient: list[SMTPConnectionError] = list(error.rejected_errors)
    if isinstance(error, (ConnectionFailedError, SocketError)):
        caught_as_builtin: ConnectionError = error
        print(caught_as_builtin)
    if isinstance(error, SMTPTimeoutError):
        timeout: TimeoutError = error
        print(timeout)
    kinds: tuple[type[SMTPConnectionError], ...] = (
        TLSError,
        AuthenticationError,
        EnvelopeError,
        MessageError,
        ProtocolError,
        StreamError,
    )
    kind = next((k.__name__ for k in kinds if isinstance(error, k)), "other")
    return f"{kind} {code} {response_code} {enhanced} {command!r} {response!r} {recipient} {len(per_recipient)}"


async def bulk(reactor: IReactorTCP, password: str) -> list[SendInfo]:
    pool = SMTPPool(
        "smtp.example.test",
        587,
        max_connections=2,
        auth=Auth(user="me", password=password),
        reactor=reactor,
        require_tls=True,
    )
    infos = [await pool.send(Envelope("me@example.test", f"user{n}@example.test"), f"message {n}") for n in range(3)]
    await pool.close()
    return infos


def drop(conn: SMTPConnection) -> None:
    conn.close()


async def email_objects(conn: SMTPConnection, pool: SMTPPool, reactor: IReactorTCP) -> list[SendInfo]:
    message = EmailMessage()
    message["From"] = "Me <me@example.test>"
    message["To"] = "you@example.test"
    message["Bcc"] = "hidden@example.test"
    message.set_content("hello")
    from_headers: Deferred[SendInfo] = conn.send_message(message)
    given: Deferred[SendInfo] = conn.send_message(
        message, mail_from="", rcpt_to=["you@example.test"], dsn=DSN(notify="NEVER"), require_tls=True
    )
    one_call: Deferred[SendInfo] = send(
        message, host="smtp.example.test", port=587, auth=Auth(user="me", password="pw"), reactor=reactor
    )
    required: Envelope = Envelope("me@example.test", "you@example.test", require_tls=True)
    demanded: bool = required.require_tls
    print(demanded)
    return [await from_headers, await given, await one_call, await pool.send_message(b"From: a@b.test\r\n\r\nx")]

async def via_compat(reactor: IReactorTCP) -> int:
    """twisted.mail-style code on the drop-in: the result tuple and both error families."""
    from twisted_smtpconn import compat

    try:
        number_ok, addresses = await compat.sendmail(
            "smtp.example.test", "me@example.test", [b"you@example.test"], b"Subject: hi\n\nhello\n", port=587
        )
    except compat.SMTPDeliveryError as error:
        code: int = error.code
        library_code: str = error.error_code
        return code + len(library_code)
    for address, reply_code, response in addresses:
        print(address.decode(), reply_code + 1, response.decode())
    return number_ok


async def to_the_queue(reactor: IReactorTCP) -> str:
    """Mail for ``smtpsend --queue`` workers: the id once the broker has it."""
    queued: Deferred[str] = enqueue(
        "amqp://guest:guest@127.0.0.1:5672/%2F",
        b"From: a@example.test\r\nTo: b@example.test\r\n\r\nhello\r\n",
        rcpt_to=["c@example.test"],
        dsn=DSN(notify="FAILURE"),
        queue_name="reports",
        reactor=reactor,
    )
    message_id: str = await queued
    return message_id
