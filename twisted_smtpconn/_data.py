# -*- test-case-name: tests.test_wire, tests.test_pipelined_sends, tests.test_interop -*-
"""
A mail transaction whose message goes after ``DATA``: dot-stuffed, ended by
the ``.`` line.

With PIPELINING, MAIL, every RCPT and DATA go in one write (RFC 2920) and
their replies are awaited together; without it, each waits for its reply.
A message cannot be withdrawn once the server said 354: if reading the
caller's source fails half way, the only way to keep a partial message from
being delivered is to drop the connection before the final dot
(``ESTREAM``, which then closes the connection).
"""

from __future__ import annotations

from collections.abc import Callable

from twisted.internet.interfaces import IReactorTime

from ._dotstuff import BodyEncoder
from ._errors import MessageError, ProtocolError, SMTPConnectionError, StreamError
from ._producer import BodyProducer, encoded
from ._protocol import SMTPClientProtocol
from ._reply import Reply
from ._sendinfo import SendInfo
from ._session import reset_session
from ._source import DEFAULT_CHUNK_SIZE, iterate_message
from ._transaction import (
    Commands,
    after_the_end,
    final_reply_error,
    fold_lmtp_replies,
    sort_envelope,
    stepwise_envelope,
)

__all__ = ["data_transaction"]

_GO_AHEAD = 354


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


async def _write_body(protocol: SMTPClientProtocol, message: object, encoder: BodyEncoder) -> None:
    small = _small_message(message)
    if small is None:
        await BodyProducer(protocol).write_all(encoded(iterate_message(message), encoder))
    elif protocol.failure is not None:
        # The connection is already gone: nothing can be sent.
        raise protocol.failure
    else:
        protocol.write(encoder.encode(small) + encoder.finish())


async def data_transaction(
    protocol: SMTPClientProtocol,
    clock: IReactorTime,
    commands: Commands,
    message: object,
    *,
    pipelining: bool,
    lmtp: bool,
    on_start: Callable[[], None] | None = None,
    on_written: Callable[[], None] | None = None,
) -> SendInfo:
    """
    Send ``message`` with MAIL, RCPT, DATA and the dot-stuffed body.

    :param on_start: called just before MAIL is written.
    :param on_written: called once the final dot is written, when only the
        final reply(ies) remain to be read and the server offers PIPELINING.
        From then on the next transaction's MAIL, RCPT and DATA may follow on
        the wire (RFC 2920: message content may be the first "command" of a
        group): whatever that reply says, the server's transaction ends with
        it, nothing of ours is sent in between (no RSET follows a refused
        message), and replies pair with commands in the order sent.
    :raises EnvelopeError: sender refused, or every recipient refused (the
        session is reset and stays usable).
    :raises MessageError: DATA or the message refused (the session stays
        usable).
    :raises StreamError: reading ``message`` failed mid-way; the connection
        is closed (nothing is delivered: the final dot was never sent).
    :raises ProtocolError: a reply that fits no step (2xx to DATA: the
        server would read the message as commands).
    """
    started = clock.seconds()
    data_reply: Reply | None
    if pipelining:
        if on_start is not None:
            on_start()
        replies = await protocol.send_commands([*commands.lines, b"DATA"])
        data_reply = replies[-1]
        outcome = sort_envelope(commands, replies[:-1])
    else:
        outcome = sort_envelope(commands, await stepwise_envelope(protocol, commands, on_start))
        data_reply = None if outcome.refusal is not None else await protocol.send_command(b"DATA")
    envelope_time = clock.seconds() - started

    if outcome.refusal is not None:
        if data_reply is not None and data_reply.code == _GO_AHEAD:
            # A server that accepted DATA with nobody to deliver to: end
            # the (empty) message at once; it goes nowhere.
            await protocol.send_command(b".")
        if pipelining or outcome.mail_accepted:
            await reset_session(protocol)
        raise outcome.refusal
    assert data_reply is not None
    if data_reply.code != _GO_AHEAD:
        if data_reply.is_transient or data_reply.is_permanent:
            error = outcome.mark(MessageError.from_reply("the server refused DATA", data_reply, "DATA"))
            await reset_session(protocol)
            raise error
        raise ProtocolError.from_reply(
            "the server answered DATA without 354: the message cannot be sent", data_reply, "DATA"
        )

    message_started = clock.seconds()
    # Awaited before the first byte goes, so that a reply the server sends
    # early (an error mid-DATA) is never taken as unsolicited.
    finals = protocol.expect_replies(["."] * (len(outcome.accepted) if lmtp else 1))
    encoder = BodyEncoder()
    try:
        await _write_body(protocol, message, encoder)
    except BaseException as failure:
        finals.addErrback(lambda _: None)
        if isinstance(failure, StreamError):
            failure.closes_connection = True
            protocol.abort(failure)
        elif protocol.failure is not None and protocol.failure is not failure:
            # The connection failed first (timeout, drop): report that.
            raise protocol.failure from failure
        raise

    if on_written is not None and pipelining:
        on_written()
    try:
        replies = await finals
    except SMTPConnectionError as failure:
        # With LMTP and several recipients, some may have been answered
        # before the failure: the group does not say, so assume they were.
        raise after_the_end(failure, answered=lmtp and len(outcome.accepted) > 1) from failure

    if lmtp:
        fold_lmtp_replies(replies, b".", outcome)
    else:
        refused = final_reply_error(replies[0], b".")
        if refused is not None:
            raise outcome.mark(refused)
    return SendInfo(
        accepted=outcome.accepted,
        rejected=outcome.rejected,
        rejected_errors=outcome.errors,
        response=str(replies[-1]),
        envelope_time=envelope_time,
        message_time=clock.seconds() - message_started,
        message_size=encoder.message_size,
        recipient_replies=outcome.replies,
    )
