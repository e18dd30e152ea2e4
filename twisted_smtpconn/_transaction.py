"""
One mail transaction: MAIL FROM, RCPT TO for each recipient, DATA, the
streamed message and the final reply (one per recipient with LMTP).

Everything that can be checked locally (addresses, parameters, SMTPUTF8
support, the server's SIZE limit) is checked before the first byte is
written, so a bad envelope never leaves a half-written command behind.  A
send reports success only after the server's final 2xx to the message.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorTime

from . import _bdat
from ._commands import mail_from_command, rcpt_to_command, use_smtputf8
from ._dotstuff import BodyEncoder
from ._ehlo import size_limit
from ._envelope import Envelope
from ._errors import (
    EnvelopeError,
    MessageError,
    ProtocolError,
    SMTPConnectionError,
    StreamError,
)
from ._producer import BodyProducer, encoded
from ._protocol import SMTPClientProtocol
from ._reply import Reply
from ._sendinfo import SendInfo
from ._session import closing_error
from ._source import DEFAULT_CHUNK_SIZE, iterate_message

__all__ = ["run_transaction", "reset_session", "fold_lmtp_replies"]


@dataclass(frozen=True)
class _Commands:
    """The rendered lines of one transaction, all made before sending any."""

    mail: bytes
    rcpts: list[tuple[str, bytes]]


def _render(envelope: Envelope, extensions: Mapping[str, str], body: str | None = None) -> _Commands:
    limit = size_limit(extensions)
    if limit is not None and envelope.size is not None and envelope.size > limit:
        raise MessageError(
            f"the message ({envelope.size} bytes) is larger than the server's limit of {limit} bytes"
        )
    smtputf8 = use_smtputf8(envelope, extensions)
    mail = mail_from_command(envelope, extensions, body=body)
    rcpts = [
        (address, rcpt_to_command(address, envelope.dsn, extensions, smtputf8=smtputf8))
        for address in envelope.rcpt_to
    ]
    return _Commands(mail, rcpts)


def _reply_error(
    cls: type[SMTPConnectionError], summary: str, reply: Reply, command: bytes, recipient: str | None = None
) -> SMTPConnectionError:
    if reply.code == 421:
        return closing_error(reply, command.decode("utf-8", "replace"))
    return cls(
        summary,
        response=str(reply),
        response_code=reply.code,
        command=command.decode("utf-8", "replace"),
        enhanced_status=reply.enhanced_status,
        recipient=recipient,
    )


def _small_message(message: object) -> bytes | None:
    """
    The message as one ``bytes`` when it is a ``bytes`` or ``str`` no larger
    than one chunk of the stream, else ``None``.

    Such a message is encoded and written in one go: streaming it would cost
    a producer registration and three async generators for a single write,
    which for the typical few-kilobyte message is most of the time spent on
    the body, and memory stays bounded by the chunk size all the same.  A
    ``str`` that cannot be encoded goes the streaming way, which reports it
    as ``ESTREAM``.
    """
    if type(message) is bytes:
        return message if len(message) <= DEFAULT_CHUNK_SIZE else None
    if type(message) is str and len(message) <= DEFAULT_CHUNK_SIZE // 4:
        try:
            return message.encode("utf-8")
        except UnicodeEncodeError:
            return None
    return None


async def reset_session(protocol: SMTPClientProtocol) -> Reply:
    """
    RSET: abandon the current transaction.

    :raises SMTPConnectionError: if the server refuses (the connection is
        then in an unknown state; the caller closes it).
    """
    reply = await protocol.send_command(b"RSET")
    if not reply.is_positive:
        raise _reply_error(ProtocolError, "the server refused RSET", reply, b"RSET")
    return reply


_Envelope = tuple[list[str], list[str], list[SMTPConnectionError], Reply]


def _sort_recipients(
    rcpts: list[tuple[str, bytes]], replies: list[Reply]
) -> tuple[list[str], list[str], list[SMTPConnectionError]]:
    """Split the recipients by their RCPT replies; a 421 ends the session."""
    accepted: list[str] = []
    rejected: list[str] = []
    errors: list[SMTPConnectionError] = []
    for (address, line), reply in zip(rcpts, replies):
        if reply.is_positive:
            accepted.append(address)
            continue
        error = _reply_error(EnvelopeError, f"the server refused the recipient {address!r}", reply, line, address)
        if error.response_code == 421:
            raise error
        rejected.append(address)
        errors.append(error)
    return accepted, rejected, errors


def _all_rejected(errors: list[SMTPConnectionError]) -> EnvelopeError:
    last = errors[-1]
    return EnvelopeError(
        "the server refused every recipient",
        response=last.response,
        response_code=last.response_code,
        command=last.command,
        enhanced_status=last.enhanced_status,
        rejected_errors=errors,
    )


async def _stepwise_envelope(protocol: SMTPClientProtocol, commands: _Commands) -> _Envelope:
    """MAIL, each RCPT, DATA: one command per round trip."""
    mail_reply = await protocol.send_command(commands.mail)
    if not mail_reply.is_positive:
        raise _reply_error(EnvelopeError, "the server refused the sender", mail_reply, commands.mail)
    replies = []
    for _, line in commands.rcpts:
        reply = await protocol.send_command(line)
        if reply.code == 421:
            # The server is going away: not one more command.
            raise closing_error(reply, line.decode("utf-8", "replace"))
        replies.append(reply)
    accepted, rejected, errors = _sort_recipients(commands.rcpts, replies)
    if not accepted:
        await reset_session(protocol)
        raise _all_rejected(errors)
    return accepted, rejected, errors, await protocol.send_command(b"DATA")


async def _pipelined_envelope(protocol: SMTPClientProtocol, commands: _Commands) -> _Envelope:
    """
    MAIL, every RCPT and DATA in one write (RFC 2920); replies in order.

    Every reply is read even after a failure, so none is left to pair with
    a later command.
    """
    lines = [commands.mail, *(line for _, line in commands.rcpts), b"DATA"]
    waiters = protocol.send_commands(lines)
    replies: list[Reply] = []
    try:
        for line, waiting in zip(lines, waiters):
            reply = await waiting
            if reply.code == 421:
                raise closing_error(reply, line.decode("utf-8", "replace"))
            replies.append(reply)
    finally:
        for waiting in waiters:
            waiting.addErrback(lambda _: None)
    mail_reply, rcpt_replies, data_reply = replies[0], replies[1:-1], replies[-1]
    accepted, rejected, errors = _sort_recipients(commands.rcpts, rcpt_replies)
    if mail_reply.is_positive and accepted:
        return accepted, rejected, errors, data_reply
    if data_reply.code == 354:
        # A server that wrongly accepted DATA with nobody to deliver to:
        # end the (empty) message at once; it goes nowhere.
        end_reply = await protocol.send_command(b".")
        if end_reply.code == 421:
            raise closing_error(end_reply, ".")
    await reset_session(protocol)
    if not mail_reply.is_positive:
        raise _reply_error(EnvelopeError, "the server refused the sender", mail_reply, commands.mail)
    raise _all_rejected(errors)


def fold_lmtp_replies(
    replies: list[Reply],
    command: bytes,
    accepted: list[str],
    rejected: list[str],
    rejected_errors: list[SMTPConnectionError],
) -> None:
    """
    LMTP (RFC 2033): one final reply per accepted recipient, in RCPT order;
    move each recipient refused after the message from ``accepted`` to
    ``rejected`` with its error.
    """
    for address, reply in zip(list(accepted), replies):
        if not reply.is_positive:
            accepted.remove(address)
            rejected.append(address)
            rejected_errors.append(
                _reply_error(MessageError, f"the server refused the message for {address!r}", reply, command, address)
            )


async def run_transaction(
    protocol: SMTPClientProtocol,
    clock: IReactorTime,
    extensions: Mapping[str, str],
    envelope: Envelope,
    message: object,
    *,
    lmtp: bool,
    prefer_data: bool = False,
    on_message_sent: Callable[[], None] | None = None,
) -> SendInfo:
    """
    Send ``message`` to ``envelope``'s recipients over an open session.

    When the server offers CHUNKING (and ``prefer_data`` is false, or the
    envelope is ``binary``) the message goes as BDAT chunks: see
    :mod:`twisted_smtpconn._bdat`.

    :param on_message_sent: called once the final dot is written, when the
        server offers PIPELINING and only the final reply(ies) remain to be
        read.  From then on the next transaction's MAIL, RCPT and DATA may
        follow on the wire (RFC 2920: message content may be the first
        "command" of a group): whatever that reply says, the server's
        transaction ends with it, nothing of ours is sent in between (no
        RSET follows a refused message), and replies pair with commands in
        the order sent.

    :raises EnvelopeError: sender refused, or every recipient refused (the
        session is reset and stays usable).
    :raises MessageError: too large for the server, or DATA or the message
        refused (the session stays usable).
    :raises StreamError: reading ``message`` failed mid-way; a message cannot
        be withdrawn once DATA started, so the connection is closed (nothing
        is delivered: the final dot was never sent).
    """
    if _bdat.use_chunking(extensions, envelope, prefer_data=prefer_data):
        commands = _render(envelope, extensions, "BINARYMIME" if envelope.binary else None)
        return await _bdat.bdat_transaction(
            protocol,
            clock,
            commands.mail,
            commands.rcpts,
            message,
            pipelining="PIPELINING" in extensions,
            lmtp=lmtp,
            binary=envelope.binary,
        )
    commands = _render(envelope, extensions)
    started = clock.seconds()

    if "PIPELINING" in extensions:
        accepted, rejected, rejected_errors, data_reply = await _pipelined_envelope(protocol, commands)
    else:
        accepted, rejected, rejected_errors, data_reply = await _stepwise_envelope(protocol, commands)
    envelope_time = clock.seconds() - started

    if data_reply.code != 354:
        error = _reply_error(MessageError, "the server refused DATA", data_reply, b"DATA")
        if error.response_code != 421:
            await reset_session(protocol)
        raise error

    message_started = clock.seconds()
    # Register for the final reply(ies) before streaming, so that a reply the
    # server sends early (an error mid-DATA) is never taken as unsolicited.
    finals: list[Deferred[Reply]] = [protocol.expect_reply() for _ in (accepted if lmtp else [None])]
    encoder = BodyEncoder()
    small = _small_message(message)
    try:
        if small is not None:
            if protocol.failure is not None:
                # The connection is already gone: nothing can be sent.
                raise protocol.failure
            protocol.consumer().write(encoder.encode(small) + encoder.finish())
        else:
            await BodyProducer(protocol.consumer()).write_all(encoded(iterate_message(message), encoder))
    except BaseException as error:
        for waiting in finals:
            waiting.addErrback(lambda _: None)
        if isinstance(error, StreamError):
            protocol.abort(error)
        elif protocol.failure is not None and protocol.failure is not error:
            # The connection failed first (timeout, drop): report that.
            raise protocol.failure from error
        raise

    if on_message_sent is not None and "PIPELINING" in extensions:
        on_message_sent()
    try:
        replies = [await waiting for waiting in finals]
    except SMTPConnectionError as error:
        # Everything, final dot included, went out: the server may have
        # the message even though we never heard back.  The error object
        # may be the connection's shared failure: mark a copy.
        unknown = copy.copy(error)
        unknown.delivery_unknown = True
        raise unknown from error
    finally:
        for waiting in finals:
            waiting.addErrback(lambda _: None)

    if lmtp:
        fold_lmtp_replies(replies, b".", accepted, rejected, rejected_errors)
    elif not replies[0].is_positive:
        raise _reply_error(MessageError, "the server refused the message", replies[0], b".")

    return SendInfo(
        accepted=accepted,
        rejected=rejected,
        rejected_errors=rejected_errors,
        response=str(replies[-1]),
        envelope_time=envelope_time,
        message_time=clock.seconds() - message_started,
        message_size=encoder.message_size,
    )
