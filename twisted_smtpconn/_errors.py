"""
The one error hierarchy of twisted_smtpconn.

Every failure the library reports is an :class:`SMTPConnectionError` whose
``code`` is one of the strings of the API contract (``ECONNECTION``,
``ETIMEDOUT``, ...).  There is one subclass per code so that callers may use
``except`` clauses instead of comparing strings, and the subclasses also
inherit from the built-in exception that fits (``TimeoutError``,
``ConnectionError``) so that generic handlers written for any network library
catch them too.

Error text never contains credentials: ``command`` is always stored already
redacted by the code that built it, and the message is composed only from the
summary, the redacted command and the server's reply.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import ClassVar, Protocol, TypeVar

_E = TypeVar("_E", bound="SMTPConnectionError")


class _Reply(Protocol):
    """What an error keeps of a server reply (``_reply.Reply`` is one)."""

    @property
    def code(self) -> int: ...

    @property
    def enhanced_status(self) -> str | None: ...

__all__ = [
    "SMTPConnectionError",
    "ConnectionFailedError",
    "SMTPTimeoutError",
    "TLSError",
    "AuthenticationError",
    "EnvelopeError",
    "MessageError",
    "ProtocolError",
    "SocketError",
    "StreamError",
    "error_class_for_code",
    "ERROR_CODES",
]


class SMTPConnectionError(Exception):
    """
    Base class of every error raised or returned by twisted_smtpconn.

    :ivar code: one of :data:`ERROR_CODES`.
    :ivar response: the server's last reply as text, code first (e.g.
        ``"550 5.1.1 no such user"``), or ``None`` when the failure was local.
    :ivar response_code: the three-digit reply code, or ``None``.
    :ivar command: the command that failed, credentials redacted, or ``None``.
    :ivar enhanced_status: the RFC 3463 enhanced status code such as
        ``"5.7.8"``, or ``None``.
    :ivar recipient: for a rejected recipient, the address; else ``None``.
    :ivar rejected_errors: for an all-recipients-rejected failure, one error
        per recipient; else empty.
    :ivar recipient_replies: for a failed send whose recipients were
        answered, ``(address, code, text)`` of each RCPT reply, in order (as
        :attr:`SendInfo.recipient_replies <twisted_smtpconn.SendInfo>`);
        else empty.
    :ivar delivery_unknown: ``True`` when the whole message, final dot
        included, was sent but the connection failed before the server's
        reply: the server may have accepted it (RFC 1047).  Never retry such
        a message automatically; it could be delivered twice.
    """

    #: The error code of errors of this class.
    default_code: ClassVar[str] = "EPROTOCOL"

    def __init__(
        self,
        message: str,
        *,
        code: str | None = None,
        response: str | None = None,
        response_code: int | None = None,
        command: str | None = None,
        enhanced_status: str | None = None,
        recipient: str | None = None,
        rejected_errors: Sequence[SMTPConnectionError] = (),
    ) -> None:
        super().__init__(message)
        self.message = message
        self.code = code if code is not None else self.default_code
        self.response = response
        self.response_code = response_code
        self.command = command
        self.enhanced_status = enhanced_status
        self.recipient = recipient
        self.rejected_errors = list(rejected_errors)
        self.delivery_unknown = False
        self.recipient_replies: list[tuple[str, int, str]] = []
        self._closes_connection: bool | None = None

    @classmethod
    def from_reply(
        cls: type[_E], summary: str, reply: _Reply, command: str | None = None, *, recipient: str | None = None
    ) -> _E:
        """
        The error for a server reply: the one place where a reply becomes
        an exception, so every error carries the reply the same way.

        :param summary: what failed, in words (``"the server refused the sender"``).
        :param reply: the server's reply; its one-line text (control
            characters escaped), code and enhanced status are kept.
        :param command: the command it answered, credentials already redacted.
        :param recipient: the address concerned, for a refused recipient.
        """
        return cls(
            summary,
            response=str(reply),
            response_code=reply.code,
            command=command,
            enhanced_status=reply.enhanced_status,
            recipient=recipient,
        )

    def __str__(self) -> str:
        text = self.message
        if self.command is not None:
            text += f" (command: {self.command})"
        if self.response:
            text += f": {self.response}"
        elif self.response_code is not None:
            text += f": {self.response_code}"
        return text

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(code={self.code!r}, message={self.message!r}, "
            f"response_code={self.response_code!r}, response={self.response!r}, "
            f"command={self.command!r}, enhanced_status={self.enhanced_status!r}, "
            f"recipient={self.recipient!r})"
        )

    @property
    def is_transient(self) -> bool:
        """
        Whether trying again later may succeed: a 4xx reply, or a failure
        of the connection rather than a refusal by the server.
        """
        if self.response_code is not None:
            return 400 <= self.response_code < 500
        return self.code in ("ECONNECTION", "ETIMEDOUT", "ESOCKET")

    @property
    def closes_connection(self) -> bool:
        """
        Whether the library closed the connection after this error.

        Decided by the code (a failure of the connection itself closes it),
        except where the same code may go either way: ``ESTREAM`` closes a
        connection sending with DATA (a message cannot be withdrawn once
        DATA started) and not one sending with BDAT (the chunks are framed
        by length, and RSET discards them); the code that raises it says so.
        """
        if self._closes_connection is not None:
            return self._closes_connection
        return self.code in ("ECONNECTION", "ETIMEDOUT", "ETLS", "ESOCKET", "EPROTOCOL")

    @closes_connection.setter
    def closes_connection(self, value: bool) -> None:
        self._closes_connection = value


class ConnectionFailedError(SMTPConnectionError, ConnectionError):
    """``ECONNECTION``: connecting failed or the connection closed unexpectedly."""

    default_code = "ECONNECTION"


class SMTPTimeoutError(SMTPConnectionError, TimeoutError):
    """``ETIMEDOUT``: the connection, greeting or inactivity timeout expired."""

    default_code = "ETIMEDOUT"


class TLSError(SMTPConnectionError):
    """``ETLS``: implicit TLS or STARTTLS failed, or the certificate was not trusted."""

    default_code = "ETLS"


class AuthenticationError(SMTPConnectionError):
    """``EAUTH``: authentication was refused or could not be attempted."""

    default_code = "EAUTH"


class EnvelopeError(SMTPConnectionError):
    """``EENVELOPE``: a sender or recipient was refused or is unusable."""

    default_code = "EENVELOPE"


class MessageError(SMTPConnectionError):
    """``EMESSAGE``: the message was refused or is too large for the server."""

    default_code = "EMESSAGE"


class ProtocolError(SMTPConnectionError):
    """``EPROTOCOL``: the server broke the protocol, or a method was called out of order."""

    default_code = "EPROTOCOL"


class SocketError(SMTPConnectionError, ConnectionError):
    """``ESOCKET``: a socket-level error on an open connection."""

    default_code = "ESOCKET"


class StreamError(SMTPConnectionError):
    """``ESTREAM``: reading the caller's message failed."""

    default_code = "ESTREAM"


_BY_CODE: dict[str, type[SMTPConnectionError]] = {
    cls.default_code: cls
    for cls in (
        ConnectionFailedError,
        SMTPTimeoutError,
        TLSError,
        AuthenticationError,
        EnvelopeError,
        MessageError,
        ProtocolError,
        SocketError,
        StreamError,
    )
}

#: Every error code of the API contract.
ERROR_CODES: frozenset[str] = frozenset(_BY_CODE)


def error_class_for_code(code: str) -> type[SMTPConnectionError]:
    """
    The subclass that represents ``code``.

    :raises ValueError: if ``code`` is not one of :data:`ERROR_CODES`.
    """
    try:
        return _BY_CODE[code]
    except KeyError:
        raise ValueError(f"unknown error code {code!r}") from None
