"""
Byte-exact tests of CHUNKING (RFC 3030) on a fake wire: BDAT chunks and
LAST, the empty message, with and without PIPELINING, refused chunks, 421
inside the group, LMTP, BINARYMIME and the option to prefer DATA.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.internet.defer import Deferred

from twisted_smtpconn import (
    ConnectionFailedError,
    Envelope,
    EnvelopeError,
    MessageError,
    StreamError,
)
from twisted_smtpconn._bdat import MAX_CHUNK, WINDOW
from twisted_smtpconn._dotstuff import BodyEncoder
from wiretools import Wire, failure, pending, result

EHLO_CHUNKING = b"250-server.example\r\n250-PIPELINING\r\n250-CHUNKING\r\n250 8BITMIME\r\n"
EHLO_CHUNKING_ONLY = b"250-server.example\r\n250-CHUNKING\r\n250 8BITMIME\r\n"
EHLO_BINARY = b"250-server.example\r\n250-PIPELINING\r\n250-CHUNKING\r\n250 BINARYMIME\r\n"

ENVELOPE = Envelope("a@x.org", ["b@x.org"])


def connected(ehlo: bytes = EHLO_CHUNKING, **options: object) -> Wire:
    wire = Wire(**options)
    wire.connect(ehlo)
    return wire


def connected_lmtp(lhlo: bytes) -> Wire:
    wire = Wire(lmtp=True)
    d = wire.conn.connect()
    wire.server(b"220 lmtp.example ready\r\n")
    assert wire.client() == b"LHLO client.example\r\n"
    wire.server(lhlo)
    result(d)
    return wire


def split_wire(data: bytes) -> list[tuple[bytes, bytes | None]]:
    """
    The client's bytes as ``(command line, payload)`` pairs: the payload is
    the chunk that follows a BDAT command, ``None`` for other commands.
    Fails if a BDAT's size does not match what follows it.
    """
    out: list[tuple[bytes, bytes | None]] = []
    position = 0
    while position < len(data):
        end = data.index(b"\r\n", position)
        line = data[position:end]
        position = end + 2
        if line.startswith(b"BDAT "):
            size = int(line.split()[1])
            payload = data[position : position + size]
            assert len(payload) == size, f"{line!r} announced more than was sent"
            position += size
            out.append((line, payload))
        else:
            out.append((line, None))
    return out


def bdat_lines(data: bytes) -> list[bytes]:
    return [line for line, payload in split_wire(data) if payload is not None]


def gated(pieces: list[bytes]) -> tuple[AsyncIterator[bytes], list[Deferred[None]]]:
    """An async message source that yields each piece once its gate fires."""
    gates: list[Deferred[None]] = [Deferred() for _ in pieces]

    async def source() -> AsyncIterator[bytes]:
        for gate, piece in zip(gates, pieces):
            await gate
            yield piece

    return source(), gates


# -- the shape of a transaction ---------------------------------------------------------


def test_pipelined_small_message_is_one_write() -> None:
    wire = connected()
    d = wire.conn.send(Envelope("a@x.org", ["b@x.org", "c@x.org"]), b"Subject: x\r\n\r\n.not stuffed\r\n")
    assert wire.client() == (
        b"MAIL FROM:<a@x.org>\r\nRCPT TO:<b@x.org>\r\nRCPT TO:<c@x.org>\r\n"
        b"BDAT 28 LAST\r\nSubject: x\r\n\r\n.not stuffed\r\n"
    )
    wire.server(b"250 ok\r\n250 ok\r\n550 5.1.1 no c\r\n")
    assert pending(d)
    wire.server(b"250 2.0.0 queued as 7\r\n")
    info = result(d)
    assert info.accepted == ["b@x.org"] and info.rejected == ["c@x.org"]
    assert info.rejected_errors[0].response_code == 550
    assert info.response == "250 2.0.0 queued as 7"
    assert info.message_size == 28
    assert wire.client() == b""


def test_line_ends_are_normalised_but_never_dot_stuffed() -> None:
    wire = connected()
    d = wire.conn.send(ENVELOPE, b".a\n.\nb\rc")
    body = b".a\r\n.\r\nb\r\nc\r\n"
    assert wire.client().endswith(b"BDAT %d LAST\r\n%s" % (len(body), body))
    wire.server(b"250 ok\r\n250 ok\r\n250 ok\r\n")
    assert result(d).message_size == len(body)


def test_empty_message_is_bdat_0_last() -> None:
    wire = connected()
    d = wire.conn.send(ENVELOPE, b"")
    assert wire.client() == b"MAIL FROM:<a@x.org>\r\nRCPT TO:<b@x.org>\r\nBDAT 0 LAST\r\n"
    wire.server(b"250 ok\r\n250 ok\r\n250 empty ok\r\n")
    info = result(d)
    assert info.message_size == 0 and info.response == "250 empty ok"


def test_large_message_goes_in_chunks_and_only_the_last_says_last() -> None:
    message = bytes(range(256)).replace(b"\r", b"-").replace(b"\n", b"-") * 1000 + b"\r\n"
    wire = connected()
    d = wire.conn.send(ENVELOPE, message)
    parts = split_wire(wire.client())
    assert [line for line, _ in parts[:2]] == [b"MAIL FROM:<a@x.org>", b"RCPT TO:<b@x.org>"]
    chunks = parts[2:]
    assert len(chunks) > 2
    assert all(not line.endswith(b"LAST") for line, _ in chunks[:-1])
    assert chunks[-1][0].endswith(b" LAST")
    assert all(payload and len(payload) <= MAX_CHUNK for _, payload in chunks)
    assert b"".join(payload or b"" for _, payload in chunks) == message
    wire.server(b"250 ok\r\n250 ok\r\n" + b"250 chunk ok\r\n" * (len(chunks) - 1))
    assert pending(d)
    wire.server(b"250 all ok\r\n")
    assert result(d).message_size == len(message)


def test_without_pipelining_every_command_waits_for_its_reply() -> None:
    wire = connected(EHLO_CHUNKING_ONLY)
    source, gates = gated([b"x" * 60000, b"y" * 60000, b"z" * 10])
    d = wire.conn.send(Envelope("a@x.org", ["b@x.org", "c@x.org"]), source)
    assert wire.client() == b"MAIL FROM:<a@x.org>\r\n"
    wire.server(b"250 ok\r\n")
    assert wire.client() == b"RCPT TO:<b@x.org>\r\n"
    wire.server(b"250 ok\r\n")
    assert wire.client() == b"RCPT TO:<c@x.org>\r\n"
    wire.server(b"250 ok\r\n")
    for gate in gates[:2]:
        gate.callback(None)
    # The first chunk goes once the second piece shows it is not the last.
    assert bdat_lines(wire.client()) == [b"BDAT 60000"]
    gates[2].callback(None)
    # The next chunk waits for the reply to the first.
    assert wire.client() == b""
    wire.server(b"250 2.0.0 60000 octets received\r\n")
    assert split_wire(wire.client()) == [(b"BDAT 60012 LAST", b"y" * 60000 + b"z" * 10 + b"\r\n")]
    wire.server(b"250 2.0.0 message ok\r\n")
    info = result(d)
    assert info.accepted == ["b@x.org", "c@x.org"]
    assert info.message_size == 120012


def test_pipelined_chunks_do_not_wait_for_replies() -> None:
    wire = connected()
    source, gates = gated([b"x" * 60000, b"y" * 60000, b"z" * 60000])
    d = wire.conn.send(ENVELOPE, source)
    for gate in gates:
        gate.callback(None)
    assert bdat_lines(wire.client()) == [b"BDAT 60000", b"BDAT 60000", b"BDAT 60002 LAST"]
    wire.server(b"250 ok\r\n250 ok\r\n250 c1\r\n250 c2\r\n250 done\r\n")
    assert result(d).response == "250 done"


def test_pipelined_chunks_stay_within_the_window() -> None:
    pieces = [bytes([65 + n % 26]) * 60000 for n in range(WINDOW + 5)]
    wire = connected()
    source, gates = gated(pieces)
    d = wire.conn.send(ENVELOPE, source)
    for gate in gates:
        gate.callback(None)
    assert len(bdat_lines(wire.client())) == WINDOW
    wire.server(b"250 ok\r\n250 ok\r\n")
    for _ in range(len(pieces) - 1 - WINDOW):
        wire.server(b"250 chunk ok\r\n")
        assert len(bdat_lines(wire.client())) == 1
    wire.server(b"250 chunk ok\r\n")
    assert bdat_lines(wire.client())[-1].endswith(b" LAST")
    wire.server(b"250 chunk ok\r\n" * (WINDOW - 1) + b"250 done\r\n")
    assert result(d).message_size == 60000 * len(pieces) + 2


@settings(max_examples=60, deadline=None)
@given(
    pieces=st.lists(st.binary(max_size=30000), max_size=8),
    extra=st.sampled_from([b"", b"\r", b"\n", b"\r\n", b".\r\n"]),
)
def test_any_message_arrives_intact_in_chunks(pieces: list[bytes], extra: bytes) -> None:
    """Whatever the message and however it is cut, the chunks are its normalised bytes."""
    pieces = [*pieces, extra]
    encoder = BodyEncoder(dot_stuff=False)
    expected = b"".join(encoder.encode(piece) for piece in pieces) + encoder.finish()
    wire = connected()
    d = wire.conn.send(ENVELOPE, iter(pieces))
    chunks = split_wire(wire.client())[2:]
    assert [line.endswith(b" LAST") for line, _ in chunks] == [False] * (len(chunks) - 1) + [True]
    assert all(payload for _, payload in chunks[:-1])
    assert b"".join(payload or b"" for _, payload in chunks) == expected
    wire.server(b"250 ok\r\n" * (2 + len(chunks)))
    assert result(d).message_size == len(expected)


# -- failures -------------------------------------------------------------------------------


def test_refused_chunk_stops_the_stream_reads_every_reply_and_resets() -> None:
    wire = connected()
    source, gates = gated([b"x" * 60000, b"y" * 60000, b"z" * 60000, b"w" * 10])
    d = wire.conn.send(ENVELOPE, source)
    gates[0].callback(None)
    gates[1].callback(None)
    gates[2].callback(None)
    assert bdat_lines(wire.client()) == [b"BDAT 60000", b"BDAT 60000"]
    wire.server(b"250 ok\r\n250 ok\r\n552 5.3.4 message too big\r\n")
    gates[3].callback(None)
    # No further chunk, and no LAST, after the refusal.
    assert wire.client() == b""
    # The reply to the chunk already in the pipe is read before RSET.
    wire.server(b"503 5.5.1 no transaction\r\n")
    assert wire.client() == b"RSET\r\n"
    wire.server(b"250 reset\r\n")
    err = failure(d)
    assert isinstance(err, MessageError) and err.code == "EMESSAGE"
    assert err.response_code == 552 and err.enhanced_status == "5.3.4"
    assert err.command == "BDAT 60000"
    # The connection stays usable.
    d2 = wire.conn.send(ENVELOPE, b"next")
    assert wire.client().endswith(b"BDAT 6 LAST\r\nnext\r\n")
    wire.server(b"250 ok\r\n250 ok\r\n250 ok\r\n")
    assert result(d2).accepted == ["b@x.org"]


def test_refused_chunk_without_pipelining() -> None:
    wire = connected(EHLO_CHUNKING_ONLY)
    d = wire.conn.send(ENVELOPE, b"x" * 65536 + b"y" * 65536)
    wire.server(b"250 ok\r\n", b"250 ok\r\n")
    assert bdat_lines(wire.client()) == [b"BDAT 65536"]
    wire.server(b"451 4.3.0 disk full\r\n")
    assert wire.client() == b"RSET\r\n"
    wire.server(b"250 ok\r\n")
    err = failure(d)
    assert isinstance(err, MessageError) and err.response_code == 451
    assert err.is_transient


def test_refused_last_chunk_resets() -> None:
    wire = connected()
    d = wire.conn.send(ENVELOPE, b"m")
    wire.client()
    wire.server(b"250 ok\r\n250 ok\r\n554 5.7.1 spam\r\n")
    assert wire.client() == b"RSET\r\n"
    wire.server(b"250 ok\r\n")
    err = failure(d)
    assert isinstance(err, MessageError) and err.response_code == 554
    assert err.command == "BDAT 3 LAST"


def test_every_recipient_refused_in_the_group() -> None:
    wire = connected()
    d = wire.conn.send(Envelope("a@x.org", ["b@x.org", "c@x.org"]), b"secret")
    wire.client()
    wire.server(b"250 ok\r\n550 no b\r\n550 no c\r\n554 5.5.1 no valid recipients\r\n")
    assert wire.client() == b"RSET\r\n"
    wire.server(b"250 ok\r\n")
    err = failure(d)
    assert isinstance(err, EnvelopeError)
    assert [e.recipient for e in err.rejected_errors] == ["b@x.org", "c@x.org"]


def test_every_recipient_refused_stops_a_long_message() -> None:
    wire = connected()
    source, gates = gated([b"x" * 60000, b"y" * 60000, b"z" * 60000])
    d = wire.conn.send(ENVELOPE, source)
    gates[0].callback(None)
    gates[1].callback(None)
    assert bdat_lines(wire.client()) == [b"BDAT 60000"]
    wire.server(b"250 ok\r\n550 5.1.1 no b\r\n")
    gates[2].callback(None)
    assert wire.client() == b""
    wire.server(b"554 5.5.1 no valid recipients\r\n")
    assert wire.client() == b"RSET\r\n"
    wire.server(b"250 ok\r\n")
    assert failure(d).code == "EENVELOPE"


def test_sender_refused_in_the_group() -> None:
    wire = connected()
    d = wire.conn.send(ENVELOPE, b"m")
    wire.client()
    wire.server(b"553 5.7.1 no\r\n503 5.5.1 need MAIL\r\n503 5.5.1 need MAIL\r\n")
    assert wire.client() == b"RSET\r\n"
    wire.server(b"250 ok\r\n")
    err = failure(d)
    assert isinstance(err, EnvelopeError) and err.response_code == 553


def test_sender_refused_without_pipelining_sends_no_recipient() -> None:
    wire = connected(EHLO_CHUNKING_ONLY)
    d = wire.conn.send(ENVELOPE, b"m")
    assert wire.client() == b"MAIL FROM:<a@x.org>\r\n"
    wire.server(b"550 5.7.1 no\r\n")
    assert wire.client() == b"RSET\r\n"
    wire.server(b"250 ok\r\n")
    assert failure(d).code == "EENVELOPE"


def test_421_mid_group_closes_without_reset() -> None:
    wire = connected()
    d = wire.conn.send(ENVELOPE, b"m")
    wire.client()
    wire.server(b"250 ok\r\n421 4.3.2 shutting down\r\n")
    err = failure(d)
    assert isinstance(err, ConnectionFailedError) and err.code == "ECONNECTION"
    assert err.response_code == 421 and err.command == "RCPT TO:<b@x.org>"
    assert not err.delivery_unknown
    assert wire.transport.disconnecting
    assert b"RSET" not in wire.client()
    assert wire.events[-1] == ("end", ())


def test_421_to_a_chunk_closes() -> None:
    wire = connected()
    d = wire.conn.send(ENVELOPE, b"x" * 65536 + b"y" * 65536)
    wire.client()
    wire.server(b"250 ok\r\n250 ok\r\n421 4.4.2 timeout\r\n")
    err = failure(d)
    assert err.code == "ECONNECTION" and err.response_code == 421 and err.command == "BDAT 65536"
    assert wire.transport.disconnecting


def test_connection_lost_after_last_is_delivery_unknown() -> None:
    wire = connected()
    d = wire.conn.send(ENVELOPE, b"m")
    wire.server(b"250 ok\r\n250 ok\r\n")
    wire.drop()
    err = failure(d)
    assert isinstance(err, ConnectionFailedError) and err.delivery_unknown


def test_connection_lost_before_last_is_not_delivery_unknown() -> None:
    wire = connected(EHLO_CHUNKING_ONLY)
    d = wire.conn.send(ENVELOPE, b"x" * 65536 + b"y" * 65536)
    wire.server(b"250 ok\r\n", b"250 ok\r\n")
    assert bdat_lines(wire.client()) == [b"BDAT 65536"]
    wire.drop()
    err = failure(d)
    assert isinstance(err, ConnectionFailedError) and not err.delivery_unknown


def test_stream_error_resets_and_keeps_the_connection() -> None:
    async def broken() -> AsyncIterator[bytes]:
        yield b"x" * 60000
        yield b"y" * 60000
        raise OSError("disk on fire")

    wire = connected()
    d = wire.conn.send(ENVELOPE, broken())
    data = wire.client()
    assert bdat_lines(data) == [b"BDAT 60000"]
    assert b"LAST" not in data
    wire.server(b"250 ok\r\n250 ok\r\n250 chunk ok\r\n")
    assert wire.client() == b"RSET\r\n"
    wire.server(b"250 ok\r\n")
    err = failure(d)
    assert isinstance(err, StreamError) and "disk on fire" in str(err)
    assert not wire.transport.disconnecting
    d2 = wire.conn.send(ENVELOPE, b"again")
    wire.client()
    wire.server(b"250 ok\r\n250 ok\r\n250 ok\r\n")
    assert result(d2).response == "250 ok"


# -- LMTP ---------------------------------------------------------------------------------------

LHLO_CHUNKING = b"250-lmtp.example\r\n250-PIPELINING\r\n250 CHUNKING\r\n"


def test_lmtp_waits_for_recipients_then_one_reply_per_accepted_after_last() -> None:
    wire = connected_lmtp(LHLO_CHUNKING)
    d = wire.conn.send(Envelope("a@x.org", ["r1@x.org", "r2@x.org", "r3@x.org"]), b"x" * 65536 + b"y")
    assert wire.client() == (
        b"MAIL FROM:<a@x.org>\r\nRCPT TO:<r1@x.org>\r\nRCPT TO:<r2@x.org>\r\nRCPT TO:<r3@x.org>\r\n"
    )
    wire.server(b"250 ok\r\n250 ok\r\n550 no r2\r\n")
    # Not a chunk before every recipient has answered.
    assert wire.client() == b""
    wire.server(b"250 ok\r\n")
    assert bdat_lines(wire.client()) == [b"BDAT 65539 LAST"]
    wire.server(b"250 2.1.5 r1 delivered\r\n")
    assert pending(d)
    wire.server(b"452 4.2.2 r3 over quota\r\n")
    info = result(d)
    assert info.accepted == ["r1@x.org"]
    assert info.rejected == ["r2@x.org", "r3@x.org"]
    assert [e.code for e in info.rejected_errors] == ["EENVELOPE", "EMESSAGE"]
    assert info.rejected_errors[1].command == "BDAT 65539 LAST"
    assert info.response == "452 4.2.2 r3 over quota"


def test_lmtp_non_last_chunks_get_one_reply_each() -> None:
    wire = connected_lmtp(LHLO_CHUNKING)
    d = wire.conn.send(Envelope("a@x.org", ["r1@x.org", "r2@x.org"]), b"x" * 65536 + b"y" * 65536)
    wire.client()
    wire.server(b"250 ok\r\n250 ok\r\n250 ok\r\n")
    assert bdat_lines(wire.client()) == [b"BDAT 65536", b"BDAT 65538 LAST"]
    wire.server(b"250 chunk\r\n250 r1 ok\r\n")
    assert pending(d)
    wire.server(b"250 r2 ok\r\n")
    assert result(d).accepted == ["r1@x.org", "r2@x.org"]


def test_lmtp_without_pipelining() -> None:
    wire = connected_lmtp(b"250-lmtp.example\r\n250 CHUNKING\r\n")
    d = wire.conn.send(Envelope("a@x.org", ["r1@x.org", "r2@x.org"]), b"")
    assert wire.client() == b"MAIL FROM:<a@x.org>\r\n"
    wire.server(b"250 ok\r\n")
    assert wire.client() == b"RCPT TO:<r1@x.org>\r\n"
    wire.server(b"250 ok\r\n")
    assert wire.client() == b"RCPT TO:<r2@x.org>\r\n"
    wire.server(b"250 ok\r\n")
    assert wire.client() == b"BDAT 0 LAST\r\n"
    wire.server(b"250 r1\r\n550 r2 gone\r\n")
    info = result(d)
    assert info.accepted == ["r1@x.org"] and info.rejected == ["r2@x.org"]


# -- choosing BDAT, and binary content --------------------------------------------------------


def test_prefer_data_uses_data_although_chunking_is_offered() -> None:
    wire = connected(prefer_data=True)
    d = wire.conn.send(ENVELOPE, b".x")
    assert wire.client() == b"MAIL FROM:<a@x.org>\r\nRCPT TO:<b@x.org>\r\nDATA\r\n"
    wire.server(b"250 ok\r\n250 ok\r\n354 go\r\n")
    assert wire.client() == b"..x\r\n.\r\n"
    wire.server(b"250 ok\r\n")
    assert result(d).message_size == 4


def test_without_chunking_data_is_used() -> None:
    wire = connected(b"250-server.example\r\n250 PIPELINING\r\n")
    wire.conn.send(ENVELOPE, b"m")
    assert wire.client().endswith(b"DATA\r\n")


def test_binary_goes_unmodified_with_binarymime() -> None:
    body = b"\x00\xff\r\n.\nbare lf\rbare cr"
    wire = connected(EHLO_BINARY)
    d = wire.conn.send(Envelope("a@x.org", ["b@x.org"], binary=True, use_8bit_mime=True), body)
    assert wire.client() == (
        b"MAIL FROM:<a@x.org> BODY=BINARYMIME\r\nRCPT TO:<b@x.org>\r\n"
        b"BDAT %d LAST\r\n%s" % (len(body), body)
    )
    wire.server(b"250 ok\r\n250 ok\r\n250 ok\r\n")
    assert result(d).message_size == len(body)


def test_binary_wins_over_prefer_data() -> None:
    wire = connected(EHLO_BINARY, prefer_data=True)
    wire.conn.send({"from": "a@x.org", "to": "b@x.org", "binary": True}, b"\x00")
    assert wire.client().endswith(b"BDAT 1 LAST\r\n\x00")


@pytest.mark.parametrize(
    "ehlo",
    [
        b"250-server.example\r\n250-PIPELINING\r\n250 CHUNKING\r\n",
        b"250-server.example\r\n250-PIPELINING\r\n250 BINARYMIME\r\n",
        b"250 server.example\r\n",
    ],
)
def test_binary_without_chunking_and_binarymime_fails_before_sending(ehlo: bytes) -> None:
    wire = connected(ehlo)
    err = failure(wire.conn.send(Envelope("a@x.org", ["b@x.org"], binary=True), b"\x00"))
    assert isinstance(err, EnvelopeError) and "BINARYMIME" in str(err)
    assert wire.client() == b""
    assert not wire.transport.disconnecting


def test_binary_must_be_a_bool() -> None:
    with pytest.raises(TypeError):
        Envelope("a@x.org", "b@x.org", binary="yes")  # type: ignore[arg-type]


def test_prefer_data_must_be_a_bool() -> None:
    with pytest.raises(TypeError):
        Wire(prefer_data="no")


def test_debug_transcript_shows_bdat_commands() -> None:
    from twisted.logger import LogEvent, Logger, formatEvent

    events: list[LogEvent] = []
    wire = connected(logger=Logger(observer=events.append), debug=True)
    d = wire.conn.send(ENVELOPE, b"m")
    wire.server(b"250 ok\r\n250 ok\r\n250 ok\r\n")
    result(d)
    assert any("BDAT 3 LAST" in formatEvent(event) for event in events)
