# -*- test-case-name: tests.test_wire, tests.test_pipelined_sends, tests.test_bdat -*-
"""
What every mail transaction shares, whichever way its message goes
(:mod:`._data` or :mod:`._bdat`): the command lines, rendered and checked
before the first byte is written; the envelope phase (MAIL FROM and RCPT TO,
one round trip each or pipelined); sorting the recipients by their replies;
the per-recipient replies of LMTP; and marking a failure that came after the
whole message was sent.

Reply codes are read strictly, by what each command may be answered with:
MAIL and RCPT with 2xx (accepted) or 4xx/5xx (refused, ``EENVELOPE``);
anything else (a 354 to MAIL, say) means the server is not following the
dialogue, which is ``EPROTOCOL`` and ends the connection.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from twisted.internet.interfaces import IReactorTime

from ._commands import mail_from_command, rcpt_to_command, use_smtputf8
from ._ehlo import size_limit
from ._envelope import Envelope
from ._errors import EnvelopeError, MessageError, ProtocolError, SMTPConnectionError
from ._protocol import SMTPClientProtocol
from ._reply import Reply
from ._sendinfo import SendInfo
from ._session import reset_session

__all__ = [
    "Commands",
    "Recipients",
    "render",
    "stepwise_envelope",
    "sort_envelope",
    "fold_lmtp_replies",
    "final_reply_error",
    "after_the_end",
    "probe_envelope",
]


@dataclass(frozen=True, slots=True)
class Commands:
    """The rendered lines of one transaction, all made before sending any."""

    mail: bytes
    rcpts: tuple[tuple[str, bytes], ...]

    @property
    def lines(self) -> list[bytes]:
        """MAIL, then every RCPT, in order."""
        return [self.mail, *(line for _, line in self.rcpts)]


def render(envelope: Envelope, extensions: Mapping[str, str], *, body: str | None = None) -> Commands:
    """
    The commands of ``envelope`` for a server that offered ``extensions``.

    :param body: a ``BODY=`` value to send (``"BINARYMIME"`` for BDAT).
    :raises MessageError: the envelope's size is over the server's limit.
    :raises EnvelopeError: an address cannot be sent to this server.
    """
    limit = size_limit(extensions)
    if limit is not None and envelope.size is not None and envelope.size > limit:
        raise MessageError(
            f"the message ({envelope.size} bytes) is larger than the server's limit of {limit} bytes"
        )
    smtputf8 = use_smtputf8(envelope, extensions)
    mail = mail_from_command(envelope, extensions, body=body)
    rcpts = tuple(
        (address, rcpt_to_command(address, envelope.dsn, extensions, smtputf8=smtputf8))
        for address in envelope.rcpt_to
    )
    return Commands(mail, rcpts)


@dataclass(slots=True)
class Recipients:
    """
    The envelope's outcome.

    :ivar refusal: the error to raise after cleaning up (RSET) when the
        sender or every recipient was refused; ``None`` when the message may
        go on.
    :ivar mail_accepted: whether MAIL was accepted (else there is no
        transaction on the server to reset, unless more was pipelined).
    """

    accepted: list[str] = field(default_factory=list)
    rejected: list[str] = field(default_factory=list)
    errors: list[SMTPConnectionError] = field(default_factory=list)
    refusal: SMTPConnectionError | None = None
    mail_accepted: bool = True
    #: ``(address, code, text)`` of each RCPT reply, in order.
    replies: list[tuple[str, int, str]] = field(default_factory=list)

    def mark(self, error: SMTPConnectionError) -> SMTPConnectionError:
        """``error`` carrying the recipients' replies, for the caller to read."""
        error.recipient_replies = list(self.replies)
        return error


def _text(line: bytes) -> str:
    return line.decode("utf-8", "replace")


def _check_envelope_reply(reply: Reply, line: bytes) -> None:
    """A reply MAIL or RCPT can have: 2xx, 4xx or 5xx; anything else ends the session."""
    if not (reply.is_positive or reply.is_transient or reply.is_permanent):
        raise ProtocolError.from_reply("the server's reply does not fit the command", reply, _text(line))


def sort_envelope(commands: Commands, replies: list[Reply]) -> Recipients:
    """
    Read the replies to MAIL and the RCPTs (stepwise, the list stops where
    the dialogue stopped: after a refused MAIL, only its reply).

    :raises ProtocolError: a reply that neither accepts nor refuses.
    """
    mail_reply = replies[0]
    _check_envelope_reply(mail_reply, commands.mail)
    if not mail_reply.is_positive:
        refusal = EnvelopeError.from_reply("the server refused the sender", mail_reply, _text(commands.mail))
        return Recipients(refusal=refusal, mail_accepted=False)
    outcome = Recipients()
    for (address, line), reply in zip(commands.rcpts, replies[1:]):
        _check_envelope_reply(reply, line)
        outcome.replies.append((address, reply.code, reply.text))
        if reply.is_positive:
            outcome.accepted.append(address)
            continue
        outcome.rejected.append(address)
        outcome.errors.append(
            EnvelopeError.from_reply(f"the server refused the recipient {address!r}", reply, _text(line), recipient=address)
        )
    if commands.rcpts and not outcome.accepted:
        last = outcome.errors[-1]
        outcome.refusal = EnvelopeError(
            "the server refused every recipient",
            response=last.response,
            response_code=last.response_code,
            command=last.command,
            enhanced_status=last.enhanced_status,
            rejected_errors=outcome.errors,
        )
        outcome.mark(outcome.refusal)
    return outcome


async def stepwise_envelope(
    protocol: SMTPClientProtocol, commands: Commands, on_start: Callable[[], None] | None = None
) -> list[Reply]:
    """
    MAIL, then each RCPT, one round trip each (no PIPELINING); stops after a
    refused MAIL.  The replies are for :func:`sort_envelope`.
    """
    if on_start is not None:
        on_start()
    reply = await protocol.send_command(commands.mail)
    replies = [reply]
    if not reply.is_positive:
        return replies
    for _, line in commands.rcpts:
        replies.append(await protocol.send_command(line))
    return replies


def fold_lmtp_replies(replies: list[Reply], command: bytes, outcome: Recipients) -> None:
    """
    LMTP (RFC 2033): one final reply per accepted recipient, in RCPT order;
    move each recipient refused after the message from ``accepted`` to
    ``rejected`` with its error.

    A 421 among these replies never gets here: the protocol ends the
    connection on it.  The send then fails with ``ECONNECTION``; when the
    421 came after other recipients' replies, with ``delivery_unknown`` set,
    since those recipients may have the message.
    """
    for address, reply in zip(list(outcome.accepted), replies):
        if not reply.is_positive:
            outcome.accepted.remove(address)
            outcome.rejected.append(address)
            outcome.errors.append(
                MessageError.from_reply(
                    f"the server refused the message for {address!r}", reply, _text(command), recipient=address
                )
            )


def final_reply_error(reply: Reply, command: bytes) -> SMTPConnectionError | None:
    """
    The error for the reply to the end of a message (the final dot, or the
    ``LAST`` chunk), or ``None`` when the server took the message.
    """
    if reply.is_positive:
        return None
    if reply.is_transient or reply.is_permanent:
        return MessageError.from_reply("the server refused the message", reply, _text(command))
    return ProtocolError.from_reply("the server's reply to the message does not fit", reply, _text(command))


def after_the_end(error: SMTPConnectionError, *, answered: bool) -> SMTPConnectionError:
    """
    The error for a failure once the whole message was sent (the final dot,
    or ``LAST``).

    A 421 in answer to it is the server's refusal, like any 4xx.  Anything
    else (the connection lost, a timeout, or, with LMTP, a 421 after other
    recipients were ``answered``, who may have the message) leaves the
    outcome unknown: the error is marked ``delivery_unknown`` (RFC 1047),
    on a copy, since the object may be the connection's shared failure.

    :param answered: whether some of the per-recipient final replies (LMTP)
        came before the failure.
    """
    if error.response_code == 421 and not answered:
        return error
    unknown = copy.copy(error)
    unknown.delivery_unknown = True
    unknown.__cause__ = error
    return unknown


async def probe_envelope(
    protocol: SMTPClientProtocol, clock: IReactorTime, commands: Commands, *, pipelining: bool
) -> SendInfo:
    """
    MAIL and the RCPTs of ``commands``, then RSET: what the server would say
    to this envelope, without a message (``smtpsend --quit-after rcpt``; with
    no RCPT lines, ``--quit-after mail``).

    :raises EnvelopeError: the sender, or every recipient, was refused.
    """
    started = clock.seconds()
    if pipelining:
        replies = await protocol.send_commands(commands.lines)
    else:
        replies = await stepwise_envelope(protocol, commands)
    outcome = sort_envelope(commands, replies)
    if pipelining or outcome.mail_accepted:
        await reset_session(protocol)
    if outcome.refusal is not None:
        raise outcome.refusal
    return SendInfo(
        accepted=outcome.accepted,
        rejected=outcome.rejected,
        rejected_errors=outcome.errors,
        response=str(replies[-1]),
        envelope_time=clock.seconds() - started,
        message_time=0.0,
        message_size=0,
        recipient_replies=outcome.replies,
    )
