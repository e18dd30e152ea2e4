"""
CHUNKING (RFC 3030): the message as ``BDAT <size> [LAST]`` chunks instead
of DATA.

BDAT says how many octets follow, so the server never scans the message
for an end marker: no dot-stuffing, and (with ``BODY=BINARYMIME``) even the
line ends may stay as they are.  The one thing BDAT asks for that a stream
does not have is the size of each chunk before the chunk, and knowing which
chunk is the last.  Both come without a measuring pass: the encoded stream
is cut into chunks as it is read, and one chunk is always held back, so
when the source ends the chunk in hand is known to be the last and carries
``LAST`` (an empty message is ``BDAT 0 LAST``).

With PIPELINING the whole transaction is one group, as in RFC 3030's own
example: MAIL, every RCPT and the BDAT chunks go out without waiting, and
the replies are matched in order as they come.  A reply that dooms the
transaction (the sender refused, every recipient refused, a chunk refused)
stops further chunks (RFC 3030 section 2: the client "MUST NOT send any
additional BDAT segments"); those already sent are answered and read, and
the transaction is abandoned with RSET.  Since ``LAST`` is never sent after
a failure, a refused or failed transaction can never be half-delivered.
At most :data:`WINDOW` chunks are sent ahead of their replies, which bounds
what goes to a transaction that is already refused.

Without PIPELINING each command waits for its reply.  For LMTP the
recipients' replies are awaited before the first chunk even with
PIPELINING: the ``LAST`` chunk is answered once per accepted recipient
(RFC 2033 section 4.2), so their number must be known before it is sent.

Because the message is framed by length, a failure to read the caller's
source (``ESTREAM``) does not cost the connection, as it must with DATA:
the chunks sent so far are complete, ``LAST`` was not sent, and RSET
discards them.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Mapping

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorTime
from twisted.python.failure import Failure

from ._dotstuff import BodyEncoder
from ._envelope import Envelope
from ._errors import EnvelopeError, MessageError, ProtocolError, SMTPConnectionError, StreamError
from ._producer import BodyProducer, encoded
from ._protocol import SMTPClientProtocol
from ._reply import Reply
from ._sendinfo import SendInfo
from ._session import reset_session
from ._source import iterate_message
from ._transaction import (
    Commands,
    Recipients,
    after_the_end,
    final_reply_error,
    fold_lmtp_replies,
    sort_envelope,
)

__all__ = ["use_chunking", "bdat_transaction", "MAX_CHUNK", "WINDOW"]

#: The largest BDAT chunk we build.  Pieces of the encoded stream (each at
#: most a source chunk, 64 KiB, a little more once bare LFs became CRLF) are
#: coalesced up to this size, so a message of small pieces, or a final CRLF
#: added by the encoder, does not cost a command (and a reply) of its own.
MAX_CHUNK = 80 * 1024

#: How many chunks may await their replies at once with PIPELINING (without
#: it, one).  Enough to keep a loopback or LAN link busy; few enough that a
#: transaction the server already refused is abandoned after at most this
#: many chunks.
WINDOW = 16


def use_chunking(extensions: Mapping[str, str], envelope: Envelope, *, prefer_data: bool) -> bool:
    """
    Whether this transaction goes as BDAT chunks rather than DATA.

    BDAT is used when the server offers CHUNKING, unless the connection
    prefers DATA.  Binary content (``envelope.binary``) can only go as BDAT
    with ``BODY=BINARYMIME``, so it overrides ``prefer_data``.

    :raises EnvelopeError: the envelope asks for binary content and the
        server does not offer both CHUNKING and BINARYMIME; raised before
        anything is sent.
    """
    offered = "CHUNKING" in extensions
    if envelope.binary:
        if not (offered and "BINARYMIME" in extensions):
            raise EnvelopeError(
                "binary content needs BDAT with BODY=BINARYMIME, and the server does not offer "
                "both CHUNKING and BINARYMIME"
            )
        return True
    return offered and not prefer_data


class _Pending:
    """
    One command whose reply is awaited.

    ``settled`` always succeeds (with ``None``), whatever the reply or the
    connection did, so it can be awaited any number of times and never
    leaves an unhandled failure behind; the outcome is in :attr:`reply` or
    :attr:`error`.
    """

    __slots__ = ("line", "reply", "error", "settled")

    def __init__(self, line: bytes, waiter: Deferred[Reply]) -> None:
        self.line = line
        self.reply: Reply | None = None
        self.error: BaseException | None = None
        self.settled: Deferred[None] = waiter.addCallbacks(self._replied, self._failed)

    def _replied(self, reply: Reply) -> None:
        self.reply = reply

    def _failed(self, failure: Failure) -> None:
        self.error = failure.value

    @property
    def refused(self) -> bool:
        """Answered, with anything but 2xx."""
        return self.reply is not None and not self.reply.is_positive


class _Exchange:
    """
    The commands of one BDAT transaction and their replies, in the order
    they were sent (which is the order the replies come in).
    """

    def __init__(self, protocol: SMTPClientProtocol) -> None:
        self.protocol = protocol
        self.mail: _Pending | None = None
        self.rcpts: list[_Pending] = []
        self.chunks: list[_Pending] = []
        self.final: list[_Pending] = []
        self.last_sent = False
        # Set by reply callbacks, so the check before each chunk costs the
        # same for the thousandth chunk as for the first.
        self._chunk_refused = False
        self._envelope_settled = False
        self._envelope_refused = False

    @property
    def pendings(self) -> list[_Pending]:
        """Every command sent so far, in order."""
        head = [] if self.mail is None else [self.mail]
        return [*head, *self.rcpts, *self.chunks, *self.final]

    def expect(self, line: bytes, waiter: Deferred[Reply], *, chunk: bool = False) -> _Pending:
        """Track the reply to a command that is (about to be) written."""
        waiter.addCallback(self._note_reply, line, chunk)
        return _Pending(line, waiter)

    def _note_reply(self, reply: Reply, line: bytes, chunk: bool) -> Reply:
        if chunk and not reply.is_positive:
            self._chunk_refused = True
        return reply

    def doomed(self) -> bool:
        """
        Whether what the server said so far shows that the transaction
        cannot succeed, so that no further chunk may be sent.
        """
        if self.protocol.failure is not None or self._chunk_refused or self._envelope_refused:
            return True
        if not self._envelope_settled:
            if self.mail is not None and self.mail.refused:
                self._envelope_refused = True
            elif all(pending.reply is not None for pending in self.rcpts):
                self._envelope_settled = True
                self._envelope_refused = all(pending.refused for pending in self.rcpts)
        return self._envelope_refused

    def accepted_count(self) -> int:
        """Recipients accepted so far (the final count once all answered)."""
        return sum(1 for pending in self.rcpts if pending.reply is not None and pending.reply.is_positive)


async def _chunks(pieces: AsyncIterator[bytes]) -> AsyncIterator[tuple[bytes, bool]]:
    """
    Cut the encoded stream into ``(payload, last)`` chunks of at most
    :data:`MAX_CHUNK` bytes (or one piece, when a piece is larger).

    A chunk is given out only once the next piece has been read, so the
    final one is known to be final; it is empty for an empty message.
    Small pieces are gathered in a list and joined once, never appended to
    a growing ``bytes``, so coalescing is linear in the message size.
    """
    parts: list[bytes] = []
    size = 0
    async for piece in pieces:
        if parts and size + len(piece) > MAX_CHUNK:
            yield (parts[0] if len(parts) == 1 else b"".join(parts)), False
            parts, size = [], 0
        parts.append(piece)
        size += len(piece)
    yield (parts[0] if len(parts) == 1 else b"".join(parts)), True


async def _wire(
    exchange: _Exchange, chunks: AsyncIterator[tuple[bytes, bool]], *, window: int, finals: int
) -> AsyncIterator[bytes]:
    """
    The payloads to write, each after its BDAT command line.

    The command line is written (and logged) through the protocol; the
    payload is yielded to the :class:`BodyProducer`, which writes it with
    back-pressure.  Nothing else writes on the connection meanwhile, so the
    two always go out together and in order.

    :param window: how many chunks may await their replies at once (1:
        wait for each reply before the next chunk).
    :param finals: how many replies the ``LAST`` chunk gets.
    """
    protocol = exchange.protocol
    unanswered = 0
    async for payload, last in chunks:
        if exchange.doomed():
            return
        if last:
            line = b"BDAT %d LAST" % len(payload)
            # Registered before the write, so that no reply can ever find
            # nobody waiting for it.
            text = line.decode("ascii")
            exchange.final = [exchange.expect(line, protocol.expect_reply(text)) for _ in range(finals)]
            exchange.last_sent = True
        else:
            line = b"BDAT %d" % len(payload)
            exchange.chunks.append(exchange.expect(line, protocol.expect_reply(line.decode("ascii")), chunk=True))
            unanswered += 1
        protocol.write_command_line(line)
        yield payload
        while unanswered >= window:
            await exchange.chunks[len(exchange.chunks) - unanswered].settled
            unanswered -= 1


async def _settle(pendings: list[_Pending]) -> None:
    for pending in pendings:
        await pending.settled


async def _close(stream: AsyncIterator[object]) -> None:
    """Finalise an async generator now, not at garbage collection."""
    aclose = getattr(stream, "aclose", None)
    if aclose is None:
        return
    try:
        await aclose()
    except Exception:  # noqa: S110 -- the error that ended the write is the one to report
        pass


async def _counted(pieces: AsyncIterator[bytes], sizes: list[int]) -> AsyncIterator[bytes]:
    """Pass ``pieces`` on unchanged, adding their lengths to ``sizes[0]``."""
    async for piece in pieces:
        sizes[0] += len(piece)
        yield piece


async def _open_envelope(exchange: _Exchange, commands: Commands, *, pipelining: bool, wait: bool) -> None:
    """
    MAIL and RCPT: in one write with PIPELINING (waiting for the replies
    only when ``wait``), else one round trip each, stopping at a refused
    MAIL or a closed connection.
    """
    protocol = exchange.protocol
    mail, rcpt_lines = commands.mail, [line for _, line in commands.rcpts]
    if pipelining:
        lines = [mail, *rcpt_lines]
        waiters = protocol.send_pipelined(lines)
        pendings = [exchange.expect(line, waiter) for line, waiter in zip(lines, waiters)]
        exchange.mail, exchange.rcpts = pendings[0], pendings[1:]
        if wait:
            await _settle(pendings)
        return
    exchange.mail = exchange.expect(mail, protocol.send_command(mail))
    await exchange.mail.settled
    if exchange.mail.reply is None or not exchange.mail.reply.is_positive:
        return
    for line in rcpt_lines:
        pending = exchange.expect(line, protocol.send_command(line))
        exchange.rcpts.append(pending)
        await pending.settled
        if pending.reply is None:
            return


async def bdat_transaction(
    protocol: SMTPClientProtocol,
    clock: IReactorTime,
    commands: Commands,
    message: object,
    *,
    pipelining: bool,
    lmtp: bool,
    binary: bool,
    on_start: Callable[[], None] | None = None,
) -> SendInfo:
    """
    Send one message with MAIL, RCPT and BDAT chunks.

    :param commands: the rendered ``MAIL FROM`` (with ``BODY=BINARYMIME``
        when ``binary``) and ``RCPT TO`` lines.
    :param binary: send the caller's bytes unmodified; otherwise line ends
        are normalised to CRLF (never dot-stuffed).
    :param on_start: called just before MAIL is written.
    :raises EnvelopeError: sender refused, or every recipient refused (the
        session is reset and stays usable).
    :raises MessageError: a chunk or the message refused (the session is
        reset and stays usable).
    :raises StreamError: reading ``message`` failed; nothing is delivered
        (``LAST`` was not sent) and the session is reset and stays usable.
    :raises SMTPConnectionError: a failure of the connection (a 421
        included); when it failed after ``LAST`` was sent and before the
        final reply, the error is marked ``delivery_unknown``.
    """
    started = clock.seconds()
    exchange = _Exchange(protocol)
    if on_start is not None:
        on_start()
    # LMTP answers LAST once per accepted recipient, so that number must be
    # known before LAST is sent: wait for the envelope's replies first.
    await _open_envelope(exchange, commands, pipelining=pipelining, wait=lmtp)
    # The envelope's time ends with its last reply, which with PIPELINING
    # may come while the chunks are being sent.
    answered: list[float] = []
    last_of_envelope = exchange.rcpts[-1] if exchange.rcpts else exchange.mail
    if last_of_envelope is not None:
        last_of_envelope.settled.addCallback(lambda _: answered.append(clock.seconds()))

    encoder = None if binary else BodyEncoder(dot_stuff=False)
    raw_size = [0]
    source = iterate_message(message)
    pieces = _counted(source, raw_size) if encoder is None else encoded(source, encoder)
    chunk_stream = _chunks(pieces)
    wire = _wire(
        exchange,
        chunk_stream,
        window=WINDOW if pipelining else 1,
        finals=exchange.accepted_count() if lmtp else 1,
    )
    stream_error: StreamError | None = None
    try:
        if not exchange.doomed():
            await BodyProducer(protocol).write_all(wire)
    except StreamError as error:
        stream_error = error
    except SMTPConnectionError:
        # The connection went away under the producer; its own error,
        # below, says why.
        if protocol.failure is None:
            raise
    finally:
        for stream in (wire, chunk_stream, pieces, source):
            await _close(stream)

    # Every reply is read, even after a failure, so that none is left to
    # pair with a later command.
    await _settle(exchange.pendings)
    finished = clock.seconds()
    envelope_time = (answered[0] if answered else finished) - started
    message_time = finished - started - envelope_time

    _raise_for_connection(exchange)
    outcome = await _raise_for_refusal(exchange, commands, stream_error)
    final_replies = [pending.reply for pending in exchange.final if pending.reply is not None]
    last_line = exchange.final[0].line
    if lmtp:
        fold_lmtp_replies(final_replies, last_line, outcome)
    else:
        refused = final_reply_error(final_replies[0], last_line)
        if refused is not None:
            if not refused.closes_connection:
                await reset_session(protocol)
            raise outcome.mark(refused)

    return SendInfo(
        accepted=outcome.accepted,
        rejected=outcome.rejected,
        rejected_errors=outcome.errors,
        response=str(final_replies[-1]),
        envelope_time=envelope_time,
        message_time=message_time,
        message_size=raw_size[0] if encoder is None else encoder.message_size,
        recipient_replies=outcome.replies,
    )


def _raise_for_connection(exchange: _Exchange) -> None:
    """Raise when the conversation broke off: a command whose reply never came."""
    for pending in exchange.pendings:
        if pending.error is not None:
            error = exchange.protocol.failure or pending.error
            if not isinstance(error, SMTPConnectionError):
                raise error
            if pending in exchange.final:
                answered = any(final.reply is not None for final in exchange.final)
                raise after_the_end(error, answered=answered) from error
            raise error


async def _raise_for_refusal(exchange: _Exchange, commands: Commands, stream_error: StreamError | None) -> Recipients:
    """
    Every command sent was answered: raise, after RSET, when the sender,
    every recipient or a chunk was refused, or reading the message failed.

    :return: the accepted and the rejected recipients, and the errors of
        the rejected.
    """
    protocol = exchange.protocol
    assert exchange.mail is not None and exchange.mail.reply is not None
    replies = [exchange.mail.reply, *(pending.reply for pending in exchange.rcpts if pending.reply is not None)]
    outcome = sort_envelope(commands, replies)
    if outcome.refusal is not None:
        await reset_session(protocol)
        raise outcome.refusal
    if stream_error is not None:
        await reset_session(protocol)
        raise stream_error
    for pending in exchange.chunks:
        if pending.refused:
            reply, text = pending.reply, pending.line.decode("ascii")
            assert reply is not None
            if not (reply.is_transient or reply.is_permanent):
                raise ProtocolError.from_reply("the server's reply to a BDAT chunk does not fit", reply, text)
            await reset_session(protocol)
            raise outcome.mark(MessageError.from_reply("the server refused a BDAT chunk", reply, text))
    if not exchange.last_sent:
        # Nothing was refused and the source did not fail, yet LAST was
        # not sent: the connection failed between two chunks.
        failure = protocol.failure
        raise failure if failure is not None else ProtocolError("the message was not sent completely")
    return outcome
