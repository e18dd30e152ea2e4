"""
Byte-exact tests of the SMTP dialogue on a fake wire: every branch of the
core (greeting, hello, transaction, LMTP, caps, timeouts, call order).
"""

from __future__ import annotations

import io
from collections.abc import Iterator

import pytest
from twisted.logger import Logger, LogEvent, formatEvent

from twisted_smtpconn import (
    ConnectionFailedError,
    DSN,
    Envelope,
    EnvelopeError,
    MessageError,
    ProtocolError,
    SMTPConnection,
    SMTPConnectionError,
    SMTPTimeoutError,
    StreamError,
)
from wiretools import Wire, failure, pending, result

EHLO_FULL = (
    b"250-server.example greets you\r\n"
    b"250-SIZE 1000\r\n"
    b"250-8BITMIME\r\n"
    b"250-DSN\r\n"
    b"250-SMTPUTF8\r\n"
    b"250 auth=PLAIN LOGIN\r\n"
)


def connected(ehlo: bytes = EHLO_FULL, **options: object) -> Wire:
    wire = Wire(**options)
    wire.connect(ehlo)
    return wire


# -- connecting -------------------------------------------------------------------


def test_connect_reads_greeting_and_extensions() -> None:
    wire = Wire()
    conn = wire.connect(EHLO_FULL)
    assert conn is wire.conn
    assert conn.greeting == "server.example ESMTP ready"
    assert conn.extensions["SIZE"] == "1000"
    assert "DSN" in conn.extensions and "8BITMIME" in conn.extensions
    assert conn.auth_methods == ["PLAIN", "LOGIN"]
    assert conn.secure is False
    assert wire.events == [("connect", ())]


def test_helo_fallback_when_ehlo_refused() -> None:
    wire = Wire()
    d = wire.conn.connect()
    wire.server(b"220 old.example\r\n")
    assert wire.client() == b"EHLO client.example\r\n"
    wire.server(b"502 5.5.2 what?\r\n")
    assert wire.client() == b"HELO client.example\r\n"
    wire.server(b"250 old.example\r\n")
    assert result(d) is wire.conn
    assert wire.conn.extensions == {}


def test_helo_refused_too_is_a_protocol_error() -> None:
    wire = Wire()
    d = wire.conn.connect()
    wire.server(b"220 old.example\r\n")
    wire.server(b"500 no\r\n")
    wire.server(b"501 still no\r\n")
    err = failure(d)
    assert isinstance(err, ProtocolError) and err.code == "EPROTOCOL"
    assert err.response_code == 501
    assert wire.events[-1] == ("end", ())


def test_lmtp_says_lhlo_and_never_helo() -> None:
    wire = Wire(lmtp=True)
    d = wire.conn.connect()
    wire.server(b"220 lmtp.example\r\n")
    assert wire.client() == b"LHLO client.example\r\n"
    wire.server(b"500 no\r\n")
    err = failure(d)
    assert err.code == "EPROTOCOL"
    assert wire.client() == b""


@pytest.mark.parametrize(
    ("greeting", "code", "cls"),
    [
        (b"554 5.3.2 no service for you\r\n", "EPROTOCOL", ProtocolError),
        (b"421 4.3.2 busy, try later\r\n", "ECONNECTION", ConnectionFailedError),
        (b"250 not a greeting\r\n", "EPROTOCOL", ProtocolError),
    ],
)
def test_greeting_other_than_220(greeting: bytes, code: str, cls: type) -> None:
    wire = Wire()
    d = wire.conn.connect()
    wire.server(greeting)
    err = failure(d)
    assert isinstance(err, cls) and err.code == code
    assert err.response == greeting.decode().strip()
    assert wire.client() == b""
    assert wire.transport.disconnecting
    assert wire.events == [("end", ())]


def test_multiline_greeting() -> None:
    wire = Wire()
    d = wire.conn.connect()
    wire.server(b"220-first\r\n220-second\r\n220 third\r\n")
    wire.server(b"250 ok\r\n")
    assert result(d).greeting == "first\nsecond\nthird"


def test_replies_split_into_single_bytes() -> None:
    wire = Wire()
    d = wire.conn.connect()
    for byte in b"220 hi\r\n":
        wire.server(bytes([byte]))
    assert wire.client() == b"EHLO client.example\r\n"
    for byte in b"250-x\r\n250 SIZE 10\r\n":
        wire.server(bytes([byte]))
    assert result(d).extensions == {"SIZE": "10"}


def test_bare_lf_replies_are_understood() -> None:
    wire = Wire()
    d = wire.conn.connect()
    wire.server(b"220 hi\n")
    wire.server(b"250 ok\n")
    assert result(d).greeting == "hi"


# -- sending ------------------------------------------------------------------------


def test_send_writes_exact_bytes_and_reports() -> None:
    wire = connected()
    d = wire.conn.send(Envelope("a@example.com", ["b@example.com"]), "Subject: x\n\n.hidden\nbody")
    assert wire.client() == b"MAIL FROM:<a@example.com>\r\n"
    wire.server(b"250 2.1.0 ok\r\n")
    assert wire.client() == b"RCPT TO:<b@example.com>\r\n"
    wire.server(b"250 2.1.5 ok\r\n")
    assert wire.client() == b"DATA\r\n"
    wire.server(b"354 go ahead\r\n")
    assert wire.client() == b"Subject: x\r\n\r\n..hidden\r\nbody\r\n.\r\n"
    assert pending(d)
    wire.server(b"250 2.0.0 queued as 42\r\n")
    info = result(d)
    assert info.accepted == ["b@example.com"]
    assert info.rejected == [] and info.rejected_errors == []
    assert info.response == "250 2.0.0 queued as 42"
    assert info.message_size == len(b"Subject: x\r\n\r\n.hidden\r\nbody\r\n")


def test_send_never_succeeds_before_the_final_reply() -> None:
    wire = connected()
    d = wire.conn.send({"from": "a@x.org", "to": "b@x.org"}, b"hi")
    for reply in (b"250 ok\r\n", b"250 ok\r\n", b"354 go\r\n"):
        # One read per reply: without PIPELINING each answers the command
        # just written (replies ahead of their commands are EPROTOCOL).
        wire.server(reply)
    assert wire.client().endswith(b"hi\r\n.\r\n")
    assert pending(d)
    wire.drop()
    err = failure(d)
    assert isinstance(err, ConnectionFailedError) and err.code == "ECONNECTION"


def test_partial_rejection_sends_to_the_accepted() -> None:
    wire = connected()
    d = wire.conn.send(Envelope("a@x.org", ["ok@x.org", "no@x.org", "ok2@x.org"]), b"m")
    wire.server(b"250 ok\r\n")
    wire.server(b"250 ok\r\n")
    wire.server(b"550 5.1.1 no such user\r\n")
    wire.server(b"250 ok\r\n")
    wire.server(b"354 go\r\n")
    wire.server(b"250 done\r\n")
    info = result(d)
    assert info.accepted == ["ok@x.org", "ok2@x.org"]
    assert info.rejected == ["no@x.org"]
    [err] = info.rejected_errors
    assert err.code == "EENVELOPE" and err.recipient == "no@x.org"
    assert err.response_code == 550 and err.enhanced_status == "5.1.1"
    assert err.command == "RCPT TO:<no@x.org>"


def test_all_rejected_fails_and_resets() -> None:
    wire = connected()
    d = wire.conn.send(Envelope("a@x.org", ["n1@x.org", "n2@x.org"]), b"m")
    wire.server(b"250 ok\r\n", b"550 5.1.1 no\r\n", b"451 4.3.0 later\r\n")
    assert wire.client() == b"MAIL FROM:<a@x.org>\r\nRCPT TO:<n1@x.org>\r\nRCPT TO:<n2@x.org>\r\nRSET\r\n"
    wire.server(b"250 reset\r\n")
    err = failure(d)
    assert isinstance(err, EnvelopeError)
    assert [e.recipient for e in err.rejected_errors] == ["n1@x.org", "n2@x.org"]
    assert [e.response_code for e in err.rejected_errors] == [550, 451]
    # The connection stays usable.
    d2 = wire.conn.send(Envelope("a@x.org", "y@x.org"), b"m")
    assert wire.client() == b"MAIL FROM:<a@x.org>\r\n"
    wire.server(b"250 ok\r\n", b"250 ok\r\n", b"354 go\r\n", b"250 ok\r\n")
    assert result(d2).accepted == ["y@x.org"]


def test_sender_refused() -> None:
    wire = connected()
    d = wire.conn.send(Envelope("bad@x.org", ["b@x.org"]), b"m")
    wire.server(b"553 5.7.1 sender refused\r\n")
    err = failure(d)
    assert err.code == "EENVELOPE" and err.response_code == 553
    assert wire.client() == b"MAIL FROM:<bad@x.org>\r\n"


def test_size_limit_checked_before_anything_is_sent() -> None:
    wire = connected()
    d = wire.conn.send(Envelope("a@x.org", ["b@x.org"], size=5000), b"m")
    err = failure(d)
    assert isinstance(err, MessageError) and err.code == "EMESSAGE"
    assert wire.client() == b""


def test_mail_parameters() -> None:
    wire = connected()
    envelope = Envelope(
        "a@x.org",
        ["b@x.org"],
        size=900,
        use_8bit_mime=True,
        dsn=DSN(ret="HDRS", envid="id+1=2", notify="success,failure", orcpt="b@x.org"),
    )
    wire.conn.send(envelope, b"m")
    assert wire.client() == b"MAIL FROM:<a@x.org> SIZE=900 BODY=8BITMIME RET=HDRS ENVID=id+2B1+3D2\r\n"
    wire.server(b"250 ok\r\n")
    assert wire.client() == b"RCPT TO:<b@x.org> NOTIFY=SUCCESS,FAILURE ORCPT=rfc822;b@x.org\r\n"


def test_parameters_only_when_offered() -> None:
    wire = connected(b"250 plain.example\r\n")
    envelope = Envelope("a@x.org", ["b@x.org"], size=900, use_8bit_mime=True, dsn={"ret": "FULL", "notify": ["NEVER"]})
    wire.conn.send(envelope, b"m")
    assert wire.client() == b"MAIL FROM:<a@x.org>\r\n"
    wire.server(b"250 ok\r\n")
    assert wire.client() == b"RCPT TO:<b@x.org>\r\n"


def test_null_sender() -> None:
    wire = connected()
    wire.conn.send(Envelope("", ["b@x.org"]), b"m")
    assert wire.client() == b"MAIL FROM:<>\r\n"


def test_smtputf8_automatic() -> None:
    wire = connected()
    wire.conn.send(Envelope("jörg@bücher.example", ["b@x.org"]), b"m")
    assert wire.client() == "MAIL FROM:<jörg@bücher.example> SMTPUTF8\r\n".encode()


def test_non_ascii_address_without_smtputf8_fails_before_sending() -> None:
    wire = connected(b"250 plain.example\r\n")
    err = failure(wire.conn.send(Envelope("jörg@x.org", ["b@x.org"]), b"m"))
    assert err.code == "EENVELOPE"
    assert wire.client() == b""


@pytest.mark.parametrize(
    "envelope",
    [
        {"from": "a@x.org\r\nRCPT TO:<evil@x.org>", "to": "b@x.org"},
        {"from": "a@x.org", "to": ["b@x.org", "c@x.org\nDATA"]},
        {"from": "a@x.org", "to": "b@x.org\x00"},
        {"from": "a@x.org", "to": "b@x.org", "dsn": {"envid": "x\r\nQUIT"}},
        {"from": "a@x.org", "to": "b@x.org", "dsn": {"orcpt": "rfc822;b@x.org\rX"}},
    ],
)
def test_injection_fails_before_anything_is_written(envelope: dict[str, object]) -> None:
    wire = connected()
    err = failure(wire.conn.send(envelope, b"m"))
    assert isinstance(err, EnvelopeError) and err.code == "EENVELOPE"
    assert wire.client() == b""


def test_data_refused_resets() -> None:
    wire = connected()
    d = wire.conn.send(Envelope("a@x.org", ["b@x.org"]), b"m")
    wire.server(b"250 ok\r\n", b"250 ok\r\n")
    wire.client()
    wire.server(b"554 5.5.1 no valid recipients\r\n")
    assert wire.client() == b"RSET\r\n"
    wire.server(b"250 ok\r\n")
    err = failure(d)
    assert isinstance(err, MessageError) and err.response_code == 554


def test_message_refused_keeps_connection_usable() -> None:
    wire = connected()
    d = wire.conn.send(Envelope("a@x.org", ["b@x.org"]), b"m")
    wire.server(b"250 ok\r\n", b"250 ok\r\n", b"354 go\r\n", b"552 5.3.4 too big\r\n")
    err = failure(d)
    assert isinstance(err, MessageError) and err.enhanced_status == "5.3.4"
    wire.client()
    d2 = wire.conn.reset()
    assert wire.client() == b"RSET\r\n"
    wire.server(b"250 ok\r\n")
    assert result(d2) is None


def test_421_mid_transaction_closes() -> None:
    wire = connected()
    d = wire.conn.send(Envelope("a@x.org", ["b@x.org"]), b"m")
    wire.server(b"421 4.3.2 shutting down\r\n")
    err = failure(d)
    assert isinstance(err, ConnectionFailedError) and err.response_code == 421
    assert wire.transport.disconnecting
    assert wire.events[-1] == ("end", ())
    assert failure(wire.conn.send(Envelope("a@x.org", ["b@x.org"]), b"m")).code == "EPROTOCOL"


def test_lmtp_one_reply_per_recipient() -> None:
    wire = Wire(lmtp=True)
    d = wire.conn.connect()
    wire.server(b"220 lmtp\r\n", b"250 lmtp.example\r\n")
    result(d)
    wire.client()
    d = wire.conn.send(Envelope("a@x.org", ["r1@x.org", "r2@x.org", "r3@x.org"]), b"m")
    wire.server(b"250 ok\r\n", b"250 ok\r\n", b"550 no\r\n", b"250 ok\r\n", b"354 go\r\n")
    wire.server(b"250 2.1.5 r1 delivered\r\n")
    assert pending(d)
    wire.server(b"552 5.2.2 r3 mailbox full\r\n")
    info = result(d)
    assert info.accepted == ["r1@x.org"]
    assert info.rejected == ["r2@x.org", "r3@x.org"]
    assert [e.response_code for e in info.rejected_errors] == [550, 552]
    assert info.rejected_errors[1].code == "EMESSAGE"


def test_lmtp_everyone_rejected_after_data_still_succeeds() -> None:
    wire = Wire(lmtp=True)
    d = wire.conn.connect()
    wire.server(b"220 lmtp\r\n", b"250 lmtp.example\r\n")
    result(d)
    d = wire.conn.send(Envelope("a@x.org", ["r1@x.org"]), b"m")
    wire.server(b"250 ok\r\n", b"250 ok\r\n", b"354 go\r\n", b"552 full\r\n")
    info = result(d)
    assert info.accepted == [] and info.rejected == ["r1@x.org"]


def test_sends_are_queued_in_call_order() -> None:
    wire = connected()
    d1 = wire.conn.send(Envelope("a@x.org", ["one@x.org"]), b"1")
    d2 = wire.conn.send(Envelope("a@x.org", ["two@x.org"]), b"2")
    d3 = wire.conn.reset()
    assert wire.client() == b"MAIL FROM:<a@x.org>\r\n"
    wire.server(b"250 ok\r\n", b"250 ok\r\n", b"354 go\r\n")
    assert wire.client() == b"RCPT TO:<one@x.org>\r\nDATA\r\n1\r\n.\r\n"
    wire.server(b"250 one\r\n")
    assert result(d1).response == "250 one"
    assert wire.client() == b"MAIL FROM:<a@x.org>\r\n"
    wire.server(b"250 ok\r\n", b"250 ok\r\n", b"354 go\r\n", b"250 two\r\n")
    assert result(d2).response == "250 two"
    assert wire.client().endswith(b"RSET\r\n")
    wire.server(b"250 ok\r\n")
    assert result(d3) is None


def test_stream_error_closes_and_reports_estream() -> None:
    def broken() -> Iterator[bytes]:
        yield b"first part\r\n"
        raise OSError("disk on fire")

    wire = connected()
    d = wire.conn.send(Envelope("a@x.org", ["b@x.org"]), broken())
    wire.server(b"250 ok\r\n", b"250 ok\r\n", b"354 go\r\n")
    err = failure(d)
    assert isinstance(err, StreamError) and err.code == "ESTREAM"
    assert "disk on fire" in str(err)
    # The final dot was never sent: nothing can be delivered.
    assert not wire.client().endswith(b".\r\n")
    assert wire.transport.disconnecting


def test_binary_file_message() -> None:
    wire = connected()
    d = wire.conn.send(Envelope("a@x.org", ["b@x.org"]), io.BytesIO(b"line1\n.\nline3"))
    wire.server(b"250 ok\r\n", b"250 ok\r\n", b"354 go\r\n")
    assert wire.client().endswith(b"DATA\r\nline1\r\n..\r\nline3\r\n.\r\n")
    wire.server(b"250 ok\r\n")
    assert result(d).message_size == len(b"line1\r\n.\r\nline3\r\n")


def test_wrong_message_type_is_a_type_error() -> None:
    wire = connected()
    err = failure(wire.conn.send(Envelope("a@x.org", ["b@x.org"]), 12345))
    assert isinstance(err, TypeError)
    assert wire.client() == b""


# -- pipelining ---------------------------------------------------------------------------

EHLO_PIPELINING = b"250-server.example\r\n250-PIPELINING\r\n250 SIZE 1000\r\n"


def test_pipelined_envelope_goes_in_one_write() -> None:
    wire = connected(EHLO_PIPELINING)
    d = wire.conn.send(Envelope("a@x.org", ["b@x.org", "c@x.org"]), b"m")
    assert wire.client() == b"MAIL FROM:<a@x.org>\r\nRCPT TO:<b@x.org>\r\nRCPT TO:<c@x.org>\r\nDATA\r\n"
    wire.server(b"250 ok\r\n250 ok\r\n")
    assert wire.client() == b""
    wire.server(b"550 5.1.1 no c\r\n354 go\r\n")
    assert wire.client() == b"m\r\n.\r\n"
    wire.server(b"250 queued\r\n")
    info = result(d)
    assert info.accepted == ["b@x.org"] and info.rejected == ["c@x.org"]


def test_pipelined_all_rejected_and_data_554() -> None:
    wire = connected(EHLO_PIPELINING)
    d = wire.conn.send(Envelope("a@x.org", ["b@x.org"]), b"m")
    wire.client()
    wire.server(b"250 ok\r\n550 5.1.1 no b\r\n554 5.5.1 no valid recipients\r\n")
    assert wire.client() == b"RSET\r\n"
    wire.server(b"250 ok\r\n")
    err = failure(d)
    assert isinstance(err, EnvelopeError) and [e.recipient for e in err.rejected_errors] == ["b@x.org"]


def test_pipelined_sender_refused() -> None:
    wire = connected(EHLO_PIPELINING)
    d = wire.conn.send(Envelope("a@x.org", ["b@x.org"]), b"m")
    wire.client()
    wire.server(b"553 5.7.1 no\r\n503 5.5.1 need MAIL\r\n503 5.5.1 need RCPT\r\n")
    assert wire.client() == b"RSET\r\n"
    wire.server(b"250 ok\r\n")
    err = failure(d)
    assert err.code == "EENVELOPE" and err.response_code == 553


def test_pipelined_data_accepted_without_recipients_sends_empty_dot() -> None:
    wire = connected(EHLO_PIPELINING)
    d = wire.conn.send(Envelope("a@x.org", ["b@x.org"]), b"secret body")
    wire.client()
    wire.server(b"250 ok\r\n550 no\r\n354 go\r\n")
    assert wire.client() == b".\r\n"
    wire.server(b"554 no recipients\r\n")
    assert wire.client() == b"RSET\r\n"
    wire.server(b"250 ok\r\n")
    assert failure(d).code == "EENVELOPE"


def test_pipelined_421_in_the_group_closes() -> None:
    wire = connected(EHLO_PIPELINING)
    d = wire.conn.send(Envelope("a@x.org", ["b@x.org"]), b"m")
    wire.server(b"250 ok\r\n421 4.3.2 bye\r\n")
    err = failure(d)
    assert err.code == "ECONNECTION" and err.response_code == 421
    assert wire.transport.disconnecting


# -- limits and hostile replies -------------------------------------------------------


def test_endless_line_fails_with_eprotocol() -> None:
    wire = connected()
    d = wire.conn.send(Envelope("a@x.org", ["b@x.org"]), b"m")
    wire.server(b"250-" + b"x" * 20000)
    err = failure(d)
    assert err.code == "EPROTOCOL"
    assert wire.transport.disconnecting


def test_endless_multiline_reply_fails_with_eprotocol() -> None:
    wire = connected()
    d = wire.conn.send(Envelope("a@x.org", ["b@x.org"]), b"m")
    for _ in range(5000):
        wire.server(b"250-" + b"y" * 100 + b"\r\n")
        if d.called:
            break
    assert failure(d).code == "EPROTOCOL"


def test_mismatched_multiline_codes() -> None:
    wire = connected()
    d = wire.conn.send(Envelope("a@x.org", ["b@x.org"]), b"m")
    wire.server(b"250-ok\r\n550 no\r\n")
    assert failure(d).code == "EPROTOCOL"


def test_garbage_reply() -> None:
    wire = connected()
    d = wire.conn.reset()
    wire.server(b"hello there\r\n")
    assert failure(d).code == "EPROTOCOL"


def test_unsolicited_reply_on_idle_connection_fires_error_then_end() -> None:
    wire = connected()
    wire.server(b"421 4.4.2 idle too long\r\n")
    names = [name for name, _ in wire.events]
    assert names == ["connect", "error", "end"]
    err = wire.events[1][1][0]
    assert isinstance(err, SMTPConnectionError) and err.code == "ECONNECTION"


def test_idle_drop_fires_error_then_end() -> None:
    wire = connected()
    wire.drop()
    assert [name for name, _ in wire.events] == ["connect", "error", "end"]
    assert result(wire.conn.when_closed()) is None


# -- timeouts ---------------------------------------------------------------------------


def test_greeting_timeout() -> None:
    wire = Wire(greeting_timeout=5.0)
    d = wire.conn.connect()
    wire.reactor.advance(4.9)
    assert pending(d)
    wire.reactor.advance(0.2)
    err = failure(d)
    assert isinstance(err, SMTPTimeoutError) and isinstance(err, TimeoutError)
    assert err.code == "ETIMEDOUT"
    assert wire.transport.aborted


def test_socket_timeout_closes_and_late_reply_is_never_read() -> None:
    wire = connected(socket_timeout=10.0)
    d = wire.conn.send(Envelope("a@x.org", ["b@x.org"]), b"m")
    wire.reactor.advance(10.5)
    err = failure(d)
    assert err.code == "ETIMEDOUT"
    assert wire.transport.aborted
    wire.server(b"250 ok\r\n")  # late: must not pair with anything
    assert failure(wire.conn.send(Envelope("a@x.org", ["b@x.org"]), b"m")).code == "EPROTOCOL"


def test_activity_restarts_the_inactivity_timer() -> None:
    wire = connected(socket_timeout=10.0)
    d = wire.conn.send(Envelope("a@x.org", ["b@x.org"]), b"m")
    wire.reactor.advance(8)
    wire.server(b"250 ok\r\n")
    wire.reactor.advance(8)
    wire.server(b"250 ok\r\n", b"354 go\r\n")
    wire.reactor.advance(8)
    wire.server(b"250 ok\r\n")
    assert result(d).accepted == ["b@x.org"]


def test_idle_timeout_fires_error_and_end() -> None:
    wire = connected(socket_timeout=3.0)
    wire.reactor.advance(3.5)
    assert [name for name, _ in wire.events] == ["connect", "error", "end"]
    assert wire.events[1][1][0].code == "ETIMEDOUT"
    assert wire.reactor.getDelayedCalls() == []


# -- lifecycle ------------------------------------------------------------------------


def test_send_before_connect_fails_at_once() -> None:
    wire = Wire()
    err = failure(wire.conn.send(Envelope("a@x.org", ["b@x.org"]), b"m"))
    assert isinstance(err, ProtocolError) and "connect" in str(err)


def test_operations_after_close_fail_at_once() -> None:
    wire = connected()
    wire.conn.close()
    assert wire.transport.disconnecting
    for d in (wire.conn.send(Envelope("a@x.org", ["b@x.org"]), b"m"), wire.conn.reset(), wire.conn.connect()):
        assert failure(d).code == "EPROTOCOL"
    assert result(wire.conn.when_closed()) is None
    assert [name for name, _ in wire.events] == ["connect", "end"]


def test_send_queued_during_connect_runs_after_it() -> None:
    wire = Wire()
    dc = wire.conn.connect()
    ds = wire.conn.send(Envelope("a@x.org", ["b@x.org"]), b"m")
    wire.server(b"220 hi\r\n")
    assert wire.client() == b"EHLO client.example\r\n"
    wire.server(b"250 ok\r\n")
    assert result(dc) is wire.conn
    assert wire.client() == b"MAIL FROM:<a@x.org>\r\n"
    assert pending(ds)


def test_send_queued_during_failed_connect_gets_its_error() -> None:
    wire = Wire()
    dc = wire.conn.connect()
    ds = wire.conn.send(Envelope("a@x.org", ["b@x.org"]), b"m")
    wire.server(b"554 go away\r\n")
    assert failure(dc).code == "EPROTOCOL"
    # Its own error, not the connect's: transient, since it never ran.
    queued = failure(ds)
    assert isinstance(queued, ConnectionFailedError) and queued.is_transient
    assert "EPROTOCOL" in str(queued) and queued.__cause__ is not None


def test_quit() -> None:
    wire = connected()
    closed = wire.conn.when_closed()
    d = wire.conn.quit()
    assert wire.client() == b"QUIT\r\n"
    wire.server(b"221 bye\r\n")
    assert result(d) is None
    assert result(closed) is None
    assert [name for name, _ in wire.events] == ["connect", "end"]
    assert wire.reactor.getDelayedCalls() == []


def test_quit_does_not_hang_when_the_peer_never_closes() -> None:
    wire = connected()
    wire.transport.loseConnection = lambda: None  # type: ignore[method-assign]
    d = wire.conn.quit()
    wire.server(b"221 bye\r\n")
    assert pending(d)
    wire.reactor.advance(10)
    assert result(d) is None
    assert wire.transport.aborted


def test_events_reject_unknown_names() -> None:
    conn = SMTPConnection(name="c.example")
    with pytest.raises(ValueError):
        conn.on("conect", lambda: None)


# -- options ------------------------------------------------------------------------------


def test_defaults_follow_the_contract() -> None:
    conn = SMTPConnection()
    options = conn._options
    assert (options.host, options.port) == ("localhost", 25)
    assert SMTPConnection(secure=True)._options.port == 465
    assert options.connection_timeout == 120.0
    assert options.greeting_timeout == 30.0
    assert options.socket_timeout == 600.0


@pytest.mark.parametrize(
    ("kwargs", "exc"),
    [
        ({"port": 0}, ValueError),
        ({"port": 70000}, ValueError),
        ({"port": "25"}, TypeError),
        ({"socket_timeout": -1}, ValueError),
        ({"greeting_timeout": 0}, ValueError),
        ({"connection_timeout": float("nan")}, ValueError),
        ({"ignore_tls": True, "require_tls": True}, ValueError),
        ({"ignore_tls": True, "opportunistic_tls": True}, ValueError),
        ({"secure": True, "ignore_tls": True}, ValueError),
        ({"name": "bad name"}, ValueError),
        ({"name": "evil\r\nMAIL FROM:<x>"}, ValueError),
        ({"colour": "blue"}, TypeError),
        ({"secure": "yes"}, TypeError),
        ({"logger": "stderr"}, TypeError),
        ({"tls": {"verify": False}}, TypeError),
    ],
)
def test_bad_options_fail_at_construction(kwargs: dict[str, object], exc: type) -> None:
    with pytest.raises(exc):
        SMTPConnection(**kwargs)  # type: ignore[arg-type]


def test_debug_transcript_logs_lines() -> None:
    events: list[LogEvent] = []
    wire = Wire(logger=Logger(observer=events.append), debug=True)
    wire.connect()
    text = [formatEvent(e) for e in events]
    # Each line names its connection ("#7 localhost:25 C: ...").
    label = wire.conn._label  # type: ignore[attr-defined]
    assert label.startswith("#") and label.endswith(" localhost:25")
    assert f"{label} C: EHLO client.example" in text
    assert f"{label} S: 220 server.example ESMTP ready" in text


def test_without_debug_no_transcript() -> None:
    events: list[LogEvent] = []
    wire = Wire(logger=Logger(observer=events.append))
    wire.connect()
    text = [formatEvent(e) for e in events]
    assert not any(" C: " in t or " S: " in t for t in text)
    assert any("connected to" in t for t in text)


def test_send_info_holds_every_recipients_reply() -> None:
    wire = connected()
    d = wire.conn.send(Envelope("a@x.org", ["b@x.org", "c@x.org"]), b"m")
    wire.server(b"250 ok\r\n", b"250-2.1.5 b ok\r\n250 really\r\n", b"550 5.1.1 no c\r\n", b"354 go\r\n", b"250 queued\r\n")
    info = result(d)
    assert info.recipient_replies == [("b@x.org", 250, "2.1.5 b ok\nreally"), ("c@x.org", 550, "5.1.1 no c")]
    d = wire.conn.send(Envelope("a@x.org", ["d@x.org"]), b"m")
    wire.server(b"250 ok\r\n", b"250 ok\r\n", b"354 go\r\n", b"552 5.3.4 too big\r\n")
    error = failure(d)
    assert error.code == "EMESSAGE" and error.recipient_replies == [("d@x.org", 250, "ok")]


def test_probe_envelope_tries_mail_and_rcpt_then_resets() -> None:
    wire = connected(b"250-server.example\r\n250 PIPELINING\r\n")  # one write
    d = wire.conn.probe_envelope(Envelope("a@x.org", ["b@x.org", "c@x.org"]))
    assert wire.client() == b"MAIL FROM:<a@x.org>\r\nRCPT TO:<b@x.org>\r\nRCPT TO:<c@x.org>\r\n"
    wire.server(b"250 ok\r\n250 b ok\r\n550 5.1.1 no c\r\n")
    assert wire.client() == b"RSET\r\n"
    wire.server(b"250 reset\r\n")
    info = result(d)
    assert (info.accepted, info.rejected, info.message_size) == (["b@x.org"], ["c@x.org"], 0)
    assert info.recipient_replies == [("b@x.org", 250, "b ok"), ("c@x.org", 550, "5.1.1 no c")]
    # MAIL only, then every recipient refused: EENVELOPE, and still usable.
    d = wire.conn.probe_envelope(Envelope("a@x.org", "b@x.org"), rcpt=False)
    assert wire.client() == b"MAIL FROM:<a@x.org>\r\n"
    wire.server(b"250 ok\r\n", b"250 reset\r\n")
    assert result(d).accepted == []
    d = wire.conn.probe_envelope(Envelope("a@x.org", "n@x.org"))
    wire.server(b"250 ok\r\n550 no\r\n", b"250 reset\r\n")
    assert failure(d).code == "EENVELOPE"
    assert b"DATA" not in wire.client()
    assert wire.conn.state.value == "ready"
