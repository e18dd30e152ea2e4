"""
:func:`send`: one call for the common case -- connect, log in, send one
message, quit -- like ``aiosmtplib.send()`` or ``treq.get()``.

Everything that can be checked without a server (the options, the message
type, the envelope read from the headers) is checked before connecting, so
that a message without a sender costs no connection.  Whatever happens
after that -- a refused connection, a failed login, a rejected message, the
caller cancelling the Deferred -- the connection is closed before the
returned Deferred fires, so nothing is left behind in the reactor.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, TypeVar

from twisted.internet.defer import CancelledError, Deferred, fail

from ._auth import Auth, coerce_auth
from ._connection import SMTPConnection
from ._email import parse_message_headers, recipients_from_headers, sender_from_headers
from ._envelope import Envelope
from ._errors import SMTPConnectionError
from ._sendinfo import SendInfo

__all__ = ["send"]

_T = TypeVar("_T")

#: Keywords of send() that belong to the envelope rather than the connection.
_ENVELOPE_OPTIONS = frozenset({"size", "use_8bit_mime", "dsn", "smtputf8"})


def send(
    message: object,
    *,
    host: str = "localhost",
    port: int | None = None,
    mail_from: str | None = None,
    rcpt_to: str | list[str] | None = None,
    auth: Auth | Mapping[str, Any] | None = None,
    reactor: Any = None,
    **connection_options: Any,
) -> Deferred[SendInfo]:
    """
    Send one message and close the connection.

    Connects to ``host``:``port``, logs in when ``auth`` is given, sends
    ``message`` as :meth:`SMTPConnection.send_message` does (the envelope
    from its headers unless ``mail_from`` / ``rcpt_to`` are given; Bcc never
    transmitted), and quits.

    :param message: an ``email.message.Message`` (``EmailMessage``
        included), or a ``str`` / ``bytes`` message, parsed for its headers.
    :param auth: an :class:`Auth` or the mapping form accepted by
        :meth:`SMTPConnection.login`; no login when ``None``.
    :param connection_options: any keyword of :class:`SMTPConnection`
        (``secure``, ``require_tls``, ``tls``, ``name``, timeouts...).
    :returns: a Deferred firing with the :class:`SendInfo` once the server
        accepted the message (a failing QUIT after that does not turn a
        delivered message into an error), or failing with the first error.
        The connection is gone by the time it fires, either way; cancelling
        it closes the connection at once.
    """
    try:
        parsed = parse_message_headers(message)
        if mail_from is None:
            mail_from = sender_from_headers(parsed)
        if rcpt_to is None:
            rcpt_to = recipients_from_headers(parsed)
        # Check the addresses now, before any connection is made.
        Envelope(mail_from, rcpt_to)
        credentials = coerce_auth(auth) if auth is not None else None
        misplaced = sorted(_ENVELOPE_OPTIONS & set(connection_options))
        if misplaced:
            raise TypeError(
                f"send() takes no envelope option {', '.join(misplaced)}: use "
                "SMTPConnection.send_message for those"
            )
        connection = SMTPConnection(host, port, reactor=reactor, **connection_options)
    except (SMTPConnectionError, TypeError, ValueError) as error:
        return fail(error)
    return Deferred.fromCoroutine(_run(connection, parsed, mail_from, rcpt_to, credentials))


async def _run(
    connection: SMTPConnection,
    message: object,
    mail_from: str,
    rcpt_to: str | list[str],
    auth: Auth | None,
) -> SendInfo:
    steps = _Steps()
    try:
        await steps.watch(connection.connect())
        if auth is not None:
            await steps.watch(connection.login(auth))
        info = await steps.watch(connection.send_message(message, mail_from=mail_from, rcpt_to=rcpt_to))
    except BaseException as error:
        await _close(connection)
        if steps.cancelled and not isinstance(error, CancelledError):
            # The step reported the cancellation in its own terms (a
            # connect cancelled is "could not connect"); the caller asked
            # for a cancellation and gets one.
            raise CancelledError("send() was cancelled") from error
        raise
    try:
        await steps.watch(connection.quit())
    except (SMTPConnectionError, CancelledError):
        # The message was accepted: a QUIT that fails (or is cancelled)
        # does not undo that, and reporting an error would invite a
        # duplicate resend.
        pass
    await _close(connection)
    return info


class _Steps:
    """
    Notes whether the caller cancelled while a step was awaited.

    Cancelling the Deferred of :func:`send` cancels the step it is waiting
    for; each step is awaited through a Deferred whose canceller records
    that before passing the cancellation on.
    """

    def __init__(self) -> None:
        self.cancelled = False

    def watch(self, step: Deferred[_T]) -> Deferred[_T]:
        def cancel(_: Deferred[_T]) -> None:
            self.cancelled = True
            step.cancel()

        watched: Deferred[_T] = Deferred(cancel)
        step.chainDeferred(watched)
        return watched


async def _close(connection: SMTPConnection) -> None:
    """Drop the connection (if still open) and wait until it is gone."""
    closed = connection.when_closed()
    connection.close()
    await closed
