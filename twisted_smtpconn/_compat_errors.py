"""
The errors of :mod:`twisted_smtpconn.compat`: each one an instance of the
``twisted.mail.smtp`` class that code written for twisted.mail catches AND of
this library's :class:`~twisted_smtpconn.SMTPConnectionError` subclass for
the same failure, so that ``except SMTPClientError`` and ``except
TLSError`` both work.

Attributes follow twisted.mail, because the code catching these was written
for it: ``code`` is the reply code as an ``int`` (``-1`` when the server did
not answer), ``resp`` the reply text as ``bytes``, ``log`` a short
description as ``bytes`` (never twisted.mail's transcript, which carried
base64 credentials), ``addresses``, ``isFatal`` and ``retry``.  The
library's string code (``"EENVELOPE"``...) is ``error_code``; every other
attribute of :class:`~twisted_smtpconn.SMTPConnectionError` (``response``,
``response_code``, ``command``, ``enhanced_status``, ``recipient``,
``rejected_errors``, ``delivery_unknown``) is there too.

The twisted.mail classes are taken from ``twisted.mail._except``, where
twisted.mail defines them and which ``twisted.mail.smtp`` re-exports: importing
``twisted.mail.smtp`` itself would install the global reactor and look up this
host's name as side effects of an import.
"""

from __future__ import annotations

from collections.abc import Sequence

from twisted.mail import _except as _tm

from ._errors import (
    AuthenticationError as _AuthenticationError,
)
from ._errors import (
    ConnectionFailedError,
    EnvelopeError,
    MessageError,
    ProtocolError,
    SMTPConnectionError,
    SocketError,
    StreamError,
    TLSError,
)
from ._errors import (
    SMTPTimeoutError as _SMTPTimeoutError,
)

__all__ = [
    "CompatError",
    "SMTPConnectError",
    "SMTPSocketError",
    "SMTPTimeoutError",
    "SMTPProtocolError",
    "SMTPTLSError",
    "TLSRequiredError",
    "AUTHRequiredError",
    "AUTHDeclinedError",
    "AuthenticationError",
    "SMTPDeliveryError",
    "SenderRefusedError",
    "RecipientsRefusedError",
    "MessageRefusedError",
    "MessageReadError",
    "RecipientResult",
    "translate",
]

#: One recipient's RCPT result as twisted.mail reports it.
RecipientResult = tuple[bytes, int, bytes]


class CompatError(SMTPConnectionError):
    """
    The part every compat error shares: built from one of this library's
    errors, keeping its attributes, with twisted.mail's on top.

    Not raised by itself; each concrete class also derives from a
    ``twisted.mail`` class and from the library's class for the code.  It is
    listed first so that its constructor and text win over twisted.mail's.
    """

    #: twisted.mail's meaning: the reply code, -1 when there was none.
    code: int  # type: ignore[assignment]
    #: This library's code for the failure ("EENVELOPE", ...).
    error_code: str

    #: twisted.mail's isFatal default for the class.
    _is_fatal = False
    #: twisted.mail's retry default for the class.
    _retry = False

    def __init__(
        self, error: SMTPConnectionError, *, addresses: Sequence[RecipientResult] | None = None
    ) -> None:
        # Neither SMTPConnectionError.__init__ (its super() call would land in
        # twisted.mail's constructor, which needs other arguments) nor
        # SMTPClientError.__init__: the attributes of both are set here.
        Exception.__init__(self, error.message)
        self.message = error.message
        self.response = error.response
        self.response_code = error.response_code
        self.command = error.command
        self.enhanced_status = error.enhanced_status
        self.recipient = error.recipient
        self.rejected_errors = list(error.rejected_errors)
        self.delivery_unknown = error.delivery_unknown
        self.recipient_replies = list(error.recipient_replies)
        self._closes_connection = error.closes_connection
        self.error_code = error.code
        self.code = error.response_code if error.response_code is not None else -1
        self.resp: bytes = _reply_text(error).encode("utf-8")
        self.log: bytes | None = str(SMTPConnectionError.__str__(self)).encode("utf-8")
        self.addresses = list(addresses) if addresses is not None else None
        self.isFatal = self._is_fatal
        self.retry = self._retry
        self.__cause__ = error

    def __str__(self) -> str:
        return SMTPConnectionError.__str__(self)

    def __bytes__(self) -> bytes:
        return str(self).encode("utf-8")

    # The library's own properties read ``code``, which here is twisted.mail's int.
    @property
    def is_transient(self) -> bool:
        if self.response_code is not None:
            return 400 <= self.response_code < 500
        return self.error_code in ("ECONNECTION", "ETIMEDOUT", "ESOCKET")

    # closes_connection is the library's as it was (copied above), so the
    # base class's property, which reads ``code`` only when unset, is right.


def _reply_text(error: SMTPConnectionError) -> str:
    """The server's reply without its code (twisted.mail's ``resp``), else the message."""
    if error.response:
        text = error.response
        if error.response_code is not None and text[:3] == f"{error.response_code:03d}":
            text = text[4:]
        return text
    return error.message


class SMTPConnectError(CompatError, _tm.SMTPConnectError, ConnectionFailedError):  # type: ignore[misc]
    """Could not connect, or the connection closed unexpectedly (``ECONNECTION``)."""

    _is_fatal = True
    _retry = True


class SMTPSocketError(CompatError, _tm.SMTPConnectError, SocketError):  # type: ignore[misc]
    """A socket error on the open connection (``ESOCKET``)."""

    _is_fatal = True
    _retry = True


class SMTPTimeoutError(CompatError, _tm.SMTPTimeoutError, _SMTPTimeoutError):  # type: ignore[misc]
    """The server did not answer in time (``ETIMEDOUT``)."""

    _is_fatal = True
    _retry = True


class SMTPProtocolError(CompatError, _tm.SMTPProtocolError, ProtocolError):  # type: ignore[misc]
    """The server broke the protocol (``EPROTOCOL``)."""

    _is_fatal = True


class SMTPTLSError(CompatError, _tm.SMTPTLSError, TLSError):  # type: ignore[misc]
    """STARTTLS was refused, the handshake failed or the certificate is not trusted (``ETLS``)."""


class TLSRequiredError(CompatError, _tm.TLSRequiredError, TLSError):  # type: ignore[misc]
    """``requireTransportSecurity`` and the session could not be made TLS (``ETLS``)."""


class AUTHRequiredError(CompatError, _tm.AUTHRequiredError, _AuthenticationError):  # type: ignore[misc]
    """``requireAuthentication`` and no credentials, or no AUTH offered (``EAUTH``)."""


class AUTHDeclinedError(CompatError, _tm.AUTHDeclinedError, _AuthenticationError):  # type: ignore[misc]
    """The server refused the credentials (``EAUTH`` with the server's reply)."""


class AuthenticationError(CompatError, _tm.AuthenticationError, _AuthenticationError):  # type: ignore[misc]
    """
    Authentication could not be attempted (``EAUTH`` without a reply): for
    example a password that would go over cleartext to a remote host.
    """


class SMTPDeliveryError(CompatError, _tm.SMTPDeliveryError):  # type: ignore[misc]
    """The base of the refusals of a message: sender, every recipient, or the message."""


class SenderRefusedError(SMTPDeliveryError, EnvelopeError):  # type: ignore[misc]
    """The server refused MAIL FROM, or the sender is unusable (``EENVELOPE``)."""


class RecipientsRefusedError(SMTPDeliveryError, EnvelopeError):  # type: ignore[misc]
    """
    The server refused every recipient (``EENVELOPE``); ``addresses`` holds
    each one's ``(address, code, response)`` as twisted.mail reports it.
    """


class MessageRefusedError(SMTPDeliveryError, MessageError):  # type: ignore[misc]
    """The server refused the message after DATA, or it is too large (``EMESSAGE``)."""


class MessageReadError(CompatError, _tm.SMTPClientError, StreamError):  # type: ignore[misc]
    """Reading the caller's message failed (``ESTREAM``)."""


_BY_CODE: dict[str, type[CompatError]] = {
    "ECONNECTION": SMTPConnectError,
    "ESOCKET": SMTPSocketError,
    "ETIMEDOUT": SMTPTimeoutError,
    "EPROTOCOL": SMTPProtocolError,
    "ETLS": SMTPTLSError,
    "EMESSAGE": MessageRefusedError,
    "ESTREAM": MessageReadError,
}


def translate(
    error: SMTPConnectionError, *, addresses: Sequence[RecipientResult] | None = None
) -> CompatError:
    """
    The compat error for one of this library's errors.

    :param addresses: the per-recipient results known so far, for the
        delivery errors (twisted.mail's ``addresses``).
    """
    if isinstance(error, CompatError):
        return error
    cls: type[CompatError]
    if error.code == "EAUTH":
        cls = AUTHDeclinedError if error.response_code is not None else AuthenticationError
    elif error.code == "EENVELOPE":
        cls = RecipientsRefusedError if error.rejected_errors else SenderRefusedError
    else:
        cls = _BY_CODE.get(error.code, SMTPProtocolError)
    return cls(error, addresses=addresses)
